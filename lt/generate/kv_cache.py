"""A KV cache for GPT decoding: prefill the prompt in one pass, then one position per step.

Shapes: B batch, T prompt length, t new positions, S positions held (padding included),
C capacity, L layers, H key/value heads (the model's kv_heads: fewer than its query heads
with grouped-query attention), d head size, V vocabulary.

Every block keeps the keys and values of the positions seen so far, so a decode step
runs the model on the new position only and attends over the S cached ones: O(S) work
per token instead of recomputing the whole context, O(S²). The model code is the same
as ``GPT.apply``'s: both run ``GPT.forward``, here with one ``kv`` hook per layer that
appends the new keys and values to the cache and hands the whole context to attention.

A :class:`KVCache` is a value. What it shows a user (``keys``, ``values``, ``mask``,
``next_positions``) is read-only, and :func:`extend` returns a new cache while the old
one stays valid. Underneath, caches from one prefill share a preallocated buffer
(B, H, C, d) per layer: extending the newest cache writes the new positions in place
(only positions no existing cache shows), and extending an older one copies first.

Left padding: rows of a batch may hold prompts of different lengths, padded on the
left; ``mask`` marks real tokens, padding is never attended to, and each row's
positions count from 0 at its first real token.
"""

from __future__ import annotations

import attrs
import numpy as np

from .model import Decoder
from .prompts import Prompts, prepare_prompts

__all__ = ["KVCache", "prefill", "extend", "prefill_prompts", "extend_prepared"]


# ----------------------------------------------------------------- the cache


class _Buffer:
    """Storage shared by the caches of one prefill: per layer keys and values (B, H, C, d),
    the real-token mask (B, C), and how many positions have been written (``filled``)."""

    __slots__ = ("keys", "values", "mask", "filled")

    def __init__(self, keys: list, values: list, mask: np.ndarray, filled: int):
        self.keys, self.values, self.mask, self.filled = keys, values, mask, filled

    @classmethod
    def empty(cls, L: int, B: int, H: int, C: int, d: int, dtype) -> _Buffer:
        return cls(
            [np.empty((B, H, C, d), dtype) for _ in range(L)],
            [np.empty((B, H, C, d), dtype) for _ in range(L)],
            np.zeros((B, C), bool),
            0,
        )

    def copy(self, S: int, C: int, rows=None) -> _Buffer:
        """A new buffer of capacity C holding the first S positions (of ``rows`` only, if given)."""
        take = (lambda a: a) if rows is None else (lambda a: a[rows])
        B = self.mask.shape[0] if rows is None else len(rows)
        L, (_, H, _, d) = len(self.keys), self.keys[0].shape
        new = _Buffer.empty(L, B, H, C, d, self.keys[0].dtype)
        for old, fresh in zip(self.keys + self.values, new.keys + new.values):
            fresh[:, :, :S] = take(old[:, :, :S])
        new.mask[:, :S], new.filled = take(self.mask[:, :S]), S
        return new


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@attrs.frozen(eq=False)
class KVCache:
    """The keys and values of every layer for the ``length`` positions seen so far.

    ``keys``/``values``: L read-only arrays (B, H, S, d); ``mask`` (B, S): True where a
    real token sits (False for left padding); ``next_positions`` (B,): the position id
    each row's next token takes. Made by :func:`prefill`, grown by :func:`extend`.
    """

    model: object = attrs.field(repr=False)
    length: int
    next_positions: np.ndarray = attrs.field(repr=False)
    padded: bool = attrs.field(repr=False)  # some key is padding: decode steps need a mask
    _buffer: _Buffer = attrs.field(repr=False)

    @property
    def keys(self) -> tuple:
        return tuple(_read_only(k[:, :, : self.length]) for k in self._buffer.keys)

    @property
    def values(self) -> tuple:
        return tuple(_read_only(v[:, :, : self.length]) for v in self._buffer.values)

    @property
    def mask(self) -> np.ndarray:
        return _read_only(self._buffer.mask[:, : self.length])

    @property
    def batch_size(self) -> int:
        return self._buffer.mask.shape[0]

    @property
    def capacity(self) -> int:
        """Positions the buffer holds before :func:`extend` must grow it (by copying)."""
        return self._buffer.mask.shape[1]

    def take(self, rows) -> KVCache:
        """A cache of the given batch rows (B',) in that order (beam search reorders beams)."""
        rows = np.asarray(rows)
        buf = self._buffer.copy(self.length, self.capacity, rows)
        return KVCache(self.model, self.length, _read_only(self.next_positions[rows]), self.padded, buf)


# ----------------------------------------------------------------- the steps


def _appender(keys: np.ndarray, values: np.ndarray, start: int, stop: int):
    """The ``kv`` hook of one layer: write the new keys/values at [start, stop), return [0, stop)."""

    def kv(k, v):  # (B, H, t, d) each
        keys[:, :, start:stop] = k
        values[:, :, start:stop] = v
        return keys[:, :, :stop], values[:, :, :stop]  # (B, H, S, d)

    return kv


def _run(model: Decoder, params, buf: _Buffer, start: int, ids, positions, mask, causal: bool) -> np.ndarray:
    """New tokens ``ids`` (B, t) at ``positions`` (B, t) through the model, their keys and
    values written to ``buf`` at [start, start + t); the last position's logits (B, V)."""
    stop = start + ids.shape[1]
    hooks = [_appender(k, v, start, stop) for k, v in zip(buf.keys, buf.values)]
    logits = model.forward(params, ids, positions=positions, mask=mask, causal=causal, cache=hooks, last_only=True)
    buf.filled = stop
    return logits


def prefill_prompts(model: Decoder, params, prompts: Prompts, capacity: int):
    """:func:`prefill` for prompts from :func:`lt.generate.prompts.prepare_prompts` and params
    the caller has checked: ``(logits (B, V), KVCache)`` with room for ``capacity`` positions."""
    B, T = prompts.ids.shape
    layers, heads, d = model.cache_shape  # the model's own layout (a tensor-parallel shard's too)
    buf = _Buffer.empty(layers, B, heads, max(capacity, T), d, model.compute_dtype(params))
    buf.mask[:, :T] = prompts.mask
    padded = not prompts.mask.all()
    mask, causal = model.visible(0, T)  # None or (T, T)
    if padded:
        mask = _with_padding(mask, prompts.mask[:, None, None, :])  # (B, 1, T, T)
    logits = _run(model, params, buf, 0, prompts.ids, prompts.positions, mask, causal)
    nxt = _read_only(prompts.positions[:, -1] + 1)  # (B,)
    return logits, KVCache(model, T, nxt, padded, buf)


def extend_prepared(model: Decoder, params, cache: KVCache, ids: np.ndarray):
    """:func:`extend` for ids (B, t) that are known to be valid (a decoder's own samples):
    ``(logits (B, V), KVCache)``. Checks only that the positions fit ``max_seq_len``."""
    _, t = ids.shape  # (B, t)
    S, stop = cache.length, cache.length + t
    buf = cache._buffer
    if stop > cache.capacity:  # no room: grow (amortised O(1))
        buf = buf.copy(S, max(stop, 2 * cache.capacity))
    elif buf.filled != S:  # S.. shown by a newer cache: fork
        buf = buf.copy(S, cache.capacity)
    positions = cache.next_positions[:, None] + np.arange(t)  # (B, t)
    if positions[:, -1].max() >= model.max_seq_len:
        raise ValueError(
            f"cannot extend past max_seq_len={model.max_seq_len}: a row would reach "
            f"position {int(positions[:, -1].max())}"
        )
    buf.mask[:, S:stop] = True
    mask, causal = None, False  # one query sees every key
    if cache.padded or t > 1 or (model.sliding_window is not None and stop > model.sliding_window):
        mask, causal = model.visible(S, stop)
        mask = _with_padding(mask, buf.mask[:, None, None, :stop])  # (B, 1, t, S + t)
    logits = _run(model, params, buf, S, ids, positions, mask, causal)
    return logits, KVCache(model, stop, _read_only(positions[:, -1] + 1), cache.padded, buf)


def _with_padding(mask, padding):
    """``mask`` (None or (t, S)) and the keys that are real (B, 1, 1, S)."""
    return padding if mask is None else mask & padding


# ----------------------------------------------------------------- public API


def prefill(model: Decoder, params, prompt_ids, *, attention_mask=None, capacity: int | None = None, pad_id: int = 0):
    """Run the prompts through ``model`` in one pass: ``(logits, cache)``.

    ``logits`` (B, V) (or (V,) for one prompt (T,)) predict each row's next token;
    ``cache`` holds the prompt's keys and values. ``prompt_ids`` and ``attention_mask``
    are as in :func:`lt.generate.generate`. ``capacity`` (default T) reserves room for
    that many positions, so that extending up to it never copies.
    """
    model.check_params(params)
    prompts = prepare_prompts(model, prompt_ids, attention_mask, pad_id)
    T = prompts.ids.shape[1]
    capacity = T if capacity is None else int(capacity)
    logits, cache = prefill_prompts(model, params, prompts, capacity)
    return (logits[0] if prompts.single else logits), cache


def extend(model: Decoder, params, cache: KVCache, ids):
    """Append tokens to ``cache``: ``(logits, new_cache)``; ``cache`` itself is unchanged.

    ``ids`` (B,) adds one position per row, (B, t) adds t; ``logits`` (B, V) predict the
    token after the last one. ``params`` must be the tree the cache was made with
    (:func:`prefill` checked it; this does not check again, to keep a step cheap).
    """
    if cache.model != model:
        raise ValueError(f"cache was made for a different model ({cache.model}), not {model}")
    ids = model.check_ids(ids, "ids")
    ids = ids[:, None] if ids.ndim == 1 else ids
    if ids.shape[0] != cache.batch_size or ids.shape[1] == 0:
        raise ValueError(
            f"ids must have shape ({cache.batch_size},) or ({cache.batch_size}, t) with t >= 1 "
            f"for this cache, got {np.shape(ids)}"
        )
    return extend_prepared(model, params, cache, ids)
