"""One home for argument checks: each public function checks a value once, here.

Scalars that are the wrong kind or out of range raise ``ValueError`` naming the argument
(``max_new_tokens must be an integer >= 0, got 2.5``); arrays of the wrong dtype raise
``TypeError``. Booleans are never accepted as numbers. The ``attrs`` validators at the
bottom apply the same rules to config fields, naming ``Class.field``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = [
    "is_int",
    "is_real",
    "integer",
    "real",
    "choice",
    "index_array",
    "positive",
    "non_negative",
    "probability",
    "number",
    "any_integer",
    "one_of",
    "as_tuple",
]


def is_int(value) -> bool:
    """An ``int`` or NumPy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """An ``int``, ``float`` or NumPy real number, not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _span(low, high, low_open: bool = False, high_open: bool = True) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""


def integer(value, name: str, low: int | None = None, high: int | None = None, hint: str = "") -> int:
    """``value`` as an ``int`` in ``[low, high)`` (either bound optional), or a ValueError
    naming ``name``, the range and the value; ``hint`` is added to the message."""
    if not is_int(value) or (low is not None and value < low) or (high is not None and value >= high):
        span = _span(low, high)
        raise ValueError(f"{name} must be an integer{' ' + span if span else ''}{hint}, got {value!r}")
    return int(value)


def real(
    value,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    hint: str = "",
) -> float:
    """``value`` as a finite ``float`` within the bounds (closed unless ``*_open``), or a
    ValueError naming ``name``."""
    ok = is_real(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        span = _span(low, high, low_open, high_open)
        raise ValueError(f"{name} must be a finite number{' ' + span if span else ''}{hint}, got {value!r}")
    return float(value)


def choice(value, name: str, choices) -> object:
    """``value`` if it is one of ``choices``, else a ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def index_array(values, size: int, name: str, within: str = "the vocabulary") -> np.ndarray:
    """``values`` as an integer array inside ``[0, size)``: a TypeError for another dtype, a
    ValueError naming ``name``, the first offending value, its position and the range
    (``within`` says what the range is: the vocabulary, the positions, ...). A value batched by
    ``lt.vmap`` is checked member by member and returned as it is."""
    plain = getattr(values, "plain_values", None)
    if plain is not None:
        index_array(plain(), size, name, within)
        return values
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {values.dtype}")
    if values.size and (values.min() < 0 or values.max() >= size):  # the cheap test first
        bad = (values < 0) | (values >= size)
        where = np.argwhere(bad)[0]
        at = int(where[0]) if values.ndim == 1 else tuple(int(i) for i in where)
        more = f" ({int(bad.sum())} values out of range)" if bad.sum() > 1 else ""
        raise ValueError(f"{name}: {values[tuple(where)]} at position {at} is outside {within} [0, {size}){more}")
    return values


# ------------------------------------------------------------------ attrs validators


def _field(instance, attribute) -> str:
    return f"{type(instance).__name__}.{attribute.name}"


def positive(instance, attribute, value) -> None:
    """attrs validator: an integer > 0."""
    if not is_int(value) or value <= 0:
        raise ValueError(f"{_field(instance, attribute)} must be a positive integer, got {value!r}")


def non_negative(instance, attribute, value) -> None:
    """attrs validator: an integer >= 0."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{_field(instance, attribute)} must be an integer >= 0, got {value!r}")


def probability(instance, attribute, value) -> None:
    """attrs validator: a rate in [0, 1) (dropout)."""
    if not is_real(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{_field(instance, attribute)} must be in [0, 1), got {value!r}")


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False):
    """attrs validator: a finite real number within the bounds (as :func:`real`)."""

    def check(instance, attribute, value):
        real(value, _field(instance, attribute), low, high, low_open=low_open, high_open=high_open)

    return check


def any_integer(instance, attribute, value) -> None:
    """attrs validator: an integer of any sign (a seed)."""
    if not is_int(value):
        raise ValueError(f"{_field(instance, attribute)} must be an integer, got {value!r}")


def one_of(*choices):
    """attrs validator: one of the given values."""

    def check(instance, attribute, value):
        if value not in choices:
            raise ValueError(f"{_field(instance, attribute)} must be one of {choices}, got {value!r}")

    return check


def as_tuple(items: Iterable[Any]) -> tuple[Any, ...]:
    """attrs converter: ``tuple(items)``. Typed, unlike the generic ``tuple`` builtin, so that
    type checkers accept any iterable (a list, a generator) where the field is built."""
    return tuple(items)
