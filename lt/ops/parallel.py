"""Row-parallel elementwise work: NumPy's ufuncs run on one core, the BLAS on all of them.

A fused primitive's elementwise part (GELU, layer norm, softmax, cross-entropy) treats
each row on its own, so its rows can be cut into blocks that run on worker threads
(NumPy releases the GIL inside ufunc loops). Each row is computed by the same code
whatever the block, so results are bit-identical for any number of threads; reductions
across rows stay on the calling thread. ``LT_NUM_THREADS`` sets the thread count
(default: the cores this process may use).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

__all__ = ["num_threads", "for_rows"]

_MIN_ELEMENTS = 1 << 16          # below this, handing work to a thread costs more than it saves
_pool: ThreadPoolExecutor | None = None


def num_threads() -> int:
    """Threads used for elementwise work (LT_NUM_THREADS, else the usable cores)."""
    env = os.environ.get("LT_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                                 # not Linux
        return max(1, os.cpu_count() or 1)


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool._max_workers < workers:
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lt-rows")
    return _pool


def for_rows(kernel: Callable[[int, int], None], n_rows: int, row_size: int) -> None:
    """Call ``kernel(lo, hi)`` over blocks covering rows ``[0, n_rows)``, in parallel when large.

    ``kernel`` must only read and write its own rows ``lo:hi`` of preallocated arrays.
    """
    if n_rows * row_size < _MIN_ELEMENTS:                  # the common small case: no system calls
        kernel(0, n_rows)
        return
    threads = min(num_threads(), n_rows)
    if threads <= 1:
        kernel(0, n_rows)
        return
    bounds = [n_rows * i // threads for i in range(threads + 1)]
    futures = [_executor(threads - 1).submit(kernel, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    kernel(bounds[0], bounds[1])
    for f in futures:
        f.result()
