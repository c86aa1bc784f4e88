"""Softmax cross-entropy with ignored positions, fused with its backward ``(p - onehot) g / n``."""

from __future__ import annotations

import numpy as np

from .parallel import for_rows
from .primitive import primitive

__all__ = ["cross_entropy"]


@primitive
def cross_entropy(logits, targets, ignore_index=-100):
    """Mean softmax cross-entropy of ``logits`` (..., V) against integer ``targets`` (...).

    Positions whose target is ``ignore_index`` count for nothing; with no position left
    the loss is 0. Keeps the softmax for the fused backward.
    """
    V = logits.shape[-1]
    x = logits.reshape(-1, V)                           # (N, V)
    t = np.asarray(targets).reshape(-1)                 # (N,)
    kept = t != ignore_index
    safe_t = np.where(kept, t, 0)
    if safe_t.size and (safe_t.min() < 0 or safe_t.max() >= V):
        raise ValueError(f"cross_entropy: targets must be in [0, {V}) or ignore_index={ignore_index}, "
                         f"got {safe_t.min() if safe_t.min() < 0 else safe_t.max()}")
    p = np.empty_like(x)
    nll = np.empty(len(t), x.dtype)

    def kernel(lo, hi):                                 # p = softmax(x), nll = logsumexp(x) - x[t]
        ps, rows = p[lo:hi], np.arange(hi - lo)
        np.subtract(x[lo:hi], x[lo:hi].max(axis=-1, keepdims=True), out=ps)
        picked = ps[rows, safe_t[lo:hi]]
        np.exp(ps, out=ps)
        total = ps.sum(axis=-1)
        ps *= (1.0 / total)[:, None]
        nll[lo:hi] = np.log(total) - picked
    for_rows(kernel, x.shape[0], V)
    n = int(kept.sum())
    loss = logits.dtype.type((nll * kept).sum() / n) if n else logits.dtype.type(0.0)
    return np.asarray(loss), (p, safe_t, kept, n, logits.shape)


@cross_entropy.defvjp
def _cross_entropy_vjp(res, g):
    p, safe_t, kept, n, shape = res
    weight = (kept * (g / max(n, 1))).astype(p.dtype)[:, None]     # (N, 1): 0 where ignored
    d = np.empty_like(p)

    def kernel(lo, hi):
        np.multiply(p[lo:hi], weight[lo:hi], out=d[lo:hi])
        d[np.arange(lo, hi), safe_t[lo:hi]] -= weight[lo:hi, 0]
    for_rows(kernel, d.shape[0], d.shape[1])
    return d.reshape(shape), None
