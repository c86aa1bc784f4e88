"""Attention's loops: the tile helpers both attention kernels share, and the fused full kernel.

Shapes: N the flattened batch axes (B, H, ...) of one call, T queries, S keys, d per-head size,
dv value size. q (Nq, T, d), k (Nk, S, d), v (Nv, S, dv) are C-contiguous; ``qi``, ``ki``,
``vi`` (N,) say which of their slices batch slice n reads (broadcast leading axes: grouped kv
heads read one k slice for several n). A mask is uint8 (Nm, Tm, Sm), 1 = may attend, slice
``mi[n]``, row ``i * mrs`` and column ``j * mcs`` (strides 0 where the mask broadcasts).

The products are :func:`ab` (``C (+)= A B``, vectorised along C's rows, four rows and four
terms at a time; measured on one AMD EPYC (Zen 4) core at the 256-wide tiles of the blockwise
kernel: 75-95 GFLOP/s, 0.85-1.0x NumPy's BLAS, with no call to make; a dot-product form, 16
sums in registers, was 2x slower at 64-term sums, reducing each across the vector costing as
much as the sum). Offsets go into the row slices (``C[r][c:]``), never into the inner index:
an index numba cannot prove non-negative keeps its wraparound select and the loop does not
vectorise (10x slower). Exponentials of float32 are a polynomial that vectorises
(:func:`exp_row`, :func:`exp_cols`: within 1 ulp of NumPy's float32 ``exp``, 0.4 ns an element
against 3.8 for a scalar ``math.exp``); float64 uses ``math.exp``. Clamps and maxima are
written as selects (``a if a > b else b``): numba's ``max()`` does not vectorise.

``ab``, ``transpose``, ``exp_row``, ``exp_cols`` (and the tiles module's ``mask_tile``) are
helpers the kernels call by name (``jit`` compiles a callee before its caller).
"""

from __future__ import annotations

import math

import numpy as np

from .jit import kernel, prange, twin

__all__ = ["ab", "transpose", "exp_row", "exp_cols", "full_forward", "full_backward"]

_LOG2E, _LN2_HI, _LN2_LO = 1.4426950408889634, 0.693359375, -2.12194440e-4


@kernel
def ab(A, ar, ac, B, br, bc, C, cr, cc, m, n, K, accumulate):
    """``C[cr:cr+m, cc:cc+n] (+)= A[ar:ar+m, ac:ac+K] @ B[br:br+K, bc:bc+n]``.

    Four rows of C at a time, four terms of the sum per pass over them: the loop over the n
    columns vectorises, and each element of C is loaded and stored once per 16 products."""
    m4, K4 = m - m % 4, K - K % 4
    if not accumulate:
        for i in range(m):
            c = C[cr + i][cc:]
            for j in range(n):
                c[j] = 0
    for i in range(0, m4, 4):  # (rows and columns offset by slicing: indices from range() vectorise)
        c0, c1, c2, c3 = C[cr + i][cc:], C[cr + i + 1][cc:], C[cr + i + 2][cc:], C[cr + i + 3][cc:]
        a0, a1, a2, a3 = A[ar + i][ac:], A[ar + i + 1][ac:], A[ar + i + 2][ac:], A[ar + i + 3][ac:]
        for p in range(0, K4, 4):
            x0, x1, x2, x3 = a0[p], a0[p + 1], a0[p + 2], a0[p + 3]
            y0, y1, y2, y3 = a1[p], a1[p + 1], a1[p + 2], a1[p + 3]
            z0, z1, z2, z3 = a2[p], a2[p + 1], a2[p + 2], a2[p + 3]
            w0, w1, w2, w3 = a3[p], a3[p + 1], a3[p + 2], a3[p + 3]
            b0, b1, b2, b3 = B[br + p][bc:], B[br + p + 1][bc:], B[br + p + 2][bc:], B[br + p + 3][bc:]
            for j in range(n):
                e, f, g, h = b0[j], b1[j], b2[j], b3[j]
                c0[j] += x0 * e + x1 * f + x2 * g + x3 * h
                c1[j] += y0 * e + y1 * f + y2 * g + y3 * h
                c2[j] += z0 * e + z1 * f + z2 * g + z3 * h
                c3[j] += w0 * e + w1 * f + w2 * g + w3 * h
        for p in range(K4, K):
            x0, y0, z0, w0, b0 = a0[p], a1[p], a2[p], a3[p], B[br + p][bc:]
            for j in range(n):
                e = b0[j]
                c0[j] += x0 * e
                c1[j] += y0 * e
                c2[j] += z0 * e
                c3[j] += w0 * e
    for i in range(m4, m):  # the last rows, one at a time
        a, c = A[ar + i][ac:], C[cr + i][cc:]
        for p in range(K):
            x, b = a[p], B[br + p][bc:]
            for j in range(n):
                c[j] += x * b[j]


@kernel
def transpose(src, sr, sc, dst, m, n):
    """``dst[:n, :m] = src[sr:sr+m, sc:sc+n]ᵀ``."""
    for i in range(m):
        row = src[sr + i]
        for j in range(n):
            dst[j, i] = row[sc + j]


@kernel
def exp_row(x, n, shift, bits, exact):
    """``x[:n] = exp(x[:n] - shift)`` in place, exactly 0 where x is -inf; returns the sum.

    ``exact`` (float64): ``math.exp``. Else (float32) ``2^t · P(r)``, ``x - shift = t ln2 + r``,
    |r| <= ln2/2, P of degree 7 (Cephes' expf), 2^t built as float32 bits in ``bits`` (int32, n):
    two loops that vectorise. Arguments below -87.3 give 2^-126, not the denormals NumPy gives."""
    total = np.float32(0.0)  # float64 rows promote it
    if exact:
        for j in range(n):
            e = math.exp(x[j] - shift) if x[j] != -np.inf else 0.0
            x[j] = e
            total += e
        return total
    for j in range(n):
        u = x[j]
        a = u - shift
        a = a if a > np.float32(-87.33) else np.float32(-87.33)  # (a select: builtin max() does not vectorise)
        t = np.floor(a * np.float32(_LOG2E) + np.float32(0.5))
        r = a - t * np.float32(_LN2_HI) - t * np.float32(_LN2_LO)
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        x[j] = p * r * r + r + np.float32(1.0)
        bits[j] = (np.int32(t) + np.int32(127)) << np.int32(23) if u != -np.inf else np.int32(0)
    scale = bits.view(np.float32)
    for j in range(n):
        e = x[j] * scale[j]
        x[j] = e
        total += e
    return total


@kernel
def exp_cols(x, n, shift, bits, exact, total, add):
    """``x[:n] = exp(x[:n] - shift[:n])`` in place (a shift per element: one row of a transposed
    tile, a column per query), exactly 0 where x is -inf; with ``add``, ``total[:n] += x[:n]``.
    The same arithmetic as :func:`exp_row`."""
    if exact:
        for j in range(n):
            x[j] = math.exp(x[j] - shift[j]) if x[j] != -np.inf else 0.0
    else:
        for j in range(n):
            u = x[j]
            a = u - shift[j]
            a = a if a > np.float32(-87.33) else np.float32(-87.33)
            t = np.floor(a * np.float32(_LOG2E) + np.float32(0.5))
            r = a - t * np.float32(_LN2_HI) - t * np.float32(_LN2_LO)
            p = np.float32(1.9875691500e-4)
            p = p * r + np.float32(1.3981999507e-3)
            p = p * r + np.float32(8.3334519073e-3)
            p = p * r + np.float32(4.1665795894e-2)
            p = p * r + np.float32(1.6666665459e-1)
            p = p * r + np.float32(5.0000001201e-1)
            x[j] = p * r * r + r + np.float32(1.0)
            bits[j] = (np.int32(t) + np.int32(127)) << np.int32(23) if u != -np.inf else np.int32(0)
        scale = bits.view(np.float32)
        for j in range(n):
            x[j] *= scale[j]
    if add:
        for j in range(n):
            total[j] += x[j]


def _full_forward(q, k, v, qi, ki, vi, mask, mi, mrs, mcs, has_mask, scale, exact, p, out, alive):
    """Fused ``p = softmax(q kᵀ·scale, mask)``, ``out = p v`` per slice n, in one pass per row.

    p (N, T, S) the weights (written), out (N, T, dv), alive (N, T) uint8: 0 for a fully masked
    row, whose weights are uniform 1/S (the NumPy reference's rule). Parallel over n."""
    N, T, S = p.shape
    d, dv = q.shape[2], v.shape[2]
    for n in prange(N):
        Q, K, V, M, P = q[qi[n]], k[ki[n]], v[vi[n]], mask[mi[n]], p[n]
        qs = np.empty((T, d), q.dtype)
        for i in range(T):
            for c in range(d):
                qs[i, c] = Q[i, c] * scale
        kt = np.empty((d, S), q.dtype)
        transpose(K, 0, 0, kt, S, d)
        ab(qs, 0, 0, kt, 0, 0, P, 0, 0, T, S, d, False)  # scores (T, S)
        bits = np.empty(S, np.int32)
        for i in range(T):
            row = P[i]
            if has_mask:
                for j in range(S):
                    if M[i * mrs, j * mcs] == 0:
                        row[j] = -np.inf
            top = row[0]
            for j in range(1, S):
                top = row[j] if row[j] > top else top
            if top == -np.inf:  # fully masked: uniform
                alive[n, i] = 0
                for j in range(S):
                    row[j] = 1.0 / S
                continue
            alive[n, i] = 1
            inv = 1.0 / exp_row(row, S, top, bits, exact)
            for j in range(S):
                row[j] *= inv
        ab(P, 0, 0, V, 0, 0, out[n], 0, 0, T, dv, S, False)  # out = p v


def _full_backward(q, k, v, p, g, gw, has_gw, qi, ki, vi, alive, scale, dq, dk, dv):
    """The full kernel's VJP from its weights p (N, T, S) and the output's cotangent g (N, T, dv)
    (and the weights' own, ``gw`` (N, T, S), when ``has_gw``): dv = pᵀ g, ds = p (dp - Σ dp·p)
    with dp = g vᵀ (0 in fully masked rows), dq = ds k · scale, dk = dsᵀ q · scale; per slice n
    (dq (N, T, d), dk (N, S, d), dv (N, S, dv), summed over broadcast axes by the caller)."""
    N, T, S = p.shape
    d, dvs = q.shape[2], v.shape[2]
    for n in prange(N):
        Q, K, V, P, G = q[qi[n]], k[ki[n]], v[vi[n]], p[n], g[n]
        pt = np.empty((S, T), q.dtype)
        transpose(P, 0, 0, pt, T, S)
        ab(pt, 0, 0, G, 0, 0, dv[n], 0, 0, S, dvs, T, False)  # dv = pᵀ g
        vt = np.empty((dvs, S), q.dtype)
        transpose(V, 0, 0, vt, S, dvs)
        ds = np.empty((T, S), q.dtype)
        ab(G, 0, 0, vt, 0, 0, ds, 0, 0, T, S, dvs, False)  # dp = g vᵀ
        for i in range(T):
            row, w = ds[i], P[i]
            if alive[n, i] == 0:
                row[:] = 0
                continue
            if has_gw:
                for j in range(S):
                    row[j] += gw[n, i, j]
            dot = row[0] * w[0]
            for j in range(1, S):
                dot += row[j] * w[j]
            for j in range(S):
                row[j] = w[j] * (row[j] - dot)
        ab(ds, 0, 0, K, 0, 0, dq[n], 0, 0, T, d, S, False)  # dq = ds k
        transpose(ds, 0, 0, pt, T, S)
        ab(pt, 0, 0, Q, 0, 0, dk[n], 0, 0, S, d, T, False)  # dk = dsᵀ q
        for i in range(T):
            for c in range(d):
                dq[n, i, c] *= scale
        for j in range(S):
            for c in range(d):
                dk[n, j, c] *= scale


# Serial and parallel versions: a decoding step's attention (one query over a short context)
# is a few microseconds of work, less than waking a second thread costs (``jit.pick``).
full_forward = twin(_full_forward)
full_backward = twin(_full_backward)
PARALLEL_FLOPS = 4e6  # ~40 us on one core: below it, the serial kernel
