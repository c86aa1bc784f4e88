"""Fused elementwise primitives: GELU, ReLU, dropout (the norms are in :mod:`lt.ops.norms`).

Each is one primitive with a hand-derived VJP beside it, keeping only what the backward
needs, working in the input's dtype and reusing its temporaries (``out=``, in place). With the
kernels (``lt.ops.kernels.activations``), GELU and ReLU² forward and backward take one pass for
C-contiguous float32/float64 arrays; the NumPy code below each stays the reference.
"""

from __future__ import annotations

import math

import numpy as np

from .. import random as lrandom
from .. import threads
from . import kernels
from .basic import add, mul, sub, tanh
from .kernels import activations as fused
from .primitive import primitive
from .traces import broadcast_front, constant_map, shape_of

__all__ = ["gelu", "relu", "dropout"]


def _unary_batch(prim):
    """vmap of a primitive elementwise in its one array argument: one call, the batch left on its axis."""

    def rule(args, dims, **options):
        if any(d is not None for d in dims[1:]):
            raise NotImplementedError(f"lt.vmap: {prim.__name__} batches its array argument only")
        return prim(*args, **options), dims[0]

    return rule


# ----------------------------------------------------------------- activations

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))  # the dtypes the kernels cover


def _fused(x) -> bool:
    """Whether the elementwise kernels take ``x``: on, a C-contiguous float32/float64 array."""
    return kernels.enabled() and isinstance(x, np.ndarray) and x.dtype in _FLOATS and x.flags.c_contiguous


_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


@primitive
def gelu(x):
    """GPT-2's GELU, the tanh form: ``0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))``.
    Block by block on the free cores (``lt.threads``); keeps x and tanh(u) for the backward.
    With the kernels (float32/float64): one pass (``kernels.activations``)."""
    x = np.ascontiguousarray(x)
    t, y = np.empty_like(x), np.empty_like(x)
    if _fused(x):
        c, itype, bias, shift = fused.gelu_constants(x.dtype)
        run = kernels.pick(fused.gelu_forward, 3 * x.nbytes)
        run(x.reshape(-1), t.reshape(-1), y.reshape(-1), y.reshape(-1).view(itype), c, bias, shift)
    else:
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
    g = np.ascontiguousarray(g, x.dtype)
    if _fused(x):
        c = fused.gelu_constants(x.dtype)[0]
        kernels.pick(fused.gelu_backward, 4 * x.nbytes)(x.reshape(-1), t.reshape(-1), g.reshape(-1), d.reshape(-1), c)
    else:
        threads.elementwise(_gelu_vjp_into, x, t, g, d, passes=16)
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


gelu.defbatch(_unary_batch(gelu))


@gelu.defjvp
def _gelu_jvp(primals, tangents):
    """dy = dx (0.5 (1 + t) + 0.5 x (1 - t²) √(2/π) (1 + 3·0.044715 x²)), t = tanh(u), in primitives."""
    (x,), (dx,) = primals, tangents
    y = gelu(x)
    if dx is None:
        return y, None
    x2 = mul(x, x)
    t = tanh(mul(x, add(mul(x2, _GELU_C * _GELU_A), _GELU_C)))
    slope = mul(mul(x, sub(1.0, mul(t, t))), add(mul(x2, 3 * _GELU_A * _GELU_C), _GELU_C))
    d = mul(add(add(t, 1.0), slope), 0.5)
    return y, mul(dx, d)


@primitive
def relu(x):
    """``max(x, 0)``."""
    y = np.maximum(x, 0)
    return y, y


@relu.defvjp
def _relu_vjp(y, g):
    return (g * (y > 0),)


relu.defbatch(_unary_batch(relu))


@relu.defjvp
def _relu_jvp(primals, tangents):
    """dy = dx where x > 0 (the step is a constant: no second derivative)."""
    (x,), (dx,) = primals, tangents
    y = relu(x)
    if dx is None:
        return y, None
    return y, mul(dx, constant_map(lambda v: (v > 0).astype(v.dtype), x))


@primitive
def relu_squared(x):
    """``max(x, 0)²`` (the speedrun's feed-forward activation); the VJP is ``2 g max(x, 0)``.
    With the kernels: one pass (the same bits)."""
    if _fused(x):
        r, y = np.empty_like(x), np.empty_like(x)
        run = kernels.pick(fused.relu_squared_forward, 3 * x.nbytes)
        run(x.reshape(-1), r.reshape(-1), y.reshape(-1), x.dtype.type(0))
        return y, r
    r = np.maximum(x, 0)
    return r * r, r


@relu_squared.defvjp
def _relu_squared_vjp(r, g):
    if _fused(r) and g.shape == r.shape:
        d = np.empty_like(r)
        g = np.ascontiguousarray(g, r.dtype)
        kernels.pick(fused.relu_squared_backward, 3 * r.nbytes)(r.reshape(-1), g.reshape(-1), d.reshape(-1))
        return (d,)
    d = g * r
    d *= d.dtype.type(2)
    return (d,)


relu_squared.defbatch(_unary_batch(relu_squared))


@relu_squared.defjvp
def _relu_squared_jvp(primals, tangents):
    """dy = 2 max(x, 0) dx."""
    (x,), (dx,) = primals, tangents
    y = relu_squared(x)
    return y, None if dx is None else mul(dx, mul(relu(x), 2.0))


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


softcap.defbatch(_unary_batch(softcap))


@softcap.defjvp
def _softcap_jvp(primals, tangents, **options):
    """dy = dx (1 - (y / cap)²) (``cap`` a constant)."""
    x, cap = primals
    dx = tangents[0]
    y = softcap(x, cap, **options)
    if dx is None:
        return y, None
    t = mul(y, 1.0 / float(cap))
    return y, mul(dx, sub(1.0, mul(t, t)))


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


@dropout.defbatch
def _dropout_batch(args, dims, **options):
    """One multiply by the mask drawn for one member's shape, so every member is dropped as alone
    (a shared key: every member's mask is the same; a batch of keys: each member's its own)."""
    x, rate, rng = args
    if dims[1] is not None:
        raise NotImplementedError("lt.vmap: dropout's rate cannot be batched")
    dtype, scale = x.dtype, x.dtype.type(1.0 / (1.0 - rate))
    if dims[2] is not None:  # a batch of keys: each member's mask from its own key, as alone
        keys = np.moveaxis(np.asarray(rng), dims[2], 0)
        x = broadcast_front(x, dims[0], len(keys))
        member = shape_of(x)[1:]
        keep = np.stack([lrandom.bernoulli(key, 1.0 - rate, member) for key in keys])
        return mul(x, keep.astype(dtype) * scale), 0
    d = dims[0]
    shape = list(shape_of(x))
    del shape[d]
    keep = lrandom.bernoulli(rng, 1.0 - rate, tuple(shape))
    scaled = np.expand_dims(keep.astype(dtype) * scale, d)
    return mul(x, scaled), d


@dropout.defjvp
def _dropout_jvp(primals, tangents):
    """The tangent dropped by the same mask (same key, same shape): dropout is linear in x."""
    x, rate, rng = primals
    dx = tangents[0]
    return dropout(x, rate, rng), None if dx is None else dropout(dx, rate, rng)
