"""Layer norm and RMS norm over rows, forward and backward, one pass over each row's data.

Shapes: N rows (the leading axes flattened), D the normalised axis; ``x``, ``xhat``, ``y``,
``g``, ``dx`` (N, D), ``rstd`` (N,) (the primitive's (..., 1) seen flat), ``scale``/``bias`` (D,).
A row (a few KB) stays in L1 between its passes: a mean, a variance, and the write of
``xhat`` and ``y``; NumPy makes each a full pass over memory with its own temporaries.

The backward's ``dscale``/``dbias`` sum over rows: each of ``parts`` = :func:`chunks` row
ranges (fixed by N alone) adds into its own row of ``part_*`` (parts, D), then those rows are
added in order, so the bits depend on the shapes, never on the thread count. ``c`` holds the
scalars in the arrays' dtype, ``(1/D, eps, 1)`` (a Python float in a kernel would widen float32
to float64). Divisions are ``np.divide``: ``/`` checks for zero and stops vectorisation.
"""

from __future__ import annotations

import numpy as np

from .jit import prange, twin

__all__ = ["chunks", "layer_norm_forward", "layer_norm_backward", "rms_norm_forward", "rms_norm_backward"]


def chunks(rows: int) -> int:
    """How many row ranges the backward's parameter sums use: 8 (or one per row below 8), fixed
    by the shape so that any thread count gives the same sums."""
    return max(1, min(rows, 8))


def _layer_norm_forward(x, scale, bias, y, xhat, rstd, c):
    """xhat = (x - mean) · rstd, rstd = 1 / sqrt(var + eps), y = xhat · scale + bias, row by row."""
    n, d = x.shape
    for i in prange(n):
        xr, hr, yr = x[i], xhat[i], y[i]
        s = c[0] - c[0]
        for j in range(d):
            s += xr[j]
        m = s * c[0]
        v = c[0] - c[0]
        for j in range(d):
            h = xr[j] - m
            hr[j] = h
            v += h * h
        r = np.divide(c[2], np.sqrt(v * c[0] + c[1]))
        rstd[i] = r
        for j in range(d):
            h = hr[j] * r
            hr[j] = h
            yr[j] = h * scale[j] + bias[j]


def _layer_norm_backward(g, xhat, rstd, scale, dx, part_s, part_b, dscale, dbias, c):
    """dx = rstd (dxhat - mean(dxhat) - xhat · mean(dxhat · xhat)), dxhat = g · scale;
    dscale = Σ_rows g · xhat, dbias = Σ_rows g (in ``part_*`` per row range, then added)."""
    n, d = g.shape
    parts = part_s.shape[0]
    step = (n + parts - 1) // parts
    for p in prange(parts):
        ps, pb = part_s[p], part_b[p]
        for j in range(d):
            ps[j] = c[0] - c[0]
            pb[j] = c[0] - c[0]
        for i in range(p * step, min(n, p * step + step)):
            gr, hr, dr = g[i], xhat[i], dx[i]
            a = c[0] - c[0]
            b = c[0] - c[0]
            for j in range(d):
                gj, hj = gr[j], hr[j]
                dh = gj * scale[j]
                a += dh
                b += dh * hj
                ps[j] += gj * hj
                pb[j] += gj
            a *= c[0]
            b *= c[0]
            r = rstd[i]
            for j in range(d):
                dr[j] = (gr[j] * scale[j] - a - hr[j] * b) * r
    for j in range(d):
        dscale[j] = part_s[0, j]
        dbias[j] = part_b[0, j]
    for p in range(1, parts):
        for j in range(d):
            dscale[j] += part_s[p, j]
            dbias[j] += part_b[p, j]


def _rms_norm_forward(x, scale, y, xhat, rstd, c):
    """xhat = x · rstd, rstd = 1 / sqrt(mean(x²) + eps), y = xhat · scale, row by row."""
    n, d = x.shape
    for i in prange(n):
        xr, hr, yr = x[i], xhat[i], y[i]
        s = c[0] - c[0]
        for j in range(d):
            s += xr[j] * xr[j]
        r = np.divide(c[2], np.sqrt(s * c[0] + c[1]))
        rstd[i] = r
        for j in range(d):
            h = xr[j] * r
            hr[j] = h
            yr[j] = h * scale[j]


def _rms_norm_backward(g, xhat, rstd, scale, dx, part_s, dscale, c):
    """dx = rstd (dxhat - xhat · mean(dxhat · xhat)), dxhat = g · scale; dscale = Σ_rows g · xhat."""
    n, d = g.shape
    parts = part_s.shape[0]
    step = (n + parts - 1) // parts
    for p in prange(parts):
        ps = part_s[p]
        for j in range(d):
            ps[j] = c[0] - c[0]
        for i in range(p * step, min(n, p * step + step)):
            gr, hr, dr = g[i], xhat[i], dx[i]
            b = c[0] - c[0]
            for j in range(d):
                gj, hj = gr[j], hr[j]
                b += gj * scale[j] * hj
                ps[j] += gj * hj
            b *= c[0]
            r = rstd[i]
            for j in range(d):
                dr[j] = (gr[j] * scale[j] - hr[j] * b) * r
    for j in range(d):
        dscale[j] = part_s[0, j]
    for p in range(1, parts):
        for j in range(d):
            dscale[j] += part_s[p, j]


layer_norm_forward = twin(_layer_norm_forward)
layer_norm_backward = twin(_layer_norm_backward)
rms_norm_forward = twin(_rms_norm_forward)
rms_norm_backward = twin(_rms_norm_backward)
