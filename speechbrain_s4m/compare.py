"""Recipe results side by side (``s4m-compare RESULT_FOLDER... --benchmark
JSON --out DIR``): accuracy with confidence intervals, paired differences on
the same test utterances, training time and compute. Written into ``--out``:
``comparison.md``, ``.json``, ``.csv``, ``comparison_pairs.csv``, a
``scatter_<a>_vs_<b>.png`` per pair and ``valid_vs_epoch.png`` /
``valid_vs_time.png``.
"""

import argparse
import csv
import json
import math
import os
import re
import sys

import numpy as np

from speechbrain_s4m.benchmark.measure import markdown, pyplot
from speechbrain_s4m.results import (
    DEFAULT_BENCH_SECONDS,
    ResultsError,
    add_parameters,
    load_benchmark,
    load_result_folder,
    read_train_log,
)

#: Metrics compared for every model (columns of ``test_results.csv``).
MAIN_METRICS = ("si-snr_i", "sdr_i")
#: Optional columns reported when every folder has them.
OPTIONAL_METRICS = ("si-snr", "sdr", "pesq", "pesq_i", "stoi", "stoi_i")


class CompareError(Exception):
    """A problem with the inputs, reported in one line (exit code 2)."""


def mean_ci(values, confidence=0.95):
    """``{"mean", "ci_low", "ci_high", "n"}``: the mean of ``values`` (NaN
    ignored) and its Student's t ``confidence`` interval; the bounds are NaN
    for fewer than two values, everything for none."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    n, nan = int(x.size), math.nan
    if n == 0:
        return {"mean": nan, "ci_low": nan, "ci_high": nan, "n": 0}
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "ci_low": nan, "ci_high": nan, "n": 1}
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1)
    half = float(half / math.sqrt(n))
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def paired_comparison(a, b, confidence=0.95):
    """:func:`mean_ci` of the paired differences ``a - b`` over the
    utterances both scored, and the shares ``a_wins``, ``b_wins``, ``ties``
    of utterances where A is higher, B is higher, both are equal."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    diff = a[keep] - b[keep]
    out = mean_ci(diff, confidence)
    n = max(out["n"], 1)
    for key, won in (("a_wins", diff > 0), ("b_wins", diff < 0)):
        out[key] = float(np.sum(won) / n) if diff.size else math.nan
    out["ties"] = float(np.sum(diff == 0) / n) if diff.size else math.nan
    return out


def _labels(results):
    """A unique label per folder: experiment (or folder) name [+ folder]."""
    base = [
        r["experiment_name"] or os.path.basename(os.path.normpath(r["folder"]))
        for r in results
    ]
    labels = [
        f"{label} ({os.path.normpath(r['folder'])})"
        if base.count(label) > 1
        else label
        for label, r in zip(base, results)
    ]
    if len(set(labels)) != len(labels):
        raise CompareError("the same folder is given twice")
    return labels


def _align(results, intersect):
    """``(ids, note)``: the utterances common to all folders; different test
    sets are refused unless ``intersect``."""
    first = results[0]["ids"]
    sets = [set(r["ids"]) for r in results]
    common = set.intersection(*sets)
    if all(s == sets[0] for s in sets):
        return list(first), None
    if not intersect:
        other = next(r for r, s in zip(results, sets) if s != sets[0])
        raise CompareError(
            f"different test utterances: {results[0]['folder']} has "
            f"{len(sets[0])}, {other['folder']} has {len(set(other['ids']))}, "
            f"{len(common)} in common (use --intersect to compare those)"
        )
    if not common:
        raise CompareError("no test utterance is common to all folders")
    ids = [i for i in first if i in common]
    note = (
        f"--intersect: kept {len(ids)} utterances common to all folders "
        f"(of {len(set.union(*sets))} in any)"
    )
    return ids, note


def compare_folders(
    folders,
    benchmark=None,
    intersect=False,
    bench_seconds=DEFAULT_BENCH_SECONDS,
    refuse_outputs_in=None,
):
    """Compares recipe output folders (the options of ``s4m-compare``).

    Returns ``models`` (per folder: statistics, training, benchmark figures,
    aligned ``per_utterance`` scores, ``curve``), ``pairs``, ``ids``,
    ``n_utterances``, ``note``, ``metrics`` and ``dropped`` (``{"folder",
    "columns"}`` of each folder lacking optional columns others have).
    With ``refuse_outputs_in``, an output already in that folder raises
    :class:`CompareError` once the inputs are checked, before any model is
    built to count its parameters.
    """
    results = [load_result_folder(f) for f in folders]
    bench = load_benchmark(benchmark, bench_seconds) if benchmark else {}
    labels = _labels(results)
    ids, note = _align(results, intersect)
    existing = existing_outputs(refuse_outputs_in, labels)
    if existing:
        raise CompareError(
            f"{existing[0]} exists (use --overwrite to replace the "
            "outputs, or another --out)"
        )
    extra = [
        m for m in OPTIONAL_METRICS if all(m in r["scores"] for r in results)
    ]
    metrics = list(MAIN_METRICS) + extra
    present, dropped = {m for r in results for m in r["scores"]}, []
    for r in results:  # columns some folders have and others lack
        lacking = [
            m for m in OPTIONAL_METRICS if m in present - r["scores"].keys()
        ]
        if lacking:
            dropped.append({"folder": r["folder"], "columns": lacking})
    models = []
    for label, r in zip(labels, results):
        index = {snt: i for i, snt in enumerate(r["ids"])}
        rows = [index[i] for i in ids]
        per_utt = {
            m: [r["scores"].get(m, [math.nan] * len(r["ids"]))[i] for i in rows]
            for m in metrics
        }
        add_parameters(r)
        curve = read_train_log(r["log"]) if r["log"] else None
        times = curve["time"] if curve else None
        hp = r["hparams"]
        model = {
            "label": label,
            "folder": r["folder"],
            "hparams": hp,
            "masknet": r["masknet"],
            "params": r["params"],
            "params_source": r["params_source"],
            "n_test": len(ids),
            "epochs": curve["epoch"][-1] if curve and curve["epoch"] else None,
            "train_time_s": float(sum(times)) if times else None,
            "stats": {m: mean_ci(per_utt[m]) for m in metrics},
            "bench": {"model": hp, **bench[hp]} if hp in bench else None,
            "per_utterance": per_utt,
            "curve": curve,
        }
        models.append(model)
    pairs = [
        {
            "a": a["label"],
            "b": b["label"],
            "n": len(ids),
            "diff": {
                m: paired_comparison(
                    a["per_utterance"][m], b["per_utterance"][m]
                )
                for m in MAIN_METRICS
            },
        }
        for i, a in enumerate(models)
        for b in models[i + 1 :]
    ]
    return {
        "ids": ids,
        "n_utterances": len(ids),
        "note": note,
        "metrics": metrics,
        "dropped": dropped,
        "models": models,
        "pairs": pairs,
    }


def _fmt(value, digits=2):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _fmt_ci(stat):
    """``mean [low, high]``."""
    if not math.isfinite(stat["mean"]):
        return "n/a"
    if not math.isfinite(stat["ci_low"]):
        return f"{stat['mean']:.2f}"
    return f"{stat['mean']:.2f} [{stat['ci_low']:.2f}, {stat['ci_high']:.2f}]"


def _fmt_params(n):
    if n is None:
        return "n/a"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _fmt_time(seconds):
    """``1 h 02 min`` / ``12.3 min`` / ``45 s``."""
    if seconds is None:
        return "n/a"
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def markdown_table(comparison):
    """The comparison as Markdown: one table of models, one of pairs."""
    metrics = [m for m in comparison["metrics"] if m not in ("si-snr", "sdr")]
    names = {"si-snr_i": "SI-SNRi (dB)", "sdr_i": "SDRi (dB)"}
    head = ["model", "masknet", "params", "test utts"]
    head += [names.get(m, m) + " [95% CI]" for m in metrics]
    head += ["epochs", "train time"]
    has_bench = any(m["bench"] for m in comparison["models"])
    if has_bench:
        head += ["GMAC/s", "inference (s)"]
    rows = [head, ["---"] * 2 + ["---:"] * (len(head) - 2)]
    for m in comparison["models"]:
        cells = [m["label"], m["masknet"] or "n/a", _fmt_params(m["params"])]
        cells += [str(m["n_test"])]
        cells += [_fmt_ci(m["stats"][k]) for k in metrics]
        cells += [_fmt(m["epochs"], 0), _fmt_time(m["train_time_s"])]
        if has_bench:
            b = m["bench"] or {}
            cells += [_fmt(b.get("gmac_per_s"), 1), _fmt(b.get("infer_s"), 3)]
        rows.append(cells)
    out = markdown(rows)
    if has_bench:
        b = next(m["bench"] for m in comparison["models"] if m["bench"])
        out += (
            f"\n\nGMAC per second of audio and median inference time for "
            f"{b['seconds']:g} s of audio ({b['device']}, {b['threads']} "
            "threads) from the benchmark JSON, for each model fragment as "
            "shipped."
        )
    if comparison["pairs"]:
        head = ["A", "B", "utts"]
        for k in MAIN_METRICS:
            head += [f"{names[k]} A - B [95% CI]", "A wins", "B wins"]
        rows = [head, ["---"] * 2 + ["---:"] * (len(head) - 2)]
        for p in comparison["pairs"]:
            cells = [p["a"], p["b"], str(p["diff"][MAIN_METRICS[0]]["n"])]
            for k in MAIN_METRICS:
                d = p["diff"][k]
                cells += [_fmt_ci(d), _fmt(100 * d["a_wins"], 0) + "%"]
                cells += [_fmt(100 * d["b_wins"], 0) + "%"]
            rows.append(cells)
        out += "\n\nPaired, on the same test utterances:\n\n" + markdown(rows)
    if comparison["note"]:
        out += f"\n\n{comparison['note']}"
    return out + "\n"


def _slug(label):
    """A file-name-safe version of a label."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "model"


def _scatter_name(a, b):
    return f"scatter_{_slug(a)}_vs_{_slug(b)}.png"


def output_files(labels):
    """Names of the files written for models with these labels."""
    names = ["comparison.md", "comparison.json", "comparison.csv"]
    names += ["comparison_pairs.csv", "valid_vs_epoch.png", "valid_vs_time.png"]
    pairs = [(a, b) for i, a in enumerate(labels) for b in labels[i + 1 :]]
    return names + [_scatter_name(a, b) for a, b in pairs]


def existing_outputs(out, labels):
    """The output files of :func:`output_files` already in ``out``."""
    if not out:
        return []
    paths = [os.path.join(out, name) for name in output_files(labels)]
    return [p for p in paths if os.path.exists(p)]


def _json_ready(value):
    """NaN -> None, recursively (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def _write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def write_outputs(comparison, out_dir):
    """Writes the Markdown, JSON, CSV and PNG files; returns their paths."""
    plt = pyplot()
    os.makedirs(out_dir, exist_ok=True)
    written = []

    def path(name):
        written.append(os.path.join(out_dir, name))
        return written[-1]

    with open(path("comparison.md"), "w", encoding="utf-8") as f:
        f.write(markdown_table(comparison))
    with open(path("comparison.json"), "w", encoding="utf-8") as f:
        json.dump(_json_ready(comparison), f, indent=2)
        f.write("\n")
    metrics, models = comparison["metrics"], comparison["models"]
    header = ["model", "folder", "hparams", "masknet", "params", "n_test"]
    for k in metrics:
        header += [k, f"{k}_ci_low", f"{k}_ci_high", f"{k}_n"]
    rows = [header + ["epochs", "train_time_s", "gmac_per_s", "infer_s"]]
    for m in models:
        row = [m["label"], m["folder"], m["hparams"], m["masknet"]]
        row += [m["params"], m["n_test"]]
        for k in metrics:
            s = m["stats"][k]
            row += [s["mean"], s["ci_low"], s["ci_high"], s["n"]]
        b = m["bench"] or {}
        row += [m["epochs"], m["train_time_s"]]
        row += [b.get("gmac_per_s"), b.get("infer_s")]
        rows.append(["" if v is None else v for v in row])
    _write_csv(path("comparison.csv"), rows)
    rows = [["a", "b", "metric", "n", "mean_diff", "ci_low", "ci_high"]]
    rows[0] += ["a_wins", "b_wins", "ties"]
    for p in comparison["pairs"]:
        for k, d in p["diff"].items():
            rows.append(
                [p["a"], p["b"], k, d["n"], d["mean"], d["ci_low"]]
                + [d["ci_high"], d["a_wins"], d["b_wins"], d["ties"]]
            )
    _write_csv(path("comparison_pairs.csv"), rows)

    for i, a in enumerate(models):
        for b in models[i + 1 :]:
            xa = np.asarray(a["per_utterance"]["si-snr_i"])
            xb = np.asarray(b["per_utterance"]["si-snr_i"])
            fig, ax = plt.subplots(figsize=(5, 5))
            ax.scatter(xb, xa, s=12, alpha=0.7)
            both = np.concatenate([xa, xb])
            both = both[np.isfinite(both)]
            if both.size:
                lo, hi = both.min() - 1, both.max() + 1
                ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="equal")
                ax.legend(loc="upper left")
            ax.set_xlabel(f"{b['label']} SI-SNRi (dB)")
            ax.set_ylabel(f"{a['label']} SI-SNRi (dB)")
            ax.set_title("Per test utterance")
            fig.tight_layout()
            fig.savefig(path(_scatter_name(a["label"], b["label"])), dpi=100)
            plt.close(fig)
    for axis, name in (("epoch", "valid_vs_epoch"), ("time", "valid_vs_time")):
        curves = [m for m in models if m["curve"] and m["curve"]["epoch"]]
        if axis == "time":
            curves = [m for m in curves if m["curve"]["time"]]
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in curves:
            c = m["curve"]
            x = c["epoch"] if axis == "epoch" else np.cumsum(c["time"]) / 60
            ax.plot(x, c["valid_si_snr"], "o-", ms=3, label=m["label"])
        ax.set_xlabel("epoch" if axis == "epoch" else "training time (min)")
        ax.set_ylabel("validation SI-SNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path(f"{name}.png"), dpi=100)
        plt.close(fig)
    return written


def parser(prog="s4m-compare"):
    """The command-line parser."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Compare recipe output folders: SI-SNRi / SDRi with 95% "
            "confidence intervals, paired differences on the same test "
            "utterances, training time, parameters and compute."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = p.add_argument
    add("folders", nargs="+", metavar="RESULT_FOLDER")
    add("--benchmark", metavar="JSON", help="JSON of the benchmark's --json")
    add(
        "--bench-seconds",
        type=float,
        default=DEFAULT_BENCH_SECONDS,
        help="input duration of the benchmark figures",
    )
    add("--out", default="comparison", metavar="DIR", help="output folder")
    add("--intersect", action="store_true", help="compare common utterances")
    add("--overwrite", action="store_true", help="replace output files")
    return p


def main(argv=None, prog="s4m-compare"):
    """Entry point of ``s4m-compare``; returns 0, or 2 on a problem with
    the inputs (one line on stderr)."""
    try:
        args = parser(prog).parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        comparison = compare_folders(
            args.folders,
            args.benchmark,
            args.intersect,
            args.bench_seconds,
            refuse_outputs_in=None if args.overwrite else args.out,
        )
    except (CompareError, ResultsError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    for gap in comparison["dropped"]:  # columns some folders lack
        folder, columns = gap["folder"], gap["columns"]
        line = (
            f"{folder} has no {', '.join(columns)} column in test_results.csv:"
            " left out of the comparison for every folder"
        )
        if any(c.split("_")[0] in ("pesq", "stoi") for c in columns):
            line += (
                " (add them: train.py <its hparams> --output_folder "
                f"{folder} --test_only --extra_metrics pesq,stoi)"
            )
        print(f"{prog}: note: {line}", file=sys.stderr)
    labels = [m["label"] for m in comparison["models"]]
    for stale in existing_outputs(args.out, labels):
        os.remove(stale)  # --overwrite: no output left from a former run
    print(markdown_table(comparison), end="")
    written = write_outputs(comparison, args.out)
    print(f"\nWrote {len(written)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m speechbrain_s4m.compare"))
