"""``lt train --time 5m``: a step count sized to a wall-clock budget, measured, then fixed.

A short warm-up times the run's own training step and evaluation batch (their results are
thrown away: the step is pure), and the budget left is divided among the steps and the
evaluations they bring. The count is then an ordinary ``steps`` in ``run.json``: the run,
once started, is as deterministic and resumable as any other.
"""

from __future__ import annotations

import re
import time

import numpy as np

from .. import data, generate, random
from ..training import make_train_step

__all__ = ["parse_duration", "size_steps"]

_UNITS = {"s": 1, "m": 60, "h": 3600}
# Of the budget, kept for the interpreter's start, checkpoints and a step time that drifts
# (sweep_recipe.py's 5-minute runs with 4% and a best-of-3 step time ended at 294-309 s).
_MARGIN = 0.05


def parse_duration(text: str) -> float:
    """``"300"``, ``"300s"``, ``"5m"``, ``"1.5h"`` -> seconds (> 0)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m or float(m[1]) <= 0:
        raise ValueError(f"--time must be a positive duration such as 300s, 5m or 1.5h, got {text!r}")
    return float(m[1]) * _UNITS[m[2] or "s"]


def _typical(fn, repeats: int) -> float:
    """The median wall time of ``repeats`` calls (the best one is too hopeful for a long run)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def size_steps(model, optimizer, state, settings, train_ids, budget: float, started: float, sample_tokens: int) -> int:
    """How many steps fit in ``budget`` seconds counted from ``started`` (``time.perf_counter``):
    the budget left after this warm-up, less a margin, the final sample and the evaluations,
    divided by the measured step time. At least 1."""
    step = make_train_step(model, optimizer)
    rng = random.fold_in(random.key(settings.seed), "warm-up")
    batch = data.random_windows(rng, train_ids, settings.batch_size, settings.seq_len)
    step(state, batch, rng)  # first call: warm caches
    step_time = _typical(lambda: step(state, batch, rng), 5)
    eval_time = _typical(lambda: model.loss(state.params, batch.inputs, batch.targets), 3)
    prompt = np.asarray(train_ids[:1], np.int64)
    per_token = _typical(lambda: generate.generate(model, state.params, prompt, max_new_tokens=8, temperature=0), 2) / 8
    left = budget * (1 - _MARGIN) - (time.perf_counter() - started) - sample_tokens * per_token
    per_step = step_time + eval_time * settings.eval_batches / settings.eval_every
    return max(1, int(left / per_step))
