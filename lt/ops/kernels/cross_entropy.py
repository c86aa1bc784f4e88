"""Softmax cross-entropy over rows: the forward's softmax and loss in one visit of each row,
the backward's ``(p - onehot) · w`` in one pass.

Shapes: N rows (positions), V the vocabulary; ``x``, ``p``, ``d`` (N, V); ``t``, ``nll``,
``w`` (N,). A row (V · 4 bytes: 20 KB at V = 5000) stays in L1/L2 between the forward's
passes over it (exp and sum; scale), where NumPy goes over all N × V values once per step.

The exp is :mod:`.activations`' (``exp_constants``: ``c``, the integer type's exponent bias and
shift), its 2^k written as integer bits into ``pbits`` (``p``'s own memory) and read back as
floats by the next loop, so no scratch is needed.
"""

from __future__ import annotations

import numpy as np

from .jit import prange, twin

__all__ = ["forward", "backward"]


def _forward(x, mx, t, p, pbits, nll, c, bias, shift):
    """p = softmax(x) row by row, nll = logsumexp(x) - x[t]; ``mx`` (N,) the rows' maxima (NumPy's
    SIMD max: a select-chain max here runs at one element per 3-4 cycles), ``t`` in [0, V)."""
    n, v = x.shape
    for i in prange(n):
        xr, pr, br, m = x[i], p[i], pbits[i], mx[i]
        for j in range(v):  # the 2^k of exp(x - m), as bits
            w = xr[j] - m
            w = c[3] if w < c[3] else w
            br[j] = (np.int64(np.floor(w * c[0] + c[5])) + bias) << shift
        total = c[6] - c[6]
        for j in range(v):  # exp(x - m) = P(r) · 2^k, 0 below EXP_LO
            w = xr[j] - m
            under = w < c[3]
            w = c[3] if under else w
            k = np.floor(w * c[0] + c[5])
            r = w - k * c[1] - k * c[2]
            q = c[7] * r + c[8]
            q = q * r + c[9]
            q = q * r + c[10]
            q = q * r + c[11]
            q = q * r + c[12]
            q = q * r + c[13]
            q = q * r + c[14]
            q = q * r + c[15]
            q = q * r + c[16]
            e = (q * r * r + r + c[6]) * pr[j]
            e = c[6] - c[6] if under else e
            pr[j] = e
            total += e
        inv = np.divide(c[6], total)
        for j in range(v):
            pr[j] *= inv
        nll[i] = np.log(total) - (xr[t[i]] - m)


def _backward(p, t, w, d):
    """d = (p - onehot(t)) · w, row by row (w = 0 on ignored rows: a zero row)."""
    n, v = p.shape
    for i in prange(n):
        pr, dr, wi = p[i], d[i], w[i]
        for j in range(v):
            dr[j] = pr[j] * wi
        dr[t[i]] -= wi


forward = twin(_forward)
backward = twin(_backward)
