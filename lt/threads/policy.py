"""How many threads lt uses: the free cores, capped by :func:`limit` and by the user's own BLAS
setting, or exactly :func:`pin`'s number.

The settings are context-local (``contextvars``): each Python thread and each asyncio task keeps
its own, so two threads pinning different counts do not overwrite each other (a new thread
starts with none). Inside an lt call the count is the one decided when the call began
(``decided``), so the whole call, its nested calls and its pieces see one number.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from . import blas, load

_limit: ContextVar[int | None] = ContextVar("lt.threads.limit", default=None)
_pin: ContextVar[int | None] = ContextVar("lt.threads.pin", default=None)
# The count decided for the lt call in progress in this context (None: no call in progress).
decided: ContextVar[int | None] = ContextVar("lt.threads.decided", default=None)


def free_cores() -> int:
    """Cores this process may use that other processes are not keeping busy (a core counts as
    taken from three quarters busy: a bursty neighbour leaves the BLAS its threads); at least 1."""
    return max(1, load.cores() - int(load.cores_used_by_others() + 0.25))


def pinned() -> int | None:
    """:func:`pin`'s number in this context, or None."""
    return _pin.get()


def choose(user: int | None) -> int:
    """The count for a new lt call, given the user's BLAS count (``None``: not set): pinned,
    else the free cores capped by :func:`limit` and by the user's count."""
    n = _pin.get()
    if n is not None:
        return n
    n, cap = free_cores(), _limit.get()
    if cap is not None:
        n = min(n, cap)
    if user is not None:
        n = min(n, user)
    return max(1, n)


def workers() -> int:
    """How many threads (the caller included) lt uses now: inside an lt call the count decided
    when it began; else :func:`pin`'s number when one is pinned, else the free cores capped by
    :func:`limit` and by the BLAS count the user set (an environment variable or threadpoolctl)."""
    n = decided.get()
    return n if n is not None else choose(blas.explicit())


def fixed() -> int | None:
    """The BLAS thread count lt's calls will use if it does not change with the machine's load,
    else None: :func:`pin`'s number, the user's own count, or 1 under ``limit(1)`` or on one core.

    Runs that must agree to the last bit (a resumed training run and an uninterrupted one) need
    the same count throughout: the BLAS adds up long products in an order that depends on it."""
    n = _pin.get()
    if n is not None:
        return n
    user = blas.explicit()
    if user is not None:
        return user
    return 1 if _limit.get() == 1 or load.cores() == 1 else None


def _check_count(n: object, what: str) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"{what} takes a positive number of threads or None, got {n!r}")


@contextlib.contextmanager
def limit(n: int | None) -> Iterator[None]:
    """Use at most ``n`` threads for lt's work inside the block (None: no cap), in this thread or task."""
    _check_count(n, "limit")
    token = _limit.set(n)
    try:
        yield
    finally:
        _limit.reset(token)


@contextlib.contextmanager
def pin(n: int | None) -> Iterator[None]:
    """Use exactly ``n`` threads inside the block, however busy the machine and whatever the
    user's BLAS setting (None: adapt again), in this thread or task.

    For runs that must agree to the last bit: the BLAS adds up long products (more than 448 terms
    in float32 with NumPy's OpenBLAS on the machines measured) in an order that depends on its
    thread count, so an adaptive count can change the last bits of such products between a quiet
    and a busy moment. lt's own pieces never depend on it."""
    _check_count(n, "pin")
    token = _pin.set(n)
    try:
        yield
    finally:
        _pin.reset(token)
