"""Softmax cross-entropy with ignored positions, fused with its backward ``(p - onehot) g / n``.

With the kernels (``lt.ops.kernels.cross_entropy``; float32/float64) the forward's softmax and
per-row loss take one visit of each row and the backward one pass writing the logits' gradient
in place over the softmax; the residuals are the NumPy path's, so either VJP follows either forward.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .. import _checks, threads
from . import kernels
from .basic import div, mul, sub
from .basic import sum as sum_
from .kernels import activations as fused
from .kernels import cross_entropy as rowwise
from .primitive import primitive
from .softmax import exp_normalize_, softmax
from .traces import batch_size, broadcast_front, constant_map, ndim_of, shape_of

__all__ = ["cross_entropy"]


@primitive
def cross_entropy(logits, targets, ignore_index=-100, batch_dims=0):
    """Mean softmax cross-entropy of ``logits`` (..., V) against integer ``targets`` (...).

    Positions whose target is ``ignore_index`` count for nothing; with no position left
    the loss is 0. The targets are checked here (integers in [0, V) or ``ignore_index``),
    once. Keeps the softmax for the fused backward. With ``batch_dims`` k > 0 (lt.vmap's rule)
    the first k axes index independent members: one mean per member, shaped like those axes.
    """
    V = logits.shape[-1]
    x = logits.reshape(-1, V)  # (N, V)
    t = np.asarray(targets).reshape(-1)  # (N,)
    kept = t != ignore_index
    safe_t = _checks.index_array(np.where(kept, t, 0), V, f"targets (other than ignore_index={ignore_index})")
    p = np.empty(x.shape, x.dtype)  # p = softmax(x), nll = logsumexp(x) - x[t]
    if _fused(x):  # one visit of each row (kernels.cross_entropy)
        nll = np.empty(len(t), x.dtype)
        c, itype, bias, shift = fused.exp_constants(x.dtype)
        run = kernels.pick(rowwise.forward, 2 * x.nbytes)
        run(x, x.max(axis=-1), safe_t, p, p.view(itype), nll, c, bias, shift)
    else:
        picked, total = np.empty(len(t), x.dtype), np.empty((len(t), 1), x.dtype)
        threads.run(
            [
                functools.partial(_softmax_rows, x, safe_t, p, picked, total, rows)
                for rows in threads.blocks(len(t), V * x.itemsize * 5)
            ]
        )
        nll = np.log(total[:, 0]) - picked
    if batch_dims:
        lead = logits.shape[:batch_dims]
        members = math.prod(lead)
        rows = len(t) // members if members else 0
        counts = kept.reshape(members, rows).sum(axis=1)
        means = (nll * kept).reshape(members, rows).sum(axis=1) / np.maximum(counts, 1).astype(x.dtype)
        return means.astype(logits.dtype, copy=False).reshape(lead), (p, safe_t, kept, counts, logits.shape)
    n = int(kept.sum())
    loss = logits.dtype.type((nll * kept).sum() / n) if n else logits.dtype.type(0.0)
    return np.asarray(loss), (p, safe_t, kept, n, logits.shape)


def _fused(x) -> bool:
    """Whether the row kernels take this call: on, float32/float64 (N, V) rows with V > 0."""
    return kernels.enabled() and x.dtype in (np.float32, np.float64) and x.shape[1] > 0 and x.flags.c_contiguous


def _softmax_rows(x, safe_t, p, picked, total, rows: slice) -> None:
    """Rows ``rows`` of p = softmax(x), the shifted logit of each target, and exp's row sums."""
    xs, ps = x[rows], p[rows]
    np.subtract(xs, xs.max(axis=-1, keepdims=True), out=ps)
    picked[rows] = ps[np.arange(len(ps)), safe_t[rows]]
    total[rows] = exp_normalize_(ps)


@cross_entropy.defvjp
def _cross_entropy_vjp(res, g):
    """``(p - onehot) · g / n`` per row (0 on ignored rows). With the kernels it is written over the
    softmax ``p`` itself, which this residual alone holds: no second (N, V) buffer (51 MB at gpt2's
    256 x 50257 float32 logits). Reverse mode runs each VJP once and drops its residual after
    (``lt.autodiff.reverse.backward``), so nothing reads ``p`` again; a caller that runs this VJP
    twice on one residual must copy ``p`` first."""
    p, safe_t, kept, n, shape = res
    if isinstance(n, np.ndarray):  # one mean per member (batch_dims): n counts each member's rows
        rows = len(kept) // len(n) if len(n) else 0
        scale = np.reshape(g, -1) / np.maximum(n, 1)
        weight = (kept.reshape(len(n), rows) * scale[:, None]).astype(p.dtype).reshape(-1, 1)
    else:
        weight = (kept * (g / max(n, 1))).astype(p.dtype)[:, None]  # (N, 1): 0 where ignored
    if _fused(p):  # (p - onehot) · weight in one pass, written over p (see the docstring)
        kernels.pick(rowwise.backward, 2 * p.nbytes)(p, safe_t, np.ascontiguousarray(weight[:, 0]), p)
        return p.reshape(shape), None
    d = np.empty_like(p)
    threads.run(
        [
            functools.partial(np.multiply, p[rows], weight[rows], out=d[rows])
            for rows in threads.blocks(len(p), p.shape[1] * p.itemsize * 3)
        ]
    )
    d[np.arange(len(safe_t)), safe_t] -= weight[:, 0]
    return d.reshape(shape), None


def _ce_options(args, options) -> tuple:
    """(ignore_index, batch_dims) of a cross_entropy call, given by position or by name."""
    ignore = args[2] if len(args) > 2 else options.get("ignore_index", -100)
    batch_dims = args[3] if len(args) > 3 else options.get("batch_dims", 0)
    return ignore, batch_dims


@cross_entropy.defbatch
def _cross_entropy_batch(args, dims, **options):
    """One call, the batch in front as one more ``batch_dims`` axis: each member's own mean loss."""
    if any(d is not None for d in dims[2:]):
        raise NotImplementedError("lt.vmap: cross_entropy's ignore_index cannot be batched")
    ignore, batch_dims = _ce_options(args, options)
    size = batch_size(args, dims)
    logits, targets = (broadcast_front(a, d, size) for a, d in zip(args[:2], dims[:2]))
    return cross_entropy(logits, targets, ignore_index=ignore, batch_dims=batch_dims + 1), 0


def _one_hot(t, ignore, size: int, dtype) -> np.ndarray:
    """(...) integer targets -> (..., size) one-hot rows, zero rows where the target is ``ignore``."""
    t = np.asarray(t)
    return ((t[..., None] == np.arange(size)) & (t != ignore)[..., None]).astype(dtype)


@cross_entropy.defjvp
def _cross_entropy_jvp(primals, tangents, **options):
    """Mean over counted positions of ``(softmax(x) - onehot(t)) · dx``, per member (``batch_dims``)."""
    logits, targets = primals[:2]
    dx = tangents[0]
    loss = cross_entropy(*primals, **options)
    if dx is None:
        return loss, None
    ignore, batch_dims = _ce_options(primals, options)
    dtype, size = logits.dtype, shape_of(logits)[-1]
    kept = constant_map(lambda t: (np.asarray(t) != ignore).astype(dtype), targets)  # (...)
    onehot = constant_map(lambda t: _one_hot(t, ignore, size, dtype), targets)  # (..., V)
    rows = sub(mul(sum_(mul(softmax(logits), dx), -1), kept), sum_(mul(onehot, dx), -1))  # (...)
    axes = tuple(range(batch_dims, ndim_of(targets)))
    if axes:
        rows, kept = sum_(rows, axes), sum_(kept, axes)
    return loss, div(rows, constant_map(lambda n: np.maximum(n, 1), kept))
