"""lt's worker pool: independent tasks shared by up to :func:`workers` threads.

Work big enough to pay for handing it to another thread is cut into pieces fixed by the shapes
alone (``cost``) that the workers take from a shared counter, the calling thread among them, any
BLAS call in a piece on one thread. A descheduled worker then holds up only the piece it took,
and the pieces' results do not depend on how many workers there are. Helpers run each job in a
copy of the caller's context, so a piece sees the caller's settings and the count of one: an lt
call inside a piece runs inline and leaves the BLAS alone.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import queue
import threading
from collections.abc import Callable, Sequence

import numpy as np

from . import cost
from .calls import single_blas
from .policy import workers


class _Job:
    """A list of tasks that every participant takes from one counter until none is left."""

    def __init__(self, tasks: Sequence[Callable[[], object]]):
        self.tasks, self.next = tasks, itertools.count()
        self.left, self.lock, self.done = len(tasks), threading.Lock(), threading.Event()
        self.error: BaseException | None = None
        self.context = contextvars.copy_context()

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

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def _serve(self) -> None:
        while True:
            job = self.jobs.get()
            job.context.copy().run(job.work)  # one copy per helper: a context runs in one thread

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
        job.tasks = ()  # a helper keeps its last job: not what the tasks hold (a donated state's arrays)
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
    if len(tasks) == 1 or (us is not None and us < cost.MIN_PARALLEL_US):
        for t in tasks:  # short: inline, like any other call
            t()
        return
    n = workers()
    with single_blas():  # a task's BLAS call must not start threads of its own; workers() is 1 inside
        if n == 1:
            for t in tasks:
                t()
        else:
            _pool.run(tasks, n - 1)


def elementwise(kernel: Callable[..., object], *arrays: np.ndarray, passes: int) -> None:
    """``kernel(*parts)`` over matching blocks of same-shaped arrays, on the free cores.

    ``kernel`` reads its first arguments and writes the rest in place (outputs made by the
    caller, C-contiguous); ``passes`` is how many times it reads or writes each element,
    for the cost estimate that fixes the blocks."""
    if cost.bytes_us(arrays[0].size * passes * arrays[0].itemsize) < cost.MIN_PARALLEL_US:
        kernel(*arrays)  # short: one call, no blocks
        return
    flat = [a.reshape(-1) for a in arrays]
    for a, f in zip(arrays, flat):
        if not np.shares_memory(a, f) and a.size:
            raise ValueError("threads.elementwise needs C-contiguous arrays (a reshape copied one)")
    parts = cost.blocks(flat[0].size, passes * arrays[0].itemsize)
    run([functools.partial(kernel, *(f[s] for f in flat)) for s in parts])
