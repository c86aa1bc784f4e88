"""Softmax cross-entropy with ignored positions, fused with its backward ``(p - onehot) g / n``."""

from __future__ import annotations

import functools

import numpy as np

from .. import _checks, threads
from .primitive import primitive
from .softmax import exp_normalize_

__all__ = ["cross_entropy"]


@primitive
def cross_entropy(logits, targets, ignore_index=-100):
    """Mean softmax cross-entropy of ``logits`` (..., V) against integer ``targets`` (...).

    Positions whose target is ``ignore_index`` count for nothing; with no position left
    the loss is 0. The targets are checked here (integers in [0, V) or ``ignore_index``),
    once. Keeps the softmax for the fused backward.
    """
    V = logits.shape[-1]
    x = logits.reshape(-1, V)  # (N, V)
    t = np.asarray(targets).reshape(-1)  # (N,)
    kept = t != ignore_index
    safe_t = _checks.index_array(np.where(kept, t, 0), V, f"targets (other than ignore_index={ignore_index})")
    p = np.empty(x.shape, x.dtype)  # p = softmax(x), nll = logsumexp(x) - x[t]
    picked, total = np.empty(len(t), x.dtype), np.empty((len(t), 1), x.dtype)
    threads.run(
        [
            functools.partial(_softmax_rows, x, safe_t, p, picked, total, rows)
            for rows in threads.blocks(len(t), V * x.itemsize * 5)
        ]
    )
    nll = np.log(total[:, 0]) - picked
    n = int(kept.sum())
    loss = logits.dtype.type((nll * kept).sum() / n) if n else logits.dtype.type(0.0)
    return np.asarray(loss), (p, safe_t, kept, n, logits.shape)


def _softmax_rows(x, safe_t, p, picked, total, rows: slice) -> None:
    """Rows ``rows`` of p = softmax(x), the shifted logit of each target, and exp's row sums."""
    xs, ps = x[rows], p[rows]
    np.subtract(xs, xs.max(axis=-1, keepdims=True), out=ps)
    picked[rows] = ps[np.arange(len(ps)), safe_t[rows]]
    total[rows] = exp_normalize_(ps)


@cross_entropy.defvjp
def _cross_entropy_vjp(res, g):
    p, safe_t, kept, n, shape = res
    weight = (kept * (g / max(n, 1))).astype(p.dtype)[:, None]  # (N, 1): 0 where ignored
    d = np.empty_like(p)
    threads.run(
        [
            functools.partial(np.multiply, p[rows], weight[rows], out=d[rows])
            for rows in threads.blocks(len(p), p.shape[1] * p.itemsize * 3)
        ]
    )
    d[np.arange(len(safe_t)), safe_t] -= weight[:, 0]
    return d.reshape(shape), None
