"""Keep freed memory in the process, so that each step's big temporaries reuse warm pages.

A training step allocates and frees the same large arrays every time. glibc returns
blocks over its (adaptive) mmap threshold straight to the kernel, and the next step pays a
page fault for every page again. :func:`tune_malloc` serves every block from the heap
(no mmap at all, so gpt2's 154 MB embedding gradient, optimizer moments and logits too) and
raises the trim threshold, so freed pages stay in the process and are reused warm. Measured
on a 2-core AMD EPYC VM (``python benchmarks/bench_malloc.py``-style, gpt2 training step at
2 x 128 tokens): 3,500 page faults and 1.66 s of kernel time per step with blocks over
32 MiB still mmapped, 138 faults and 0.20 s without; on the Intel machine a mini step went
from ~2,000 page faults to 4 (~5% faster).

Process-wide and glibc-only, so ``import lt`` never does it: :func:`tune_malloc` is an
explicit call, made by :func:`lt.train`, by the ``lt`` command (train, generate, eval) and by
the benchmarks. Set ``LT_TUNE_MALLOC=0`` to make it leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30, mmap: bool = False) -> bool:
    """Set glibc's mmap and trim thresholds for the whole process; True when they were set.

    With ``mmap=False`` (the default) no block is mmapped, whatever its size; otherwise blocks
    up to ``mmap_threshold`` bytes come from the heap. Freed memory is given back to the
    kernel only above ``trim_threshold``, so a loop that frees and reallocates the same large
    arrays reuses warm pages instead of faulting them in again. Costs resident memory the
    process keeps after a peak. Does nothing (False) off Linux, without glibc, or with
    ``LT_TUNE_MALLOC=0``. Calling it again is harmless.
    """
    if not sys.platform.startswith("linux") or os.environ.get("LT_TUNE_MALLOC", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, ...): nothing to tune
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    if not mmap:
        done = bool(mallopt(_M_MMAP_MAX, 0)) and done  # glibc falls back to mmap if the heap cannot grow
    return done
