"""Speed and peak memory of one S4 layer versus sequence length.

Times the forward pass (inference, no autograd), forward + backward, and
the kernel generation alone of one bidirectional :class:`S4` layer
(``d_model=256`` channels by default, ``d_state=16``, batch 1) for the
``nplr`` and ``s4d`` modes at 1k ... 256k steps. Each (mode, length) runs
in a fresh subprocess so that the peak memory can be read from the
process' peak resident set size (``ru_maxrss``, minus the resident size
just before the first measured pass); on CUDA the peak comes from
``torch.cuda.max_memory_allocated``.

Usage::

    python -m speechbrain_s4m.benchmark.s4_layer [--device cuda]
        [--threads 2] [--d-model 256] [--lengths 1024 4096 ...]
        [--modes nplr s4d] [--json results.json]

Prints a table and optionally writes the results as JSON.

Authors
 * speechbrain-s4m contributors 2026
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

DEFAULT_LENGTHS = [1024, 4096, 16384, 65536, 262144]


def _peak_rss_mb():
    """Peak resident set size of this process in MiB (Linux: KiB units)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 / 1024**2 if sys.platform == "darwin" else 1 / 1024
    return rss * scale


def _time(fn, sync, min_time=1.0, max_reps=5):
    """Median wall and process CPU time (s) of ``fn`` over 1..max_reps runs.

    Runs until ``min_time`` seconds of wall time are spent (at least once).
    Returns ``(wall, cpu, reps)``; ``cpu`` counts all threads and is less
    sensitive than ``wall`` to other processes on a shared machine.
    """
    walls, cpus = [], []
    while len(walls) < max_reps and (not walls or sum(walls) < min_time):
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        sync()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu_start)
    return statistics.median(walls), statistics.median(cpus), len(walls)


def measure(mode, length, d_model, d_state, device, threads, batch=1):
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

    Returns
    -------
    dict
        Times in ms and peak memory in MiB.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    from speechbrain_s4m.nnet import S4

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    cuda = dev.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    layer = S4(d_model, d_state=d_state, mode=mode, bidirectional=True)
    layer = layer.to(dev)
    # warm-up on a short input (allocator, FFT plans, kernels), plus the
    # one-time lazy imports of activation checkpointing (used by long NPLR
    # kernels), which would otherwise count as time and memory
    warm = torch.randn(batch, d_model, 256, device=dev, requires_grad=True)
    layer(warm).sum().backward()
    checkpoint(torch.sin, warm, use_reentrant=False).sum().backward()
    layer.zero_grad(set_to_none=True)
    x = torch.randn(batch, d_model, length, device=dev)
    sync()

    def mem_start():
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated() / 2**20
        return _peak_rss_mb()

    def mem_peak(start):
        if cuda:
            return torch.cuda.max_memory_allocated() / 2**20 - start
        return _peak_rss_mb() - start

    def kernel():
        with torch.no_grad():
            layer.kernel(length)

    def forward():
        with torch.no_grad():
            layer(x)

    def forward_backward():
        xg = x.detach().requires_grad_()
        layer(xg).sum().backward()
        layer.zero_grad(set_to_none=True)

    result = {"mode": mode, "length": length}
    base = mem_start()
    result["kernel_ms"], result["kernel_cpu_ms"], _ = _time(kernel, sync)
    result["fwd_ms"], result["fwd_cpu_ms"], result["fwd_reps"] = _time(
        forward, sync
    )
    result["fwd_peak_mb"] = mem_peak(base)
    if cuda:
        base = mem_start()
    (
        result["fwdbwd_ms"],
        result["fwdbwd_cpu_ms"],
        result["fwdbwd_reps"],
    ) = _time(forward_backward, sync)
    result["fwdbwd_peak_mb"] = mem_peak(base)
    for key in list(result):
        if key.endswith("_ms"):
            result[key] *= 1000.0
    return result


def format_table(results, d_model, device, threads):
    """Markdown table of the results."""
    lines = [
        f"S4 layer, d_model={d_model}, d_state=16, bidirectional, batch 1, "
        f"{device}" + (f", {threads} threads" if device == "cpu" else ""),
        "",
        "| mode | length | kernel ms | fwd ms (CPU ms) | fwd peak MiB "
        "| fwd+bwd ms (CPU ms) | fwd+bwd peak MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r:
            lines.append(
                f"| {r['mode']} | {r['length']} | failed: {r['error']} "
                "| | | | |"
            )
            continue
        lines.append(
            f"| {r['mode']} | {r['length']} | {r['kernel_ms']:.1f} "
            f"| {r['fwd_ms']:.1f} ({r['fwd_cpu_ms']:.0f}) "
            f"| {r['fwd_peak_mb']:.0f} "
            f"| {r['fwdbwd_ms']:.1f} ({r['fwdbwd_cpu_ms']:.0f}) "
            f"| {r['fwdbwd_peak_mb']:.0f} |"
        )
    return "\n".join(lines)


def _run_subprocess(args, mode, length):
    cmd = [
        sys.executable,
        "-m",
        "speechbrain_s4m.benchmark.s4_layer",
        "--worker",
        "--modes",
        mode,
        "--lengths",
        str(length),
        "--d-model",
        str(args.d_model),
        "--d-state",
        str(args.d_state),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        return {"mode": mode, "length": length, "error": " ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=DEFAULT_LENGTHS
    )
    parser.add_argument("--modes", nargs="+", default=["nplr", "s4d"])
    parser.add_argument("--json", default=None, help="write results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        r = measure(
            args.modes[0],
            args.lengths[0],
            args.d_model,
            args.d_state,
            args.device,
            args.threads,
        )
        print(json.dumps(r))
        return

    import torch

    results = []
    for mode in args.modes:
        for length in args.lengths:
            r = _run_subprocess(args, mode, length)
            results.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    table = format_table(results, args.d_model, args.device, args.threads)
    print(table)
    if args.json:
        info = {
            "command": " ".join(
                ["python -m speechbrain_s4m.benchmark.s4_layer"] + sys.argv[1:]
            ),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(),
            "device": args.device,
            "threads": args.threads,
            "d_model": args.d_model,
            "d_state": args.d_state,
            "bidirectional": True,
            "batch": 1,
            "load_average_at_end": os.getloadavg(),
            "results": results,
        }
        if args.device.startswith("cuda"):
            info["gpu"] = torch.cuda.get_device_name()
        with open(args.json, "w") as f:
            json.dump(info, f, indent=2)


if __name__ == "__main__":
    main()
