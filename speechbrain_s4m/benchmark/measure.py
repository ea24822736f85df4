"""How the benchmarks measure: time (CUDA events on a GPU, wall and CPU
time on the CPU), peak memory (``max_memory_allocated`` on a GPU, the
process's peak RSS, which cannot be reset, on the CPU), MACs
(:func:`count_macs`), precision and allocator settings.
"""

import contextlib
import math
import os
import resource
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from speechbrain_s4m.allocator import allocator_mode, keep_freed_memory

PRECISIONS = ("fp32", "fp16", "bf16")
_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

aten = torch.ops.aten


def check_device(device, cuda=None):
    """``device`` (cpu, cuda or cuda:i) as a ``torch.device``; a
    RuntimeError saying why where it does not exist (``cuda``: a fake)."""
    cuda = torch.cuda if cuda is None else cuda
    dev = torch.device(device)
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise RuntimeError(
            f"--device {device}: only cpu and cuda[:index] are supported"
        )
    if not cuda.is_available():
        raise RuntimeError(
            f"--device {device}: CUDA is not available in this process "
            f"(torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none'}; no GPU visible or no driver)"
        )
    count = cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise RuntimeError(
            f"--device {device}: there are {count} CUDA device(s) "
            f"(indices 0..{count - 1})"
        )
    return dev


def number(text):
    """A float from the command line, an int where it is whole."""
    value = float(text)
    return int(value) if value.is_integer() else value


def markdown(rows):
    """Markdown table of rows of cells; the second row is the rule."""
    head, rule, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(rule) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def autocast_context(device, precision):
    """``torch.autocast`` to fp16 / bf16 on ``device``; none for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in _AUTOCAST_DTYPES:
        raise ValueError(f"precision {precision!r} not in {PRECISIONS}")
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


def grad_scaler(device, precision):
    """A ``torch.amp.GradScaler`` for fp16 training on CUDA, else None."""
    if precision == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def apply_allocator(default_allocator=False):
    """Keeps freed memory unless ``default_allocator``; returns the mode."""
    if not default_allocator:
        keep_freed_memory()
    return allocator_mode()


class StepTimer:
    """Times calls on ``device``: wall, process CPU and system time, and
    on CUDA the time between two events (``cuda``: a fake in tests)."""

    def __init__(self, device, cuda=None):
        self.device = torch.device(device)
        self.cuda = torch.cuda if cuda is None else cuda
        self.is_cuda = self.device.type == "cuda"

    def __call__(self, fn):
        """Runs ``fn()``: ``wall_s``, ``cpu_s``, ``sys_s``, ``gpu_s``."""
        if self.is_cuda:
            self.cuda.synchronize(self.device)
            start = self.cuda.Event(enable_timing=True)
            end = self.cuda.Event(enable_timing=True)
        t0, c0 = time.perf_counter(), time.process_time()
        s0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
        if self.is_cuda:
            start.record()
        fn()
        gpu_s = None
        if self.is_cuda:
            end.record()
            self.cuda.synchronize(self.device)
            gpu_s = start.elapsed_time(end) / 1000.0  # ms -> s
        return {
            "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0,
            "sys_s": resource.getrusage(resource.RUSAGE_SELF).ru_stime - s0,
            "gpu_s": gpu_s,
        }


def current_rss_mib():
    """Current resident set size of this process in MiB (Linux; else nan)."""
    try:
        with open("/proc/self/statm") as fin:
            pages = int(fin.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


class PeakMemory:
    """Peak memory (MiB) on ``device`` since :meth:`start` (CUDA) or the
    process's start (peak RSS) (``cuda`` as in :class:`StepTimer`)."""

    def __init__(self, device, cuda=None):
        self.device = torch.device(device)
        self.cuda = torch.cuda if cuda is None else cuda
        self.is_cuda = self.device.type == "cuda"
        self.unit = "GPU MiB (max allocated)" if self.is_cuda else "MiB RSS"

    def start(self):
        """Starts; returns the memory in use now (MiB)."""
        if self.is_cuda:
            self.cuda.synchronize(self.device)
            self.cuda.reset_peak_memory_stats(self.device)
            return self.cuda.memory_allocated(self.device) / 2**20
        return current_rss_mib()

    def peak(self):
        """Peak memory (MiB) since :meth:`start` (CUDA) or process start."""
        if self.is_cuda:
            self.cuda.synchronize(self.device)
            return self.cuda.max_memory_allocated(self.device) / 2**20
        # the RSS counters are flushed lazily per thread: the high-water
        # mark can read below the current RSS, and a peak is never below it
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss = rss / 2**20 if sys.platform == "darwin" else rss / 1024
        return max(rss, current_rss_mib())


# FlopCounterMode counts 2 flops per real multiply-accumulate of matmuls,
# convolutions and attention; the formulas below use the same unit
FFT_OPS = (aten._fft_r2c, aten._fft_c2r, aten._fft_c2c)
COMPLEX_ELEMENTWISE_OPS = (aten.mul, aten.div, aten.reciprocal)


def _fft(x, dim, *args, out_val=None, **kwargs):
    """(n/2) log2(n) complex MACs (4 real each) per FFT of real size n
    (radix-2: ~2x over for real FFTs)."""
    real = out_val if x.is_complex() and not out_val.is_complex() else x
    n = math.prod(real.shape[d] for d in dim)
    if n <= 1:
        return 0
    return int(2 * 4 * (real.numel() // n) * (n / 2) * math.log2(n))


def _complex_elementwise(*args, out_val=None, **kwargs):
    """Complex products/quotients: 4 real MACs per output element."""
    if isinstance(out_val, torch.Tensor) and out_val.is_complex():
        return 2 * 4 * out_val.numel()
    return 0


def _complex_aware(op):  # the stock formula, x4 for complex operands
    base = flop_registry[op]

    def formula(*args, out_val=None, **kwargs):
        flops = base(*args, out_val=out_val, **kwargs)
        if any(isinstance(a, torch.Tensor) and a.is_complex() for a in args):
            flops *= 4
        return flops

    return formula


def mac_counter():
    """A ``FlopCounterMode`` that also counts FFTs and complex arithmetic
    (the S4 layers' work, which the stock counter does not see)."""
    mapping = dict.fromkeys(FFT_OPS, _fft)
    mapping.update(dict.fromkeys(COMPLEX_ELEMENTWISE_OPS, _complex_elementwise))
    for op in (aten.mm, aten.bmm, aten.addmm, aten.baddbmm):
        mapping[op] = _complex_aware(op)
    for formula in mapping.values():
        formula._get_raw = True  # called with the tensors, not their shapes
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_macs(model, mix):
    """MACs of ``model(mix)``: ``total``, ``fft`` (FFT convolutions),
    ``complex`` (complex element-wise products) and ``dense`` (the rest:
    matmul/conv/attention).

    Example
    -------
    >>> m = torch.nn.Linear(4, 3, bias=False)
    >>> count_macs(m, torch.randn(2, 4))["total"]
    24
    >>> count_macs(torch.fft.rfft, torch.randn(1, 8))["fft"]  # 4 * 8/2 * 3
    48
    """
    counter = mac_counter()
    with counter, torch.no_grad():
        model(mix)
    per_op = counter.get_flop_counts()["Global"]
    fft = sum(v for k, v in per_op.items() if k in FFT_OPS) // 2
    cplx = sum(v for k, v in per_op.items() if k in COMPLEX_ELEMENTWISE_OPS)
    total = counter.get_total_flops() // 2
    return {
        "total": total,
        "fft": fft,
        "complex": cplx // 2,
        "dense": total - fft - cplx // 2,
    }
