"""Fused primitives for the hot compositions of a transformer.

Layer norm, GELU, ReLU, softmax, attention, embedding gather, dropout and
softmax-cross-entropy are each one primitive with a hand-derived VJP, so a training step
makes a few large NumPy calls instead of many small ones. Forwards work in the input's
dtype and reuse their temporaries; each keeps only what its backward needs.
"""

from __future__ import annotations

import math

import numpy as np

from .. import random as lrandom
from .basic import unbroadcast
from .primitive import primitive

__all__ = ["layer_norm", "gelu", "relu", "softmax", "attention", "embedding",
           "cross_entropy", "dropout", "masked_fill_value"]


def masked_fill_value(dtype) -> float:
    """The score given to masked positions: the dtype's most negative finite value.

    Not ``-inf``: a fully masked row then gets uniform weights instead of NaN.
    """
    return float(np.finfo(dtype).min)


# ----------------------------------------------------------------- layer norm

@primitive
def layer_norm(x, scale, bias, eps=1e-5):
    """Normalise the last axis to zero mean and unit variance, then ``* scale + bias``.

    Keeps ``xhat`` and ``1/std`` for the backward (as llm.c does).
    """
    xhat = x - x.mean(axis=-1, keepdims=True)                       # (..., D)
    var = np.einsum("...d,...d->...", xhat, xhat)[..., None] / x.shape[-1]
    rstd = 1.0 / np.sqrt(var + x.dtype.type(eps))                 # (..., 1)
    xhat *= rstd
    y = xhat * scale
    y += bias
    return y, (xhat, rstd, scale)


@layer_norm.defvjp
def _layer_norm_vjp(res, g):
    xhat, rstd, scale = res
    D = g.shape[-1]
    dscale = (g * xhat).reshape(-1, D).sum(axis=0)
    dbias = g.reshape(-1, D).sum(axis=0)
    dxhat = g * scale                                               # (..., D)
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    mean_dxhat = dxhat.mean(axis=-1, keepdims=True)
    mean_dxhat_xhat = np.einsum("...d,...d->...", dxhat, xhat)[..., None] / D
    dx = dxhat
    dx -= mean_dxhat
    dx -= xhat * mean_dxhat_xhat
    dx *= rstd
    return dx, dscale, dbias


# ----------------------------------------------------------------- activations

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


@primitive
def gelu(x):
    """GPT-2's GELU, the tanh form: ``0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))``."""
    t = x * x                                           # x³ as x·x·x: `x ** 3` is ~270× slower
    t *= x.dtype.type(_GELU_A)
    t += 1
    t *= x
    t *= x.dtype.type(_GELU_C)
    np.tanh(t, out=t)                                   # t = tanh(u)
    y = t + 1
    y *= x
    y *= 0.5
    return y, (x, t)


@gelu.defvjp
def _gelu_vjp(res, g):
    x, t = res
    # dy/dx = 0.5 (1 + t) + 0.5 x (1 - t²) √(2/π) (1 + 3·0.044715 x²)
    du = x * x
    du *= x.dtype.type(3 * _GELU_A * _GELU_C)
    du += x.dtype.type(_GELU_C)
    du *= x
    sech2 = t * t
    np.subtract(1, sech2, out=sech2)
    du *= sech2
    du += 1
    du += t
    du *= 0.5
    du *= g
    return (du,)


@primitive
def relu(x):
    """``max(x, 0)``."""
    y = np.maximum(x, 0)
    return y, y


@relu.defvjp
def _relu_vjp(y, g):
    return (g * (y > 0),)


# ----------------------------------------------------------------- softmax

def _apply_mask(s: np.ndarray, mask, axis: int = -1):
    """Fill masked scores in place. Returns the mask when some row is fully masked, else None.

    Masked weights come out exactly 0 (their gradient with them), except in a fully masked
    row, which is uniform; its scores are constants, so the backward must zero them there.
    """
    if mask is None:
        return None
    mask = np.asarray(mask, bool)
    np.copyto(s, masked_fill_value(s.dtype), where=~mask)
    return None if mask.any(axis=axis).all() else mask


def _softmax_inplace(s: np.ndarray, axis: int) -> np.ndarray:
    s -= s.max(axis=axis, keepdims=True)
    np.exp(s, out=s)
    s *= 1.0 / s.sum(axis=axis, keepdims=True)          # one divide per row, not per element
    return s


@primitive
def softmax(x, mask=None, axis=-1):
    """Softmax along ``axis``; where ``mask`` (bool, True = keep) is False the weight is 0."""
    s = np.array(x, copy=True)
    mask = _apply_mask(s, mask, axis)
    y = _softmax_inplace(s, axis)
    return y, (y, axis, mask)


@softmax.defvjp
def _softmax_vjp(res, g):
    y, axis, dead_rows_mask = res
    gy = g * y
    dx = gy - y * gy.sum(axis=axis, keepdims=True)
    if dead_rows_mask is not None:
        dx *= dead_rows_mask
    return dx, None, None


# ----------------------------------------------------------------- attention

@primitive
def attention(q, k, v, mask=None, dropout=0.0, rng=None, return_weights=False):
    """Scaled dot-product attention ``softmax(q kᵀ / √d, mask) v``, dropout on the weights.

    q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv); mask bool, broadcastable to
    (..., Tq, Tk), True = may attend. With ``return_weights`` also returns the weights
    before dropout, (..., Tq, Tk). Keeps q/√d, k, v, the weights and the dropout mask.
    """
    scale = q.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    q = q * scale                                       # scale the small (.., Tq, d), not the scores
    s = q @ np.swapaxes(k, -1, -2)                      # (..., Tq, Tk)
    dead_rows_mask = _apply_mask(s, mask)
    p = _softmax_inplace(s, -1)
    keep = None
    if dropout > 0.0 and rng is not None:
        keep = lrandom.bernoulli(rng, 1.0 - dropout, p.shape)
        p_used = p * keep
        p_used *= p.dtype.type(1.0 / (1.0 - dropout))
    else:
        p_used = p
    out = p_used @ v                                    # (..., Tq, dv)
    res = (q, k, v, p, p_used, keep, dropout, scale, dead_rows_mask)
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
    # softmax backward: ds = p * (dp - Σ dp·p)
    row = np.einsum("...j,...j->...", dp, p)[..., None]
    dp -= row
    dp *= p
    if dead_rows_mask is not None:
        dp *= dead_rows_mask
    dq = dp @ k                                         # (..., Tq, d)
    dq *= scale
    dk = np.swapaxes(dp, -1, -2) @ q                    # (..., Tk, d); q is already q/√d
    return unbroadcast(dq, q.shape), unbroadcast(dk, k.shape), unbroadcast(dv, v.shape)


# ----------------------------------------------------------------- embedding

@primitive
def embedding(w, ids):
    """Rows of ``w`` (V, D) at integer ``ids`` (...,) -> (..., D)."""
    return np.take(w, ids, axis=0), (w.shape, w.dtype, ids)


@embedding.defvjp
def _embedding_vjp(res, g):
    shape, dtype, ids = res
    dw = np.zeros(shape, dtype)
    np.add.at(dw, np.ravel(ids), g.reshape(-1, shape[1]))   # scatter-add: repeated ids sum
    return dw, None


# ----------------------------------------------------------------- dropout

@primitive
def dropout(x, rate, rng):
    """Zero each element with probability ``rate`` and scale the rest by ``1/(1-rate)``."""
    keep = lrandom.bernoulli(rng, 1.0 - rate, x.shape)
    y = x * keep
    y *= x.dtype.type(1.0 / (1.0 - rate))
    return y, (keep, x.dtype.type(1.0 / (1.0 - rate)))


@dropout.defvjp
def _dropout_vjp(res, g):
    keep, scale = res
    dx = g * keep
    dx *= scale
    return dx, None, None


# ----------------------------------------------------------------- loss

@primitive
def cross_entropy(logits, targets, ignore_index=-100):
    """Mean softmax cross-entropy of ``logits`` (..., V) against integer ``targets`` (...).

    Positions whose target is ``ignore_index`` count for nothing; with no position left
    the loss is 0. Keeps the softmax for the fused backward ``(p - onehot) * g / n``.
    """
    V = logits.shape[-1]
    x = logits.reshape(-1, V)                           # (N, V)
    t = np.asarray(targets).reshape(-1)                 # (N,)
    kept = t != ignore_index
    safe_t = np.where(kept, t, 0)
    if safe_t.size and (safe_t.min() < 0 or safe_t.max() >= V):
        raise ValueError(f"cross_entropy: targets must be in [0, {V}) or ignore_index={ignore_index}, "
                         f"got {safe_t.min() if safe_t.min() < 0 else safe_t.max()}")
    p = x - x.max(axis=-1, keepdims=True)
    picked = p[np.arange(len(t)), safe_t]               # shifted logit of each target
    np.exp(p, out=p)
    total = p.sum(axis=-1)
    p /= total[:, None]
    n = int(kept.sum())
    nll = (np.log(total) - picked) * kept
    loss = logits.dtype.type(nll.sum() / n) if n else logits.dtype.type(0.0)
    return np.asarray(loss), (p, safe_t, kept, n, logits.shape)


@cross_entropy.defvjp
def _cross_entropy_vjp(res, g):
    p, safe_t, kept, n, shape = res
    d = p.copy()
    d[np.arange(len(safe_t)), safe_t] -= 1
    d *= (kept * (g / max(n, 1))).astype(d.dtype)[:, None]
    return d.reshape(shape), None
