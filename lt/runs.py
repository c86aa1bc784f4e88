"""Run directories: what the ``lt`` command writes and reads back.

A run directory holds everything needed to resume, sample or evaluate a run::

    run.json                 the run's settings (model config, data, tokenizer, optimizer)
    tokenizer.json           the fitted tokenizer
    checkpoint.safetensors   params, optimizer state and step (lt.checkpoint)
    log.jsonl                one JSON record per log line (step, loss, lr, tok/s, eval)
    sample.txt               the text sampled at the end of training
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, NamedTuple

import attrs
import numpy as np

from . import checkpoint, optim, tokenizers
from ._checks import any_integer, non_negative, number, one_of, positive
from .files import atomic_write_text
from .nn import GPT

__all__ = ["RunSettings", "RunFiles", "Run", "read_training_text", "fit_tokenizer", "make_optimizer",
           "save_settings", "load_settings", "load_run", "encode"]


@attrs.frozen
class RunSettings:
    """Everything about a run except its params: enough to rebuild data, model and optimizer.

    ``run.json`` is these fields; each is checked when the settings are made or read back,
    so a hand-edited file with a bad value is refused naming the field.
    """

    model: dict = attrs.field(validator=attrs.validators.instance_of(dict))   # lt.GPT fields
    data: str = attrs.field(validator=attrs.validators.instance_of(str))      # "corpus:<name>" or a file path
    tokenizer: str = attrs.field(validator=one_of("char", "bpe"))
    seq_len: int = attrs.field(validator=positive)
    batch_size: int = attrs.field(validator=positive)
    steps: int = attrs.field(validator=positive)
    lr: float = attrs.field(validator=number(0, low_open=True))
    min_lr: float = attrs.field(validator=number(0))
    warmup: int = attrs.field(validator=non_negative)
    weight_decay: float = attrs.field(validator=number(0))
    grad_clip: float = attrs.field(validator=number(0, low_open=True))
    beta2: float = attrs.field(validator=number(0, 1, high_open=True))
    seed: int = attrs.field(validator=any_integer)
    eval_every: int = attrs.field(validator=positive)
    eval_batches: int = attrs.field(validator=positive)
    checkpoint_every: int = attrs.field(validator=positive)
    val_fraction: float = attrs.field(default=0.1, validator=number(0, 1, high_open=True))


class RunFiles:
    """The paths inside one run directory."""

    def __init__(self, root):
        self.root = pathlib.Path(root)
        self.settings = self.root / "run.json"
        self.tokenizer = self.root / "tokenizer.json"
        self.checkpoint = self.root / "checkpoint.safetensors"
        self.log = self.root / "log.jsonl"
        self.sample = self.root / "sample.txt"


class Run(NamedTuple):
    """A run ready to train, made once (by rank 0 under MPI, and sent to the others as it is):
    its directory, settings, tokenizer, the token ids of its two parts, and the state to start from."""
    files: RunFiles
    settings: RunSettings
    tokenizer: Any
    train_ids: np.ndarray         # (N,) int64
    val_ids: np.ndarray           # (M,) int64
    state: Any                    # lt.TrainState: fresh, or read from the run's checkpoint


def read_training_text(source: str) -> str:
    """The text a run trains on: ``corpus:<name>`` for a bundled corpus (:func:`lt.corpus.load_text`),
    else the path of a UTF-8 file, which must exist and not be empty."""
    if source.startswith("corpus:"):
        from . import corpus
        return corpus.load_text(source.split(":", 1)[1])
    path = pathlib.Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"data file {source} does not exist")
    text = path.read_text(encoding="utf-8")
    if not text:
        raise ValueError(f"data file {source} is empty")
    return text


def fit_tokenizer(kind: str, text: str, vocab_size: int):
    """A char tokenizer fitted on the whole text, or a BPE tokenizer trained on it."""
    if kind == "char":
        return tokenizers.CharTokenizer.fit(text)
    if kind == "bpe":
        return tokenizers.BPETokenizer.train(text, vocab_size)
    raise ValueError(f"tokenizer must be 'char' or 'bpe', got {kind!r}")


def make_optimizer(s: RunSettings) -> optim.GradientTransformation:
    """Clipping then AdamW on a warmup + cosine schedule (nanoGPT's recipe)."""
    schedule = optim.warmup_cosine(s.lr, s.warmup, max(s.steps, s.warmup + 1), end=s.min_lr)
    return optim.chain(optim.clip_by_global_norm(s.grad_clip),
                       optim.adamw(schedule, b2=s.beta2, weight_decay=s.weight_decay))


def save_settings(files: RunFiles, settings: RunSettings) -> None:
    text = json.dumps(attrs.asdict(settings), indent=2, sort_keys=True) + "\n"
    atomic_write_text(files.settings, text)


def load_settings(files: RunFiles) -> RunSettings:
    if not files.settings.is_file():
        raise FileNotFoundError(f"{files.root} is not a run directory (no {files.settings.name}); "
                                "make one with `lt train --out DIR`")
    try:
        return RunSettings(**json.loads(files.settings.read_text()))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{files.settings} is not a valid run settings file: {e}") from None


def load_run(root) -> tuple[RunSettings, GPT, Any, Any]:
    """``(settings, model, params, tokenizer)`` of a trained run directory."""
    files = RunFiles(root)
    settings = load_settings(files)
    if not files.checkpoint.is_file():
        raise FileNotFoundError(f"{files.root} has no checkpoint yet ({files.checkpoint.name})")
    model, params = checkpoint.load_model(files.checkpoint)
    return settings, model, params, tokenizers.load(files.tokenizer)


def encode(tokenizer, text: str) -> np.ndarray:
    """``text``'s token ids as a (N,) int64 array."""
    return np.asarray(tokenizer.encode(text), dtype=np.int64)
