"""Which implementation the primitives run: the compiled kernels or the NumPy reference.

``LT_KERNELS`` (read at each call, so a test may set it) says ``auto`` (the default: the
kernels where numba is installed, NumPy elsewhere), ``numba`` (the kernels, or an error
naming the missing extra) or ``numpy`` (the reference, always there). :func:`use` sets the
same choice for a block of code, context-locally, and wins over the environment.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
from collections.abc import Iterator

__all__ = ["CHOICES", "active", "available", "enabled", "use"]

CHOICES = ("auto", "numba", "numpy")
_chosen: contextvars.ContextVar[str | None] = contextvars.ContextVar("lt_kernels", default=None)


@functools.cache
def available() -> bool:
    """Whether numba is installed (the ``fast`` extra); checked once, without importing it."""
    return importlib.util.find_spec("numba") is not None


def _check(choice: str, where: str) -> str:
    if choice not in CHOICES:
        raise ValueError(f"{where}={choice!r}: expected one of {', '.join(CHOICES)}")
    return choice


def active() -> str:
    """``"numba"`` or ``"numpy"``: what a primitive called here and now runs."""
    choice = _chosen.get() or _check(os.environ.get("LT_KERNELS", "auto").strip().lower() or "auto", "LT_KERNELS")
    if choice == "numpy":
        return "numpy"
    if available():
        return "numba"
    if choice == "numba":
        raise RuntimeError("LT_KERNELS=numba, but numba is not installed: pip install 'lt[fast]' (or LT_KERNELS=numpy)")
    return "numpy"


def enabled() -> bool:
    """True where the primitives run their compiled kernels."""
    return active() == "numba"


@contextlib.contextmanager
def use(choice: str) -> Iterator[None]:
    """Run the block on ``"numba"`` kernels, the ``"numpy"`` reference, or ``"auto"``; as before after.

    >>> with lt.ops.kernels.use("numpy"):   # the reference, e.g. to compare the two
    ...     logits = model.apply(params, ids)
    """
    token = _chosen.set(_check(choice, "kernels.use"))
    try:
        active()  # "numba" without numba fails here, not at the first primitive
        yield
    finally:
        _chosen.reset(token)
