"""Kernels for quantized weights (``lt.quant``): products that read the int8/int4 codes directly.

Shapes: M input rows, R stored rows of the leaf (one output each), Kp = g * G the padded
reduction axis (g groups of G weights, one scale each), n rows decoded at a time.

The storage is ``lt.quant.arrays``': int8 codes (R, Kp); int4 bytes (R, Kp / 2) where byte j
holds code j + 8 in its low nibble and code j + Kp / 2 + 8 in its high one. So a stored row's
int4 product walks its bytes once, with two sums: the low nibbles against ``x[:Kp / 2]``, the
high ones against ``x[Kp / 2:]``, each split where a group ends (when g is even every group sits
in one half and the segments are whole groups). The codes are dequantized in registers; each
group's partial dot product is scaled once, ``y[m, r] = sum_j s[r, j] (c[r, group j] . x[m, group j])``.

- :func:`rows8` / :func:`rows4`: ``out (M, R) = x (M, Kp) @ dequantized rowsᵀ``, parallel over
  the stored rows (the decode product: M small, every code read once from memory, the rows of
  ``x`` from cache).
- :func:`decode8` / :func:`decode4`: stored rows ``rows`` (n,) dequantized into ``out (n, Kp)``,
  parallel over them: a tile for the BLAS (prefill) or the rows of a gather.

Each output is one sum in a fixed order (fixed by the shapes), so results do not depend on the
thread count.

They run on the calling thread (``@kernel``, not parallel; ``prange`` is then ``range``): measured
in gpt2's batch-1 decoding on the 2-core EPYC, numba's two worker threads beside OpenBLAS's two
spin-waiting ones (the attention's products between the kernels) made int8 decoding 14 tok/s;
one thread gives 87 tok/s (int4 53, float32 46 on the BLAS). Run them in parallel again once
the BLAS and the kernels share one pool (``lt.threads``).
"""

from __future__ import annotations

import numpy as np

from .jit import kernel, prange

__all__ = ["rows8", "rows4", "decode8", "decode4"]


@kernel
def rows8(x, codes, scales, out):
    """``out[m, r] = sum_j scales[r, j] * (codes[r, jG:(j+1)G] . x[m, jG:(j+1)G])``.

    x (M, Kp) float, codes (R, Kp) int8, scales (R, g), out (M, R) in x's dtype."""
    M = x.shape[0]
    R, Kp = codes.shape
    g = scales.shape[1]
    G = Kp // g
    zero = out.dtype.type(0)
    for r in prange(R):
        cr, sr = codes[r], scales[r]
        for m in range(M):
            xm = x[m]
            acc = zero
            for j in range(g):
                o = j * G
                part = zero
                for k in range(G):  # range(n) with offsets: numba's range(a, b) does not vectorise here
                    part += cr[o + k] * xm[o + k]
                acc += sr[j] * part
            out[m, r] = acc


@kernel
def rows4(x, codes, scales, out):
    """As :func:`rows8` for int4 bytes codes (R, Kp / 2): low nibbles against ``x[:, :Kp/2]``,
    high nibbles against ``x[:, Kp/2:]``, both stored + 8. x (M, Kp), out (M, R).

    With g even, bytes [jG, (j+1)G) hold group j (low) and group j + g/2 (high): one loop of G
    a group pair. With g odd a group straddles the halves: each row is unpacked into ``tmp``
    (Kp,) first, then dotted group by group (about 0.7x the speed)."""
    M = x.shape[0]
    R, half = codes.shape
    g = scales.shape[1]
    Kp = 2 * half
    G = Kp // g
    h = g // 2
    zero = out.dtype.type(0)
    if g % 2 == 0:
        for r in prange(R):
            cr, sr = codes[r], scales[r]
            for m in range(M):
                x_lo, x_hi = x[m, :half], x[m, half:]
                acc = zero
                for j in range(h):
                    o = j * G
                    s_lo = zero
                    s_hi = zero
                    for k in range(G):
                        b = cr[o + k]
                        s_lo += np.int8((b & 15) - 8) * x_lo[o + k]  # an int8 code: products stay in x's dtype
                        s_hi += np.int8((b >> 4) - 8) * x_hi[o + k]
                    acc += sr[j] * s_lo + sr[j + h] * s_hi
                out[m, r] = acc
        return
    for r in prange(R):
        cr, sr = codes[r], scales[r]
        tmp = np.empty(Kp, out.dtype)  # the row's codes as floats
        t_lo, t_hi = tmp[:half], tmp[half:]
        for k in range(half):
            b = cr[k]
            t_lo[k] = np.int8((b & 15) - 8)
            t_hi[k] = np.int8((b >> 4) - 8)
        for m in range(M):  # rows8's loop, written again: as a kernel both called, rows8 ran 1.6x slower
            xm = x[m]
            acc = zero
            for j in range(g):
                o = j * G
                part = zero
                for k in range(G):
                    part += tmp[o + k] * xm[o + k]
                acc += sr[j] * part
            out[m, r] = acc


@kernel
def decode8(codes, scales, rows, out):
    """``out[i] = stored row rows[i]`` dequantized: codes (R, Kp) int8, scales (R, g),
    rows (n,) int64, out (n, Kp) float."""
    n, Kp = out.shape
    g = scales.shape[1]
    G = Kp // g
    for i in prange(n):
        cr, sr, oi = codes[rows[i]], scales[rows[i]], out[i]
        for j in range(g):
            o = j * G
            s = sr[j]
            for k in range(G):
                oi[o + k] = cr[o + k] * s


@kernel
def decode4(codes, scales, rows, out):
    """As :func:`decode8` for int4 bytes codes (R, Kp / 2); out (n, Kp): unpacked, then scaled."""
    n, Kp = out.shape
    half = Kp // 2
    g = scales.shape[1]
    G = Kp // g
    for i in prange(n):
        cr, sr, oi = codes[rows[i]], scales[rows[i]], out[i]
        o_lo, o_hi = oi[:half], oi[half:]
        for k in range(half):
            b = cr[k]
            o_lo[k] = np.int8((b & 15) - 8)
            o_hi[k] = np.int8((b >> 4) - 8)
        for j in range(g):
            o = j * G
            s = sr[j]
            for k in range(G):
                oi[o + k] *= s
