"""Timing, peak memory, precision and allocator helpers of the benchmarks.

On CUDA the times are CUDA-event times and the peak memory is
``torch.cuda.max_memory_allocated`` after a reset; on the CPU wall/CPU time
and the process's peak RSS (which cannot be reset: one process per case).

Authors
 * speechbrain-s4m contributors 2026
"""

import contextlib
import os
import resource
import sys
import time

import torch

from speechbrain_s4m.allocator import allocator_mode, keep_freed_memory

PRECISIONS = ("fp32", "fp16", "bf16")
_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def check_device(device, cuda=None):
    """Checks that ``device`` (cpu, cuda or cuda:i) exists here.

    Arguments
    ---------
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``.
    cuda : module, optional
        The ``torch.cuda`` module (replaceable in tests).

    Returns
    -------
    torch.device

    Raises
    ------
    RuntimeError
        Without CUDA, for a missing index, or another device type.
    """
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


def autocast_context(device, precision):
    """No autocast for ``"fp32"``, else ``torch.autocast`` to fp16 / bf16
    on ``device``'s type."""
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
    """Keeps freed memory for reuse unless ``default_allocator``; returns
    :func:`speechbrain_s4m.allocator.allocator_mode`."""
    if not default_allocator:
        keep_freed_memory()
    return allocator_mode()


class StepTimer:
    """Times calls: wall, process CPU and system time; GPU time on CUDA.

    On CUDA the call is bracketed by two timing events, with the device
    synchronised before the start and before the events are read.

    Arguments
    ---------
    device : torch.device
        Where the timed work runs.
    cuda : module, optional
        The ``torch.cuda`` module (replaceable in tests).
    """

    def __init__(self, device, cuda=None):
        self.device = torch.device(device)
        self.cuda = torch.cuda if cuda is None else cuda
        self.is_cuda = self.device.type == "cuda"

    def __call__(self, fn):
        """Runs ``fn()`` once; returns ``wall_s``, ``cpu_s`` (user +
        system), ``sys_s`` (page faults etc.), ``gpu_s`` (None off CUDA)."""
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


def peak_rss_mib():
    """Peak resident set size of this process in MiB.

    Example
    -------
    >>> peak_rss_mib() > 0
    True
    """
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def current_rss_mib():
    """Current resident set size of this process in MiB (Linux; else nan)."""
    try:
        with open("/proc/self/statm") as fin:
            pages = int(fin.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


class PeakMemory:
    """Peak memory (MiB) of what runs between :meth:`start` and :meth:`peak`:
    ``torch.cuda.max_memory_allocated`` since a reset on CUDA, the process's
    peak RSS on the CPU.

    Arguments
    ---------
    device : torch.device
        Where the measured work runs.
    cuda : module, optional
        The ``torch.cuda`` module (replaceable in tests).
    """

    def __init__(self, device, cuda=None):
        self.device = torch.device(device)
        self.cuda = torch.cuda if cuda is None else cuda
        self.is_cuda = self.device.type == "cuda"
        self.unit = "GPU MiB (max allocated)" if self.is_cuda else "MiB RSS"

    def start(self):
        """Starts a measurement; returns the memory in use now (MiB)."""
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
        return max(peak_rss_mib(), current_rss_mib())
