"""Streaming benchmark: ``python -m speechbrain_s4m.benchmark.streaming``.

Times :class:`~speechbrain_s4m.inference.S4MStreamer` hop by hop on CPU
(per-hop compute, real-time factor, latency, RSS over a long stream) against
the naive baseline: the causal model re-run for every hop on a sliding
window of its receptive field (:func:`naive_window_frames`; it measures the
cost, not the output: the cumulative norms read the whole past).
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

import torch
import yaml

from speechbrain_s4m.allocator import allocator_mode
from speechbrain_s4m.benchmark.measure import (
    StepTimer,
    current_rss_mib,
    number,
)
from speechbrain_s4m.config import load_model_config
from speechbrain_s4m.inference.streamer import S4MStreamer

MODEL_WITH_OVERRIDES = (
    "--overrides change a model fragment; a trained --model folder is "
    "timed as it is: leave out one of the two"
)

COLUMNS = [
    ("method", "method", "{}"),
    ("hop_ms", "hop ms", "{:g}"),
    ("threads", "thr", "{}"),
    ("per_hop_ms_median", "hop compute ms (med)", "{:.2f}"),
    ("per_hop_ms_p99", "p99", "{:.2f}"),
    ("rtf", "RTF", "{:.3f}"),
    ("latency_ms", "latency ms", "{:.1f}"),
    ("rss_mib", "RSS MiB", "{:.0f}"),
]


def conv_receptive_field(masknet):
    """Past encoder frames that a causal masknet's output reads through its
    convolutions, pooling and resizing (the S4 layer aside): an upper bound.
    """
    block = masknet.block
    depth = block.depth
    k = block.pyramid[0].conv.kernel_size[0]
    # per iteration: the pyramid (stride 2 from scale 1), the pooling and
    # up-sampling windows and the merge fusions at each scale
    pyramid = (k - 1) + sum((k - 1) * 2 ** (s - 1) for s in range(1, depth))
    resample = 2 * (2 ** (depth - 1) - 1)
    merge = sum((k - 1) * 2 ** (i + 1) + 2**i for i in range(depth - 1))
    return masknet.num_iterations * (pyramid + resample + merge)


def s4_context(masknet, tol=1e-3, max_length=1 << 15):
    """Coarse frames until the S4 kernel stays below ``tol`` of its peak."""
    with torch.no_grad():
        kernel = masknet.block.s4.s4.kernel(max_length)  # [H, L]
    mag = kernel.abs().amax(dim=0)
    above = torch.nonzero(mag >= tol * mag.max()).flatten()
    return int(above.max()) + 1


def naive_window_frames(masknet, tol=1e-3):
    """Encoder frames of the naive baseline's sliding window:
    :func:`conv_receptive_field` plus :func:`s4_context` times the coarse
    factor ``2**(depth - 1)``."""
    coarse = 2 ** (masknet.block.depth - 1)
    return conv_receptive_field(masknet) + coarse * s4_context(masknet, tol)


def build_streamer(
    config="s4m_tiny_causal", overrides=None, seed=0, compile=False, model=None
):
    """A streamer over random modules of a model fragment, or over a trained
    causal model folder (``model``, from ``s4m-export``)."""
    if model is not None:
        if overrides:
            raise ValueError(MODEL_WITH_OVERRIDES)
        return S4MStreamer.from_hparams(
            model, compile=compile, run_opts={"device": "cpu"}
        )
    torch.manual_seed(seed)
    hp = load_model_config(config, overrides=overrides)
    return S4MStreamer.from_modules(
        hp["Encoder"],
        hp["MaskNet"],
        hp["Decoder"],
        num_spks=hp["num_spks"],
        sample_rate=hp["sample_rate"],
        compile=compile,
    )


def time_streamer(streamer, hop, seconds, warmup=3, seed=0):
    """Seconds of each :meth:`S4MStreamer.process` call of ``hop`` samples
    over ``seconds`` of noise, after ``warmup`` untimed calls."""
    gen = torch.Generator().manual_seed(seed)
    n_hops = max(1, round(seconds * streamer.sample_rate / hop))
    streamer.reset()
    times = []
    for _ in range(warmup + n_hops):
        chunk = 0.1 * torch.randn(1, hop, generator=gen)
        start = time.perf_counter()
        streamer.process(chunk)
        times.append(time.perf_counter() - start)
    return times[warmup:]


def rss_growth(streamer, hop, minutes, points=None, seed=1, on_point=None):
    """``(minutes streamed, RSS MiB)`` at ``points`` (default one a minute,
    at least 4) while streaming; ``on_point(minutes, rss)`` after each."""
    gen = torch.Generator().manual_seed(seed)
    rate = streamer.sample_rate
    points = points or max(4, round(minutes))
    per_point = max(1, round(minutes * 60 * rate / hop / points))
    streamer.reset()
    out = []
    for _ in range(points):
        for _step in range(per_point):
            streamer.process(0.1 * torch.randn(1, hop, generator=gen))
        out.append((streamer.samples_in / rate / 60, current_rss_mib()))
        if on_point:
            on_point(*out[-1])
    return out


def time_naive(streamer, window_frames, repeats=3):
    """Seconds of one whole-window causal forward (median of repeats)."""
    enc = streamer.encoder
    samples = enc.kernel_size + (window_frames - 1) * enc.stride
    mix = 0.1 * torch.randn(1, samples)
    whole, timer = streamer.separate_whole, StepTimer("cpu")
    whole(mix[:, : enc.kernel_size * 4])  # warm-up
    runs = [timer(lambda: whole(mix)) for _ in range(repeats)]
    return statistics.median(r["wall_s"] for r in runs)


def run(
    config="s4m_tiny_causal",
    overrides=None,
    hops_ms=(4, 8, 16, 32),
    threads=(1, 2),
    seconds=5.0,
    long_minutes=1.0,
    naive=True,
    naive_repeats=3,
    log=print,
    on_row=None,
    compile=False,
    model=None,
):
    """Runs the benchmark (the options of the command line); returns the
    JSON rows, calling ``on_row(rows)`` after each new one.

    Every row has ``method`` ("streamer", "streamer (compiled)" or
    "naive"), ``config``, ``num_iterations``, ``allocator``, ``hop_ms``,
    ``threads``, ``rtf``, ``per_hop_ms_median`` and ``_p99``,
    ``algorithmic_latency_ms``, ``latency_ms`` (algorithmic + hop + p99
    compute) and ``rss_mib``; compiled rows have ``warmup_s``, and the
    streamer row at the hop closest to 16 ms on the first thread count
    ``rss_growth`` (``[minutes, MiB]``).
    """
    streamer = build_streamer(config, overrides, compile=compile, model=model)
    on_row = on_row or (lambda rows: None)
    config = str(model) if model is not None else config
    rate, latency = streamer.sample_rate, streamer.latency_ms
    window = naive_window_frames(streamer.masknet) if naive else None
    if naive:
        log(
            f"naive window: {window} encoder frames "
            f"({window * streamer.encoder.stride / rate:.2f} s) = "
            f"{conv_receptive_field(streamer.masknet)} (convolutions) + "
            f"S4 context to 1e-3 of the kernel peak"
        )
    rows, naive_cost = [], {}
    long_hop = min(hops_ms, key=lambda h: abs(h - 16))
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for hop_ms in hops_ms:
            hop = max(1, round(hop_ms * rate / 1000))
            if compile:  # the first 6 hops: the compilations for this hop
                first = time_streamer(streamer, hop, 6 * hop / rate, 0, seed=2)
            times = time_streamer(streamer, hop, seconds)
            med = statistics.median(times)
            p99 = sorted(times)[min(len(times) - 1, int(0.99 * len(times)))]
            head = {
                "config": config,
                "num_iterations": streamer.masknet.num_iterations,
                "allocator": allocator_mode(),
                "hop_ms": hop_ms,
                "hop_samples": hop,
                "threads": n_threads,
            }
            row = {
                "method": "streamer (compiled)" if compile else "streamer",
                **head,
                "per_hop_ms_median": 1000 * med,
                "per_hop_ms_p99": 1000 * p99,
                "rtf": sum(times) / (len(times) * hop / rate),
                "algorithmic_latency_ms": latency,
                "latency_ms": latency + hop_ms + 1000 * p99,
                "seconds_streamed": len(times) * hop / rate,
            }
            if compile:
                row["warmup_s"] = sum(first)
            if n_threads == threads[0] and hop_ms == long_hop and long_minutes:
                row["rss_growth"] = []

                def on_point(minutes, rss, row=row):
                    # saved as it goes: an interrupted run keeps its readings
                    row["rss_growth"].append([minutes, rss])
                    log(f"  streamed {minutes:.2f} min: RSS {rss:.0f} MiB")
                    on_row(rows + [row])

                rss_growth(streamer, hop, long_minutes, on_point=on_point)
            row["rss_mib"] = current_rss_mib()
            rows.append(row)
            log(format_table([row], header=len(rows) == 1))
            on_row(rows)
            if not naive:
                continue
            if n_threads not in naive_cost:  # the same for every hop
                naive_cost[n_threads] = time_naive(
                    streamer, window, naive_repeats
                )
            cost = naive_cost[n_threads]
            rows.append(
                {
                    "method": "naive",
                    **head,
                    "window_frames": window,
                    "per_hop_ms_median": 1000 * cost,
                    "per_hop_ms_p99": 1000 * cost,
                    "rtf": cost / (hop / rate),
                    "algorithmic_latency_ms": latency,
                    "latency_ms": latency + hop_ms + 1000 * cost,
                    "rss_mib": current_rss_mib(),
                    "cost_vs_streamer": cost / med,
                }
            )
            log(format_table(rows[-1:], header=False))
            on_row(rows)
    return rows


def format_table(rows, header=True):
    """A fixed-width text table of benchmark rows (:data:`COLUMNS`)."""
    widths = [max(len(title), 8) for _, title, _ in COLUMNS]
    lines = []
    if header:
        lines.append(
            " ".join(t.rjust(w) for (_, t, _), w in zip(COLUMNS, widths))
        )
    for row in rows:
        cells = [fmt.format(row[key]) for key, _, fmt in COLUMNS]
        lines.append(" ".join(c.rjust(w) for c, w in zip(cells, widths)))
    return "\n".join(lines)


def parser():
    """The argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m speechbrain_s4m.benchmark.streaming",
        description="Per-hop cost, real-time factor, latency and memory of "
        "S4MStreamer against the naive sliding-window baseline (CPU).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = p.add_argument
    add("--config", default="s4m_tiny_causal", help="model fragment, random")
    add("--model", help="a trained causal model folder (s4m-export) instead")
    add("--overrides", help="YAML dict of model overrides")
    add("--hops-ms", type=number, nargs="+", default=[4, 8, 16, 32])
    add("--threads", type=int, nargs="+", default=[1, 2])
    add("--seconds", type=float, default=5.0, help="audio per configuration")
    add(
        "--long-minutes",
        type=float,
        default=1.0,
        help="minutes streamed to follow the RSS (at the 16 ms hop, "
        "first thread count; 0 skips it)",
    )
    add(
        "--compile",
        action="store_true",
        help="time S4MStreamer(compile=True): the block step compiled by "
        "torch.compile (minutes of compilation per hop size, reported as "
        "warmup_s)",
    )
    add("--no-naive", action="store_true")
    add("--naive-repeats", type=int, default=3)
    add("--json", help="write the rows here (rewritten after every row)")
    return p


def main(argv=None):
    """Entry point; returns 0."""
    p = parser()
    args = p.parse_args(argv)
    # bad flags: one line and exit status 2, before any model is built
    if args.model is not None:
        if args.overrides:
            p.error(MODEL_WITH_OVERRIDES)
        if not pathlib.Path(args.model).is_dir():
            p.error(f"--model {args.model}: no such model folder")

    overrides = yaml.safe_load(args.overrides) if args.overrides else None

    def save(rows):  # after every row: a long run keeps what it measured
        if args.json:
            with open(args.json, "w") as fout:
                json.dump(rows, fout, indent=1)

    given = "config threads seconds long_minutes naive_repeats compile model"
    rows = run(
        overrides=overrides,
        hops_ms=args.hops_ms,
        naive=not args.no_naive,
        log=lambda text: print(text, flush=True),
        on_row=save,
        **{key: getattr(args, key) for key in given.split()},
    )
    print("\n" + format_table(rows))
    for row in rows:
        if "rss_growth" in row:
            growth = ", ".join(
                f"{m:.2f} min: {r:.0f} MiB" for m, r in row["rss_growth"]
            )
            print(f"RSS while streaming ({row['hop_ms']} ms hops): {growth}")
    if args.json:  # saved by on_row after the last row
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
