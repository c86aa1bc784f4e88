"""Fused scaled dot-product attention with its VJP, and the compiled kernels' glue.

Shapes: ... batch dimensions (B, H), Tq queries, Tk keys, d per-head size.

Where the compiled kernels cover a call (:func:`layout`: numba installed and chosen, float32 or
float64, no dropout), ``attention`` runs one fused pass per row (``lt.ops.kernels.attention``:
no Python per operation, ~60 NumPy calls fewer for a small call) and ``blockwise_attention``
runs compiled tiles (:func:`flash`, :func:`flash_vjp`); both take the operands as a
:class:`Layout`. Elsewhere the NumPy code runs, the reference: the matmuls go to the BLAS,
masking and softmax work in place on the scores.
"""

from __future__ import annotations

import math

import numpy as np

from .. import random as lrandom
from . import kernels
from .basic import unbroadcast
from .kernels import attention as fused_kernel
from .kernels import attention_tiles as tile_kernels
from .primitive import primitive
from .softmax import dead_rows_mask, softmax_

__all__ = ["attention", "dropout_keep", "Layout", "layout", "flash", "flash_vjp"]


def dropout_keep(rng, rate: float, lead: tuple, T: int, S: int, rows: slice, cols: slice) -> np.ndarray:
    """Attention dropout's keep mask (lead..., rows, cols) bool, True with probability 1 - rate.

    Drawn by position: the weight at flat batch index n (over ``lead``, the broadcast batch
    shape of (B, H)), query i and key j is kept by ``bernoulli_at`` at counter
    ``(n·T + i)·S + j``, so a tile of the (T, S) matrix draws exactly the bits the whole
    matrix would: the full and the blockwise kernels drop the same weights at any block size.
    """
    n = np.arange(math.prod(lead), dtype=np.uint64).reshape(lead + (1, 1)) * np.uint64(T)
    i = np.arange(rows.start, rows.stop, dtype=np.uint64)[:, None]
    j = np.arange(cols.start, cols.stop, dtype=np.uint64)
    return lrandom.bernoulli_at(rng, 1.0 - rate, ((n + i) * np.uint64(S)) + j)


class Layout:
    """One call's operands as the compiled kernels take them (``lt.ops.kernels.attention``).

    q, k, v as C-contiguous (Nq, T, d), (Nk, S, d), (Nv, S, dv); the call's batch axes ``lead``
    flattened to N slices, slice n reading ``q[qi[n]]``, ``k[ki[n]]``, ``v[vi[n]]`` (broadcast
    axes, grouped kv heads included, cost no copies); the mask as uint8 (Nm, Tm, Sm), slice
    ``mi[n]``, row and column strides 0 where it broadcasts (a (B, 1, 1, S) padding mask stays
    that size).
    """

    def __init__(self, q, k, v, mask, lead: tuple):
        self.lead, self.shapes, self.dtype = lead, (q.shape, k.shape, v.shape), q.dtype
        self.N, self.T, self.S = math.prod(lead), q.shape[-2], k.shape[-2]
        self.scale = q.dtype.type(1.0 / math.sqrt(q.shape[-1]))
        self.exact = q.dtype != np.float32  # float32 takes the vectorised exponential
        self.q, self.k, self.v = (np.ascontiguousarray(x).reshape((-1,) + x.shape[-2:]) for x in (q, k, v))
        self.qi, self.ki, self.vi = (self._slices(x.shape[:-2]) for x in (q, k, v))
        self.has_mask = mask is not None
        m = np.ones((1, 1, 1), bool) if mask is None else mask
        # a writable uint8 copy whatever the mask was (read-only, bool): one compiled type
        self.mask = np.array(m, np.uint8, order="C").reshape((-1,) + m.shape[-2:])
        self.mi = self._slices(m.shape[:-2]) if mask is not None else np.zeros(self.N, np.intp)
        self.mrs, self.mcs = int(m.shape[-2] > 1), int(m.shape[-1] > 1)

    def _slices(self, shape: tuple) -> np.ndarray:
        """(N,) the slice of an operand with batch axes ``shape`` that each of the N slices reads."""
        index = np.arange(math.prod(shape), dtype=np.intp).reshape(shape)
        return np.ascontiguousarray(np.broadcast_to(index, self.lead)).reshape(-1)

    def operands(self) -> tuple:
        return self.q, self.k, self.v, self.qi, self.ki, self.vi

    def mask_args(self) -> tuple:
        return self.mask, self.mi, self.mrs, self.mcs, self.has_mask

    def flat(self, x, last: int, view: bool = False) -> np.ndarray:
        """``x`` broadcast to (lead..., T, last), as a C-contiguous (N, T, last); with ``view``, a
        strided view where one exists (a broadcast cotangent, e.g. of a sum, is then not copied)."""
        x = np.broadcast_to(np.asarray(x, self.dtype), self.lead + (self.T, last))
        if view:
            try:
                return np.reshape(x, (self.N, self.T, last), copy=False)
            except ValueError:
                pass
        return np.ascontiguousarray(x).reshape(self.N, self.T, last)

    def empty(self, rows: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """A new (lead..., rows, last) array and its (N, rows, last) view for a kernel to write:
        the array itself, not a view of it, goes back to lt (which would copy a view to seal it)."""
        x = np.empty(self.lead + (rows, last), self.dtype)
        return x, x.reshape(self.N, rows, last)

    def gradients(self, dq, dk, dv) -> tuple:
        """Gradients (lead..., ·, ·) summed back to q's, k's and v's own shapes."""
        return tuple(unbroadcast(x, shape) for x, shape in zip((dq, dk, dv), self.shapes))


# Multiply-adds below which the fused kernel's set-up (its layout, ~70 us) costs more than NumPy's
# calls: measured on a decoding step, tiny's (2 heads, 80 keys, d = 16: 5 k) ran 16% faster in
# NumPy, gpt2's (12 heads, d = 64: 120 k) as fast in either.
FUSED_MIN_WORK = 1 << 16


def layout(q, k, v, mask, *, scores: bool):
    """The kernels' :class:`Layout` of a call, or None where they do not cover it (then NumPy runs).

    Covered: kernels enabled, q, k, v of one dtype, float32 or float64, non-empty, a bool mask
    whose batch axes broadcast into the call's. ``scores``: the full kernel, whose weights have
    the batch axes of q kᵀ, so v may not add any."""
    if not kernels.enabled() or not all(isinstance(x, np.ndarray) for x in (q, k, v)):
        return None
    if q.dtype not in (np.float32, np.float64) or k.dtype != q.dtype or v.dtype != q.dtype or q.ndim < 2:
        return None
    if min(q.shape[-2:] + k.shape[-2:] + v.shape[-1:]) == 0 or k.shape[-1] != q.shape[-1] or v.shape[-2] != k.shape[-2]:
        return None
    if scores and q.size // q.shape[-1] * k.shape[-2] * (q.shape[-1] + v.shape[-1]) < FUSED_MIN_WORK:
        return None  # a small call (one decoding step of a small model): NumPy's few calls cost less
    try:
        lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2])
        if np.broadcast_shapes(lead, v.shape[:-2]) != lead:
            if scores:
                return None
            lead = np.broadcast_shapes(lead, v.shape[:-2])
        if mask is not None:
            mask = np.asarray(mask, bool)
            mask = mask.reshape((1,) * (2 - mask.ndim) + mask.shape)
            T, S = q.shape[-2], k.shape[-2]
            if mask.shape[-2] not in (1, T) or mask.shape[-1] not in (1, S):
                return None
            if np.broadcast_shapes(lead, mask.shape[:-2]) != lead:
                return None
    except ValueError:
        return None
    if math.prod(lead) == 0:
        return None
    return Layout(q, k, v, mask, lead)


@primitive
def attention(q, k, v, mask=None, dropout=0.0, rng=None, return_weights=False):
    """Scaled dot-product attention ``softmax(q kᵀ / √d, mask) v``, dropout on the weights.

    q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv); mask bool, broadcastable to
    (..., Tq, Tk), True = may attend. With ``return_weights`` also returns the weights
    before dropout, (..., Tq, Tk). Keeps q/√d, k, v, the weights and the dropout mask.
    """
    plan = None if dropout > 0.0 and rng is not None else layout(q, k, v, mask, scores=True)
    if plan is not None:  # the fused kernel: one pass per row, no Python per tile
        return _full_kernel(plan, return_weights)
    scale = q.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    q = q * scale  # scale the small (.., Tq, d), not the scores
    p = q @ np.swapaxes(k, -1, -2)  # (..., Tq, Tk) scores, then weights in place
    mask = None if mask is None else np.asarray(mask, bool)
    softmax_(p, mask)
    keep = None
    if dropout > 0.0 and rng is not None:
        T, S = p.shape[-2:]
        lead = np.broadcast_shapes(p.shape[:-2], v.shape[:-2])
        keep = dropout_keep(rng, dropout, lead, T, S, slice(0, T), slice(0, S))
        p_used = p * keep
        p_used *= p.dtype.type(1.0 / (1.0 - dropout))
    else:
        p_used = p
    out = p_used @ v  # (..., Tq, dv)
    res = (q, k, v, p, p_used, keep, dropout, scale, dead_rows_mask(mask))
    return ((out, p) if return_weights else out), res


def _full_kernel(plan: Layout, return_weights: bool):
    """The forward by ``full_forward``; its residuals are the plan and the weights."""
    N, T, S, dv = plan.N, plan.T, plan.S, plan.v.shape[-1]
    weights, p = plan.empty(T, S)
    out, out3 = plan.empty(T, dv)
    alive = np.empty((N, T), np.uint8)
    flops = 2.0 * N * T * S * (plan.q.shape[-1] + dv)
    run = kernels.pick(fused_kernel.full_forward, flops, fused_kernel.PARALLEL_FLOPS)
    run(*plan.operands(), *plan.mask_args(), plan.scale, plan.exact, p, out3, alive)
    return ((out, weights) if return_weights else out), (plan, p, alive)


def _full_kernel_vjp(res, g):
    """dq, dk, dv by ``full_backward`` from the weights the forward kept."""
    plan, p, alive = res
    g_weights = None
    if isinstance(g, tuple):
        g, g_weights = g
    T, S, d, dv = plan.T, plan.S, plan.q.shape[-1], plan.v.shape[-1]
    g3 = plan.flat(g, dv)
    gw = p[:0] if g_weights is None else plan.flat(g_weights, S)
    (dq, dq3), (dk, dk3), (dvv, dv3) = plan.empty(T, d), plan.empty(S, d), plan.empty(S, dv)
    q, k, v, qi, ki, vi = plan.operands()
    run = kernels.pick(fused_kernel.full_backward, 4.0 * plan.N * T * S * (d + dv), fused_kernel.PARALLEL_FLOPS)
    run(q, k, v, p, g3, gw, g_weights is not None, qi, ki, vi, alive, plan.scale, dq3, dk3, dv3)
    return plan.gradients(dq, dk, dvv)


@attention.defvjp
def _attention_vjp(res, g):
    if isinstance(res[0], Layout):  # the kernel's residuals
        return _full_kernel_vjp(res, g)
    q, k, v, p, p_used, keep, dropout, scale, dead_rows_mask = res
    g_weights = None
    if isinstance(g, tuple):
        g, g_weights = g
    dv = np.swapaxes(p_used, -1, -2) @ g  # (..., Tk, dv)
    dp = g @ np.swapaxes(v, -1, -2)  # (..., Tq, Tk)
    if keep is not None:
        dp *= keep
        dp *= p.dtype.type(1.0 / (1.0 - dropout))
    if dp.shape != p.shape:  # v had leading axes the weights do not: the weights' share of them
        dp = unbroadcast(dp, p.shape)
    if g_weights is not None:
        dp += g_weights
    dp -= np.einsum("...j,...j->...", dp, p)[..., None]  # softmax backward: ds = p (dp - Σ dp·p)
    dp *= p
    if dead_rows_mask is not None:
        dp *= dead_rows_mask
    dq = dp @ k  # (..., Tq, d)
    dq *= scale
    dk = np.swapaxes(dp, -1, -2) @ q  # (..., Tk, d); q is already q/√d
    return unbroadcast(dq, q.shape), unbroadcast(dk, k.shape), unbroadcast(dv, v.shape)


# ----------------------------------------------------------------- the blockwise kernel's glue


def flash_block(T: int, S: int) -> tuple[int, int]:
    """The compiled blockwise kernel's tile (bq queries, bk keys), from the shapes: the products'
    inner loops run over the queries, so long rows pay (256 × 256, a 256 KiB float32 tile in L2,
    measured 1.4-2x faster than 128 × 128 at T = 2048 and 4096 on a shared AMD EPYC); shorter
    sequences take smaller tiles, so that a causal call wastes less of its diagonal tiles."""
    b = 256 if T >= 2048 else 128 if T >= 512 else 64
    return min(b, T), min(b, S)


def flash(plan: Layout, causal: bool, block=None):
    """``blockwise_attention``'s forward by ``flash_forward``: (output (lead..., T, dv), residuals).
    Fully masked rows get the reference's uniform weights (the mean of v) here."""
    N, T, S, dv = plan.N, plan.T, plan.S, plan.v.shape[-1]
    bq, bk = flash_block(T, S) if block is None else (min(T, max(1, int(block[0]))), min(S, max(1, int(block[1]))))
    (out, out3), lse, alive = plan.empty(T, dv), np.empty((N, T), plan.dtype), np.empty((N, T), np.uint8)
    args = (*plan.operands(), *plan.mask_args(), bool(causal), plan.scale, bq, bk, plan.exact)
    tile_kernels.flash_forward(*args, out3, lse, alive)
    dead = alive == 0
    if dead.any():  # uniform over all S keys
        np.copyto(out3, plan.v.mean(1, dtype=plan.dtype)[plan.vi][:, None, :], where=dead[..., None])
    return out, (plan, out3, lse, dead, bool(causal), bq, bk)


def flash_vjp(res, g) -> tuple:
    """dq, dk, dv by ``flash_backward``, recomputing the weights from the row log-sum-exp."""
    plan, out, lse, dead, causal, bq, bk = res
    N, T, S, d, dv = plan.N, plan.T, plan.S, plan.q.shape[-1], plan.v.shape[-1]
    g3 = plan.flat(g, dv, view=True)  # (the kernel reads it through its strides)
    D = np.einsum("nti,nti->nt", g3, out)  # (N, T): Σ_j dp·p per row
    G = min(-(-S // bk), max(1, -(-8 // N)))  # key-block groups: tasks enough for the cores, fixed by the shapes
    (dq, dq3), (dk, dk3), (dvv, dv3) = plan.empty(T, d), plan.empty(S, d), plan.empty(S, dv)
    dq_part = np.zeros((N, G, d, T) if G > 1 else (1, 1, 1, 1), plan.dtype)  # G = 1: dq written directly
    args = (*plan.mask_args(), causal, plan.scale, bq, bk, plan.exact, G)
    operands = (plan.q, plan.k, plan.v, g3, D, lse, plan.qi, plan.ki, plan.vi)
    tile_kernels.flash_backward(*operands, *args, dq_part, dq3, dk3, dv3)
    if G > 1:
        np.multiply(np.swapaxes(dq_part.sum(1), -1, -2), plan.scale, out=dq3)
    if dead.any():  # the uniform rows: each key's v gets g/S
        dv3 += (np.where(dead[..., None], g3, 0).sum(1, dtype=plan.dtype) / plan.dtype.type(S))[:, None, :]
    return plan.gradients(dq, dk, dvv)
