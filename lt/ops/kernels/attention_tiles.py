"""Blockwise (flash) attention's loops: online softmax over tiles, forward and backward.

Shapes and conventions as in :mod:`lt.ops.kernels.attention` (N slices, q (Nq, T, d), k (Nk, S,
d), v (Nv, S, dv), slice maps ``qi``/``ki``/``vi``/``mi``, uint8 mask with strides ``mrs``/``mcs``),
tiles of bq queries × bk keys. ``causal``: key j is seen by query i when ``j <= i + off``
(off = S - T); tiles above the diagonal are never computed.

Tiles are held transposed, keys by queries (bk, bq): the softmax's max, sum and rescaling run
along the rows of the tile, one query per vector lane (elementwise, so they vectorise), and
each product's inner loop runs over the bq queries (``ab`` is fastest on long rows).

Forward (FlashAttention-2's loop order): each task takes one slice n and a pair of query blocks
(b, last - b: under ``causal`` every pair costs the same), keeps the running max m, sum l and
output (transposed, (dv, bq)) in scratch, rescales them when the max grows, and writes the
output and the log-sum-exp ``lse = m + log l`` (T numbers per slice, not T × S). Masked scores
get weight exactly 0; a query with no key to attend to gets ``alive = 0`` and ``lse = inf``
(the caller gives it the reference's uniform weights).

Backward: each task takes one slice n and every G-th key block (fixed by the shapes), recomputes
each tile's weights ``p = exp(s - lse)``, and keeps its key blocks' dk, dv in scratch; dq goes to
the task's own ``dq_part`` (N, G, d, T) (transposed), summed over G by the caller in a fixed order.
"""

from __future__ import annotations

import math

import numpy as np

from .attention import ab, exp_cols, transpose
from .jit import kernel, prange

__all__ = ["flash_forward", "flash_backward"]


@kernel
def mask_tile(st, nb, rows, i0, j0, off, crossing, M, mrs, mcs, has_mask):
    """-inf into the transposed scores ``st`` (nb, rows) where key j0+j may not be seen by query
    i0+c: above the diagonal (``crossing``: j0+j > i0+c+off) or where the mask says 0."""
    for j in range(nb):
        row = st[j]
        if crossing:
            for c in range(min(rows, max(0, j0 + j - off - i0))):
                row[c] = -np.inf
        if has_mask:
            for c in range(rows):
                if M[(i0 + c) * mrs, (j0 + j) * mcs] == 0:
                    row[c] = -np.inf


@kernel(parallel=True)
def flash_forward(q, k, v, qi, ki, vi, mask, mi, mrs, mcs, has_mask, causal, scale, bq, bk, exact, out, lse, alive):
    """out (N, T, dv), lse (N, T), alive (N, T) uint8, all written."""
    N, T, dv = out.shape
    S, d = k.shape[1], q.shape[2]
    off = S - T
    nqb = (T + bq - 1) // bq
    half = (nqb + 1) // 2
    for task in prange(N * half):
        n, b = task // half, task % half
        Q, K, V, M = q[qi[n]], k[ki[n]], v[vi[n]], mask[mi[n]]
        qt = np.empty((d, bq), q.dtype)  # q/√d, transposed
        st = np.empty((bk, bq), q.dtype)  # scores, then weights, transposed
        vt = np.empty((dv, bk), q.dtype)
        acc = np.empty((dv, bq), q.dtype)  # the output, transposed
        top = np.empty(bq, q.dtype)  # running max
        new = np.empty(bq, q.dtype)
        total = np.empty(bq, q.dtype)  # running sum
        bits = np.empty(bq, np.int32)
        for t in range(2):
            ib = b if t == 0 else nqb - 1 - b
            if t == 1 and ib == b:
                break
            i0 = ib * bq
            i1 = min(T, i0 + bq)
            rows = i1 - i0
            for r in range(rows):
                for c in range(d):
                    qt[c, r] = Q[i0 + r, c] * scale
            top[:] = -np.inf
            total[:] = 0
            acc[:] = 0
            stop = max(0, min(S, i1 + off)) if causal else S
            for j0 in range(0, stop, bk):
                j1 = min(stop, j0 + bk)
                nb = j1 - j0
                ab(K, j0, 0, qt, 0, 0, st, 0, 0, nb, rows, d, False)  # scores (nb, rows)
                crossing = causal and j1 - 1 > i0 + off
                if crossing or has_mask:
                    mask_tile(st, nb, rows, i0, j0, off, crossing, M, mrs, mcs, has_mask)
                for c in range(rows):
                    new[c] = top[c]
                for j in range(nb):
                    row = st[j]
                    for c in range(rows):
                        new[c] = row[c] if row[c] > new[c] else new[c]  # (builtin max() does not vectorise)
                grew = False
                for c in range(rows):
                    if new[c] != top[c]:
                        grew = True
                if grew:  # rescale what came before: alpha = exp(m_old - m_new), 0 from -inf
                    for c in range(rows):
                        alpha = math.exp(top[c] - new[c]) if top[c] != -np.inf else 0.0
                        total[c] *= alpha
                        top[c] = alpha  # (alpha for the moment)
                    for r in range(dv):
                        arow = acc[r]
                        for c in range(rows):
                            arow[c] *= top[c]
                for c in range(rows):
                    top[c] = new[c] if new[c] != -np.inf else 0.0  # the shift (0 while nothing is seen)
                for j in range(nb):
                    exp_cols(st[j], rows, top, bits, exact, total, True)
                for c in range(rows):
                    top[c] = new[c]
                transpose(V, j0, 0, vt, nb, dv)
                ab(vt, 0, 0, st, 0, 0, acc, 0, 0, dv, rows, nb, True)  # acc += vᵀ p
            for c in range(rows):
                i = i0 + c
                if total[c] > 0:
                    inv = 1.0 / total[c]
                    for r in range(dv):
                        out[n, i, r] = acc[r, c] * inv
                    lse[n, i] = top[c] + math.log(total[c])
                    alive[n, i] = 1
                else:
                    for r in range(dv):
                        out[n, i, r] = 0
                    lse[n, i] = np.inf
                    alive[n, i] = 0


@kernel(parallel=True)
def flash_backward(
    q, k, v, g, D, lse, qi, ki, vi, mask, mi, mrs, mcs, has_mask, causal, scale, bq, bk, exact, G, dq_part, dq, dk, dv
):
    """dk (N, S, d), dv (N, S, dv) written; dq (N, T, d) written when G = 1 (each task then holds
    its slice's dqᵀ (d, T) in scratch), else dq_part (N, G, d, T) (zeroed by the caller; unscaled,
    transposed) for the caller to sum. g (N, T, dv) the output's cotangent, D (N, T) = Σ g·out
    per row, lse (N, T) the forward's."""
    N, T, d = g.shape[0], g.shape[1], q.shape[2]
    S, dvs = k.shape[1], v.shape[2]
    off = S - T
    nkb = (S + bk - 1) // bk
    nqb = (T + bq - 1) // bq
    for task in prange(N * G):
        n, grp = task // G, task % G
        Q, K, V, M, Gn = q[qi[n]], k[ki[n]], v[vi[n]], mask[mi[n]], g[n]
        qs = np.empty((bq, d), q.dtype)
        qt = np.empty((d, bq), q.dtype)
        gt = np.empty((dvs, bq), q.dtype)
        kt = np.empty((d, bk), q.dtype)
        pt = np.empty((bk, bq), q.dtype)  # weights, transposed
        st = np.empty((bk, bq), q.dtype)  # dp, then ds, transposed
        tile = np.empty((bq, bk), q.dtype)  # a tile the right way round, queries by keys
        dkb = np.empty((d, bk), q.dtype)  # this key block's dk and dv, transposed
        dvb = np.empty((dvs, bk), q.dtype)
        bits = np.empty(bq, np.int32)
        lse_n, D_n = lse[n], D[n]
        dqt = np.zeros((d, T), q.dtype) if G == 1 else dq_part[n, grp]
        for jb in range(grp, nkb, G):
            j0 = jb * bk
            j1 = min(S, j0 + bk)
            nb = j1 - j0
            transpose(K, j0, 0, kt, nb, d)
            dkb[:] = 0
            dvb[:] = 0
            first = max(0, j0 - off) // bq if causal else 0  # the first query block that sees key j0
            for ib in range(first, nqb):
                i0 = ib * bq
                i1 = min(T, i0 + bq)
                rows = i1 - i0
                for r in range(rows):
                    for c in range(d):
                        qs[r, c] = Q[i0 + r, c] * scale
                transpose(qs, 0, 0, qt, rows, d)
                transpose(Gn, i0, 0, gt, rows, dvs)
                ab(K, j0, 0, qt, 0, 0, pt, 0, 0, nb, rows, d, False)  # scores (nb, rows)
                crossing = causal and j1 - 1 > i0 + off
                if crossing or has_mask:
                    mask_tile(pt, nb, rows, i0, j0, off, crossing, M, mrs, mcs, has_mask)
                ls, Ds = lse_n[i0:], D_n[i0:]
                for j in range(nb):  # the forward's weights (0 in fully masked rows: all -inf)
                    exp_cols(pt[j], rows, ls, bits, exact, ls, False)
                ab(V, j0, 0, gt, 0, 0, st, 0, 0, nb, rows, dvs, False)  # dp = v gᵀ
                for j in range(nb):
                    prow, srow = pt[j], st[j]
                    for c in range(rows):
                        srow[c] = prow[c] * (srow[c] - Ds[c])  # ds = p (dp - D)
                transpose(pt, 0, 0, tile, nb, rows)
                ab(gt, 0, 0, tile, 0, 0, dvb, 0, 0, dvs, nb, rows, True)  # dvᵀ += gᵀ p
                transpose(st, 0, 0, tile, nb, rows)
                ab(qt, 0, 0, tile, 0, 0, dkb, 0, 0, d, nb, rows, True)  # dkᵀ += (q·scale)ᵀ ds
                ab(kt, 0, 0, st, 0, 0, dqt, 0, i0, d, rows, nb, True)  # dqᵀ += kᵀ dsᵀ
            for j in range(nb):
                for c in range(d):
                    dk[n, j0 + j, c] = dkb[c, j]
                for c in range(dvs):
                    dv[n, j0 + j, c] = dvb[c, j]
        if G == 1:
            for i in range(T):
                for c in range(d):
                    dq[n, i, c] = dqt[c, i] * scale
