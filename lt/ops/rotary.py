"""Rotary position embedding (RoPE, Su et al. 2021) in Hugging Face's half-split layout.

Shapes: ... any leading axes, T positions, d the rotated axis (the head size, an even
number). Pair i is (x[i], x[i + d/2]). The forward keeps only what its VJP needs: the
angles' ``cos``/``sin`` and the input's shape.
"""

from __future__ import annotations

import numpy as np

from .basic import unbroadcast
from .primitive import primitive

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
    y = x * cos
    y += rotate_half(x) * sin
    return y, (cos, sin, x.shape)


@rope.defvjp
def _rope_vjp(res, g):
    cos, sin, shape = res
    dx = g * cos
    dx += _rotate_half_transposed(g * sin)
    return unbroadcast(dx, shape), None, None
