"""Timing, peak memory, precision and allocator helpers of the benchmarks.

One place decides how a case is measured on each device:

* :class:`StepTimer`: wall, process CPU and system time of a call; on CUDA
  also the GPU time between two ``torch.cuda.Event(enable_timing=True)``
  records, read after ``torch.cuda.synchronize``.
* :class:`PeakMemory`: on CUDA ``torch.cuda.max_memory_allocated`` after
  ``torch.cuda.reset_peak_memory_stats``; on the CPU the process's peak
  resident set size (``ru_maxrss``), which is why CPU cases run in their
  own subprocess.
* :func:`autocast_context`: ``fp32`` (plain), ``fp16`` or ``bf16``
  (``torch.autocast`` on the device's type).
* :func:`check_device`: a clear error for ``--device cuda`` without CUDA.
* :func:`apply_allocator`: :func:`speechbrain_s4m.allocator.keep_freed_memory`
  unless the default allocator is asked for; returns the condition to record.

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
    """Checks that ``device`` exists here; returns it as a ``torch.device``.

    Arguments
    ---------
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``.
    cuda : module, optional
        The ``torch.cuda`` module (replaceable in tests).

    Returns
    -------
    torch.device
        The device.

    Raises
    ------
    RuntimeError
        For a CUDA device when CUDA is not available or the index does not
        exist, and for other device types (only cpu and cuda are measured).

    Example
    -------
    >>> check_device("cpu")
    device(type='cpu')
    >>> class NoCuda:
    ...     @staticmethod
    ...     def is_available():
    ...         return False
    >>> check_device("cuda", cuda=NoCuda)
    Traceback (most recent call last):
    ...
    RuntimeError: --device cuda: CUDA is not available ...
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
    """Context manager running the forward at ``precision`` on ``device``.

    Arguments
    ---------
    device : torch.device
        Where the model runs.
    precision : str
        ``"fp32"`` (no autocast), ``"fp16"`` or ``"bf16"`` (autocast to that
        dtype on the device's type).

    Returns
    -------
    context manager

    Example
    -------
    >>> with autocast_context(torch.device("cpu"), "bf16"):
    ...     y = torch.nn.Linear(4, 2)(torch.randn(3, 4))
    >>> y.dtype
    torch.bfloat16
    >>> with autocast_context(torch.device("cpu"), "fp32"):
    ...     y = torch.nn.Linear(4, 2)(torch.randn(3, 4))
    >>> y.dtype
    torch.float32
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in _AUTOCAST_DTYPES:
        raise ValueError(f"precision {precision!r} not in {PRECISIONS}")
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


def grad_scaler(device, precision):
    """A ``torch.amp.GradScaler`` for fp16 training on CUDA, else None.

    Arguments
    ---------
    device : torch.device
        Where the model runs.
    precision : str
        One of :data:`PRECISIONS`.

    Returns
    -------
    torch.amp.GradScaler or None
        The scaler of a mixed-precision training step where fp16 gradients
        need one (bf16 and fp32 do not).

    Example
    -------
    >>> grad_scaler(torch.device("cpu"), "fp16") is None
    True
    """
    if precision == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def apply_allocator(default_allocator=False):
    """Keeps freed memory for reuse (glibc) unless asked not to.

    Arguments
    ---------
    default_allocator : bool
        Leave the C library's allocator as it is.

    Returns
    -------
    str
        The allocator condition of this process,
        :func:`speechbrain_s4m.allocator.allocator_mode`.

    Example
    -------
    >>> apply_allocator() in ("glibc, freed memory kept", "other, default")
    True
    """
    if not default_allocator:
        keep_freed_memory()
    return allocator_mode()


class StepTimer:
    """Times calls: wall and process CPU time; GPU time on CUDA.

    On CUDA the call is bracketed by two ``torch.cuda.Event(
    enable_timing=True)`` records on the current stream, and the device is
    synchronised before the start (nothing earlier is counted) and after
    the end (the events have completed) — ``gpu_s`` is the event time, the
    time the GPU spent from the first to the last launched kernel of the
    call, unaffected by Python's clocks.

    Arguments
    ---------
    device : torch.device
        Where the timed work runs.
    cuda : module, optional
        The ``torch.cuda`` module (replaceable in tests).

    Example
    -------
    >>> timer = StepTimer(torch.device("cpu"))
    >>> t = timer(lambda: sum(range(1000)))
    >>> sorted(t), t["wall_s"] >= 0, t["gpu_s"]
    (['cpu_s', 'gpu_s', 'sys_s', 'wall_s'], True, None)
    """

    def __init__(self, device, cuda=None):
        self.device = torch.device(device)
        self.cuda = torch.cuda if cuda is None else cuda
        self.is_cuda = self.device.type == "cuda"

    def __call__(self, fn):
        """Runs ``fn()`` once; returns ``wall_s``, ``cpu_s`` (process CPU
        time, user + system), ``sys_s`` (system time alone: page faults
        and other kernel work) and ``gpu_s`` (None off CUDA)."""
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

    Returns
    -------
    float
        ``ru_maxrss`` (KiB on Linux, bytes on macOS) in MiB.

    Example
    -------
    >>> peak_rss_mib() > 0
    True
    """
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def current_rss_mib():
    """Current resident set size of this process in MiB (Linux; else nan).

    Returns
    -------
    float

    Example
    -------
    >>> current_rss_mib() > 0 or sys.platform != "linux"
    True
    """
    try:
        with open("/proc/self/statm") as fin:
            pages = int(fin.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


class PeakMemory:
    """Peak memory of what runs between :meth:`start` and :meth:`peak`.

    On CUDA: :meth:`start` resets the peak statistics
    (``torch.cuda.reset_peak_memory_stats``) and returns the memory then
    allocated; :meth:`peak` returns ``torch.cuda.max_memory_allocated``
    since the reset (tensors of the caching allocator, not its reserved
    pool). On the CPU: the current and the peak resident set size of the
    process (the peak cannot be reset, so a case needs its own process).

    Arguments
    ---------
    device : torch.device
        Where the measured work runs.
    cuda : module, optional
        The ``torch.cuda`` module (replaceable in tests).

    Example
    -------
    >>> mem = PeakMemory(torch.device("cpu"))
    >>> base = mem.start()
    >>> x = torch.ones(2**20)
    >>> mem.peak() >= base - 1
    True
    >>> mem.unit
    'MiB RSS'
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
        # Why the max: the kernel's high-water mark (ru_maxrss) and
        # /proc/self/statm are read from RSS counters that are flushed
        # lazily per thread, so the "peak" can read a fraction of a MiB
        # below the current RSS just read by start(); a peak is never
        # below what is resident now.
        return max(peak_rss_mib(), current_rss_mib())
