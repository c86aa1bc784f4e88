"""Compiled kernels, compiled lazily: ``@kernel`` marks a plain-Python loop nest for numba.

Nothing is compiled (nor numba imported) until a kernel's first call, so ``import lt`` costs
what it did. Compiled code is cached on disk (numba's ``cache=True``: beside the source, or in
the user's cache directory when the install is read-only; ``NUMBA_CACHE_DIR`` moves it), so
only the first process after an install pays the compile.

Every kernel releases the GIL (lt's pool may run them in pieces) and allows reassociation
(``fastmath``'s ``reassoc``/``contract``, so reductions vectorise: results then differ from
NumPy's in the last bits, within the tolerances the tests state; each kernel's order is fixed
by its shapes, so it is deterministic). A ``parallel`` kernel spreads its ``prange`` loop over
:func:`lt.threads.workers` threads, the count the BLAS gets: one policy for both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...threads import workers

__all__ = ["kernel", "prange", "FASTMATH"]

prange = range
"""A kernel's parallel loop: ``for i in prange(n)``. Plain ``range`` when the kernel runs as Python
(numba is imported only when a kernel compiles); numba's ``prange`` in the compiled kernel."""

# No "nnan"/"ninf": masked scores and overflowing exponentials must behave as in NumPy.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


class Kernel:
    """A loop nest compiled by numba at its first call; called like the function it wraps."""

    def __init__(self, fn: Callable[..., Any], parallel: bool):
        self.fn, self.parallel = fn, parallel
        self.compiled: Callable[..., Any] | None = None
        self.__name__, self.__doc__ = fn.__name__, fn.__doc__

    def compile(self) -> Callable[..., Any]:
        import numba  # the fast extra; only imported when a kernel first runs

        if self.fn.__globals__.get("prange") is range:  # the kernel's module imported this file's prange
            self.fn.__globals__["prange"] = numba.prange
        compiled = numba.njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=self.parallel)(self.fn)
        self.compiled = compiled
        return compiled

    def __call__(self, *args):
        compiled = self.compiled or self.compile()
        if self.parallel:
            import numba

            n = workers()
            if numba.get_num_threads() != n:
                numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        return compiled(*args)


def kernel(fn: Callable[..., Any] | None = None, *, parallel: bool = False):
    """Decorator: ``fn`` (loops over NumPy arrays, numba's subset of Python) compiled on first call.

    ``parallel=True`` for kernels whose outer loop is a ``numba.prange`` over independent rows."""
    if fn is None:
        return lambda f: Kernel(f, parallel)
    return Kernel(fn, parallel)
