"""Attention: masks, scaled dot-product attention, multi-head attention.

Shapes: B batch, H heads, T query length, S key length, D hidden, d = D / H per head.
Masks are boolean with True = may attend, broadcastable to (B, H, T, S).
"""

from __future__ import annotations

import functools

import attrs
import numpy as np

from .. import _checks, ops, random
from .._checks import positive, probability
from .layers import Dropout, Linear
from .module import Module

__all__ = ["causal_mask", "padding_mask", "scaled_dot_product_attention", "MultiHeadAttention",
           "split_heads", "merge_heads"]


@functools.lru_cache(maxsize=32)
def _tril(n: int) -> np.ndarray:
    m = np.tril(np.ones((n, n), dtype=bool))
    m.flags.writeable = False
    return m


def causal_mask(seq_len: int) -> np.ndarray:
    """(T, T) bool: position i may attend to positions j <= i. Read-only."""
    return _tril(_checks.integer(seq_len, "seq_len", 0))


def padding_mask(seq_lengths, max_len: int) -> np.ndarray:
    """(B, 1, 1, max_len) bool: key j of row b is real (True) when ``j < seq_lengths[b]``.

    Right padding; combine with a causal mask by ``causal_mask(T) & padding_mask(...)``.
    """
    lengths = np.asarray(seq_lengths)
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
        raise TypeError(f"seq_lengths must be a 1-D integer array, got {lengths.dtype} of shape {lengths.shape}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > max_len):
        raise ValueError(f"seq_lengths must be in [0, {max_len}], got {lengths.min()}..{lengths.max()}")
    valid = np.arange(max_len)[None, :] < lengths[:, None]                # (B, S)
    return valid[:, None, None, :]


def scaled_dot_product_attention(q, k, v, mask=None, dropout: float = 0.0, *, rng=None,
                                 return_weights: bool = False):
    """``softmax(q kᵀ / √d, mask) v``, dropout on the weights when ``rng`` is given.

    q (..., T, d), k (..., S, d), v (..., S, dv) -> (..., T, dv); with ``return_weights``
    also the attention weights (..., T, S) before dropout, for visualisation. Masked
    positions get weight 0; a fully masked row gets uniform weights (never NaN).
    """
    _checks.real(dropout, "dropout", 0.0, 1.0, high_open=True)
    rate = dropout if rng is not None else 0.0
    return ops.attention(q, k, v, mask, rate, rng, return_weights=return_weights)


def split_heads(x, num_heads: int):
    """(B, T, D) -> (B, H, T, D/H)."""
    B, T, D = x.shape
    return ops.transpose(ops.reshape(x, (B, T, num_heads, D // num_heads)), (0, 2, 1, 3))


def merge_heads(x):
    """(B, H, T, d) -> (B, T, H*d)."""
    B, H, T, d = x.shape
    return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (B, T, H * d))


@attrs.frozen
class MultiHeadAttention(Module):
    """Multi-head attention with one fused ``qkv`` projection (D, 3D) and an output ``proj``.

    Self-attention (query, key and value the same array) makes one matmul for q, k, v;
    otherwise the three column blocks of ``qkv`` project query, key and value.
    """

    hidden_dim: int = attrs.field(validator=positive)
    num_heads: int = attrs.field(validator=positive)
    dropout: float = attrs.field(default=0.0, validator=probability)
    out_init_std: float = 0.02

    def __attrs_post_init__(self):
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"{type(self).__name__}: hidden_dim ({self.hidden_dim}) must be "
                             f"divisible by num_heads ({self.num_heads})")

    @functools.cached_property
    def qkv(self) -> Linear:
        """The fused projection (D, 3D): columns [0, D) make queries, [D, 2D) keys, [2D, 3D) values."""
        return Linear(self.hidden_dim, 3 * self.hidden_dim)

    @functools.cached_property
    def part(self) -> Linear:
        """One column block of ``qkv`` (D, D), for query, key and value that differ."""
        return Linear(self.hidden_dim, self.hidden_dim)

    @functools.cached_property
    def proj(self) -> Linear:
        return Linear(self.hidden_dim, self.hidden_dim, init_std=self.out_init_std)

    @functools.cached_property
    def drop(self) -> Dropout:
        return Dropout(self.dropout)

    def spec(self):
        return {"qkv": self.qkv.spec(), "proj": self.proj.spec()}

    def project_qkv(self, params, query, key, value):
        """Queries, keys and values, each (B, H, T or S, d)."""
        if query is key and key is value:
            qkv = self.qkv.apply(params["qkv"], query)                    # (B, T, 3D)
            q, k, v = ops.split(qkv, 3, axis=-1)                          # 3 x (B, T, D)
        else:
            w, b, D = params["qkv"]["w"], params["qkv"]["b"], self.hidden_dim
            q, k, v = (self.part.apply({"w": ops.index(w, (slice(None), slice(i * D, (i + 1) * D))),
                                        "b": ops.index(b, slice(i * D, (i + 1) * D))}, x)
                       for i, x in enumerate((query, key, value)))
        return tuple(split_heads(t, self.num_heads) for t in (q, k, v))

    def apply(self, params, query, key, value, mask=None, *, rng=None, return_weights=False, kv=None):
        """query (B, T, D), key/value (B, S, D) -> (B, T, D) [and weights (B, H, T, S)].

        ``kv``, if given, is called as ``kv(k, v)`` with this call's keys and values
        (B, H, S, d) and returns the keys and values to attend over (B, H, S', d): a KV
        cache's hook to append the new positions and hand back the whole context.
        """
        q, k, v = self.project_qkv(params, query, key, value)
        if kv is not None:
            k, v = kv(k, v)
        rate = self.dropout if rng is not None else 0.0
        attn_rng = random.fold_in(rng, "weights") if rate else None
        out = ops.attention(q, k, v, mask, rate, attn_rng, return_weights=return_weights)
        out, weights = out if return_weights else (out, None)
        y = self.proj.apply(params["proj"], merge_heads(out))             # (B, T, D)
        y = self.drop.apply({}, y, rng=random.fold_in(rng, "resid"))
        return (y, weights) if return_weights else y
