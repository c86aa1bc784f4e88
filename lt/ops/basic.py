"""Array primitives: broadcasting arithmetic, matmul and linear, shapes, reductions.

Each forward returns ``(out, residual)`` and its VJP sits right under it, keeping only
what the backward needs. Broadcasting VJPs sum the cotangent over broadcast axes.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..quant import QuantizedArray
from . import kernels, quantized
from .kernels import matvec
from .primitive import primitive

__all__ = [
    "add",
    "sub",
    "mul",
    "div",
    "neg",
    "exp",
    "log",
    "tanh",
    "astype",
    "matmul",
    "linear",
    "reshape",
    "transpose",
    "split",
    "concat",
    "index",
    "sum",
    "mean",
    "unbroadcast",
]


def unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``g`` over the axes that broadcasting added or stretched to reach ``g.shape``."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    return g.sum(axis=axes).reshape(shape)


# ----------------------------------------------------------------- elementwise


@primitive
def add(a, b):
    """``a + b`` with broadcasting."""
    return np.add(a, b), (np.shape(a), np.shape(b))


@add.defvjp
def _add_vjp(shapes, g):
    return unbroadcast(g, shapes[0]), unbroadcast(g, shapes[1])


@primitive
def sub(a, b):
    """``a - b`` with broadcasting."""
    return np.subtract(a, b), (np.shape(a), np.shape(b))


@sub.defvjp
def _sub_vjp(shapes, g):
    return unbroadcast(g, shapes[0]), unbroadcast(-g, shapes[1])


@primitive
def mul(a, b):
    """``a * b`` with broadcasting."""
    return np.multiply(a, b), (a, b)


@mul.defvjp
def _mul_vjp(res, g):
    a, b = res
    return unbroadcast(g * b, np.shape(a)), unbroadcast(g * a, np.shape(b))


@primitive
def div(a, b):
    """``a / b`` with broadcasting."""
    out = np.divide(a, b)
    return out, (a, b, out)


@div.defvjp
def _div_vjp(res, g):
    a, b, out = res
    ga = g / b
    return unbroadcast(ga, np.shape(a)), unbroadcast(-ga * out, np.shape(b))


@primitive
def neg(a):
    """``-a``."""
    return np.negative(a), None


@neg.defvjp
def _neg_vjp(_, g):
    return (-g,)


@primitive
def exp(a):
    """``e ** a``; the VJP reuses the output."""
    out = np.exp(a)
    return out, out


@exp.defvjp
def _exp_vjp(out, g):
    return (g * out,)


@primitive
def log(a):
    """Natural logarithm."""
    return np.log(a), a


@log.defvjp
def _log_vjp(a, g):
    return (g / a,)


@primitive
def tanh(a):
    """Hyperbolic tangent; the VJP reuses the output: ``g * (1 - tanh²)``."""
    out = np.tanh(a)
    return out, out


@tanh.defvjp
def _tanh_vjp(out, g):
    return (g * (1 - out * out),)


@primitive
def astype(a, dtype):
    """``a`` cast to ``dtype``; the cotangent is cast back."""
    return np.asarray(a).astype(dtype), np.asarray(a).dtype


@astype.defvjp
def _astype_vjp(dtype, g):
    return g.astype(dtype), None


# ----------------------------------------------------------------- products


def _swap(x):
    return np.swapaxes(x, -1, -2)


@primitive
def matmul(a, b):
    """``a @ b`` for arrays of two or more dimensions, with broadcast batch dimensions.
    ``b`` may be a quantized matrix (``lt.quant``): dequantized a tile at a time, no gradient."""
    if np.ndim(a) < 2 or np.ndim(b) < 2:
        raise ValueError(f"lt.ops.matmul needs arrays of 2+ dimensions, got {np.shape(a)} and {np.shape(b)}")
    if type(b) is QuantizedArray:
        a2 = np.reshape(a, (-1, np.shape(a)[-1]))  # (N, in)
        return quantized.matmul(a2, b).reshape(np.shape(a)[:-1] + (b.shape[1],)), (a, b)
    return np.matmul(a, b), (a, b)


@matmul.defvjp
def _matmul_vjp(res, g):
    a, b = res
    if type(b) is QuantizedArray:  # a constant: only da
        return quantized.matmul_t(g.reshape(-1, b.shape[1]), b).reshape(a.shape), None
    return unbroadcast(g @ _swap(b), a.shape), unbroadcast(_swap(a) @ g, b.shape)


DECODE_ROWS = 4  # up to this many input rows a float product may stream its weights (decoding)
# Off by default: alone the kernels beat the BLAS (M = 1: 28-32 GB/s against 18-20), but in gpt2's
# decoding their parallel threads fight OpenBLAS's spin-waiting ones (30.7 tok/s against 42.9).
FLOAT_DECODE_KERNELS = False
DECODE_MIN_SIZE = 1 << 18  # smaller weights go to the BLAS: from cache its call is cheaper (measured)


def decode_product(x2: np.ndarray, w: np.ndarray, transposed: bool = False) -> np.ndarray | None:
    """``x2 @ w`` (or ``x2 @ w.T``) on the matrix-vector kernels (``lt.ops.kernels.matvec``) where
    they cover the call (kernels on, few rows of one float dtype, a large C-contiguous ``w``), else
    None. x2 (M, K); w (K, N), or (N, K) when ``transposed``; -> (M, N)."""
    M = x2.shape[0]
    if not (
        FLOAT_DECODE_KERNELS
        and M <= DECODE_ROWS
        and w.size >= DECODE_MIN_SIZE
        and x2.dtype == w.dtype
        and w.dtype in (np.float32, np.float64)
        and w.flags.c_contiguous
        and kernels.enabled()
    ):
        return None
    x2 = np.ascontiguousarray(x2)
    if transposed:
        out = np.empty((M, w.shape[0]), w.dtype)
        matvec.matvec_t(x2, w, out)
        return out
    K, N = w.shape
    out = np.empty((M, N), w.dtype)
    part = np.empty((min(8, max(1, K // 192)), M, N), w.dtype)  # pieces of K: fixed by the shapes
    matvec.vecmat(x2, w, part, out)
    return out


@primitive
def linear(x, w, b=None):
    """``x @ w + b`` with ``x`` (..., in), ``w`` (in, out), ``b`` (out,): one 2-D matmul.

    ``w`` may be a quantized matrix (``lt.quant``): dequantized a tile at a time
    (``lt.ops.quantized``); it is a constant to the VJP (no ``dw``)."""
    if w.ndim != 2 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"linear: input (..., {x.shape[-1]}) does not fit a weight of shape {w.shape}")
    x2 = x.reshape(-1, w.shape[0])  # (N, in)
    if type(w) is QuantizedArray:
        y = quantized.matmul(x2, w)  # (N, out)
    else:
        y = decode_product(x2, w)
        y = x2 @ w if y is None else y
    if b is not None:
        y += b
    return y.reshape(x.shape[:-1] + (w.shape[1],)), (x2, w, x.shape, b is not None)


@linear.defvjp
def _linear_vjp(res, g):
    x2, w, x_shape, has_bias = res
    g2 = g.reshape(-1, w.shape[1])  # (N, out)
    if type(w) is QuantizedArray:  # a constant: dx only
        dx = quantized.matmul_t(g2, w).reshape(x_shape)
        return dx, None, g2.sum(axis=0) if has_bias else None
    dx = (g2 @ w.T).reshape(x_shape)  # (N, in) -> (..., in)
    dw = x2.T @ g2  # (in, out)
    db = g2.sum(axis=0) if has_bias else None
    return dx, dw, db


# ----------------------------------------------------------------- shapes


@primitive
def reshape(a, shape):
    """``a`` with a new shape (a view where NumPy can make one)."""
    return np.reshape(a, shape), np.shape(a)


@reshape.defvjp
def _reshape_vjp(shape, g):
    return np.reshape(g, shape), None


@primitive
def transpose(a, axes=None):
    """``a`` with its axes permuted (reversed when ``axes`` is None)."""
    axes = tuple(range(np.ndim(a)))[::-1] if axes is None else tuple(axes)
    return np.transpose(a, axes), axes


@transpose.defvjp
def _transpose_vjp(axes, g):
    return np.transpose(g, np.argsort(axes)), None


@primitive
def split(a, sections, axis=-1):
    """``a`` cut into equal ``sections`` (an int) or at the given indices along ``axis``."""
    n = a.shape[axis]
    cuts = [n * i // sections for i in range(sections + 1)] if isinstance(sections, int) else [0, *sections, n]
    if isinstance(sections, int) and n % sections:
        raise ValueError(f"split: axis of length {n} does not divide into {sections} equal sections")
    lead = (slice(None),) * (axis % a.ndim)
    return tuple(a[lead + (slice(lo, hi),)] for lo, hi in itertools.pairwise(cuts)), axis


@split.defvjp
def _split_vjp(axis, gs):
    return np.concatenate(gs, axis=axis), None, None


@primitive
def concat(*arrays, axis=0):
    """Arrays joined along ``axis``."""
    sizes = [np.shape(x)[axis] for x in arrays]
    return np.concatenate(arrays, axis=axis), (np.cumsum(sizes)[:-1], axis)


@concat.defvjp
def _concat_vjp(res, g):
    offsets, axis = res
    return tuple(np.split(g, offsets, axis=axis))


def _is_basic_index(idx) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis for i in items)


@primitive
def index(a, idx):
    """``a[idx]`` for any NumPy index; the VJP scatter-adds, so repeated indices sum."""
    return a[idx], (a.shape, a.dtype, idx)


@index.defvjp
def _index_vjp(res, g):
    shape, dtype, idx = res
    out = np.zeros(shape, dtype)
    if _is_basic_index(idx):
        out[idx] = g
    else:
        np.add.at(out, idx, g)
    return out, None


# ----------------------------------------------------------------- reductions


def _expand(g, shape, axis, keepdims):
    if axis is not None and not keepdims:
        axes = (axis,) if np.isscalar(axis) else tuple(axis)
        g = np.expand_dims(g, tuple(ax % len(shape) for ax in axes))
    return np.broadcast_to(g, shape)


@primitive
def sum(a, axis=None, keepdims=False):
    """Sum over ``axis`` (all axes when None)."""
    return np.sum(a, axis=axis, keepdims=keepdims), (np.shape(a), axis, keepdims)


@sum.defvjp
def _sum_vjp(res, g):
    return (_expand(g, *res),)


@primitive
def mean(a, axis=None, keepdims=False):
    """Mean over ``axis`` (all axes when None)."""
    out = np.mean(a, axis=axis, keepdims=keepdims)
    return out, (np.shape(a), axis, keepdims, np.size(a) // max(np.size(out), 1))


@mean.defvjp
def _mean_vjp(res, g):
    shape, axis, keepdims, n = res
    return (_expand(g / n, shape, axis, keepdims),)
