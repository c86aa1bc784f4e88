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

__all__ = ["attention"]


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
    softmax_(p, mask)
    keep = None
    if dropout > 0.0 and rng is not None:
        keep = lrandom.bernoulli(rng, 1.0 - dropout, p.shape)
        p_used = p * keep
        p_used *= p.dtype.type(1.0 / (1.0 - dropout))
    else:
        p_used = p
    out = p_used @ v                                    # (..., Tq, dv)
    res = (q, k, v, p, p_used, keep, dropout, scale, dead_rows_mask(mask))
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
