"""Keep freed memory in the process, so that each step's big temporaries reuse warm pages.

A training step allocates and frees the same large arrays every time. glibc returns
blocks over its (adaptive) mmap threshold straight to the kernel, and the next step pays a
page fault for every 4 KiB again: about a fifth of a medium-preset step here. Raising the
mmap threshold to its maximum (32 MiB) and the trim threshold keeps those pages in the heap.
Process-wide and glibc-only; set ``LT_TUNE_MALLOC=0`` to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Set glibc's mmap and trim thresholds; True when they were set."""
    if not sys.platform.startswith("linux") or os.environ.get("LT_TUNE_MALLOC", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False                      # not glibc (musl, ...): nothing to tune
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
