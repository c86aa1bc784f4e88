"""``lt train --resume``: the flags repeated from the command that made a run must equal its
saved settings; only ``--steps`` may change."""

from __future__ import annotations

import pathlib

import attrs

from ..nn import GPT, PRESETS
from ..runs import RunSettings
from .common import UsageError

__all__ = ["check_resume_flags"]

# Flags that are not run settings: free to differ on --resume (a run's step count is fixed in run.json
# once --time has sized it)
_NOT_SETTINGS = {"command", "steps", "out", "resume", "mpi", "tensor_parallel", "sample_tokens", "time"}
_NOT_SETTINGS |= {"recipe", "log_every"}  # run.json holds the recipe's values; logging changes no result
_NOT_SETTINGS |= {"remat", "ensemble"}  # remat changes no number; an ensemble is refused on resume
# lt.GPT fields a run's --model-option usually sets on its preset (the speedrun's options)
_OPTION_FIELDS = ("qk_norm", "logit_softcap", "zero_init_projections", "activation", "tie_embeddings")


def _saved_flag(flag: str, saved: RunSettings, tokenizer, given=None):
    """The value of ``--flag`` that the saved run was made with (what the flag's own parse gives)."""
    model = GPT(**saved.model)
    if flag == "model_option":  # the given fields, with the run's model's values
        return [(field, getattr(model, field)) for field, _ in given]
    if flag == "preset":  # the preset whose layers, heads and widths the model has
        fixed = dict(vocab_size=model.vocab_size, max_seq_len=model.max_seq_len, dropout=model.dropout)
        fixed |= {f: getattr(model, f) for f in _OPTION_FIELDS}  # what --model-option may have set
        return next((name for name in PRESETS if GPT.preset(name, **fixed) == model), "a custom model")
    if flag == "dropout":
        return model.dropout
    if flag == "vocab_size":
        return tokenizer.vocab_size
    return getattr(saved, flag)


def _same_path(given: str, saved) -> bool:
    """The same string, or two spellings of one existing file or directory."""
    if saved is None or given == saved:
        return given == saved
    a, b = pathlib.Path(given), pathlib.Path(saved)
    return a.exists() and b.exists() and a.samefile(b)


def check_resume_flags(args, saved: RunSettings, tokenizer) -> RunSettings:
    """The saved settings, with ``--steps`` if given. Flags repeated from the command that made
    the run are accepted when they equal its settings; one that differs is refused, named with
    both values (a resumed run keeps its settings)."""
    given = {k: v for k, v in vars(args).items() if v is not None and k not in _NOT_SETTINGS}
    if saved.tokenizer == "char":
        given.pop("vocab_size", None)  # a char run ignores --vocab-size, as when it was made
    changed = []
    for flag, value in sorted(given.items()):
        was = _saved_flag(flag, saved, tokenizer, value)
        same = _same_path(str(value), was) if flag in ("data", "init_hf") else value == was
        if not same:
            changed.append(f"--{flag.replace('_', '-')} {value} (the run has {was})")
    if changed:
        raise UsageError(
            f"lt train --resume keeps the run's saved settings; {'; '.join(changed)}: "
            "drop the flag or start a new run with another --out (only --steps may change)"
        )
    # The schedule keeps spanning the run's first steps (a run made before schedule_steps was
    # recorded: the steps it was made with), so extending it never re-fits the rates already used.
    return attrs.evolve(
        saved,
        steps=args.steps or saved.steps,
        schedule_steps=saved.steps if saved.schedule_steps is None else saved.schedule_steps,
    )
