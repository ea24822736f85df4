"""Memory-allocator setting for CPU inference: keep freed memory for reuse.

On Linux with glibc, every tensor larger than the allocator's mmap threshold
(at most 32 MiB, adjusted dynamically) is mapped fresh from the kernel and
unmapped when freed. S4M's forward makes many such temporaries (``[batch,
512, frames]`` maps at 16 s inputs are ~65 MB each), so each one costs a page
fault per 4 KiB page touched: at 16 s of audio a third of the process time
was kernel time. :func:`keep_freed_memory` tells glibc to serve large blocks
from its heap and to keep what is freed there, so the next forward reuses
the pages already mapped: the same effect as starting Python with
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` set, applied from
inside the process.

The trade-off: the process keeps its peak memory mapped until it exits
(what it frees is reused, not returned to the system). That suits inference
and benchmarks: :class:`speechbrain_s4m.inference.S4MSeparation` (so
``s4m-separate`` too) applies it on a CPU device unless built with
``keep_freed_memory=False``, and the model benchmarks in every case process
unless run with ``--default-allocator``. Training leaves glibc alone.
Elsewhere (other C libraries, macOS, Windows) it does nothing and says so.

Authors
 * speechbrain-s4m contributors 2026
"""

import ctypes
import ctypes.util
import platform

# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

#: Freed heap memory kept before glibc trims it (mallopt takes an ``int``).
TRIM_THRESHOLD = 2**31 - 1
#: Extra heap requested each time the heap grows (fewer brk calls).
TOP_PAD = 64 * 2**20

_applied = False


def _glibc():
    """The process's glibc, or None under another C library."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory():
    """Makes glibc serve large blocks from its heap and keep freed memory.

    Idempotent, process-wide, and cannot be undone (glibc's previous values
    are not readable). It changes where memory comes from, never what is
    computed.

    Returns
    -------
    bool
        True when the setting is in effect (glibc), False where it does not
        apply.

    Example
    -------
    >>> applied = keep_freed_memory()
    >>> applied == (_glibc() is not None)
    True
    """
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        return False
    # M_MMAP_MAX = 0: no block is mmap'ed by the main arena (the threshold
    # itself cannot be raised above 32 MiB through mallopt); the trim
    # threshold keeps freed memory in the heap instead of returning it.
    ok = (
        libc.mallopt(_M_MMAP_MAX, 0) == 1
        and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        and libc.mallopt(_M_TOP_PAD, TOP_PAD) == 1
    )
    _applied = ok
    return ok


def allocator_mode():
    """Describes the allocator condition of this process, for benchmarks.

    Returns
    -------
    str
        ``"glibc, freed memory kept"``, ``"glibc, default"`` or the C
        library's name with ``"default"``.

    Example
    -------
    >>> allocator_mode() in {
    ...     "glibc, freed memory kept", "glibc, default", "other, default"
    ... }
    True
    """
    if _glibc() is None:
        return "other, default"
    return "glibc, freed memory kept" if _applied else "glibc, default"
