"""Primitives of Llama-family decoders: RMS norm, rotary position embedding, the SwiGLU gate.

Shapes: ... any leading axes, D the normalised / rotated axis (for RoPE the head size d,
an even number), T positions. Each forward keeps only what its VJP needs.
"""

from __future__ import annotations

import numpy as np

from .basic import unbroadcast
from .elementwise import rows
from .primitive import primitive

__all__ = ["rms_norm", "rope", "rotate_half", "swiglu"]


# ----------------------------------------------------------------- RMS norm


@primitive
def rms_norm(x, scale, eps=1e-6):
    """``x / sqrt(mean(x²) + eps) * scale`` over the last axis (Llama's and Qwen2's RMSNorm).

    No mean is subtracted and there is no bias. Keeps ``xhat = x / rms`` and ``1/rms``.
    """
    inv_d = x.dtype.type(1.0 / x.shape[-1])
    ms = np.einsum("...d,...d->...", x, x)[..., None] * inv_d  # (..., 1) mean square
    rstd = 1.0 / np.sqrt(ms + x.dtype.type(eps))
    xhat = x * rstd
    return xhat * scale, (xhat, rstd, scale)


@rms_norm.defvjp
def _rms_norm_vjp(res, g):
    xhat, rstd, scale = res
    dscale = np.einsum("nd,nd->d", rows(g), rows(xhat))
    # dx = rstd * (dxhat - xhat * mean(dxhat * xhat)), dxhat = g * scale
    dx = g * scale
    inv_d = dx.dtype.type(1.0 / g.shape[-1])
    dx -= xhat * (np.einsum("...d,...d->...", dx, xhat)[..., None] * inv_d)
    dx *= rstd
    return dx, dscale


# ----------------------------------------------------------------- rotary positions


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


# ----------------------------------------------------------------- SwiGLU


@primitive
def swiglu(gate, up):
    """``silu(gate) * up`` with ``silu(a) = a * sigmoid(a)``: the gated feed-forward's middle.

    Keeps ``gate``, ``up`` and ``sigmoid(gate)``.
    """
    sig = np.negative(gate)
    np.exp(sig, out=sig)
    sig += 1
    np.reciprocal(sig, out=sig)  # sigmoid(gate)
    h = gate * sig
    h *= up
    return h, (gate, up, sig)


@swiglu.defvjp
def _swiglu_vjp(res, g):
    gate, up, sig = res
    silu = gate * sig
    dup = g * silu
    # d silu / d a = sig * (1 + a * (1 - sig))
    dgate = 1 - sig
    dgate *= gate
    dgate += 1
    dgate *= sig
    dgate *= up
    dgate *= g
    return dgate, dup
