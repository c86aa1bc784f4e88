"""Fused scaled dot-product attention with its VJP.

Shapes: ... batch dimensions (B, H), Tq queries, Tk keys, d per-head size.
The matmuls go to the BLAS; masking and softmax work in place on the scores.
"""

from __future__ import annotations

import math

import numpy as np

from .. import random as lrandom
from .basic import unbroadcast
from .primitive import primitive
from .softmax import dead_rows_mask, softmax_

__all__ = ["attention", "dropout_keep"]


def dropout_keep(rng, rate: float, lead: tuple, T: int, S: int, rows: slice, cols: slice) -> np.ndarray:
    """Attention dropout's keep mask (lead..., rows, cols) bool, True with probability 1 - rate.

    Drawn by position: the weight at flat batch index n (over ``lead``, the broadcast batch
    shape of (B, H)), query i and key j is kept by ``bernoulli_at`` at counter
    ``(n·T + i)·S + j``, so a tile of the (T, S) matrix draws exactly the bits the whole
    matrix would: the full and the blockwise kernels drop the same weights at any block size.
    """
    n = np.arange(math.prod(lead), dtype=np.uint64).reshape(lead + (1, 1)) * np.uint64(T)
    i = np.arange(rows.start, rows.stop, dtype=np.uint64)[:, None]
    j = np.arange(cols.start, cols.stop, dtype=np.uint64)
    return lrandom.bernoulli_at(rng, 1.0 - rate, ((n + i) * np.uint64(S)) + j)


@primitive
def attention(q, k, v, mask=None, dropout=0.0, rng=None, return_weights=False):
    """Scaled dot-product attention ``softmax(q kᵀ / √d, mask) v``, dropout on the weights.

    q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv); mask bool, broadcastable to
    (..., Tq, Tk), True = may attend. With ``return_weights`` also returns the weights
    before dropout, (..., Tq, Tk). Keeps q/√d, k, v, the weights and the dropout mask.
    """
    scale = q.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    q = q * scale  # scale the small (.., Tq, d), not the scores
    p = q @ np.swapaxes(k, -1, -2)  # (..., Tq, Tk) scores, then weights in place
    mask = None if mask is None else np.asarray(mask, bool)
    softmax_(p, mask)
    keep = None
    if dropout > 0.0 and rng is not None:
        T, S = p.shape[-2:]
        lead = np.broadcast_shapes(p.shape[:-2], v.shape[:-2])
        keep = dropout_keep(rng, dropout, lead, T, S, slice(0, T), slice(0, S))
        p_used = p * keep
        p_used *= p.dtype.type(1.0 / (1.0 - dropout))
    else:
        p_used = p
    out = p_used @ v  # (..., Tq, dv)
    res = (q, k, v, p, p_used, keep, dropout, scale, dead_rows_mask(mask))
    return ((out, p) if return_weights else out), res


@attention.defvjp
def _attention_vjp(res, g):
    q, k, v, p, p_used, keep, dropout, scale, dead_rows_mask = res
    g_weights = None
    if isinstance(g, tuple):
        g, g_weights = g
    dv = np.swapaxes(p_used, -1, -2) @ g  # (..., Tk, dv)
    dp = g @ np.swapaxes(v, -1, -2)  # (..., Tq, Tk)
    if keep is not None:
        dp *= keep
        dp *= p.dtype.type(1.0 / (1.0 - dropout))
    if dp.shape != p.shape:  # v had leading axes the weights do not: the weights' share of them
        dp = unbroadcast(dp, p.shape)
    if g_weights is not None:
        dp += g_weights
    dp -= np.einsum("...j,...j->...", dp, p)[..., None]  # softmax backward: ds = p (dp - Σ dp·p)
    dp *= p
    if dead_rows_mask is not None:
        dp *= dead_rows_mask
    dq = dp @ k  # (..., Tq, d)
    dq *= scale
    dk = np.swapaxes(dp, -1, -2) @ q  # (..., Tk, d); q is already q/√d
    return unbroadcast(dq, q.shape), unbroadcast(dk, k.shape), unbroadcast(dv, v.shape)
