"""S4MSeparation.separate_batch with and without the allocator setting.

One process per condition (the setting is process-wide and cannot be
undone), S4M-tiny with random weights, 2 threads, 4 / 16 / 60 s of noise at
8 kHz, two timed calls per length after a 1-s warm-up::

    python bench/allocator_product.py default default.json
    python bench/allocator_product.py keep keep.json

``default``: ``S4MSeparation(..., keep_freed_memory=False)`` (glibc's
defaults); ``keep``: the class's default (freed memory kept on a CPU).
Prints and writes one JSON row per call: wall, user and kernel (sys) CPU
seconds, minor page faults.
"""

import json
import resource
import sys

import torch

from speechbrain_s4m.allocator import allocator_mode
from speechbrain_s4m.benchmark.measure import StepTimer
from speechbrain_s4m.config import load_model_config
from speechbrain_s4m.inference import S4MSeparation


def main(condition, out):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    hp = load_model_config("s4m_tiny")
    modules = {k.lower(): hp[k] for k in ("Encoder", "MaskNet", "Decoder")}
    model = S4MSeparation(
        modules=modules,
        hparams={"sample_rate": 8000, "num_spks": 2},
        run_opts={"device": "cpu"},
        keep_freed_memory=condition == "keep",
    )
    timer = StepTimer(torch.device("cpu"))  # the benchmarks' wall/CPU/sys
    rows = []
    for seconds in (4, 16, 60):
        mix = 0.1 * torch.randn(1, seconds * 8000)
        model.separate_batch(mix[:, :8000])  # warm-up
        for rep in range(2):
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t = timer(lambda x=mix: model.separate_batch(x))
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            rows.append(
                {
                    "seconds": seconds,
                    "call": rep,
                    "wall_s": t["wall_s"],
                    "user_s": t["cpu_s"] - t["sys_s"],
                    "sys_s": t["sys_s"],
                    "minor_faults": faults,
                    "allocator": allocator_mode(),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    with open(out, "w") as fout:
        json.dump(rows, fout, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
