"""Speed and peak memory of one S4 layer versus sequence length.

Times the forward pass (inference, no autograd), forward + backward, and
the kernel generation alone of one bidirectional :class:`S4` layer
(``d_model=256`` channels by default, ``d_state=16``, batch 1) for the
``nplr`` and ``s4d`` modes at 1k ... 256k steps. Each (mode, length) runs
in a fresh subprocess so that the peak memory can be read from the
process' peak resident set size (``ru_maxrss``, minus the resident size
just before the first measured pass); on CUDA the peak comes from
``torch.cuda.max_memory_allocated`` after a reset
(``torch.cuda.reset_peak_memory_stats``). On CUDA the times are CUDA-event
times (:class:`speechbrain_s4m.benchmark.measure.StepTimer`), and
``--precision fp32 fp16`` measures each case also under fp16 autocast (the
S4 kernel and FFT convolution themselves run in float32). Every worker keeps
freed memory for reuse (:func:`speechbrain_s4m.allocator.keep_freed_memory`)
unless ``--default-allocator``; the condition is printed and recorded.

Usage::

    python bench/s4_layer.py [--device cuda]
        [--precision fp32 fp16] [--threads 2] [--d-model 256]
        [--lengths 1024 4096 ...] [--modes nplr s4d] [--json results.json]

Prints a table and optionally writes the results as JSON.

Authors
 * speechbrain-s4m contributors 2026
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

from speechbrain_s4m.benchmark.measure import (
    PRECISIONS,
    PeakMemory,
    StepTimer,
    apply_allocator,
    autocast_context,
    check_device,
)

DEFAULT_LENGTHS = [1024, 4096, 16384, 65536, 262144]


def _time(fn, timer, min_time=1.0, max_reps=5):
    """Median time and process CPU time (s) of ``fn`` over 1..max_reps runs.

    Runs until ``min_time`` seconds of wall time are spent (at least once).
    Returns ``(time, cpu, reps)``: ``time`` is the wall time on the CPU and
    the CUDA-event time on a GPU (see :class:`StepTimer`); ``cpu`` counts
    all threads and is less sensitive than the wall time to other processes
    on a shared machine.
    """
    runs = []
    while len(runs) < max_reps and (
        not runs or sum(r["wall_s"] for r in runs) < min_time
    ):
        runs.append(timer(fn))
    key = "gpu_s" if timer.is_cuda else "wall_s"
    return (
        statistics.median(r[key] for r in runs),
        statistics.median(r["cpu_s"] for r in runs),
        len(runs),
    )


def measure(
    mode,
    length,
    d_model,
    d_state,
    device,
    threads,
    batch=1,
    precision="fp32",
):
    """Measure one configuration in the current process.

    Arguments
    ---------
    mode : str
        ``"nplr"`` or ``"s4d"``.
    length : int
        Sequence length.
    d_model : int
        Channels of the layer.
    d_state : int
        State size.
    device : str
        ``"cpu"`` or ``"cuda"``.
    threads : int
        CPU threads (``torch.set_num_threads``).
    batch : int
        Batch size.
    precision : str
        ``"fp32"``, or ``"fp16"`` / ``"bf16"`` autocast.

    Returns
    -------
    dict
        Times in ms (CUDA-event times on a GPU) and peak memory in MiB.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    from speechbrain_s4m.nnet import S4

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = check_device(device)
    timer = StepTimer(dev)
    memory = PeakMemory(dev)
    cast = autocast_context(dev, precision)

    layer = S4(d_model, d_state=d_state, mode=mode, bidirectional=True)
    layer = layer.to(dev)
    # warm-up on a short input (allocator, FFT plans, kernels), plus the
    # one-time lazy imports of activation checkpointing (used by long NPLR
    # kernels), which would otherwise count as time and memory
    warm = torch.randn(batch, d_model, 256, device=dev, requires_grad=True)
    with cast:
        y = layer(warm)
    y.float().sum().backward()  # backward outside autocast, as advised
    checkpoint(torch.sin, warm, use_reentrant=False).sum().backward()
    layer.zero_grad(set_to_none=True)
    x = torch.randn(batch, d_model, length, device=dev)

    def kernel():
        with torch.no_grad(), cast:
            layer.kernel(length)

    def forward():
        with torch.no_grad(), cast:
            layer(x)

    def forward_backward():
        xg = x.detach().requires_grad_()
        with cast:
            y = layer(xg)
        y.float().sum().backward()
        layer.zero_grad(set_to_none=True)

    result = {"mode": mode, "length": length, "precision": precision}
    base = memory.start()
    result["kernel_ms"], result["kernel_cpu_ms"], _ = _time(kernel, timer)
    result["fwd_ms"], result["fwd_cpu_ms"], result["fwd_reps"] = _time(
        forward, timer
    )
    result["fwd_peak_mb"] = max(0.0, memory.peak() - base)
    if timer.is_cuda:  # the CPU's peak RSS cannot be reset
        base = memory.start()
    (
        result["fwdbwd_ms"],
        result["fwdbwd_cpu_ms"],
        result["fwdbwd_reps"],
    ) = _time(forward_backward, timer)
    result["fwdbwd_peak_mb"] = max(0.0, memory.peak() - base)
    for key in list(result):
        if key.endswith("_ms"):
            result[key] *= 1000.0
    return result


def format_table(results, d_model, device, threads, allocator=None):
    """Markdown table of the results, under a line naming the conditions.

    Arguments
    ---------
    results : list of dict
        :func:`measure` results (or ``{"mode", "length", "error"}``).
    d_model : int
        Channels of the layer.
    device : str
        Where it ran.
    threads : int
        CPU threads.
    allocator : str, optional
        The allocator condition of the workers.

    Returns
    -------
    str

    Example
    -------
    >>> r = {"mode": "s4d", "length": 8, "precision": "fp32",
    ...      "kernel_ms": 1.0, "fwd_ms": 2.0, "fwd_cpu_ms": 2.0,
    ...      "fwd_peak_mb": 3.0, "fwdbwd_ms": 4.0, "fwdbwd_cpu_ms": 4.0,
    ...      "fwdbwd_peak_mb": 5.0}
    >>> lines = format_table([r], 4, "cpu", 1, "glibc, default").splitlines()
    >>> lines[0].endswith("1 threads; allocator: glibc, default")
    True
    >>> lines[-1]
    '| s4d | fp32 | 8 | 1.0 | 2.0 (2) | 3 | 4.0 (4) | 5 |'
    """
    cuda = device.startswith("cuda")
    ms = "GPU ms (CUDA events)" if cuda else "ms"
    lines = [
        f"S4 layer, d_model={d_model}, d_state=16, bidirectional, batch 1, "
        f"{device}"
        + ("" if cuda else f", {threads} threads")
        + f"; allocator: {allocator or 'not recorded'}",
        "",
        f"| mode | precision | length | kernel {ms} | fwd {ms} (CPU ms) "
        f"| fwd peak MiB | fwd+bwd {ms} (CPU ms) | fwd+bwd peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        prec = r.get("precision", "fp32")
        if "error" in r:
            lines.append(
                f"| {r['mode']} | {prec} | {r['length']} "
                f"| failed: {r['error']} | | | | |"
            )
            continue
        lines.append(
            f"| {r['mode']} | {prec} | {r['length']} | {r['kernel_ms']:.1f} "
            f"| {r['fwd_ms']:.1f} ({r['fwd_cpu_ms']:.0f}) "
            f"| {r['fwd_peak_mb']:.0f} "
            f"| {r['fwdbwd_ms']:.1f} ({r['fwdbwd_cpu_ms']:.0f}) "
            f"| {r['fwdbwd_peak_mb']:.0f} |"
        )
    return "\n".join(lines)


def _run_subprocess(args, mode, length, precision):
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--modes",
        mode,
        "--lengths",
        str(length),
        "--precision",
        precision,
        "--d-model",
        str(args.d_model),
        "--d-state",
        str(args.d_state),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ] + (["--default-allocator"] if args.default_allocator else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        return {
            "mode": mode,
            "length": length,
            "precision": precision,
            "error": " ".join(tail),
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["fp32"],
        choices=PRECISIONS,
        help="fp32 and/or fp16 / bf16 autocast (default: %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=DEFAULT_LENGTHS
    )
    parser.add_argument("--modes", nargs="+", default=["nplr", "s4d"])
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave the C allocator as it is (default: keep freed memory)",
    )
    parser.add_argument("--json", default=None, help="write results here")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing JSON"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        allocator = apply_allocator(args.default_allocator)
        r = measure(
            args.modes[0],
            args.lengths[0],
            args.d_model,
            args.d_state,
            args.device,
            args.threads,
            precision=args.precision[0],
        )
        r["allocator"] = allocator
        print(json.dumps(r))
        return 0

    import torch

    try:
        check_device(args.device)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json and os.path.exists(args.json) and not args.overwrite:
        print(
            f"error: {args.json} exists; pass --overwrite to replace",
            file=sys.stderr,
        )
        return 2
    results = []
    for mode in args.modes:
        for precision in args.precision:
            for length in args.lengths:
                r = _run_subprocess(args, mode, length, precision)
                results.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
    allocator = " + ".join(
        sorted({r["allocator"] for r in results if "allocator" in r})
    )
    table = format_table(
        results, args.d_model, args.device, args.threads, allocator
    )
    print(table)
    if args.json:
        info = {
            "command": " ".join(
                ["python bench/s4_layer.py"]
                + (sys.argv[1:] if argv is None else list(argv))
            ),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(),
            "device": args.device,
            "timing": "cuda_events"
            if args.device.startswith("cuda")
            else "wall",
            "precisions": args.precision,
            "allocator": allocator,
            "threads": args.threads,
            "d_model": args.d_model,
            "d_state": args.d_state,
            "bidirectional": True,
            "batch": 1,
            "load_average_at_end": os.getloadavg(),
            "results": results,
        }
        if args.device.startswith("cuda"):
            info["gpu"] = torch.cuda.get_device_name(args.device)
        with open(args.json, "w") as f:
            json.dump(info, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
