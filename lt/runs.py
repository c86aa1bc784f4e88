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
from typing import Any

import attrs
import numpy as np

from . import checkpoint, optim, tokenizers
from .files import atomic_write_text
from .nn import GPT

__all__ = ["RunSettings", "RunFiles", "load_text", "fit_tokenizer", "make_optimizer", "save_settings",
           "load_settings", "load_run"]


@attrs.frozen
class RunSettings:
    """Everything about a run except its params: enough to rebuild data, model and optimizer."""

    model: dict                       # lt.GPT fields
    data: str                         # "corpus:shakespeare" or a file path
    tokenizer: str                    # "char" | "bpe"
    seq_len: int
    batch_size: int
    steps: int
    lr: float
    min_lr: float
    warmup: int
    weight_decay: float
    grad_clip: float
    beta2: float
    seed: int
    eval_every: int
    eval_batches: int
    checkpoint_every: int
    val_fraction: float = 0.1


class RunFiles:
    """The paths inside one run directory."""

    def __init__(self, root):
        self.root = pathlib.Path(root)
        self.settings = self.root / "run.json"
        self.tokenizer = self.root / "tokenizer.json"
        self.checkpoint = self.root / "checkpoint.safetensors"
        self.log = self.root / "log.jsonl"
        self.sample = self.root / "sample.txt"


def load_text(source: str) -> str:
    """The training text: ``corpus:<name>`` for a bundled corpus, else a UTF-8 file path."""
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
    return np.asarray(tokenizer.encode(text), dtype=np.int64)
