"""Command line of the benchmark: ``python -m speechbrain_s4m.benchmark``.

Example::

    python -m speechbrain_s4m.benchmark --durations 1 4 16 60 --repeats 5 \\
        --threads 2 --json benchmark.json
"""

import argparse
import json
import sys

from speechbrain_s4m.benchmark.models import (
    DEFAULT_MODELS,
    format_tables,
    run_benchmark,
    run_case,
)


def parse_args(argv=None):
    """Parse the command line."""
    p = argparse.ArgumentParser(
        prog="python -m speechbrain_s4m.benchmark",
        description="Parameters, MACs, speed and memory of S4M-tiny, S4M, "
        "SepFormer and Conv-TasNet side by side.",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        help="model fragments (default: %(default)s)",
    )
    p.add_argument(
        "--durations",
        nargs="+",
        type=float,
        default=[1, 4, 16, 60],
        help="input durations in seconds (default: %(default)s)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed runs up to 4 s inputs; half up to 16 s, 1 beyond",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--skip-train", action="store_true", help="inference only")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=120.0,
        help="skip cases predicted to take longer per run (default 120)",
    )
    p.add_argument(
        "--max-memory-gib",
        type=float,
        default=8.0,
        help="skip cases predicted to need more memory (default 8)",
    )
    p.add_argument("--sample-rate", type=int, default=8000)
    p.add_argument("--num-spks", type=int, default=2)
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="no subprocess per case (default on GPU)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    """Run the benchmark (or one worker case)."""
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_case(json.loads(args.worker))), flush=True)
        return 0
    durations = [int(d) if float(d).is_integer() else d for d in args.durations]
    results = run_benchmark(
        models=args.models,
        durations=durations,
        repeats=args.repeats,
        device=args.device,
        threads=args.threads,
        skip_train=args.skip_train,
        max_seconds=args.max_seconds,
        max_memory_gib=args.max_memory_gib,
        sample_rate=args.sample_rate,
        num_spks=args.num_spks,
        in_process=args.in_process or args.device.startswith("cuda"),
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    results["config"]["command"] = "python -m speechbrain_s4m.benchmark " + (
        " ".join(sys.argv[1:] if argv is None else argv)
    )
    print(format_tables(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fout:
            json.dump(results, fout, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
