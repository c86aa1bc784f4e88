"""Masked softmax and fused scaled dot-product attention, each with its VJP.

Shapes: ... batch dimensions (B, H), Tq queries, Tk keys, d per-head size.
The matmuls go to the BLAS; masking and softmax work in place on the scores.
"""

from __future__ import annotations

import math

import numpy as np

from .. import random as lrandom
from .basic import unbroadcast
from .primitive import primitive

__all__ = ["softmax", "attention", "masked_fill_value"]


def masked_fill_value(dtype) -> float:
    """The score given to masked positions: the dtype's most negative finite value.

    Not ``-inf``: a fully masked row then gets uniform weights instead of NaN.
    """
    return float(np.finfo(dtype).min)


def _dead_rows_mask(mask, axis: int = -1):
    """The mask when some row is fully masked, else None.

    Masked weights come out exactly 0 (their gradient with them), except in a fully masked
    row, which is uniform; its scores are constants, so the backward must zero them there.
    """
    return None if mask is None or mask.any(axis=axis).all() else mask


def row_sums(a: np.ndarray) -> np.ndarray:
    """Sums over the last axis, keeping it: ``a @ ones`` on the BLAS, ~8x NumPy's reduction
    for the short rows of attention scores."""
    return (a.reshape(-1, a.shape[-1]) @ np.ones(a.shape[-1], a.dtype)).reshape(a.shape[:-1] + (1,))


def _masked_softmax(s: np.ndarray, mask=None) -> None:
    """Softmax over the last axis of contiguous ``s`` in place; 0 where ``mask`` is False."""
    if mask is not None:
        np.copyto(s, masked_fill_value(s.dtype), where=~mask)
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s *= 1.0 / row_sums(s)                              # one divide per row, not per element


@primitive
def softmax(x, mask=None, axis=-1):
    """Softmax along ``axis``; where ``mask`` (bool, True = keep) is False the weight is 0."""
    s = np.array(np.moveaxis(x, axis, -1), copy=True)
    m = None if mask is None else np.moveaxis(np.broadcast_to(np.asarray(mask, bool), np.shape(x)), axis, -1)
    _masked_softmax(s, m)
    y = np.moveaxis(s, -1, axis)
    return y, (y, axis, _dead_rows_mask(None if mask is None else np.asarray(mask, bool), axis))


@softmax.defvjp
def _softmax_vjp(res, g):
    y, axis, dead_rows_mask = res
    gy = g * y
    dx = gy - y * gy.sum(axis=axis, keepdims=True)
    if dead_rows_mask is not None:
        dx *= dead_rows_mask
    return dx, None, None


@primitive
def attention(q, k, v, mask=None, dropout=0.0, rng=None, return_weights=False):
    """Scaled dot-product attention ``softmax(q kᵀ / √d, mask) v``, dropout on the weights.

    q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv); mask bool, broadcastable to
    (..., Tq, Tk), True = may attend. With ``return_weights`` also returns the weights
    before dropout, (..., Tq, Tk). Keeps q/√d, k, v, the weights and the dropout mask.
    """
    scale = q.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    q = q * scale                                       # scale the small (.., Tq, d), not the scores
    p = q @ np.swapaxes(k, -1, -2)                      # (..., Tq, Tk) scores, then weights in place
    mask = None if mask is None else np.asarray(mask, bool)
    _masked_softmax(p, mask)
    keep = None
    if dropout > 0.0 and rng is not None:
        keep = lrandom.bernoulli(rng, 1.0 - dropout, p.shape)
        p_used = p * keep
        p_used *= p.dtype.type(1.0 / (1.0 - dropout))
    else:
        p_used = p
    out = p_used @ v                                    # (..., Tq, dv)
    res = (q, k, v, p, p_used, keep, dropout, scale, _dead_rows_mask(mask))
    return ((out, p) if return_weights else out), res


@attention.defvjp
def _attention_vjp(res, g):
    q, k, v, p, p_used, keep, dropout, scale, dead_rows_mask = res
    g_weights = None
    if isinstance(g, tuple):
        g, g_weights = g
    dv = np.swapaxes(p_used, -1, -2) @ g                # (..., Tk, dv)
    dp = g @ np.swapaxes(v, -1, -2)                     # (..., Tq, Tk)
    if keep is not None:
        dp *= keep
        dp *= p.dtype.type(1.0 / (1.0 - dropout))
    if g_weights is not None:
        dp += g_weights
    dp -= np.einsum("...j,...j->...", dp, p)[..., None]    # softmax backward: ds = p (dp - Σ dp·p)
    dp *= p
    if dead_rows_mask is not None:
        dp *= dead_rows_mask
    dq = dp @ k                                         # (..., Tq, d)
    dq *= scale
    dk = np.swapaxes(dp, -1, -2) @ q                    # (..., Tk, d); q is already q/√d
    return unbroadcast(dq, q.shape), unbroadcast(dk, k.shape), unbroadcast(dv, v.shape)
