"""Streaming benchmark: ``python -m speechbrain_s4m.benchmark.streaming``.

Times :class:`~speechbrain_s4m.inference.S4MStreamer` hop by hop on CPU:
per-hop compute time (median, 99th percentile), real-time factor (compute
time / audio time), latency (algorithmic + hop + compute), at several hop
sizes and thread counts; the resident memory after streaming and its growth
over a longer stream; and the naive baseline: re-running the causal model
on a sliding window of its receptive field for every hop.

The naive window is the receptive field of the causal convolution and
pooling stack (:func:`conv_receptive_field`, per block application times
the number of iterations) plus the S4 context: the coarse frames until the
S4 kernel has decayed below ``1e-3`` of its peak (:func:`s4_context`),
times the coarse factor. (The cumulative norms read the whole past, which
no finite window reproduces: the baseline measures the cost, not the
output.) Weights are random (the S4 kernel at its initialisation) unless
``--model`` names a trained model folder; a trained model has its own
decay, so the window is printed with the results.

Example::

    python -m speechbrain_s4m.benchmark.streaming --json streaming.json
    python -m speechbrain_s4m.benchmark.streaming --hops-ms 16 --threads 1 \\
        --seconds 5 --long-minutes 10
    python -m speechbrain_s4m.benchmark.streaming --model pretrained/causal \\
        --compile --hops-ms 16 --threads 1 --no-naive

Timings on a shared machine are indicative.

Authors
 * speechbrain-s4m contributors 2026
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

import torch

from speechbrain_s4m.allocator import allocator_mode
from speechbrain_s4m.benchmark.measure import current_rss_mib
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
    """Past frames that a causal masknet output can read through its
    convolutions, pooling and resizing (the S4 layer aside): an upper
    bound, checked against an impulse in the tests.

    Per block application: the pyramid (kernel ``k`` at stride 1, then
    stride 2: ``(k - 1) * 2**(s - 1)`` fine frames at scale ``s >= 1``),
    the pooling and nearest up-sampling windows (``2**(S-1) - 1`` fine
    frames each) and the merge fusions at scale ``i`` (local kernel at
    scale ``i``, global kernel at scale ``i + 1``, up-sampling: ``(k - 1)
    * 2**(i + 1) + 2**i``); times the number of iterations.

    Arguments
    ---------
    masknet : S4MMaskNet
        A causal masknet.

    Returns
    -------
    int
        Frames of past context (encoder frames).

    Example
    -------
    >>> from speechbrain_s4m.lobes import S4MMaskNet
    >>> net = S4MMaskNet(17, 8, 16, depth=4, num_iterations=2, causal=True)
    >>> conv_receptive_field(net)
    218
    """
    block = masknet.block
    depth = block.depth
    k = block.pyramid[0].conv.kernel_size[0]
    pyramid = (k - 1) + sum((k - 1) * 2 ** (s - 1) for s in range(1, depth))
    resample = 2 * (2 ** (depth - 1) - 1)
    merge = sum((k - 1) * 2 ** (i + 1) + 2**i for i in range(depth - 1))
    return masknet.num_iterations * (pyramid + resample + merge)


def s4_context(masknet, tol=1e-3, max_length=1 << 15):
    """Coarse frames until the S4 kernel stays below ``tol`` of its peak.

    Arguments
    ---------
    masknet : S4MMaskNet
        A causal masknet.
    tol : float
        Relative threshold on ``max_h |K[h, t]|``.
    max_length : int
        Longest kernel computed (returned if it has not decayed by then).

    Returns
    -------
    int
        Coarse frames of S4 context.
    """
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
    """A streamer over randomly initialised modules of a model fragment, or
    over a trained causal model folder (``model``, as written by
    ``s4m-export``); ``compile``: :class:`S4MStreamer`'s compiled block
    step."""
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


def _percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_streamer(streamer, hop, seconds, warmup=3, seed=0):
    """Feeds ``seconds`` of noise in hops of ``hop`` samples.

    Returns
    -------
    list of float
        Seconds per :meth:`S4MStreamer.process` call (after ``warmup``
        untimed calls).
    """
    gen = torch.Generator().manual_seed(seed)
    n_hops = max(1, round(seconds * streamer.sample_rate / hop))
    streamer.reset()
    times = []
    for i in range(warmup + n_hops):
        chunk = 0.1 * torch.randn(1, hop, generator=gen)
        start = time.perf_counter()
        streamer.process(chunk)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def warm_up(streamer, hop, calls=6, seed=2):
    """Seconds taken by the first ``calls`` hops of a new stream (with a
    compiled step: the compilations for this hop size)."""
    seconds = calls * hop / streamer.sample_rate
    return sum(time_streamer(streamer, hop, seconds, warmup=0, seed=seed))


def rss_growth(streamer, hop, minutes, points=None, seed=1, on_point=None):
    """RSS (MiB) after each ``minutes / points`` of streamed audio.

    Arguments
    ---------
    streamer : S4MStreamer
        Reset first, then fed ``hop`` samples of noise at a time.
    hop : int
        Samples per :meth:`S4MStreamer.process` call.
    minutes : float
        Audio streamed in all.
    points : int, optional
        Readings (default: one per minute of audio, at least 4).
    seed : int
        Of the noise.
    on_point : callable, optional
        ``on_point(minutes_streamed, rss_mib)`` after each reading (a long
        run reports as it goes).

    Returns
    -------
    list of (float, float)
        ``(minutes streamed, RSS MiB)``.
    """
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
    streamer.separate_whole(mix[:, : enc.kernel_size * 4])  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        streamer.separate_whole(mix)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    """Runs the benchmark; returns the list of JSON rows.

    Every row has ``method`` ("streamer" or "naive"), ``hop_ms``,
    ``threads``, ``rtf``, ``latency_ms`` (algorithmic + hop + p99 compute),
    ``algorithmic_latency_ms``, ``per_hop_ms_median``, ``per_hop_ms_p99``
    and ``rss_mib`` (after the run). The streamer row at the hop closest
    to 16 ms on the first thread count also has ``rss_growth``: ``[minutes,
    MiB]`` pairs over ``long_minutes`` of stream. ``on_row(rows)`` is
    called after each new row (e.g. to save partial results). With
    ``compile``, the streamer rows are "streamer (compiled)" and have
    ``warmup_s``: the first hops of each hop size, compilation included.
    With ``model`` (a trained causal model folder), that model is timed
    and named in ``config``; every row also has ``num_iterations`` and
    ``allocator`` (:func:`speechbrain_s4m.allocator.allocator_mode`).
    """
    streamer = build_streamer(config, overrides, compile=compile, model=model)
    config = str(model) if model is not None else config
    rate = streamer.sample_rate
    window = naive_window_frames(streamer.masknet) if naive else None
    if naive:
        log(
            f"naive window: {window} encoder frames "
            f"({window * streamer.encoder.stride / rate:.2f} s) = "
            f"{conv_receptive_field(streamer.masknet)} (convolutions) + "
            f"S4 context to 1e-3 of the kernel peak"
        )
    rows, naive_cost = [], {}
    # what every row says of the model and the process
    common = {
        "config": config,
        "num_iterations": streamer.masknet.num_iterations,
        "allocator": allocator_mode(),
    }
    long_hop = min(hops_ms, key=lambda h: abs(h - 16))
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for hop_ms in hops_ms:
            hop = max(1, round(hop_ms * rate / 1000))
            warmup_s = warm_up(streamer, hop) if compile else None
            times = time_streamer(streamer, hop, seconds)
            med, p99 = statistics.median(times), _percentile(times, 0.99)
            row = {
                "method": "streamer (compiled)" if compile else "streamer",
                **common,
                "hop_ms": hop_ms,
                "hop_samples": hop,
                "threads": n_threads,
                "per_hop_ms_median": 1000 * med,
                "per_hop_ms_p99": 1000 * p99,
                "rtf": sum(times) / (len(times) * hop / rate),
                "algorithmic_latency_ms": streamer.latency_ms,
                "latency_ms": streamer.latency_ms + hop_ms + 1000 * p99,
                "seconds_streamed": len(times) * hop / rate,
            }
            if compile:
                row["warmup_s"] = warmup_s
            if n_threads == threads[0] and hop_ms == long_hop and long_minutes:
                row["rss_growth"] = []

                def on_point(minutes, rss, row=row):
                    # reported and saved as it goes: an interrupted long
                    # run keeps the readings it took
                    row["rss_growth"].append([minutes, rss])
                    log(f"  streamed {minutes:.2f} min: RSS {rss:.0f} MiB")
                    if on_row:
                        on_row(rows + [row])

                rss_growth(streamer, hop, long_minutes, on_point=on_point)
            row["rss_mib"] = current_rss_mib()
            rows.append(row)
            log(format_table([row], header=len(rows) == 1))
            if on_row:
                on_row(rows)
            if naive:
                if n_threads not in naive_cost:  # the same for every hop
                    naive_cost[n_threads] = time_naive(
                        streamer, window, naive_repeats
                    )
                cost = naive_cost[n_threads]
                rows.append(
                    {
                        "method": "naive",
                        **common,
                        "hop_ms": hop_ms,
                        "hop_samples": hop,
                        "threads": n_threads,
                        "window_frames": window,
                        "per_hop_ms_median": 1000 * cost,
                        "per_hop_ms_p99": 1000 * cost,
                        "rtf": cost / (hop / rate),
                        "algorithmic_latency_ms": streamer.latency_ms,
                        "latency_ms": streamer.latency_ms
                        + hop_ms
                        + 1000 * cost,
                        "rss_mib": current_rss_mib(),
                        "cost_vs_streamer": cost / med,
                    }
                )
                log(format_table(rows[-1:], header=False))
                if on_row:
                    on_row(rows)
    return rows


def format_table(rows, header=True):
    """A fixed-width text table of benchmark rows.

    Example
    -------
    >>> row = {"method": "streamer", "hop_ms": 16, "threads": 1,
    ...        "per_hop_ms_median": 5.0, "per_hop_ms_p99": 7.0, "rtf": 0.31,
    ...        "latency_ms": 26.9, "rss_mib": 400.0}
    >>> print(format_table([row]))  # doctest: +NORMALIZE_WHITESPACE
    method  hop ms thr hop compute ms (med)  p99   RTF latency ms RSS MiB
    streamer    16   1                 5.00 7.00 0.310       26.9     400
    """
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
    )
    p.add_argument(
        "--config",
        default="s4m_tiny_causal",
        help="model fragment, randomly initialised (default s4m_tiny_causal)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="a trained causal model folder (s4m-export) to time instead "
        "of --config",
    )
    p.add_argument(
        "--overrides",
        default=None,
        help="YAML dict of model overrides, e.g. '{num_iterations: 2}'",
    )
    p.add_argument("--hops-ms", type=float, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument(
        "--seconds",
        type=float,
        default=5.0,
        help="audio streamed per configuration (default 5)",
    )
    p.add_argument(
        "--long-minutes",
        type=float,
        default=1.0,
        help="minutes streamed to follow the RSS (at the 16 ms hop, "
        "first thread count; 0 skips it)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="time S4MStreamer(compile=True): the block step compiled by "
        "torch.compile (minutes of compilation per hop size, reported as "
        "warmup_s)",
    )
    p.add_argument("--no-naive", action="store_true")
    p.add_argument("--naive-repeats", type=int, default=3)
    p.add_argument(
        "--json",
        default=None,
        help="write the rows here (rewritten after every row)",
    )
    return p


def main(argv=None):
    """Entry point; returns 0."""
    p = parser()
    args = p.parse_args(argv)
    import yaml

    # bad flags: one line and exit status 2, before any model is built
    if args.model is not None:
        if args.overrides:
            p.error(MODEL_WITH_OVERRIDES)
        if not pathlib.Path(args.model).is_dir():
            p.error(f"--model {args.model}: no such model folder")

    overrides = yaml.safe_load(args.overrides) if args.overrides else None
    hops = [int(h) if float(h).is_integer() else h for h in args.hops_ms]

    def save(rows):  # after every row: a long run keeps what it measured
        if args.json:
            with open(args.json, "w") as fout:
                json.dump(rows, fout, indent=1)

    rows = run(
        config=args.config,
        overrides=overrides,
        hops_ms=hops,
        threads=args.threads,
        seconds=args.seconds,
        long_minutes=args.long_minutes,
        naive=not args.no_naive,
        naive_repeats=args.naive_repeats,
        log=lambda text: print(text, flush=True),
        on_row=save,
        compile=args.compile,
        model=args.model,
    )
    print()
    print(format_table(rows))
    for row in rows:
        if "rss_growth" in row:
            growth = ", ".join(
                f"{m:.2f} min: {r:.0f} MiB" for m, r in row["rss_growth"]
            )
            print(f"RSS while streaming ({row['hop_ms']} ms hops): {growth}")
    if args.json:
        save(rows)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
