"""Float products with few input rows (batch-1 decoding): one pass over the weights, read as stored.

Shapes: M input rows (1 to a few), K the reduction axis, N outputs, P pieces of K.

With M = 1 a product is bound by reading the weights once from memory; the BLAS's
``(1, K) @ (K, N)`` and ``(N, K) @ (K,)`` reach about 60% of the machine's bandwidth on the
2-core EPYC measured, and with M = 2..4 it switches to a matrix-matrix product that reads
the weights at a third of it. These kernels stream the weights once, whatever M:

- :func:`vecmat`: ``out (M, N) = x (M, K) @ w (K, N)`` for a Linear weight (in, out): P pieces
  of consecutive rows of ``w``, in parallel, each adding its rows, scaled by ``x``, into its
  own partial sums ``part[p]`` (M, N) (a contiguous, vectorised stream per piece); the partials
  are then added in piece order. P is chosen from the shapes by the caller, so the result does
  not depend on the thread count.
- :func:`matvec_t`: ``out (M, N) = x (M, K) @ w (N, K)ᵀ`` (the tied LM head ``h @ wteᵀ``), one
  dot product per row of ``w``, in parallel over the rows.
"""

from __future__ import annotations

from .jit import kernel, prange

__all__ = ["vecmat", "matvec_t"]


@kernel(parallel=True)
def vecmat(x, w, part, out):
    """``out = x @ w``: x (M, K), w (K, N), part (P, M, N) scratch, out (M, N), one dtype."""
    M, K = x.shape
    P = part.shape[0]
    zero = out.dtype.type(0)
    for p in prange(P):
        a, b = K * p // P, K * (p + 1) // P
        part[p] = zero
        for m in range(M):
            pm, xm = part[p, m], x[m]
            i = a
            while i + 4 <= b:  # four rows of w a step: a quarter of the loads and stores of pm
                w0, w1, w2, w3 = w[i], w[i + 1], w[i + 2], w[i + 3]
                x0, x1, x2, x3 = xm[i], xm[i + 1], xm[i + 2], xm[i + 3]
                for c in range(pm.shape[0]):
                    pm[c] += x0 * w0[c] + x1 * w1[c] + x2 * w2[c] + x3 * w3[c]
                i += 4
            while i < b:
                wi, xi = w[i], xm[i]
                for c in range(pm.shape[0]):
                    pm[c] += xi * wi[c]
                i += 1
    for m in range(M):
        om = out[m]
        om[:] = part[0, m]
        for p in range(1, P):
            pm = part[p, m]
            for c in range(om.shape[0]):
                om[c] += pm[c]


@kernel(parallel=True)
def matvec_t(x, w, out):
    """``out = x @ w.T``: x (M, K), w (N, K), out (M, N), one dtype."""
    M, K = x.shape
    N = w.shape[0]
    zero = out.dtype.type(0)
    for n in prange(N):
        wn = w[n]
        for m in range(M):
            xm = x[m]
            s = zero
            for k in range(K):
                s += xm[k] * wn[k]
            out[m, n] = s
