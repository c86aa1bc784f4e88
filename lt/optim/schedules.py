"""Learning-rate schedules: functions from the number of updates already applied to a rate.

A schedule is any callable ``step -> float``; ``step`` is 0 for the first update. Optimizers
accept a float (a constant rate) or a schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .._checks import integer, real

__all__ = [
    "Schedule",
    "constant",
    "linear_warmup",
    "cosine_decay",
    "warmup_cosine",
    "warmup_stable_decay",
    "as_schedule",
]

Schedule = Callable[[int], float]


def constant(value: float) -> Schedule:
    """The same rate at every step."""
    real(value, "value", 0)
    return lambda step: float(value)


def linear_warmup(peak: float, warmup: int, init: float = 0.0) -> Schedule:
    """From ``init`` up to ``peak`` linearly over ``warmup`` steps, then ``peak``.

    Step 0 gets ``init + (peak - init) / warmup``, so the first update is not wasted at 0.
    """
    real(peak, "peak", 0)
    real(init, "init", 0)
    integer(warmup, "warmup", 0)
    if warmup == 0:
        return constant(peak)
    return lambda step: float(peak) if step >= warmup else init + (peak - init) * (step + 1) / warmup


def cosine_decay(init: float, total: int, end: float = 0.0) -> Schedule:
    """Half a cosine from ``init`` at step 0 to ``end`` at step ``total``, then ``end``."""
    real(init, "init", 0)
    real(end, "end", 0)
    integer(total, "total", 1)

    def schedule(step: int) -> float:
        frac = min(step, total) / total
        return end + (init - end) * 0.5 * (1.0 + math.cos(math.pi * frac))

    return schedule


def warmup_cosine(peak: float, warmup: int, total: int, end: float = 0.0) -> Schedule:
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine decay to ``end``.

    ``total`` counts every step, warmup included (optax's convention): the cosine runs
    over steps ``warmup .. total`` and reaches ``end`` exactly at step ``total``.
    """
    integer(warmup, "warmup", 0)
    integer(total, "total", warmup + 1, hint=f" (it counts the {warmup} warmup steps too)")
    ramp, decay = linear_warmup(peak, warmup), cosine_decay(peak, total - warmup, end)
    return lambda step: ramp(step) if step < warmup else decay(step - warmup)


def warmup_stable_decay(peak: float, warmup: int, total: int, decay: int, end: float = 0.0) -> Schedule:
    """Warmup–stable–decay (a trapezoid): linear warmup to ``peak`` over ``warmup`` steps, ``peak``
    until the last ``decay`` steps, then a straight line down to ``end`` at step ``total``.

    ``total`` counts every step, warmup included. Until the decay begins, the rates do not
    depend on ``total``: a run can be lengthened (or its budget re-sized) while it is stable,
    and only the decay, taken at the end, needs to know where the end is.
    """
    integer(warmup, "warmup", 0)
    integer(decay, "decay", 1)
    integer(total, "total", warmup + decay, hint=f" (it counts the {warmup} warmup and {decay} decay steps)")
    real(end, "end", 0)
    ramp, start = linear_warmup(peak, warmup), total - decay

    def schedule(step: int) -> float:
        if step < warmup:
            return ramp(step)
        if step <= start:  # the decay's first step is still at the peak
            return float(peak)
        return end + (peak - end) * max(total - step, 0) / decay

    return schedule


def as_schedule(learning_rate) -> Schedule:
    """A float becomes a constant schedule; a callable is used as it is."""
    if callable(learning_rate):
        return learning_rate
    return constant(learning_rate)
