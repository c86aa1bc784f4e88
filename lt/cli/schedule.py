"""A new run's learning-rate schedule fitted to its step count: the recipe's warmup cut to fit
a short run, and the re-sizing a ``--time`` run makes halfway through its warmup."""

from __future__ import annotations

import attrs

from ..runs import RunSettings
from .common import UsageError
from .recipes import recipe_defaults

__all__ = ["fit_schedule", "refit", "warmup_note", "default_log_every"]


def fit_schedule(args, settings: RunSettings) -> RunSettings:
    """A new run's settings once its step count is known: the schedule spans the steps (see
    :func:`lt.runs.make_optimizer`), and its warmup ends before the run does.

    A recipe's warmup is cut to its share ``warmup_cap`` of the run (a fifth; a tenth for
    ``finetune``; :func:`warmup_note` says so): 200 steps of warmup would leave a 20-step run
    far below its peak rate. An explicit ``--warmup`` is kept, and refused if the run ends first."""
    steps = settings.steps
    if args.warmup is not None:
        if args.warmup >= steps:
            how = f"--steps {steps}" if settings.time_budget is None else f"sized for --time {args.time}"
            raise UsageError(
                f"--warmup {args.warmup} does not end before the run's {steps} steps ({how}): the learning rate "
                f"would never reach --lr {settings.lr:g}; give --warmup below {steps}, or leave it out "
                "(a recipe's warmup is cut to fit the run)"
            )
        return attrs.evolve(settings, schedule_steps=steps)
    share = recipe_defaults(args)["warmup_cap"]
    cap = int(steps * share + 1e-9)
    return attrs.evolve(settings, warmup=min(settings.warmup, cap), schedule_steps=steps)


def refit(args, settings: RunSettings, steps: int) -> RunSettings | None:
    """``settings`` re-sized to ``steps`` halfway through the warmup, or None where that would
    change a rate already used (a warmup cut differently) or nothing at all."""
    if steps == settings.steps or (args.warmup is not None and args.warmup >= steps):
        return None
    fitted = fit_schedule(args, attrs.evolve(settings, steps=steps))
    return fitted if fitted.warmup == settings.warmup else None


def warmup_note(args, settings: RunSettings) -> str:
    """What the run's first line adds when a new run's recipe warmup was cut to fit the run."""
    recipe = recipe_defaults(args)
    if args.resume or args.warmup is not None or settings.warmup >= recipe["warmup"]:
        return ""
    return (
        f"; warmup {settings.warmup} steps (the recipe's {recipe['warmup']} cut to {recipe['warmup_cap']:.0%} of "
        "the run; give --warmup to choose)"
    )


def default_log_every(steps: int) -> int:
    """Steps between log records: 50, or fewer in a run under 1,000 steps, so it has 20 records."""
    return max(1, min(50, steps // 20))
