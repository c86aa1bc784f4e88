"""Checking the ids handed to a tokenizer's ``decode``."""

from __future__ import annotations

import numpy as np


def check_ids(ids, vocab_size: int) -> np.ndarray:
    """``ids`` as a 1-D int64 array, after checking that each is in ``[0, vocab_size)``."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"decode expects a 1-D sequence of token ids, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"decode expects integer token ids, got {arr.dtype}")
    bad = np.flatnonzero((arr < 0) | (arr >= vocab_size))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"token id {int(arr[i])} at position {i} is out of range: this tokenizer's ids "
                         f"are 0..{vocab_size - 1} (vocab_size {vocab_size}); "
                         f"{bad.size} id(s) out of range in all")
    return arr.astype(np.int64, copy=False)
