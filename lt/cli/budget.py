"""``lt train --time 5m``: a step count sized to a wall-clock budget, and a deadline that keeps it.

A short warm-up times the run's own training step and evaluation batch (their results are
thrown away: the step is pure), and the budget left is divided among the steps and the
evaluations they bring. The count is then an ordinary ``steps`` in ``run.json``. The budget
counts from the command's start (the process's, when ``lt`` is the program) to its end, the
final checkpoint and sample included, and it is a promise: as the run goes, a
:class:`Deadline` reads the clock after each step and ends the run early when one more step
would pass it (a machine slower than during the warm-up). ``run.json`` then records the steps
done, so that ``--resume`` finds the run complete, and resumes exactly like any other run. A
machine faster than during the warm-up is caught halfway through the warmup
(:func:`resize_step`): the run measures its own pace there and adds the steps that fit
(:func:`resized`); the warmup's rates do not depend on the run's length, so the run equals one
sized so from the start.
"""

from __future__ import annotations

import math
import os
import re
import time
from typing import NamedTuple

import numpy as np

from .. import data, generate, random, tree
from ..training import due, make_train_step

__all__ = ["parse_duration", "size_steps", "Sizing", "Deadline", "end_of", "program_start", "resize_step", "resized"]

_UNITS = {"s": 1, "m": 60, "h": 3600}
# Of the budget, kept for the interpreter's exit and a last step slower than the ones before (a
# run ends by its clock before budget * (1 - _END)): the budget holds within 2% on a machine
# that slows down (the finish's costs are scaled up with the steps', so they are seldom short).
_END = 0.005
# Of the time left after the warm-up, kept when sizing the steps (the clock stops a run whose
# steps turn out slower than the warm-up's; the last 1% of a cosine schedule is at its minimum).
_MARGIN = 0.01
# Bytes a second a checkpoint is assumed to be written at (serialized and on disk; conservative).
_CHECKPOINT_RATE = 200e6
# The step time is the median of this many recent steps (a slowdown shows within a few steps).
_WINDOW = 8

clock = time.perf_counter  # every time of a budget is read on this clock (a test may replace it)


def parse_duration(text: str) -> float:
    """``"300"``, ``"300s"``, ``"5m"``, ``"1.5h"`` -> seconds (> 0 and finite)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m or float(m[1]) <= 0:
        raise ValueError(f"--time must be a positive duration such as 300s, 5m or 1.5h, got {text!r}")
    seconds = float(m[1]) * _UNITS[m[2] or "s"]
    if not math.isfinite(seconds):  # a number past float's range reads as inf
        raise ValueError(f"--time must be a finite duration such as 300s, 5m or 1.5h, got {text!r} (too large)")
    return seconds


def _typical(fn, repeats: int) -> float:
    """The median wall time of ``repeats`` calls (the best one is too hopeful for a long run)."""
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return float(np.median(times))


def program_start() -> float | None:
    """When this process started, on :data:`clock`, or None where it cannot be read (not Linux).

    From ``/proc/self/stat``'s start time (clock ticks since boot) and ``CLOCK_BOOTTIME``."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # after "pid (comm)": state is field 3
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return clock() - max(age, 0.0)


def _sample_time(model, params, train_ids, tokens: int) -> float:
    """The time of sampling ``tokens`` tokens, from 8 decoded after half a context (the sample
    slides its window by half a context, so its tokens see half of one on average)."""
    T = model.max_seq_len
    n = min(8, T - 1)
    if tokens <= 0 or n <= 0:
        return 0.0
    prompt = np.asarray(train_ids[: max(1, min(T // 2, T - n))], np.int64)
    return tokens * _typical(lambda: generate.generate(model, params, prompt, max_new_tokens=n, temperature=0), 2) / n


class Sizing(NamedTuple):
    """What the warm-up measured (seconds) and the steps that fit."""

    steps: int
    step_time: float  # one training step
    eval_time: float  # one evaluation (eval_batches batches); 0 without validation text
    checkpoint_time: float  # one checkpoint (estimated from its size)
    sample_time: float  # the final sample


def size_steps(
    model, optimizer, state, settings, train_ids, end: float, sample_tokens: int, evaluating: bool = True
) -> Sizing:
    """How many steps fit before ``end`` (on :data:`clock`), and the times measured to size them:
    the time left after this warm-up, less a margin, the final evaluation, checkpoint and sample,
    divided by the measured step time and its share of the periodic evaluations and checkpoints.
    At least 1 step."""
    step = make_train_step(model, optimizer)
    rng = random.fold_in(random.key(settings.seed), "warm-up")
    batch = data.random_windows(rng, train_ids, settings.batch_size, settings.seq_len)
    step(state, batch, rng)  # first call: warm caches
    step_time = _typical(lambda: step(state, batch, rng), 5)
    eval_time = settings.eval_batches * _typical(lambda: model.loss(state.params, batch.inputs, batch.targets), 3)
    eval_time = eval_time if evaluating else 0.0
    checkpoint_time = (tree.nbytes(state.params) + tree.nbytes(state.opt_state)) / _CHECKPOINT_RATE
    sample_time = _sample_time(model, state.params, train_ids, sample_tokens)
    left = (end - clock()) * (1 - _MARGIN) - eval_time - checkpoint_time - sample_time
    per_step = step_time + eval_time / settings.eval_every + checkpoint_time / settings.checkpoint_every
    return Sizing(max(1, int(left / per_step)), step_time, eval_time, checkpoint_time, sample_time)


def resize_step(warmup: int, steps: int) -> int | None:
    """The step after which a ``--time`` run measures its own pace and may add steps: halfway
    through the warmup, whose learning rates do not depend on the run's length (so a run
    re-sized there equals one sized so from the start). None when the warmup is too short to
    measure over (under 20 steps)."""
    k = min(warmup, steps) // 2
    return k if k >= 10 else None


def resized(sizing: Sizing, done: int, pace: float, end: float, *, eval_every: int, checkpoint_every: int) -> Sizing:
    """``sizing`` for a run that has made ``done`` steps at ``pace`` seconds each: the steps that
    fit before ``end`` at that pace (more or fewer than planned, so that the schedule ends with
    the budget), with ``pace`` as the step time from now on."""
    s = sizing._replace(step_time=pace)
    left = (end - clock()) * (1 - _MARGIN) - s.eval_time - s.checkpoint_time - s.sample_time
    per_step = pace + s.eval_time / eval_every + s.checkpoint_time / checkpoint_every
    return s._replace(steps=done + max(1, int(left / per_step)))


def end_of(started: float, budget: float) -> float:
    """The time on :data:`clock` by which a run of ``budget`` seconds from ``started`` stops
    (a margin before the budget is kept for the interpreter's exit)."""
    return started + budget * (1 - _END)


class Deadline:
    """``stop(step)`` for :func:`lt.train`: True once one more step would end the run after ``end``.

    After step ``k`` (at time ``now`` on :data:`clock`) the run goes on only if
    ``now + (jobs after k + one step + finish) * slowdown <= end``, every cost the warm-up's: the
    jobs are the evaluation and checkpoint due after ``k``, the finish the last evaluation,
    checkpoint and sample. ``slowdown`` is the median, over the last few steps, of the time
    between two calls over what the warm-up's costs predicted for it (1 until there is one), at
    least 1 for the jobs and the finish: a machine that turns slower is followed within a few steps.
    """

    def __init__(self, end: float, sizing: Sizing, *, eval_every: int, checkpoint_every: int):
        self.end, self.sizing = end, sizing
        self.eval_every, self.checkpoint_every = eval_every, checkpoint_every
        self.last: tuple[int, float] | None = None  # (step, time) of the previous call
        self.ratios: list[float] = []  # recent steps: time taken / time the warm-up predicted
        self.mark: int | None = None  # a step whose time is noted (when it is reached) in ``marked``
        self.marked: float | None = None

    def _jobs(self, step: int) -> float:
        """The warm-up's seconds of the jobs :func:`lt.train` runs after ``step``."""
        s = self.sizing
        return s.eval_time * due(step, self.eval_every) + s.checkpoint_time * due(step, self.checkpoint_every)

    def __call__(self, step: int) -> bool:
        now, s = clock(), self.sizing
        if step == self.mark:
            self.marked = now
        if self.last is not None and step == self.last[0] + 1:
            predicted = self._jobs(self.last[0]) + s.step_time
            if predicted > 0:
                self.ratios = (self.ratios + [(now - self.last[1]) / predicted])[-_WINDOW:]
        self.last = (step, now)
        slowdown = float(np.median(self.ratios)) if self.ratios else 1.0
        finish = s.eval_time + s.checkpoint_time + s.sample_time
        return now + s.step_time * slowdown + (self._jobs(step) + finish) * max(slowdown, 1.0) > self.end
