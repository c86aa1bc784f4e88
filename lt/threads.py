"""How lt uses the cores: decided per call from the shapes and the machine, not by environment variables.

NumPy's BLAS (OpenBLAS) runs a product on a fixed number of threads that spin-wait for
each other: fast on a quiet machine, a cliff when another process holds a core (one
descheduled thread stalls the rest; a two-core training step once ran 80x slower).

lt decides per call instead. Its entry points (a model's forward, ``value_and_grad``) run
the BLAS on :func:`workers` threads: the cores this process may use less the cores other
processes keep busy (read from ``/proc/stat`` at most every half second), so two on a quiet
2-core machine and one beside a busy process. Work that is big enough to pay for handing it
to another thread (~150-300 us on these VMs) is cut into pieces fixed by the shapes alone —
blocks of an elementwise pass, of the optimizer, of attention (:func:`run`) — that the
workers take from a shared counter, the calling thread among them, any BLAS call in a piece
on one thread. A descheduled worker then holds up only the piece it took, and the pieces'
results do not depend on how many workers there are. Products stay with the BLAS's own
threads: its spin-waiting hand-off beats any other here (cutting gpt2's products into pieces
of one-thread products made its backward 1.5x slower). The BLAS adds up more than ~448 terms
(float32) in an order that depends on its thread count, so the last bits of such products can
differ between a quiet and a busy moment: :func:`pin` fixes the count for runs that must agree
to the bit.

    with lt.threads.limit(1):          # e.g. one MPI rank per core
        state, log = lt.train(...)
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import queue
import resource
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

__all__ = [
    "cores",
    "free_cores",
    "workers",
    "limit",
    "pin",
    "blas_threads",
    "single_blas",
    "adaptive",
    "run",
    "pieces",
    "bytes_us",
    "flops_us",
    "blocks",
    "elementwise",
    "MIN_PARALLEL_US",
    "PIECE_US",
]

# Work is split when one thread would take MIN_PARALLEL_US or more. Waking a worker costs
# ~150-300 us on the project's 2-core VMs (an idle virtual CPU is slow to wake), a helper
# competes with the BLAS's threads while they still spin after a product, and memory-bound
# passes gain little from a second core there (two threads: 1.3x on a 48 MB pass, AdamW on
# 12 M parameters 41 -> 30-37 ms): so only long work is shared, e.g. gpt2's cross-entropy over
# (256, 50257) logits and its optimizer step. Pieces of at least
# PIECE_US keep the hand-offs few. Costs are estimated from the shapes alone (so are the
# pieces): flops at 100 GFLOP/s, or the bytes read and written at 15 GB/s for memory-bound
# passes, whichever is longer (one core of the 2-core machines
# in shared/PERFORMANCE.md).
MIN_PARALLEL_US = 5000.0
PIECE_US = 2500.0
MAX_PIECES = 16
_FLOPS_PER_US = 100e3
_BYTES_PER_US = 15e3
_ALIGN = 8  # piece boundaries on multiples of 8 columns/rows (the kernels' unroll)
_SAMPLE_EVERY = 0.5  # seconds between two readings of the machine's load


# ----------------------------------------------------------------- how many workers


def cores() -> int:
    """The cores this process may run on (its CPU affinity; the CPU count where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class _Load:
    """Cores other processes kept busy over the last sampling interval, from /proc/stat less
    this process's own CPU time. A reading costs ~20 us; it is taken at most every half second."""

    def __init__(self):
        self.last: tuple[float, float, float] | None = None
        self.others = 0.0

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat", "rb") as f:
                fields = f.readline().split()[1:9]
        except OSError:
            return None
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
        busy = (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
        own = resource.getrusage(resource.RUSAGE_SELF)
        return time.monotonic(), busy, own.ru_utime + own.ru_stime

    def cores_used_by_others(self) -> float:
        now = time.monotonic()
        if self.last is not None and now - self.last[0] < _SAMPLE_EVERY:
            return self.others
        sample = self._sample()
        if sample is None:
            return 0.0
        if self.last is not None:
            wall = sample[0] - self.last[0]
            self.others = max(0.0, ((sample[1] - self.last[1]) - (sample[2] - self.last[2])) / wall)
        self.last = sample
        return self.others


_load = _Load()
_limit: int | None = None
_pinned: int | None = None


def free_cores() -> int:
    """Cores this process may use that other processes are not keeping busy (a core counts as
    taken from three quarters busy: a bursty neighbour leaves the BLAS its threads); at least 1."""
    return max(1, cores() - int(_load.cores_used_by_others() + 0.25))


def workers() -> int:
    """How many threads (the caller included) lt uses now: :func:`pin`'s number when one is
    pinned, else the free cores capped by :func:`limit`."""
    if _pinned is not None:
        return _pinned
    n = free_cores()
    return n if _limit is None else max(1, min(n, _limit))


def _check_count(n, what: str) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"{what} takes a positive number of threads or None, got {n!r}")


@contextlib.contextmanager
def limit(n: int | None) -> Iterator[None]:
    """Use at most ``n`` threads for lt's work inside the block (None: no cap)."""
    global _limit
    _check_count(n, "limit")
    previous, _limit = _limit, n
    try:
        yield
    finally:
        _limit = previous


@contextlib.contextmanager
def pin(n: int | None) -> Iterator[None]:
    """Use exactly ``n`` threads inside the block, however busy the machine (None: adapt again).

    For runs that must agree to the last bit across machines' moods: the BLAS adds up long
    products (more than ~448 terms in float32) in an order that depends on its thread count,
    so lt's adaptive choice can change the last bits of mid-sized products between a quiet
    and a busy moment. lt's own pieces never depend on it."""
    global _pinned
    _check_count(n, "pin")
    previous, _pinned = _pinned, n
    try:
        yield
    finally:
        _pinned = previous


# ----------------------------------------------------------------- the BLAS's own threads


class _Blas:
    """NumPy's BLAS through threadpoolctl (a small, well-kept library that finds it at run time),
    with a stack of settings: each ``push`` sets a thread count, its ``pop`` puts back what
    was there. Without threadpoolctl, or for a BLAS it does not know, lt leaves the BLAS alone."""

    def __init__(self):
        self.controllers: list | None = None
        self.saved: list[list[int]] = []
        self.lock = threading.Lock()

    def _find(self) -> list:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return []
        found = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
        own = [c for c in found if "numpy" in c.filepath]  # the wheel's numpy.libs/...
        return own or [c for c in found if c.internal_api == "openblas" and "torch" not in c.filepath]

    def push(self, n: int) -> None:
        with self.lock:
            if self.controllers is None:
                self.controllers = self._find()
            before = [c.get_num_threads() for c in self.controllers]
            self.saved.append(before)
            for c, m in zip(self.controllers, before):
                if m != n:
                    c.set_num_threads(n)

    def pop(self) -> None:
        with self.lock:
            before = self.saved.pop()
            for c, m in zip(self.controllers or (), before):
                if c.get_num_threads() != m:
                    c.set_num_threads(m)


_blas = _Blas()
_depth = threading.local()


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """NumPy's BLAS on ``n`` threads inside the block, as it was afterwards (~3 us)."""
    _blas.push(n)
    try:
        yield
    finally:
        _blas.pop()


def single_blas():
    """NumPy's BLAS on one thread inside the block (lt's pieces, each a one-thread product)."""
    return blas_threads(1)


def adaptive(fn: Callable) -> Callable:
    """Decorator for lt's entry points (a model's forward, ``value_and_grad``): inside the
    outermost call, NumPy's BLAS runs on :func:`workers` threads, decided once per call."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        if getattr(_depth, "n", 0):
            return fn(*args, **kwargs)
        _depth.n = 1
        _blas.push(workers())
        try:
            return fn(*args, **kwargs)
        finally:
            _blas.pop()
            _depth.n = 0

    return wrapped


# ----------------------------------------------------------------- the workers


class _Job:
    """A list of tasks that every participant takes from one counter until none is left."""

    def __init__(self, tasks: Sequence[Callable[[], object]]):
        self.tasks, self.next = tasks, itertools.count()
        self.left, self.lock, self.done = len(tasks), threading.Lock(), threading.Event()
        self.error: BaseException | None = None

    def work(self) -> None:
        for i in self.next:
            if i >= len(self.tasks):
                return
            try:
                self.tasks[i]()
            except BaseException as e:  # reported by the caller, not lost in a thread
                self.error = self.error or e
            with self.lock:
                self.left -= 1
                if not self.left:
                    self.done.set()


class _Pool:
    """Daemon threads that wait for jobs; started on first use, never more than needed."""

    def __init__(self):
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def _serve(self) -> None:
        while True:
            self.jobs.get().work()

    def run(self, tasks: Sequence[Callable[[], object]], helpers: int) -> None:
        job = _Job(tasks)
        helpers = min(helpers, len(tasks) - 1)
        if helpers > 0:
            with self.lock:
                while len(self.threads) < helpers:
                    t = threading.Thread(target=self._serve, name=f"lt-worker-{len(self.threads)}", daemon=True)
                    t.start()
                    self.threads.append(t)
            for _ in range(helpers):
                self.jobs.put(job)
        job.work()
        job.done.wait()
        if job.error is not None:
            raise job.error


_pool = _Pool()


def run(tasks: Sequence[Callable[[], object]], us: float | None = None) -> None:
    """Run every task once, on up to :func:`workers` threads (the caller's included).

    The tasks must be independent (each writes its own part of an output). ``us``, the
    estimated time of them all on one thread, keeps short jobs on the calling thread. An
    exception in a task is raised here after the others finish."""
    if not tasks:
        return
    if len(tasks) == 1 or (us is not None and us < MIN_PARALLEL_US):
        for t in tasks:  # short: inline, like any other call
            t()
        return
    n = workers()
    with single_blas():  # a task's BLAS call must not start threads of its own
        if n == 1 or threading.current_thread().name.startswith("lt-worker"):
            for t in tasks:  # (a task that itself calls run: no nesting)
                t()
        else:
            _pool.run(tasks, n - 1)


# ----------------------------------------------------------------- products


def pieces(size: int, count: int) -> list[slice]:
    """``size`` split into at most ``count`` contiguous slices on multiples of 8 (the last takes the rest)."""
    step = max(_ALIGN, -(-size // count // _ALIGN) * _ALIGN)
    return [slice(lo, min(lo + step, size)) for lo in range(0, size, step)]


def _count(us: float) -> int:
    """How many pieces a job of ``us`` microseconds (one thread) is cut into: 1, 2, 4, 8 or 16
    (powers of two share evenly among 1, 2 or 4 workers), each of at least PIECE_US when split."""
    if us < MIN_PARALLEL_US:
        return 1
    return min(MAX_PIECES, 1 << max(1, int(us // PIECE_US).bit_length() - 1))


def bytes_us(nbytes: float) -> float:
    """One thread's estimated time for a memory-bound pass moving ``nbytes`` bytes, in microseconds."""
    return nbytes / _BYTES_PER_US


def flops_us(flops: float) -> float:
    """One thread's estimated time for ``flops`` floating-point operations in GEMMs, in microseconds."""
    return flops / _FLOPS_PER_US


def blocks(rows: int, bytes_per_row: float) -> list[slice]:
    """Row blocks for memory-bound passes that read and write ``bytes_per_row`` bytes a row:
    one block when one thread would be quick, else 2-16 blocks fixed by the two numbers alone."""
    count = _count(bytes_us(rows * bytes_per_row))
    return [slice(0, rows)] if count == 1 or rows < 2 else pieces(rows, count)


def elementwise(kernel: Callable[..., object], *arrays: np.ndarray, passes: int) -> None:
    """``kernel(*parts)`` over matching blocks of same-shaped arrays, on the free cores.

    ``kernel`` reads its first arguments and writes the rest in place (outputs made by the
    caller, C-contiguous); ``passes`` is how many times it reads or writes each element,
    for the cost estimate that fixes the blocks."""
    if bytes_us(arrays[0].size * passes * arrays[0].itemsize) < MIN_PARALLEL_US:
        kernel(*arrays)  # short: one call, no blocks
        return
    flat = [a.reshape(-1) for a in arrays]
    for a, f in zip(arrays, flat):
        if not np.shares_memory(a, f) and a.size:
            raise ValueError("threads.elementwise needs C-contiguous arrays (a reshape copied one)")
    parts = blocks(flat[0].size, passes * arrays[0].itemsize)
    run([functools.partial(kernel, *(f[s] for f in flat)) for s in parts])
