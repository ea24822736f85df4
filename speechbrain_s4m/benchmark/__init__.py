"""Benchmarks: S4M vs SepFormer / Conv-TasNet (``python -m
speechbrain_s4m.benchmark``) and the streamer (``benchmark.streaming``)."""
