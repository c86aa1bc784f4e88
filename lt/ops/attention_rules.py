"""The lt.vmap and lt.jvp rules of both attention kernels, apart so that blockwise.py stays short."""

from __future__ import annotations

import math

import numpy as np

from .attention import attention, dropout_keep
from .basic import matmul, mul, reshape, sub, transpose
from .basic import sum as sum_
from .blockwise import blockwise_attention
from .softmax import softmax
from .traces import add_tangents, align_front, batch_size, broadcast_front, ndim_of, shape_of, to_front

__all__: list[str] = []

_ATTENTION = {"mask": None, "dropout": 0.0, "rng": None, "return_weights": False}
_BLOCKWISE = {"mask": None, "dropout": 0.0, "rng": None, "causal": False, "block": None}


def _options(args, options: dict, defaults: dict) -> dict:
    """The keyword options of a call, whether given by position (after q, k, v) or by name."""
    out = dict(defaults)
    out.update(zip(defaults, args[3:]))
    out.update(options)
    return out


def _member(shape, dim) -> tuple:
    """One member's shape: ``shape`` without its batched axis ``dim``."""
    return tuple(shape) if dim is None else tuple(shape[:dim]) + tuple(shape[dim + 1 :])


def _swap(x):
    """``x`` with its last two axes swapped (a transpose primitive)."""
    n = ndim_of(x)
    return transpose(x, tuple(range(n - 2)) + (n - 1, n - 2))


class _Shaped:
    """One member's shape and dtype of a batched argument (what ``_keep_scale`` reads)."""

    def __init__(self, a, dim):
        self.shape, self.dtype = _member(shape_of(a), dim), a.dtype


def _keep_scale(q, k, v, rate, rng, key_dim=None):
    """One member's dropout multiplier (..., T, S), 0 or 1/(1 - rate), as the kernels draw it; or None.
    With ``key_dim`` (a batch of keys under lt.vmap, along that axis of ``rng``), every member's,
    stacked: (members, ..., T, S)."""
    if not rate > 0.0 or rng is None:
        return None
    if key_dim is not None:
        return np.stack([_keep_scale(q, k, v, rate, key) for key in np.moveaxis(np.asarray(rng), key_dim, 0)])
    q_shape, k_shape, v_shape = shape_of(q), shape_of(k), shape_of(v)
    T, S = q_shape[-2], k_shape[-2]
    lead = np.broadcast_shapes(q_shape[:-2], k_shape[:-2], v_shape[:-2])
    keep = dropout_keep(rng, rate, lead, T, S, slice(0, T), slice(0, S))
    dtype = q.dtype
    return keep.astype(dtype) * dtype.type(1.0 / (1.0 - rate))


def _causal(mask, T: int, S: int):
    """``mask`` and the causal mask (key j seen by query i when ``j <= i + S - T``)."""
    tri = np.tri(T, S, S - T, dtype=bool)
    return tri if mask is None else np.logical_and(mask, tri)


def _front(qkv, dims, mask, mask_dim, scores_batched: bool = False):
    """q, k, v, mask batch-first and aligned, q carrying the batch where the scores need it; weights batched?"""
    size = batch_size((*qkv, mask), (*dims, mask_dim))
    rank = max(ndim_of(a) - (d is not None) for a, d in zip(qkv, dims))
    if mask_dim is not None:
        rank = max(rank, ndim_of(mask) - 1)
    q, k, v = (align_front(a, d, rank) for a, d in zip(qkv, dims))
    if mask_dim is not None:
        mask = align_front(mask, mask_dim, rank)
    if dims[0] is None and dims[1] is None and (mask_dim is not None or scores_batched):
        q = align_front(broadcast_front(q, None, size), 0, rank)
        dims = (0, *dims[1:])
    return q, k, v, mask, not (dims[0] is None and dims[1] is None and mask_dim is None)


def _attention_tangents(q, k, v, p, mask, keep, dq, dk, dv):
    """(dout, dp) of ``out = (p ⊙ keep) v``, ``p = softmax(q kᵀ/√d, mask)``, in primitives (None: zero)."""
    ds = None
    if dq is not None:
        ds = matmul(dq, _swap(k))
    if dk is not None:
        ds = add_tangents(ds, matmul(q, _swap(dk)))
    dp = dout = None
    if ds is not None:
        ds = mul(ds, 1.0 / math.sqrt(shape_of(q)[-1]))
        dp = mul(p, sub(ds, sum_(mul(p, ds), -1, True)))
        if mask is not None:
            dp = mul(dp, mask)
        dout = matmul(dp if keep is None else mul(dp, keep), v)
    if dv is not None:
        dout = add_tangents(dout, matmul(p if keep is None else mul(p, keep), dv))
    return dout, dp


# ----------------------------------------------------------------- attention


@attention.defbatch
def _attention_batch(args, dims, **options):
    """One call, batch in front; with dropout its weights times each member's own mask, then ``@ v``."""
    o = _options(args, options, _ATTENTION)
    key_dim = options.pop("key_dim", dims[5] if len(dims) > 5 else None)
    if any(d is not None for i, d in enumerate(dims[4:], 4) if i != 5):
        raise NotImplementedError("lt.vmap: attention batches q, k, v, mask and the key only")
    mask_dim = dims[3] if len(dims) > 3 else None
    rw = o["return_weights"]
    members = [_Shaped(a, d) for a, d in zip(args[:3], dims)]
    keep = _keep_scale(*members, o["dropout"], o["rng"], key_dim)
    # each member's own dropout mask (a batch of keys) needs each member's weights
    own_masks = keep is not None and key_dim is not None
    q, k, v, mask, weights_batched = _front(args[:3], dims[:3], o["mask"], mask_dim, scores_batched=own_masks)
    if keep is None and not rw:
        return attention(q, k, v, mask), 0
    out, p = attention(q, k, v, mask, return_weights=True)
    if keep is not None:
        if key_dim is not None:  # (members, ...): align it with the weights' rank
            keep = keep.reshape(keep.shape[:1] + (1,) * (ndim_of(p) - keep.ndim) + keep.shape[1:])
        out = matmul(mul(p, keep), v)
    if not rw:
        return out, 0
    if weights_batched:  # one member's weights (..., T, S), without the ones aligning them with v
        q_shape, k_shape = members[0].shape, members[1].shape
        member = np.broadcast_shapes(q_shape[:-2], k_shape[:-2]) + (q_shape[-2], k_shape[-2])
        if shape_of(p)[1:] != member:
            p = reshape(p, (shape_of(p)[0], *member))
    return (out, p), (0, 0 if weights_batched else None)


@attention.defjvp
def _attention_jvp(primals, tangents, **options):
    """The primal by the fused kernel (with its weights p); the tangent from p with primitives."""
    q, k, v = primals[:3]
    dq, dk, dv = tangents[:3]
    o = _options(primals, options, _ATTENTION)
    out, p = attention(q, k, v, o["mask"], o["dropout"], o["rng"], return_weights=True)
    if dq is None and dk is None and dv is None:
        return ((out, p), (None, None)) if o["return_weights"] else (out, None)
    keep = _keep_scale(q, k, v, o["dropout"], o["rng"])
    dout, dp = _attention_tangents(q, k, v, p, o["mask"], keep, dq, dk, dv)
    return ((out, p), (dout, dp)) if o["return_weights"] else (out, dout)


# ----------------------------------------------------------------- blockwise attention


@blockwise_attention.defbatch
def _blockwise_batch(args, dims, **options):
    """One blockwise call, batch in front; with dropout the full kernel's rule (it holds (T, S) weights)."""
    o = _options(args, options, _BLOCKWISE)
    key_dim = dims[5] if len(dims) > 5 else None
    if any(d is not None for i, d in enumerate(dims[4:], 4) if i != 5):
        raise NotImplementedError("lt.vmap: blockwise_attention batches q, k, v, mask and the key only")
    mask, mask_dim = o["mask"], (dims[3] if len(dims) > 3 else None)
    if o["dropout"] > 0.0 and o["rng"] is not None:
        mask = to_front(mask, mask_dim)
        if o["causal"]:
            q_shape, k_shape = _member(shape_of(args[0]), dims[0]), _member(shape_of(args[1]), dims[1])
            mask = _causal(mask, q_shape[-2], k_shape[-2])
        mask_dim = None if mask_dim is None else 0
        full = (*args[:3], mask)
        return _attention_batch(full, (*dims[:3], mask_dim), dropout=o["dropout"], rng=o["rng"], key_dim=key_dim)
    q, k, v, mask, _ = _front(args[:3], dims[:3], mask, mask_dim)
    return blockwise_attention(q, k, v, mask, causal=o["causal"], block=o["block"]), 0


@blockwise_attention.defjvp
def _blockwise_jvp(primals, tangents, **options):
    """The primal blockwise; the tangent by full attention's math, which holds the (T, S) weights."""
    q, k, v = primals[:3]
    dq, dk, dv = tangents[:3]
    o = _options(primals, options, _BLOCKWISE)
    out = blockwise_attention(*primals, **options)
    if dq is None and dk is None and dv is None:
        return out, None
    mask = o["mask"]
    if o["causal"]:
        mask = _causal(mask, shape_of(q)[-2], shape_of(k)[-2])
    p = softmax(matmul(mul(q, 1.0 / math.sqrt(shape_of(q)[-1])), _swap(k)), mask)
    keep = _keep_scale(q, k, v, o["dropout"], o["rng"])
    return out, _attention_tangents(q, k, v, p, mask, keep, dq, dk, dv)[0]
