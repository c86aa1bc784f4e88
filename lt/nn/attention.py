"""Attention: masks, scaled dot-product attention, multi-head attention.

Shapes: B batch, H heads, T query length, S key length, D hidden, d per head (D / H unless
given). Masks are boolean with True = may attend, broadcastable to (B, H, T, S); causality is
a flag (``causal=True``: query i sees keys j <= i + S - T), which lets the blockwise kernel
skip the tiles above the diagonal.
"""

from __future__ import annotations

import functools

import attrs
import numpy as np

from .. import _checks, ops, random, threads
from .._checks import positive, probability
from .layers import Linear, RMSNorm, dropout
from .module import Module, Parts, Split, part
from .rotary import RotaryEmbedding

__all__ = [
    "causal_mask",
    "padding_mask",
    "scaled_dot_product_attention",
    "MultiHeadAttention",
    "split_heads",
    "merge_heads",
]


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
    valid = np.arange(max_len)[None, :] < lengths[:, None]  # (B, S)
    return valid[:, None, None, :]


@threads.adaptive  # BLAS threads: the free cores, decided per call
def scaled_dot_product_attention(
    q,
    k,
    v,
    mask=None,
    dropout: float = 0.0,
    *,
    causal: bool = False,
    rng=None,
    return_weights: bool = False,
    kernel: str = "auto",
):
    """``softmax(q kᵀ / √d, mask) v``, dropout on the weights when ``rng`` is given: the one
    attention entry point (``MultiHeadAttention`` calls it too).

    q (..., T, d), k (..., S, d), v (..., S, dv) -> (..., T, dv); with ``return_weights``
    also the attention weights (..., T, S) before dropout, for visualisation. ``causal``:
    query i sees keys j <= i + S - T (the last T of S positions), on top of ``mask``. Masked
    positions get weight 0; a fully masked row gets uniform weights (never NaN).

    ``kernel``: ``"auto"`` (default) lets ``lt.ops.attention_kernel`` pick the full (T, S)
    matrix for short sequences and the blockwise kernel (memory O(T), not O(T·S); with
    ``causal`` it skips the tiles above the diagonal) for long ones; ``"full"`` or
    ``"blockwise"`` force one. Both give the same numbers.
    """
    _checks.real(dropout, "dropout", 0.0, 1.0, high_open=True)
    rate = dropout if rng is not None else 0.0
    return ops.dot_product_attention(
        q, k, v, mask, rate, rng, causal=bool(causal), kernel=kernel, return_weights=return_weights
    )


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
    """Multi-head attention with one fused ``qkv`` projection (D, (H + 2 Hkv) d) and an output
    ``proj`` (H d, D).

    Self-attention (query, key and value the same array) makes one matmul for q, k, v;
    otherwise the three column blocks of ``qkv`` project query, key and value. With
    Hkv = ``num_kv_heads`` < H, each key/value head serves H / Hkv consecutive query heads
    (grouped-query attention). ``head_dim`` d defaults to D / H. ``qkv`` may be cut by its
    heads' columns and ``proj`` by their rows (tensor parallelism deals heads among ranks).
    With ``qk_norm``, each head's queries and keys are RMS-normalised over d (a learned scale
    (d,) each, ``q_norm`` and ``k_norm``) before the rotation: attention logits stay bounded
    (OLMo 2, Qwen3 and the NanoGPT speedrun do this).
    """

    hidden_dim: int = attrs.field(validator=positive)
    num_heads: int = attrs.field(validator=positive)
    dropout: float = attrs.field(default=0.0, validator=probability)
    out_init_std: float = 0.02
    num_kv_heads: int | None = attrs.field(default=None, validator=attrs.validators.optional(positive))
    qkv_bias: bool = True
    out_bias: bool = True
    rope: RotaryEmbedding | None = None
    head_dim: int = attrs.field(
        default=attrs.Factory(lambda self: self.hidden_dim // self.num_heads, takes_self=True),
        validator=positive,
        kw_only=True,
    )
    qk_norm: bool = attrs.field(default=False, kw_only=True)
    norm_eps: float = attrs.field(default=1e-6, kw_only=True)
    parts: Parts = attrs.field(factory=Parts, kw_only=True, repr=False)

    def __attrs_post_init__(self):
        if self.hidden_dim % self.num_heads and self.head_dim == self.hidden_dim // self.num_heads:  # (the default)
            raise ValueError(
                f"{type(self).__name__}: hidden_dim ({self.hidden_dim}) must be "
                f"divisible by num_heads ({self.num_heads})"
            )
        if self.num_heads % self.kv_heads:
            raise ValueError(
                f"{type(self).__name__}: num_heads ({self.num_heads}) must be divisible by "
                f"num_kv_heads ({self.kv_heads})"
            )

    @property
    def kv_heads(self) -> int:
        """Heads of keys and values: ``num_kv_heads``, or ``num_heads`` (plain multi-head)."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @functools.cached_property
    def widths(self) -> tuple[int, int, int]:
        """Columns of ``qkv`` that make queries, keys and values: H·d, Hkv·d, Hkv·d."""
        d = self.head_dim
        return self.num_heads * d, self.kv_heads * d, self.kv_heads * d

    @part
    def qkv(self) -> Linear:
        """The fused projection (D, (H + 2 Hkv) d): the columns of queries, then keys, then values."""
        split = Split(1, (self.num_heads, self.kv_heads, self.kv_heads), self.head_dim, copies=True)
        return Linear(self.hidden_dim, sum(self.widths), bias=self.qkv_bias, split=split)

    @part
    def proj(self) -> Linear:
        split = Split(0, (self.num_heads,), self.head_dim)
        return Linear(self.widths[0], self.hidden_dim, bias=self.out_bias, init_std=self.out_init_std, split=split)

    @functools.cached_property
    def head_norm(self) -> RMSNorm:
        """The RMS norm of one head's queries or keys (over d), with ``qk_norm``."""
        return RMSNorm(self.head_dim, self.norm_eps)

    def spec(self):
        spec = {"qkv": self.qkv.spec(), "proj": self.proj.spec()}
        if self.qk_norm:
            spec["q_norm"] = spec["k_norm"] = self.head_norm.spec()
        return spec

    def project_qkv(self, params, query, key, value, *, rng=None):
        """Queries (B, H, T, d), keys and values (B, Hkv, S, d); ``rng`` is handed to the
        projection (a plain Linear ignores it; a part swapped in from outside may use it)."""
        nq, nk, _ = self.widths
        if query is key and key is value:
            qkv = self.qkv.apply(params["qkv"], query, rng=random.fold_in(rng, "qkv"))  # (B, T, (H + 2 Hkv) d)
            q, k, v = ops.split(qkv, [nq, nq + nk], axis=-1)
        else:  # each from its column block
            q, k, v = (
                self.qkv.apply(_columns(params["qkv"], lo, hi), x)
                for x, (lo, hi) in zip((query, key, value), ((0, nq), (nq, nq + nk), (nq + nk, nq + 2 * nk)))
            )
        return split_heads(q, self.num_heads), split_heads(k, self.kv_heads), split_heads(v, self.kv_heads)

    @threads.adaptive
    def apply(
        self,
        params,
        query,
        key,
        value,
        mask=None,
        *,
        causal: bool = False,
        rng=None,
        return_weights=False,
        kv=None,
        kernel: str = "auto",
        positions=None,
        rotary=None,
    ):
        """query (B, T, D), key/value (B, S, D) -> (B, T, D) [and weights (B, H, T, S)].

        ``mask`` and ``causal`` as in :func:`scaled_dot_product_attention`, which also picks
        the ``kernel``.

        ``kv``, if given, is called as ``kv(k, v)`` with this call's keys and values
        (B, Hkv, S, d) and returns the keys and values to attend over (B, Hkv, S', d): a KV
        cache's hook to append the new positions and hand back the whole context.
        With ``rope``, queries and keys are rotated by ``positions`` (B, T) before the hook,
        so a cache holds rotated keys (``rotary``: their precomputed ``rope.angles``).
        """
        q, k, v = self.project_qkv(params, query, key, value, rng=rng)
        if self.qk_norm:  # (B, H, T, d) and (B, Hkv, S, d), normalised over d
            q, k = self.head_norm.apply(params["q_norm"], q), self.head_norm.apply(params["k_norm"], k)
        if self.rope is not None:
            angles = rotary if rotary is not None else self.rope.angles(positions, q.dtype)
            q, k = self.rope.apply({}, q, positions, angles=angles), self.rope.apply({}, k, positions, angles=angles)
        if kv is not None:
            k, v = kv(k, v)
        rate = self.dropout if rng is not None else 0.0
        attn_rng = random.fold_in(rng, "weights") if rate else None
        q, k, v, mask = self._grouped(q, k, v, mask)
        out = scaled_dot_product_attention(
            q, k, v, mask, rate, causal=causal, rng=attn_rng, kernel=kernel, return_weights=return_weights
        )
        out, weights = out if return_weights else (out, None)
        out, weights = self._ungrouped(out), None if weights is None else self._ungrouped(weights)
        y = self.proj.apply(params["proj"], merge_heads(out), rng=random.fold_in(rng, "proj"))  # (B, T, D)
        y = dropout(y, self.dropout, random.fold_in(rng, "resid"))
        return (y, weights) if return_weights else y

    def _grouped(self, q, k, v, mask):
        """With shared keys and values (Hkv < H): queries (B, Hkv, G, T, d) in groups of
        G = H / Hkv consecutive heads, keys and values (B, Hkv, 1, S, d) and the mask one
        axis deeper, so attention broadcasts each kv head over its group."""
        G = self.num_heads // self.kv_heads
        if G == 1:
            return q, k, v, mask
        B, _, T, d = q.shape  # (B, H, T, d)
        q = ops.reshape(q, (B, self.kv_heads, G, T, d))
        k, v = (ops.reshape(t, t.shape[:2] + (1,) + t.shape[2:]) for t in (k, v))
        if mask is not None and np.ndim(mask) == 4:
            mask = np.asarray(mask)[:, :, None]  # (B, 1, 1, T, S)
        return q, k, v, mask

    def _ungrouped(self, x):
        """(B, Hkv, G, T, ·) -> (B, H, T, ·); plain heads pass through."""
        if x.ndim == 4:
            return x
        return ops.reshape(x, (x.shape[0], x.shape[1] * x.shape[2]) + x.shape[3:])


def _columns(params, lo: int, hi: int):
    """The columns [lo, hi) of a Linear's params (its weight's, and its bias's when present)."""
    cols = slice(lo, hi)
    out = {"w": ops.index(params["w"], (slice(None), cols))}
    if "b" in params:
        out["b"] = ops.index(params["b"], cols)
    return out
