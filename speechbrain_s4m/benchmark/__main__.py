"""Command line of the benchmark: ``python -m speechbrain_s4m.benchmark
--json benchmark.json`` measures, ``--from-json benchmark.json`` re-prints.
"""

import argparse
import json
import os
import re
import sys

import yaml

from speechbrain_s4m.benchmark.measure import PRECISIONS, number
from speechbrain_s4m.benchmark.models import (
    DEFAULT_MODELS,
    checkpointing_variants,
    format_tables,
    plot_results,
    run_benchmark,
    run_case,
)

# options passed to run_benchmark as they are
_AS_GIVEN = (
    "repeats device threads skip_train max_seconds max_memory_gib "
    "sample_rate num_spks default_allocator"
).split()


def parse_model_overrides(items):
    """``LABEL:YAML`` strings (``--model-overrides``) to ``{label: dict}``."""
    out = {}
    for item in items or []:
        label, sep, text = item.partition(":")
        if not sep or not re.fullmatch(r"[\w.+-]+", label):
            raise ValueError(f"--model-overrides {item!r}: expected LABEL:YAML")
        value = yaml.safe_load(text)
        if not isinstance(value, dict):
            raise ValueError(
                f"--model-overrides {item!r}: the YAML is not a mapping"
            )
        out.setdefault(label, {}).update(value)
    return out


def parse_args(argv=None):
    """Parse the command line."""
    p = argparse.ArgumentParser(
        prog="python -m speechbrain_s4m.benchmark",
        description="Parameters, MACs, speed and memory of S4M-tiny, S4M, "
        "SepFormer and Conv-TasNet side by side.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = p.add_argument
    add(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        help="model fragments, or LABEL=FRAGMENT to measure a fragment "
        "under another name",
    )
    add(
        "--model-overrides",
        nargs="+",
        metavar="LABEL:YAML",
        help="fragment overrides of one model, e.g. "
        "'s4m_tiny:{checkpoint_iterations: True}'",
    )
    add(
        "--checkpoint-iterations",
        action="store_true",
        help="also measure each S4M model with activation checkpointing of "
        "its iterations (label <model>+ckpt), beside the plain one",
    )
    add("--durations", nargs="+", type=number, default=[1, 4, 16, 60], help="s")
    add("--repeats", type=int, default=5, help="runs (half >4 s, 1 >16 s)")
    add("--device", default="cpu", help="cpu or cuda[:i]")
    precision = {"nargs": "+", "default": ["fp32"], "choices": PRECISIONS}
    add("--precision", **precision, help="fp32, autocast fp16 / bf16")
    add("--threads", type=int, default=2, help="torch threads")
    add("--skip-train", action="store_true", help="inference only")
    add(
        "--max-seconds", type=float, default=120.0, help="predicted s/run limit"
    )
    add("--max-memory-gib", type=float, default=8.0, help="predicted GiB limit")
    add("--sample-rate", type=int, default=8000)
    add("--num-spks", type=int, default=2)
    add(
        "--default-allocator",
        action="store_true",
        help="leave the C allocator as it is (else every case process keeps "
        "freed memory for reuse, all models alike)",
    )
    add("--json", help="write the results to this JSON file")
    add("--plot", help="log-log plot (PNG); default: the JSON's path, .png")
    add(
        "--from-json",
        metavar="JSON",
        help="measure nothing: print the tables of this results file and "
        "write its plot (--plot, default next to it)",
    )
    add("--overwrite", action="store_true", help="replace existing outputs")
    add("--in-process", action="store_true", help="no subprocess (GPU: on)")
    add("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    """Run the benchmark (or one worker case)."""
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_case(json.loads(args.worker))), flush=True)
        return 0
    source = args.json or args.from_json
    plot_path = args.plot or (source and os.path.splitext(source)[0] + ".png")
    json_path = None if args.from_json else args.json
    existing = [p for p in (json_path, plot_path) if p and os.path.exists(p)]
    if existing and not args.overwrite:
        names = ", ".join(existing)
        msg = f"error: {names} exist(s); pass --overwrite to replace"
        print(msg, file=sys.stderr)
        return 2
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as fin:
            results = json.load(fin)
    else:
        try:
            overrides = parse_model_overrides(args.model_overrides)
            models = list(args.models)
            if args.checkpoint_iterations:
                models, overrides = checkpointing_variants(models, overrides)
            results = run_benchmark(
                models=models,
                durations=args.durations,
                in_process=args.in_process or args.device.startswith("cuda"),
                log=lambda msg: print(msg, file=sys.stderr, flush=True),
                precisions=args.precision,
                model_overrides=overrides,
                **{key: getattr(args, key) for key in _AS_GIVEN},
            )
        except (RuntimeError, ValueError, KeyError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        results["config"]["command"] = (
            "python -m speechbrain_s4m.benchmark "
            + " ".join(sys.argv[1:] if argv is None else argv)
        )
    print(format_tables(results))
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fout:
            json.dump(results, fout, indent=2)
    if plot_path:
        plot_results(results, plot_path)
        print(f"plot: {plot_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
