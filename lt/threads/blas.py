"""NumPy's BLAS: its thread count, one number for the whole process, and whether the user chose it.

lt reaches the BLAS through threadpoolctl (it finds the library loaded at run time); without
threadpoolctl, or for a BLAS it does not know, lt never changes it.

**The user's choice.** lt leaves the BLAS alone when the user has set its thread count, and
tells that by two signs:

- an environment variable that the BLAS reads held a positive count when lt was imported:
  ``OPENBLAS_NUM_THREADS``, ``GOTO_NUM_THREADS`` or ``OMP_NUM_THREADS`` for OpenBLAS,
  ``MKL_NUM_THREADS`` or ``OMP_NUM_THREADS`` for MKL, ``BLIS_NUM_THREADS`` or ``OMP_NUM_THREADS``
  for BLIS (all of them for a BLAS threadpoolctl does not name). Other variables such as
  ``OPENBLAS_CORETYPE`` are not counts; ``0``, ``auto`` or an empty value count as unset.
- the BLAS's count now differs from the one lt expects: the count it had when lt was imported,
  or, while lt holds a setting, the count lt set. ``threadpoolctl.threadpool_limits(n)``,
  ``openblas_set_num_threads`` or any other library's call made after lt's import shows this way.

The user's count is then the BLAS's count (the one before lt's, while a ``pin`` holds it). A
count set without an environment variable before lt was imported (``threadpool_limits(1)`` as
a plain call before ``import lt``) looks like the BLAS's default: lt adapts it.

**Holding a count.** Several lt calls can hold a count at once (nested pieces, or calls in two
Python threads); the count the BLAS had before the first of them comes back when the last ends,
unless someone else changed it meanwhile (then theirs stays). No set call is made when the
BLAS already has the count asked for.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# The variables each BLAS reads for its thread count, in the order it reads them.
ENV_VARS = {
    "openblas": ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"),
    "mkl": ("MKL_NUM_THREADS", "OMP_NUM_THREADS"),
    "blis": ("BLIS_NUM_THREADS", "OMP_NUM_THREADS"),
}
_ANY_BLAS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "OMP_NUM_THREADS")


def env_count(environ: Mapping[str, str], internal_api: str | None) -> int | None:
    """The thread count that ``environ`` gives a BLAS of kind ``internal_api`` ("openblas",
    "mkl", "blis"; None or another: any of their variables), or None where none is set.
    ``OMP_NUM_THREADS`` may list one count per nesting level: the first is the BLAS's."""
    for name in ENV_VARS.get(internal_api or "", _ANY_BLAS):
        value = environ.get(name, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def find() -> list[Any]:
    """threadpoolctl's controllers of NumPy's own BLAS (not torch's); [] without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return []
    found = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
    own = [c for c in found if "numpy" in c.filepath]  # the wheel's numpy.libs/...
    return own or [c for c in found if c.internal_api == "openblas" and "torch" not in c.filepath]


Counts = tuple[int, ...]


class Held:
    """One hold's record: the counts before it and the counts it left the BLAS with."""

    __slots__ = ("before", "mine")

    def __init__(self, before: Counts, mine: Counts):
        self.before, self.mine = before, mine


class Blas:
    """The BLAS's controllers, what the user chose and the holds lt has in force."""

    def __init__(self, controllers: Sequence[Any], environ: Mapping[str, str]):
        self.controllers = list(controllers)
        kind = self.controllers[0].internal_api if self.controllers else None
        self.env = env_count(environ, kind)
        self.lock = threading.Lock()
        self.start = self._counts()  # the count at import: the BLAS's default unless env says
        self.outside = self.start  # the count before the first hold in force
        self.last = self.start  # the count lt last set or found while holding
        self.holds = 0

    def _counts(self) -> Counts:
        return tuple(c.get_num_threads() for c in self.controllers)

    def _set(self, now: Counts, target: Counts) -> Counts:
        for c, m, n in zip(self.controllers, now, target):
            if m != n:
                c.set_num_threads(n)
        return now if now == target else self._counts()  # the BLAS may cap what it is given

    def _explicit(self, now: Counts) -> int | None:
        if now != (self.last if self.holds else self.start):
            return min(now)
        if self.env is None:
            return None
        mine = self.outside if self.holds else now  # while lt holds (a pin): the count before
        return min(mine) if mine else self.env

    def explicit(self) -> int | None:
        """The user's thread count (see the module's docstring), or None when lt may set its own."""
        with self.lock:
            return self._explicit(self._counts())

    def _hold(self, now: Counts, n: int) -> Held:
        if not self.holds:
            self.outside = now
        self.holds += 1
        self.last = self._set(now, (n,) * len(now))
        return Held(now, self.last)

    def hold(self, n: int) -> Held:
        """Put the BLAS on ``n`` threads until :meth:`release` (no set call if it has ``n``)."""
        with self.lock:
            return self._hold(self._counts(), n)

    def enter(self, choose: Callable[[int | None], int], force: bool) -> tuple[int, Held | None]:
        """An lt call's decision, from one look at the BLAS: ``choose(the user's count or None)``
        threads, held unless the user set the count and ``force`` is false (then no hold)."""
        with self.lock:
            now = self._counts()
            user = None if force else self._explicit(now)
            n = choose(user)
            return n, (self._hold(now, n) if user is None else None)

    def release(self, held: Held) -> None:
        """End a hold: the count before it comes back (before the first hold, when this is the last
        in force), unless the BLAS no longer has the count the hold set: someone else's then stays."""
        with self.lock:
            self.holds -= 1
            now = self._counts()
            if now == held.mine:
                self.last = self._set(now, held.before if self.holds else self.outside)


_blas = Blas(find(), os.environ)  # at import: the BLAS's count now is its default or the user's


def explicit() -> int | None:
    """The thread count the user set for the BLAS, or None (see the module's docstring)."""
    return _blas.explicit()


def enter(choose: Callable[[int | None], int], force: bool) -> tuple[int, Held | None]:
    """Decide an lt call's count with ``choose`` and hold it (see :meth:`Blas.enter`)."""
    return _blas.enter(choose, force)


def hold(n: int) -> Held:
    """Put NumPy's BLAS on ``n`` threads until :func:`release` of what this returns."""
    return _blas.hold(n)


def release(held: Held) -> None:
    """End a :func:`hold`: the BLAS's count as it was, unless someone else changed it meanwhile."""
    _blas.release(held)
