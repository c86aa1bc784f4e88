"""Compiled kernels, compiled lazily: ``@kernel`` marks a plain-Python loop nest for numba.

Nothing is compiled (nor numba imported) until a kernel's first call, so ``import lt`` costs
what it did. Compiled code is cached on disk (numba's ``cache=True``: beside the source, or in
the user's cache directory when the install is read-only; ``NUMBA_CACHE_DIR`` moves it), so
only the first process after an install pays the compile.

Every kernel releases the GIL (lt's pool may run them in pieces) and allows reassociation
(``fastmath``'s ``reassoc``/``contract``, so reductions vectorise: results then differ from
NumPy's in the last bits, within the tolerances the tests state; each kernel's order is fixed
by its shapes, so it is deterministic). Division follows NumPy (``error_model="numpy"``: x/0 is
inf or nan, not an exception; Python's check for a zero divisor kept loops from vectorising,
4x slower measured). A ``parallel`` kernel spreads its ``prange`` loop over
:func:`lt.threads.workers` threads, the count the BLAS gets: one policy for both. A kernel may
call another by its name in the module: the callee compiles first.

Habits that decide whether numba vectorises a loop (measured on these machines): no ``/`` (fixed
above), no index with a runtime offset (``c[k + j]``: slice the row first, ``c = C[r][k:]``),
selects rather than ``max()`` (``a if a > b else b``), no Python float literals in float32 code
(they widen it to float64), and no ``np.exp``/``np.tanh`` in hot loops (scalar libm calls here;
the activation and attention kernels inline a polynomial exp that vectorises).
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable
from typing import Any

from ...threads import workers

__all__ = ["kernel", "prange", "twin", "pick", "FASTMATH", "PARALLEL_BYTES"]

prange = range
"""A kernel's parallel loop: ``for i in prange(n)``. Plain ``range`` when the kernel runs as Python
(numba is imported only when a kernel compiles); numba's ``prange`` in the compiled kernel."""

# No "nnan"/"ninf": masked scores and overflowing exponentials must behave as in NumPy.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

# A call moving fewer bytes runs a twin's serial kernel: ~4 ms on one core of the 2-core VMs.
# numba's parallel loop hands each thread a fixed share, so one thread descheduled by a busy
# neighbour stalls the call for a time slice (measured: a 0.2 ms SwiGLU VJP took 20-30 ms beside
# 5 busy processes), and memory-bound passes gain little from a second core there.
PARALLEL_BYTES = 64 << 20


class Kernel:
    """A loop nest compiled by numba at its first call; called like the function it wraps."""

    def __init__(self, fn: Callable[..., Any], parallel: bool):
        self.fn, self.parallel = fn, parallel
        self.compiled: Callable[..., Any] | None = None
        self.__name__, self.__doc__ = fn.__name__, fn.__doc__

    def compile(self) -> Callable[..., Any]:
        # numba's OpenMP threads would spin for milliseconds after each parallel kernel, taking the
        # cores from the BLAS's own threads (gpt2 decoding: 9 tokens/s against NumPy's 40 on 2 cores).
        # Passive, they sleep at once and wake in microseconds. Set before numba starts its threads
        # (at the first parallel kernel); a user's own OMP_WAIT_POLICY wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import numba  # the fast extra; only imported when a kernel first runs

        names = self.fn.__globals__
        if names.get("prange") is range:  # the kernel's module imported this file's prange
            names["prange"] = numba.prange
        for name in self.fn.__code__.co_names:  # kernels this one calls: compiled first, called compiled
            callee = names.get(name)
            if isinstance(callee, Kernel):
                names[name] = callee.compiled or callee.compile()
        compiled = numba.njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy", parallel=self.parallel)(
            self.fn
        )
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


def twin(fn: Callable[..., Any]) -> tuple[Kernel, Kernel]:
    """``(serial, parallel)`` kernels of one loop nest: the serial one for small calls (a parallel
    kernel costs a few microseconds to start, more when a thread was asleep).

    The serial one compiles a copy of ``fn`` under another ``__qualname__``: numba's disk cache
    files are named by it and keyed by signature and bytecode, not by ``parallel``, so two
    compilations of one function would read each other's cached code."""
    serial = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__, fn.__closure__)
    serial.__qualname__ = fn.__qualname__ + "_serial"
    serial.__doc__ = fn.__doc__
    return Kernel(serial, False), Kernel(fn, True)


def pick(pair: tuple[Kernel, Kernel], amount: float, least: float | None = None) -> Kernel:
    """The serial or the parallel kernel of a :func:`twin` for a call of size ``amount``: parallel
    from ``least`` (default ``PARALLEL_BYTES``, for an amount in bytes moved; a compute-bound
    kernel passes its own threshold in flops), whatever the thread count (the parallel one runs on
    :func:`lt.threads.workers` threads, one on a busy machine), so the choice, and the bits (the
    two may sum a row in another order), depend on the shapes alone."""
    return pair[1] if amount >= (PARALLEL_BYTES if least is None else least) else pair[0]
