"""Fused layer primitives: layer norm, GELU, ReLU, dropout, embedding gather.

Each is one primitive with a hand-derived VJP beside it, keeping only what the backward
needs. The elementwise work runs row block by row block on all cores (lt.ops.parallel),
in the input's dtype, into preallocated outputs.
"""

from __future__ import annotations

import math

import numpy as np

from .. import random as lrandom
from .parallel import for_rows
from .primitive import primitive

__all__ = ["layer_norm", "gelu", "relu", "dropout", "embedding", "rows"]


def rows(a: np.ndarray) -> np.ndarray:
    """``a`` as a 2-D (rows, last axis) array: a view when ``a`` is contiguous."""
    return a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)


# ----------------------------------------------------------------- layer norm

@primitive
def layer_norm(x, scale, bias, eps=1e-5):
    """Normalise the last axis to zero mean and unit variance, then ``* scale + bias``.

    Keeps ``xhat`` and ``1/std`` for the backward (as llm.c does).
    """
    x2 = rows(x)                                                # (N, D)
    xhat, y = np.empty_like(x2), np.empty_like(x2)
    rstd = np.empty((x2.shape[0], 1), x.dtype)

    def kernel(lo, hi):
        xh = xhat[lo:hi]
        np.subtract(x2[lo:hi], x2[lo:hi].mean(axis=-1, keepdims=True), out=xh)
        var = np.einsum("nd,nd->n", xh, xh)[:, None] / x.shape[-1]
        np.divide(1.0, np.sqrt(var + x.dtype.type(eps)), out=rstd[lo:hi])
        xh *= rstd[lo:hi]
        np.multiply(xh, scale, out=y[lo:hi])
        y[lo:hi] += bias
    for_rows(kernel, x2.shape[0], x2.shape[1])
    return y.reshape(x.shape), (xhat, rstd, scale, x.shape)


@layer_norm.defvjp
def _layer_norm_vjp(res, g):
    xhat, rstd, scale, shape = res
    g2 = rows(g)                                                # (N, D)
    dscale = np.einsum("nd,nd->d", g2, xhat)
    dbias = g2.sum(axis=0)
    dx = np.empty_like(xhat)

    def kernel(lo, hi):
        # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = g * scale
        d, xh = dx[lo:hi], xhat[lo:hi]
        np.multiply(g2[lo:hi], scale, out=d)
        mean_d_xh = np.einsum("nd,nd->n", d, xh)[:, None] / d.shape[-1]
        d -= d.mean(axis=-1, keepdims=True)
        d -= xh * mean_d_xh
        d *= rstd[lo:hi]
    for_rows(kernel, dx.shape[0], dx.shape[1])
    return dx.reshape(shape), dscale, dbias


# ----------------------------------------------------------------- activations

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


@primitive
def gelu(x):
    """GPT-2's GELU, the tanh form: ``0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))``."""
    x2 = rows(x)
    t, y = np.empty_like(x2), np.empty_like(x2)
    A, C = x.dtype.type(_GELU_A), x.dtype.type(_GELU_C)

    def kernel(lo, hi):
        xs, ts, ys = x2[lo:hi], t[lo:hi], y[lo:hi]
        np.multiply(xs, xs, out=ts)                     # x³ as x·x·x: `x ** 3` is ~270× slower
        ts *= A
        ts += 1
        ts *= xs
        ts *= C
        np.tanh(ts, out=ts)                             # t = tanh(u), kept for the backward
        np.add(ts, 1, out=ys)
        ys *= xs
        ys *= 0.5
    for_rows(kernel, x2.shape[0], x2.shape[1])
    return y.reshape(x.shape), (x2, t, x.shape)


@gelu.defvjp
def _gelu_vjp(res, g):
    x2, t, shape = res
    g2 = rows(g)
    dx = np.empty_like(x2)
    k3, C = x2.dtype.type(3 * _GELU_A * _GELU_C), x2.dtype.type(_GELU_C)

    def kernel(lo, hi):
        # dy/dx = 0.5 (1 + t) + 0.5 x (1 - t²) √(2/π) (1 + 3·0.044715 x²)
        xs, ts, d = x2[lo:hi], t[lo:hi], dx[lo:hi]
        np.multiply(xs, xs, out=d)
        d *= k3
        d += C
        d *= xs
        sech2 = ts * ts
        np.subtract(1, sech2, out=sech2)
        d *= sech2
        d += 1
        d += ts
        d *= 0.5
        d *= g2[lo:hi]
    for_rows(kernel, dx.shape[0], dx.shape[1])
    return (dx.reshape(shape),)


@primitive
def relu(x):
    """``max(x, 0)``."""
    y = np.maximum(x, 0)
    return y, y


@relu.defvjp
def _relu_vjp(y, g):
    return (g * (y > 0),)


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
