"""Normalisation over the last axis: layer norm (GPT-2) and RMS norm (Llama-family decoders).

Shapes: ... any leading axes, D the normalised axis, N = the leading axes flattened. Each
forward keeps only what its VJP needs: ``xhat`` (the normalised input), ``1/std`` and ``scale``.
"""

from __future__ import annotations

import numpy as np

from .primitive import primitive

__all__ = ["layer_norm", "rms_norm", "rows"]


def rows(a: np.ndarray) -> np.ndarray:
    """``a`` as a 2-D (rows, last axis) array: a view when ``a`` is contiguous."""
    return a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)


# ----------------------------------------------------------------- layer norm


@primitive
def layer_norm(x, scale, bias, eps=1e-5):
    """Normalise the last axis to zero mean and unit variance, then ``* scale + bias``.

    Keeps ``xhat`` and ``1/std`` for the backward (as llm.c does).
    """
    inv_d = x.dtype.type(1.0 / x.shape[-1])
    xhat = x - np.add.reduce(x, axis=-1, keepdims=True) * inv_d  # (..., D)
    var = np.einsum("...d,...d->...", xhat, xhat)[..., None] * inv_d
    rstd = 1.0 / np.sqrt(var + x.dtype.type(eps))  # (..., 1)
    xhat *= rstd
    y = xhat * scale
    y += bias
    return y, (xhat, rstd, scale)


@layer_norm.defvjp
def _layer_norm_vjp(res, g):
    xhat, rstd, scale = res
    g2, xhat2 = rows(g), rows(xhat)  # (N, D)
    dscale = np.einsum("nd,nd->d", g2, xhat2)
    dbias = g2.sum(axis=0)
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = g * scale
    dx = g * scale
    inv_d = dx.dtype.type(1.0 / g.shape[-1])
    mean_dx_xhat = np.einsum("...d,...d->...", dx, xhat)[..., None] * inv_d
    dx -= np.add.reduce(dx, axis=-1, keepdims=True) * inv_d
    dx -= xhat * mean_dx_xhat
    dx *= rstd
    return dx, dscale, dbias


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
