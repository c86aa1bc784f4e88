"""Softmax, written once: the NumPy kernels of every softmax over a whole row, and the primitive.

Shapes: ... any leading axes, V the axis normalised over (keys, vocabulary).

``softmax_`` normalises scores in place (fused attention's weights, the ``softmax``
primitive); ``exp_normalize_`` is its second half for callers that shift the rows
themselves (cross-entropy keeps the shifted logit of each target; sampling divides by the
temperature or keeps the top k first); ``log_softmax`` is for the float64 scores of beam search. The row sums of
``softmax_`` and ``exp_normalize_`` go to the BLAS (``a @ ones``); ``log_softmax`` sums
with NumPy (pairwise, for float64 to the last bit).

Two softmaxes never see a whole row and keep their own arithmetic: blockwise attention's
online softmax (``lt.ops.blockwise``, tile by tile, masking with :func:`masked_fill_value`)
and ``parallel_cross_entropy`` (a vocabulary row split over ranks).
"""

from __future__ import annotations

import numpy as np

from .basic import mul, sub
from .basic import sum as sum_
from .primitive import primitive
from .traces import align_front, batch_size, broadcast_front, ndim_of, shape_of

__all__ = ["masked_fill_value", "row_sums", "exp_normalize_", "softmax_", "log_softmax", "dead_rows_mask", "softmax"]


def masked_fill_value(dtype) -> float:
    """The score given to masked positions: the dtype's most negative finite value.

    Not ``-inf``: a fully masked row then gets uniform weights instead of NaN.
    """
    return float(np.finfo(dtype).min)


def row_sums(a: np.ndarray) -> np.ndarray:
    """Sums over the last axis, keeping it: (..., V) -> (..., 1). ``a @ ones`` on the BLAS,
    ~8x NumPy's reduction for the short rows of attention scores."""
    return (a.reshape(-1, a.shape[-1]) @ np.ones(a.shape[-1], a.dtype)).reshape(a.shape[:-1] + (1,))


def exp_normalize_(s: np.ndarray) -> np.ndarray:
    """``s`` (..., V), already shifted so that each row's max is 0, becomes ``exp(s)`` / row
    sum in place; returns the row sums of ``exp(s)`` (..., 1), so ``log p = s - log(total)``."""
    np.exp(s, out=s)
    total = row_sums(s)
    s *= 1.0 / total  # one divide per row, not per element
    return total


def softmax_(s: np.ndarray, mask=None) -> np.ndarray:
    """Softmax over the last axis of contiguous ``s`` (..., V), in place; 0 where ``mask``
    (bool, broadcastable, True = keep) is False. Returns the row sums as ``exp_normalize_``."""
    if mask is not None:
        np.copyto(s, masked_fill_value(s.dtype), where=~mask)
    s -= s.max(axis=-1, keepdims=True)
    return exp_normalize_(s)


def log_softmax(x) -> np.ndarray:
    """(..., V) -> float64 log-probabilities (..., V): ``s - log(sum(exp(s)))`` with ``s = x - max``."""
    s = np.asarray(x, np.float64)
    s = s - s.max(axis=-1, keepdims=True)  # a new array: x is never written
    s -= np.log(np.exp(s).sum(axis=-1, keepdims=True))  # NumPy's pairwise sum: float64 scores to the last bit
    return s


def dead_rows_mask(mask, axis: int = -1):
    """The mask when some row is fully masked, else None.

    Masked weights come out exactly 0 (their gradient with them), except in a fully masked
    row, which is uniform; its scores are constants, so the backward must zero them there.
    """
    return None if mask is None or mask.any(axis=axis).all() else mask


@primitive
def softmax(x, mask=None, axis=-1):
    """Softmax along ``axis``; where ``mask`` (bool, True = keep) is False the weight is 0."""
    s = np.array(np.moveaxis(x, axis, -1), copy=True)
    m = None if mask is None else np.moveaxis(np.broadcast_to(np.asarray(mask, bool), np.shape(x)), axis, -1)
    softmax_(s, m)
    y = np.moveaxis(s, -1, axis)
    full = None if mask is None else np.broadcast_to(np.asarray(mask, bool), np.shape(x))  # axis counts in x's axes
    return y, (y, axis, dead_rows_mask(full, axis))


@softmax.defvjp
def _softmax_vjp(res, g):
    y, axis, dead_rows_mask = res
    gy = g * y
    dx = gy - y * gy.sum(axis=axis, keepdims=True)
    if dead_rows_mask is not None:
        dx *= dead_rows_mask
    return dx, None, None


def _softmax_options(args, options) -> tuple:
    """(mask, axis) of a softmax call, given by position or by name."""
    mask = args[1] if len(args) > 1 else options.get("mask")
    axis = args[2] if len(args) > 2 else options.get("axis", -1)
    return mask, axis


@softmax.defbatch
def _softmax_batch(args, dims, **options):
    """One softmax over the batch moved to the front; a batched mask aligned with it."""
    x, dx = args[0], dims[0]
    mask, axis = _softmax_options(args, options)
    dmask = dims[1] if len(dims) > 1 else None
    rank = ndim_of(x) - (dx is not None)
    x = broadcast_front(x, dx, batch_size(args, dims))
    if dmask is not None:
        mask = align_front(mask, dmask, rank)
    elif isinstance(mask, np.ndarray) and mask.ndim < rank:  # one member's shape: the axis counts from the end
        mask = np.broadcast_to(mask, shape_of(x)[1:])
    return softmax(x, mask, axis % rank - rank), 0


@softmax.defjvp
def _softmax_jvp(primals, tangents, **options):
    """``dy = y (dx - Σ y dx)`` along the axis; 0 where masked (fully masked rows are constants)."""
    x, dx = primals[0], tangents[0]
    mask, axis = _softmax_options(primals, options)
    y = softmax(x, mask, axis)
    if dx is None:
        return y, None
    dy = mul(y, sub(dx, sum_(mul(y, dx), axis, True)))
    return y, dy if mask is None else mul(dy, mask)
