"""Checking the ids handed to a tokenizer's ``decode``."""

from __future__ import annotations

import numpy as np

from .. import _checks


def decodable_ids(ids, vocab_size: int) -> np.ndarray:
    """``ids`` as a 1-D int64 array, after checking that each is in ``[0, vocab_size)``."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"decode expects a 1-D sequence of token ids, got shape {arr.shape}")
    arr = _checks.index_array(arr, vocab_size, "token ids", "this tokenizer's vocabulary")
    return arr.astype(np.int64, copy=False)
