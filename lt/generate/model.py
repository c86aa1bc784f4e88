"""The model interface that generation uses, declared once: any object with these members
decodes (``lt.GPT`` has them), and nothing in ``lt.generate`` imports ``lt.nn``.

Shapes: B batch, T positions, S positions held in the cache, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

__all__ = ["Decoder"]


class Decoder(Protocol):
    """What prefill, decoding and beam search call on a model."""

    vocab_size: int
    max_seq_len: int
    sliding_window: int | None

    @property
    def cache_shape(self) -> tuple[int, int, int]:
        """(layers, key/value heads, head size): the layout of the keys and values a cache holds."""
        ...

    def check_ids(self, ids, name: str = "ids") -> np.ndarray: ...

    def check_params(self, params) -> None: ...

    def compute_dtype(self, params) -> np.dtype: ...

    def visible(self, start: int, stop: int) -> tuple[np.ndarray | None, bool]:
        """``(mask, causal)`` of the queries at start..stop-1 over keys 0..stop-1."""
        ...

    def forward(
        self,
        params,
        ids,
        *,
        positions,
        mask,
        causal: bool = True,
        cache: Sequence[Callable] | None = None,
        last_only: bool = False,
    ):
        """Logits (B, T, V), or (B, V) with ``last_only``; ``cache``: one key/value hook per layer."""
        ...
