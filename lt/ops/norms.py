"""Normalisation over the last axis: layer norm (GPT-2) and RMS norm (Llama-family decoders).

Shapes: ... any leading axes, D the normalised axis, N = the leading axes flattened. Each
forward keeps only what its VJP needs: ``xhat`` (the normalised input), ``1/std`` and ``scale``.
With the kernels (``lt.ops.kernels.norms``; C-contiguous float32/float64, (D,) parameters) each
forward and VJP is one visit of each row, keeping the same residuals; the NumPy code stays the
reference (and runs for whatever the kernels do not cover).
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .basic import add, exp, log, mean, mul, sub
from .kernels import norms as rowwise
from .primitive import primitive
from .traces import add_tangents, align_front, ndim_of, shape_of, to_front

__all__ = ["layer_norm", "rms_norm", "rows"]


def _norm_batch(prim, n_params, args, dims, options):
    """vmap of ``prim(x, scale[, bias])``: one call; batched parameters applied after a unit norm."""
    x, params, rest = args[0], args[1 : 1 + n_params], args[1 + n_params :]
    dx, pdims = dims[0], dims[1 : 1 + n_params]
    if any(d is not None for d in dims[1 + n_params :]):
        raise NotImplementedError(f"lt.vmap: {prim.__name__}'s eps cannot be batched")
    if all(d is None for d in pdims):
        if dx is not None and dx == ndim_of(x) - 1:
            x, dx = to_front(x, dx), 0
        return prim(x, *params, *rest, **options), dx
    rank = ndim_of(x) - (dx is not None)
    x = align_front(x, dx, rank)
    size, dtype = shape_of(x)[-1], x.dtype
    unit = [np.ones(size, dtype)] + [np.zeros(size, dtype)] * (n_params - 1)
    y = prim(x, *unit, *rest, **options)
    for i, (p, d) in enumerate(zip(params, pdims)):
        p = align_front(p, d, rank)
        y = mul(y, p) if i == 0 else add(y, p)
    return y, 0


def _inv_rms(c, eps):
    """``1 / sqrt(mean(c²) + eps)`` over the last axis, kept (..., 1), in primitives."""
    return exp(mul(log(add(mean(mul(c, c), -1, True), eps)), -0.5))


def _normalised_tangent(xhat, rstd, dc):
    """The tangent of ``xhat = c · rstd`` along ``dc``: ``rstd (dc - xhat · mean(dc · xhat))``."""
    return mul(sub(dc, mul(xhat, mean(mul(dc, xhat), -1, True))), rstd)


def _fused(x, *params) -> bool:
    """Whether the row kernels take this call: on, x float32/float64, C-contiguous, with rows,
    and each parameter a contiguous (D,) vector of x's dtype."""
    if not (kernels.enabled() and isinstance(x, np.ndarray) and x.dtype in (np.float32, np.float64)):
        return False
    if x.ndim == 0 or x.size == 0 or not x.flags.c_contiguous:
        return False
    return all(
        isinstance(p, np.ndarray) and p.shape == x.shape[-1:] and p.dtype == x.dtype and p.flags.c_contiguous
        for p in params
    )


def _constants(x, eps) -> tuple:
    """The kernels' scalars in x's dtype: (1/D, eps, 1)."""
    t = x.dtype.type
    return t(1.0 / x.shape[-1]), t(eps), t(1.0)


def _fused_backward(pair, g, xhat, rstd, scale, *outs):
    """A norm's backward kernel: returns dx (..., D) and fills ``outs``, the (D,) gradients of the
    parameters (scale[, bias]), each summed over rows through its own (chunks, D) partial sums."""
    g2, h2 = rows(np.ascontiguousarray(g, xhat.dtype)), rows(xhat)
    dx = np.empty_like(h2)
    parts = [np.empty((rowwise.chunks(len(h2)), h2.shape[1]), h2.dtype) for _ in outs]
    run = kernels.pick(pair, 3 * h2.nbytes)
    r = np.ascontiguousarray(rstd, xhat.dtype).reshape(-1)  # (N,)
    run(g2, h2, r, scale, dx, *parts, *outs, _constants(xhat, 0.0))
    return dx.reshape(xhat.shape)


def rows(a: np.ndarray) -> np.ndarray:
    """``a`` as a 2-D (rows, last axis) array: a view when ``a`` is contiguous."""
    return a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)


# ----------------------------------------------------------------- layer norm


@primitive
def layer_norm(x, scale, bias, eps=1e-5):
    """Normalise the last axis to zero mean and unit variance, then ``* scale + bias``.

    Keeps ``xhat`` and ``1/std`` for the backward (as llm.c does). With the kernels: one
    pass over each row (``kernels.norms``).
    """
    if _fused(x, scale, bias):
        x2 = rows(x)  # (N, D)
        y, xhat, rstd = np.empty_like(x), np.empty_like(x), np.empty(x.shape[:-1] + (1,), x.dtype)
        run = kernels.pick(rowwise.layer_norm_forward, 3 * x.nbytes)
        run(x2, scale, bias, rows(y), rows(xhat), rstd.reshape(-1), _constants(x, eps))
        return y, (xhat, rstd, scale)
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
    if _fused(xhat, scale) and g.shape == xhat.shape:
        dscale, dbias = np.empty_like(scale), np.empty_like(scale)
        return _fused_backward(rowwise.layer_norm_backward, g, xhat, rstd, scale, dscale, dbias), dscale, dbias
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


@layer_norm.defbatch
def _layer_norm_batch(args, dims, **options):
    """One layer norm over the batch; per member scale and bias where those are batched."""
    return _norm_batch(layer_norm, 2, args, dims, options)


@layer_norm.defjvp
def _layer_norm_jvp(primals, tangents, **options):
    """``dy = dxhat · scale + xhat · dscale + dbias``, ``dxhat`` from the centred tangent."""
    x, scale, bias, *rest = primals
    dx, dscale, dbias = tangents[:3]
    y = layer_norm(x, scale, bias, *rest, **options)
    if dx is None and dscale is None and dbias is None:
        return y, None
    eps = options.get("eps", rest[0] if rest else 1e-5)
    size, dtype = shape_of(x)[-1], x.dtype
    xhat = layer_norm(x, np.ones(size, dtype), np.zeros(size, dtype), eps=eps)
    dy = None
    if dx is not None:
        rstd = _inv_rms(sub(x, mean(x, -1, True)), eps)
        dy = mul(_normalised_tangent(xhat, rstd, sub(dx, mean(dx, -1, True))), scale)
    if dscale is not None:
        dy = add_tangents(dy, mul(xhat, dscale))
    if dbias is not None:
        dy = add(dbias, np.zeros(shape_of(x), dtype)) if dy is None else add(dy, dbias)
    return y, dy


# ----------------------------------------------------------------- RMS norm


@primitive
def rms_norm(x, scale, eps=1e-6):
    """``x / sqrt(mean(x²) + eps) * scale`` over the last axis (Llama's and Qwen2's RMSNorm).

    No mean is subtracted and there is no bias. Keeps ``xhat = x / rms`` and ``1/rms``. With
    the kernels: one pass over each row (``kernels.norms``).
    """
    if _fused(x, scale):
        y, xhat, rstd = np.empty_like(x), np.empty_like(x), np.empty(x.shape[:-1] + (1,), x.dtype)
        run = kernels.pick(rowwise.rms_norm_forward, 3 * x.nbytes)
        run(rows(x), scale, rows(y), rows(xhat), rstd.reshape(-1), _constants(x, eps))
        return y, (xhat, rstd, scale)
    inv_d = x.dtype.type(1.0 / x.shape[-1])
    ms = np.einsum("...d,...d->...", x, x)[..., None] * inv_d  # (..., 1) mean square
    rstd = 1.0 / np.sqrt(ms + x.dtype.type(eps))
    xhat = x * rstd
    return xhat * scale, (xhat, rstd, scale)


@rms_norm.defvjp
def _rms_norm_vjp(res, g):
    xhat, rstd, scale = res
    if _fused(xhat, scale) and g.shape == xhat.shape:
        dscale = np.empty_like(scale)
        return _fused_backward(rowwise.rms_norm_backward, g, xhat, rstd, scale, dscale), dscale
    dscale = np.einsum("nd,nd->d", rows(g), rows(xhat))
    # dx = rstd * (dxhat - xhat * mean(dxhat * xhat)), dxhat = g * scale
    dx = g * scale
    inv_d = dx.dtype.type(1.0 / g.shape[-1])
    dx -= xhat * (np.einsum("...d,...d->...", dx, xhat)[..., None] * inv_d)
    dx *= rstd
    return dx, dscale


@rms_norm.defbatch
def _rms_norm_batch(args, dims, **options):
    """One RMS norm over the batch; per member scale where it is batched."""
    return _norm_batch(rms_norm, 1, args, dims, options)


@rms_norm.defjvp
def _rms_norm_jvp(primals, tangents, **options):
    """``dy = rstd (dx - xhat · mean(dx · xhat)) · scale + xhat · dscale``."""
    x, scale, *rest = primals
    dx, dscale = tangents[:2]
    y = rms_norm(x, scale, *rest, **options)
    if dx is None and dscale is None:
        return y, None
    eps = options.get("eps", rest[0] if rest else 1e-6)
    xhat = rms_norm(x, np.ones(shape_of(x)[-1], x.dtype), eps=eps)
    dy = None
    if dx is not None:
        dy = mul(_normalised_tangent(xhat, _inv_rms(x, eps), dx), scale)
    if dscale is not None:
        dy = add_tangents(dy, mul(xhat, dscale))
    return y, dy
