"""Rotary position embedding (RoPE, Su et al. 2021) in Hugging Face's half-split layout.

Shapes: ... any leading axes, T positions, d the rotated axis (the head size, an even
number). Pair i is (x[i], x[i + d/2]). The forward keeps only what its VJP needs: the
angles' ``cos``/``sin`` and the input's shape.
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .basic import unbroadcast
from .kernels import rotary as rotate
from .primitive import primitive
from .traces import align_front, batch_size, broadcast_front, ndim_of

__all__ = ["rope", "rotate_half"]


def rotate_half(x: np.ndarray) -> np.ndarray:
    """(..., d) -> (..., d): ``[-x2, x1]`` for the halves ``x1, x2`` (Hugging Face's layout)."""
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _rotate_half_transposed(y: np.ndarray) -> np.ndarray:
    """The transpose of :func:`rotate_half` as a linear map: ``[y2, -y1]``."""
    half = y.shape[-1] // 2
    return np.concatenate([y[..., half:], -y[..., :half]], axis=-1)


@primitive
def rope(x, cos, sin):
    """Rotary position embedding: ``x * cos + rotate_half(x) * sin``.

    ``x`` (..., T, d) queries or keys; ``cos``/``sin`` broadcastable to it, each (..., T, d)
    with the angle of pair i repeated at i and i + d/2 (see ``lt.nn.rotary``). The angles
    are constants (from positions), so only ``x`` gets a cotangent.
    """
    if x.shape[-1] % 2:
        raise ValueError(f"rope: the rotated axis must have an even size, got {x.shape[-1]}")
    if _fused(x, cos, sin):
        return _rotated(x, cos, sin, 1), (cos, sin, x.shape)
    y = x * cos
    y += rotate_half(x) * sin
    return y, (cos, sin, x.shape)


def _fused(x, cos, sin) -> bool:
    """Whether the kernel takes this call: on, x (B, H, T, d) float32/float64 (any strides: the
    heads are often a transposed view), cos and sin contiguous (1 or B, 1, T, d) of x's dtype."""
    if not (kernels.enabled() and isinstance(x, np.ndarray) and x.ndim == 4 and x.dtype in (np.float32, np.float64)):
        return False
    B, _, T, d = x.shape
    return all(
        isinstance(a, np.ndarray)
        and a.dtype == x.dtype
        and a.flags.c_contiguous
        and a.ndim == 4
        and a.shape[0] in (1, B)
        and a.shape[1:] == (1, T, d)
        for a in (cos, sin)
    )


def _rotated(x, cos, sin, sign: int) -> np.ndarray:
    """The kernel's rotation of x (B, H, T, d): ``sign`` 1 the forward, -1 its transpose (the VJP)."""
    y = np.empty(x.shape, x.dtype)
    flat = (cos.shape[0],) + cos.shape[2:]  # (1 or B, T, d)
    run = kernels.pick(rotate.rope_rotate, 4 * x.nbytes)
    run(x, cos.reshape(flat), sin.reshape(flat), y, sign)
    return y


@rope.defvjp
def _rope_vjp(res, g):
    cos, sin, shape = res
    if g.shape == shape and _fused(g, cos, sin):
        return _rotated(g, cos, sin, -1), None, None
    dx = g * cos
    dx += _rotate_half_transposed(g * sin)
    return unbroadcast(dx, shape), None, None


@rope.defbatch
def _rope_batch(args, dims):
    """One call with the batches first; x always carries the batch (the forward adds into x · cos)."""
    rank = max(ndim_of(a) - (d is not None) for a, d in zip(args, dims))
    x = align_front(broadcast_front(args[0], dims[0], batch_size(args, dims)), 0, rank)
    cos, sin = (align_front(a, d, rank) for a, d in zip(args[1:], dims[1:]))
    return rope(x, cos, sin), 0


@rope.defjvp
def _rope_jvp(primals, tangents):
    """``rope(dx, cos, sin)``: linear in x; the angles are constants, as in the VJP."""
    x, cos, sin = primals
    dx = tangents[0]
    return rope(x, cos, sin), None if dx is None else rope(dx, cos, sin)
