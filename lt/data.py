"""Data: the bundled corpus (from lt.corpus), and batches from a token array.

A batch is ``(inputs, targets)``, both (B, T) int64, with ``targets`` the inputs shifted by
one token. Random windows come from a key, so the batch of training step ``s`` is
``random_windows(fold_in(data_rng, s), ...)`` and resuming needs no generator state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from . import random
from ._checks import integer, real
from .corpus import CorpusUnavailableError, corpora, load_play, load_text, plays, train_val_split_text

__all__ = [
    "Batch",
    "train_val_split",
    "random_windows",
    "sequential_windows",
    "CorpusUnavailableError",
    "corpora",
    "load_play",
    "load_text",
    "plays",
    "train_val_split_text",
]


class Batch(NamedTuple):
    inputs: np.ndarray  # (B, T) token ids
    targets: np.ndarray  # (B, T) the next token of each input


def _check_tokens(tokens, seq_len: int) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise TypeError(f"tokens must be a 1-D integer array, got {tokens.dtype} of shape {tokens.shape}")
    integer(seq_len, "seq_len", 1)
    if len(tokens) < seq_len + 1:
        raise ValueError(f"need at least seq_len + 1 = {seq_len + 1} tokens for one window, got {len(tokens)}")
    return tokens


def train_val_split(tokens, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation): the first ``1 - val_fraction`` of the tokens, and the rest.

    A contiguous split, so validation text is never seen in training windows. The validation
    part has ``round(len(tokens) * val_fraction)`` tokens; ``val_fraction`` is in [0, 1), and
    0 gives an empty one (the same rule as :func:`lt.corpus.train_val_split_text`).
    """
    val_fraction = real(val_fraction, "val_fraction", 0, 1, high_open=True)
    tokens = np.asarray(tokens)
    cut = len(tokens) - round(len(tokens) * val_fraction)
    return tokens[:cut], tokens[cut:]


def random_windows(rng: random.Key, tokens, batch_size: int, seq_len: int) -> Batch:
    """``batch_size`` windows at uniformly random starts drawn from ``rng``."""
    integer(batch_size, "batch_size", 1)
    tokens = _check_tokens(tokens, seq_len)
    starts = random.randint(rng, (batch_size,), 0, len(tokens) - seq_len)  # (B,)
    idx = starts[:, None] + np.arange(seq_len)  # (B, T)
    return Batch(tokens[idx].astype(np.int64), tokens[idx + 1].astype(np.int64))


def sequential_windows(tokens, batch_size: int, seq_len: int, max_batches: int | None = None) -> Iterator[Batch]:
    """Non-overlapping windows from the start, in order, for evaluation (the same every time).

    The last batch may be smaller; a tail shorter than a window is left out.
    """
    integer(batch_size, "batch_size", 1)
    if max_batches is not None:
        integer(max_batches, "max_batches", 0)
    tokens = _check_tokens(tokens, seq_len)
    n_windows = (len(tokens) - 1) // seq_len
    starts = np.arange(n_windows) * seq_len
    for i, first in enumerate(range(0, n_windows, batch_size)):
        if max_batches is not None and i >= max_batches:
            return
        idx = starts[first : first + batch_size, None] + np.arange(seq_len)
        yield Batch(tokens[idx].astype(np.int64), tokens[idx + 1].astype(np.int64))
