"""Memory-allocator setting for CPU inference: keep freed memory for reuse.

With glibc, each tensor above the mmap threshold (at most 32 MiB) is mapped
fresh and unmapped when freed: S4M's large temporaries then cost a page
fault per 4 KiB page (a third of the time at 16 s inputs). The cost: the
process keeps its peak memory until it exits. ``S4MSeparation`` (CPU) and
the model benchmarks apply it; training does not. Elsewhere it does nothing.
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

    Like starting Python with ``MALLOC_MMAP_THRESHOLD_`` /
    ``MALLOC_TRIM_THRESHOLD_`` set. Idempotent, process-wide, irreversible;
    changes where memory comes from, never what is computed. Returns True
    when in effect (glibc), False where it does not apply.
    """
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        return False
    # M_MMAP_MAX = 0: nothing is mmap'ed by the main arena (the threshold
    # cannot be raised above 32 MiB); the trim threshold keeps freed memory
    ok = (
        libc.mallopt(_M_MMAP_MAX, 0) == 1
        and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        and libc.mallopt(_M_TOP_PAD, TOP_PAD) == 1
    )
    _applied = ok
    return ok


def allocator_mode():
    """The allocator condition of this process, for benchmarks:
    ``"glibc, freed memory kept"``, ``"glibc, default"`` or ``"other,
    default"``."""
    if _glibc() is None:
        return "other, default"
    return "glibc, freed memory kept" if _applied else "glibc, default"
