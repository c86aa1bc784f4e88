"""Fused elementwise primitives: GELU, ReLU, dropout (the norms are in :mod:`lt.ops.norms`).

Each is one primitive with a hand-derived VJP beside it, keeping only what the backward
needs, working in the input's dtype and reusing its temporaries (``out=``, in place).
"""

from __future__ import annotations

import math

import numpy as np

from .. import random as lrandom
from .. import threads
from .primitive import primitive

__all__ = ["gelu", "relu", "dropout"]


# ----------------------------------------------------------------- activations

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


@primitive
def gelu(x):
    """GPT-2's GELU, the tanh form: ``0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))``.
    Block by block on the free cores (``lt.threads``); keeps x and tanh(u) for the backward."""
    x = np.ascontiguousarray(x)
    t, y = np.empty_like(x), np.empty_like(x)
    threads.elementwise(_gelu_into, x, t, y, passes=12)
    return y, (x, t)


def _gelu_into(x, t, y) -> None:
    """t = tanh(u), y = gelu(x), for one block."""
    np.multiply(x, x, out=t)  # x³ as x·x·x: `x ** 3` is ~270× slower
    t *= x.dtype.type(_GELU_A)
    t += 1
    t *= x
    t *= x.dtype.type(_GELU_C)
    np.tanh(t, out=t)
    np.add(t, 1, out=y)
    y *= x
    y *= x.dtype.type(0.5)


@gelu.defvjp
def _gelu_vjp(res, g):
    x, t = res
    d = np.empty_like(x)
    threads.elementwise(_gelu_vjp_into, x, t, np.ascontiguousarray(g, x.dtype), d, passes=16)
    return (d,)


def _gelu_vjp_into(x, t, g, d) -> None:
    """d = g dy/dx = g (0.5 (1 + t) + 0.5 x (1 - t²) √(2/π) (1 + 3·0.044715 x²)), for one block."""
    sech2 = np.multiply(t, t)
    np.subtract(1, sech2, out=sech2)
    np.multiply(x, x, out=d)
    d *= x.dtype.type(3 * _GELU_A * _GELU_C)
    d += x.dtype.type(_GELU_C)
    d *= x
    d *= sech2
    d += 1
    d += t
    d *= x.dtype.type(0.5)
    d *= g


@primitive
def relu(x):
    """``max(x, 0)``."""
    y = np.maximum(x, 0)
    return y, y


@relu.defvjp
def _relu_vjp(y, g):
    return (g * (y > 0),)


@primitive
def relu_squared(x):
    """``max(x, 0)²`` (the speedrun's feed-forward activation); the VJP is ``2 g max(x, 0)``."""
    r = np.maximum(x, 0)
    return r * r, r


@relu_squared.defvjp
def _relu_squared_vjp(r, g):
    d = g * r
    d *= d.dtype.type(2)
    return (d,)


@primitive
def softcap(x, cap):
    """``cap · tanh(x / cap)``: logits squashed smoothly into (-cap, cap) (Gemma 2's soft-capping).
    The VJP reuses the output ``y``: ``g (1 - (y / cap)²)``."""
    c = x.dtype.type(cap)
    y = np.tanh(x / c)
    y *= c
    return y, (y, c)


@softcap.defvjp
def _softcap_vjp(res, g):
    y, c = res
    t = y / c
    np.multiply(t, t, out=t)
    np.subtract(1, t, out=t)
    t *= g
    return (t, None)


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
