"""lt's calls: the thread count decided once, where a call enters lt, and the BLAS set to it.

``adaptive`` marks lt's entry points (a model's forward, a layer's apply, ``value_and_grad``).
Only the outermost of them in a thread or task decides: it takes :func:`policy.choose`'s count,
puts the BLAS on it (unless the user set the BLAS's count: then it leaves the BLAS alone and
only caps lt's own workers) and puts the BLAS back when it returns. A nested entry costs one
context-variable read and no call into the BLAS. :func:`blas_threads` fixes the count for a
block, nested lt calls included; lt's pieces run under :func:`single_blas`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from . import blas, policy

F = TypeVar("F", bound=Callable[..., Any])
_decided = policy.decided


def adaptive(fn: F) -> F:
    """Decorator for lt's entry points: inside the outermost call, NumPy's BLAS runs on
    :func:`workers` threads, decided once for the whole call."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        if _decided.get() is not None:  # nested: decided where the call entered lt
            return fn(*args, **kwargs)
        n, held = blas.enter(policy.choose, force=policy.pinned() is not None)  # no hold: the user's count
        token = _decided.set(n)
        try:
            return fn(*args, **kwargs)
        finally:
            _decided.reset(token)
            if held is not None:
                blas.release(held)

    return wrapped  # type: ignore[return-value]


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """NumPy's BLAS on ``n`` threads inside the block, lt's calls in it included; as it was after."""
    held = blas.hold(n)
    token = _decided.set(n)
    try:
        yield
    finally:
        _decided.reset(token)
        blas.release(held)


def single_blas() -> contextlib.AbstractContextManager[None]:
    """NumPy's BLAS on one thread inside the block (lt's pieces, each a one-thread product)."""
    return blas_threads(1)
