"""Communication as differentiable primitives: Megatron's conjugate ``f``/``g`` and the
vocabulary-parallel cross-entropy.

Shapes: N rows (B * T), V vocabulary, V_r = the vocabulary rows one rank holds, ... any axes.

A tensor-parallel layer differs from a plain one only by the :class:`Group` it is given and
these fixed points (Megatron-LM's ``ColumnParallelLinear``/``RowParallelLinear``):

- :func:`copy_to_group` ("f") before a column-parallel matmul: identity forward, allreduce
  of the gradient backward (each rank's partial ``dx`` adds up to the whole);
- :func:`reduce_from_group` ("g") after a row-parallel matmul: allreduce forward, identity
  backward (every rank already holds the whole ``dy``);
- :func:`parallel_cross_entropy`: the loss of logits split along the vocabulary, from an
  allreduced max and sum of exponentials; the (N, V) logits are never gathered.

With a group of one rank every one of them is the plain operation and MPI is never touched.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import numpy as np

from .. import _checks
from ..ops import basic as ops
from ..ops.primitive import primitive
from ..ops.traces import batch_size, broadcast_front, shape_of

__all__ = [
    "Group",
    "split_range",
    "copy_to_group",
    "copy_to_replicas",
    "reduce_from_group",
    "parallel_cross_entropy",
    "allreduce",
    "allgather_last",
    "sum_over_replicas",
]


def split_range(n: int, rank: int, size: int) -> tuple[int, int]:
    """[lo, hi) of rank ``rank``'s part of ``n`` items dealt to ``size`` ranks: contiguous, in
    rank order, the first ``n % size`` ranks one more (so no padding; a part may be empty)."""
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


@attrs.frozen
class Group:
    """The ranks that share one model replica's layers: an mpi4py communicator and this
    process's place in it. Compared by (rank, size) alone: two groups of the same shape give
    the same parameter shapes."""

    comm: Any = attrs.field(eq=False, repr=False)
    rank: int = attrs.field(validator=_checks.non_negative)
    size: int = attrs.field(validator=_checks.positive)

    def __attrs_post_init__(self):
        if self.rank >= self.size:
            raise ValueError(f"Group.rank ({self.rank}) must be below Group.size ({self.size})")

    @classmethod
    def of(cls, comm) -> Group:
        """The group of an mpi4py communicator (None: one rank alone)."""
        return cls(None, 0, 1) if comm is None else cls(comm, comm.Get_rank(), comm.Get_size())

    def part(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """[lo, hi) of ``rank``'s (default: this rank's) part of ``n`` items."""
        return split_range(n, self.rank if rank is None else rank, self.size)


def allreduce(x: np.ndarray, group: Group, op: str = "sum") -> np.ndarray:
    """A fresh array: ``x`` summed (or maxed) over the group's ranks; ``x`` itself alone."""
    if group.size == 1:
        return x
    from mpi4py import MPI

    buf = np.array(x, order="C", copy=True)
    group.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM if op == "sum" else MPI.MAX)
    return buf


def allgather_last(x: np.ndarray, group: Group) -> np.ndarray:
    """Every rank's ``x`` (..., V_r) joined in rank order along the last axis: (..., V).
    For tests and generation (not training: it is the gather the loss avoids)."""
    if group.size == 1:
        return x
    return np.concatenate(group.comm.allgather(np.ascontiguousarray(x)), axis=-1)


@primitive
def copy_to_group(x, *, group: Group):
    """ "f": ``x`` forward; the gradient summed over the group backward."""
    return x, group


@copy_to_group.defvjp
def _copy_to_group_vjp(group, g):
    return (allreduce(g, group),)


def _linear_rules(prim) -> None:
    """Rules of a collective linear in ``x``: the batch stays in place; the tangent takes the same
    call, so a gradient through the tangent is communicated as the value's is."""

    @prim.defbatch
    def _batch(args, dims, **options):
        return prim(args[0], **options), dims[0]

    @prim.defjvp
    def _jvp(primals, tangents, **options):
        t = tangents[0]
        return prim(primals[0], **options), None if t is None else prim(t, **options)


_linear_rules(copy_to_group)


def sum_over_replicas(x: np.ndarray, group: Group, blocks: int, owner_only: bool = False) -> np.ndarray:
    """``x`` summed over the ranks of this rank's block (the group's ranks dealt into ``blocks``
    blocks of consecutive ranks, each block holding copies of one thing); with ``owner_only``,
    the block's first rank's ``x`` on every rank of the block. One allreduce over the group of
    ``blocks`` times ``x``'s size (each block adds into its own slot)."""
    if group.size == 1:
        return x
    per = group.size // blocks
    slots = np.zeros((blocks,) + np.shape(x), np.asarray(x).dtype)
    if not owner_only or group.rank % per == 0:
        slots[group.rank // per] = x
    return allreduce(slots, group)[group.rank // per]


@primitive
def copy_to_replicas(x, *, group: Group, blocks: int):
    """ "f" over blocks of ranks: ``x`` forward (a weight every rank of a block holds a copy of);
    backward, the gradient summed over the block's ranks, so every copy gets the whole gradient."""
    return x, (group, blocks)


@copy_to_replicas.defvjp
def _copy_to_replicas_vjp(res, g):
    return (sum_over_replicas(g, *res),)


_linear_rules(copy_to_replicas)


@primitive
def reduce_from_group(x, *, group: Group):
    """ "g": ``x`` summed over the group forward; the gradient passes through backward."""
    return allreduce(x, group), None


@reduce_from_group.defvjp
def _reduce_from_group_vjp(_, g):
    return (g,)


_linear_rules(reduce_from_group)


@primitive
def parallel_cross_entropy(
    logits, targets, *, group: Group, vocab_size: int, ignore_index: int = -100, batch_dims: int = 0
):
    """Mean cross-entropy of logits split along the vocabulary: this rank's ``logits``
    (..., V_r) are the columns ``group.part(vocab_size)`` of the full (..., V).

    Equals ``lt.ops.cross_entropy`` of the gathered logits, ignored positions included,
    on every rank. Two allreduces of (N,) and (N, 2) numbers: the row max, then the sum of
    exponentials with the target's logit (held by one rank, 0 on the others). Keeps the
    local softmax for the backward, which needs no communication.

    ``batch_dims``: the leading axes of ``logits`` and ``targets`` that index separate members
    (``lt.vmap``'s batch): the loss is then one mean per member, shaped like those axes.
    """
    lo, hi = group.part(vocab_size)
    if logits.shape[-1] != hi - lo:
        raise ValueError(
            f"parallel_cross_entropy: rank {group.rank} of {group.size} holds vocabulary rows "
            f"[{lo}, {hi}) of {vocab_size}, so its logits need {hi - lo} columns, got {logits.shape[-1]}"
        )
    x = logits.reshape(-1, hi - lo)  # (N, V_r)
    t = np.asarray(targets).reshape(-1)  # (N,)
    kept = t != ignore_index
    safe_t = _checks.index_array(np.where(kept, t, 0), vocab_size, f"targets (other than ignore_index={ignore_index})")
    local = kept & (safe_t >= lo) & (safe_t < hi)  # (N,) the target is in my columns
    local_t = np.where(local, safe_t - lo, 0)
    rows = np.arange(len(t))
    m = x.max(axis=-1) if x.shape[1] else np.full(len(t), np.finfo(x.dtype).min, x.dtype)
    m = allreduce(m, group, "max")  # (N,) the row max over all V
    p = np.exp(x - m[:, None])  # (N, V_r)
    sums = np.stack([p.sum(axis=-1), np.where(local, x[rows, local_t] - m if x.shape[1] else 0, 0)], axis=-1)
    total, picked = allreduce(sums, group).T  # (N,) sum of exp; shifted target logit
    nll = np.log(total) - picked
    if batch_dims:  # one mean per member: n is then the (M,) counts of kept rows
        if not 0 < batch_dims < logits.ndim:
            raise ValueError(f"parallel_cross_entropy: batch_dims {batch_dims} for logits of shape {logits.shape}")
        members = logits.shape[:batch_dims]
        shape = (math.prod(members), len(t) // max(math.prod(members), 1))  # (M, rows of a member)
        n = kept.reshape(shape).sum(axis=1)
        sums = (nll * kept).reshape(shape).sum(axis=1)
        loss = (sums / np.maximum(n, 1).astype(sums.dtype)).astype(logits.dtype).reshape(members)
    else:
        n = int(kept.sum())
        loss = logits.dtype.type((nll * kept).sum() / n) if n else logits.dtype.type(0.0)
    p /= total[:, None].astype(p.dtype)  # the local softmax columns
    return np.asarray(loss), (p, local, local_t, kept, n, logits.shape)


@parallel_cross_entropy.defvjp
def _parallel_cross_entropy_vjp(res, g):
    p, local, local_t, kept, n, shape = res  # d = (softmax - onehot) g / n
    if np.ndim(n):  # batch_dims: each member's rows scaled by its own g and count
        per_row = np.repeat(np.reshape(g, -1) / np.maximum(n, 1), len(kept) // max(len(n), 1))
        weight = (kept * per_row).astype(p.dtype)[:, None]
    else:
        weight = (kept * (g / max(n, 1))).astype(p.dtype)[:, None]  # (N, 1): 0 where ignored
    d = p * weight
    rows = np.flatnonzero(local)
    d[rows, local_t[rows]] -= weight[rows, 0]
    return d.reshape(shape), None


@parallel_cross_entropy.defbatch
def _parallel_cross_entropy_batch(args, dims, *, batch_dims: int = 0, **options):
    """Each member its own mean: the batch leads both arguments and joins the member axes."""
    size = batch_size(args, dims)
    logits, targets = (broadcast_front(a, d, size) for a, d in zip(args, dims))
    return parallel_cross_entropy(logits, targets, batch_dims=batch_dims + 1, **options), 0


@parallel_cross_entropy.defjvp
def _parallel_cross_entropy_jvp(primals, tangents, **options):
    """``Σ_rows kept / n · Σ_v (softmax - onehot) dx``, with the log-normaliser from the primitive
    itself (each row a member against target 0, plus x[..., 0]): stable, and composes with every transform."""
    (logits, targets), t = primals, tangents[0]
    out = parallel_cross_entropy(logits, targets, **options)
    if t is None:
        return out, None
    group, vocab_size = options["group"], options["vocab_size"]
    ignore_index, batch_dims = options.get("ignore_index", -100), options.get("batch_dims", 0)
    lead = shape_of(logits)[:-1]
    lo, hi = group.part(vocab_size)
    every_row = {**options, "ignore_index": -1, "batch_dims": len(lead)}
    row_loss = parallel_cross_entropy(logits, np.zeros(lead, np.int64), **every_row)  # lse - x[..., 0]
    column0 = ops.index(logits, (Ellipsis, slice(0, 1 if lo == 0 else 0)))  # (..., 1) on rank 0, (..., 0) elsewhere
    lse = ops.add(row_loss, _summed(ops.sum(column0, axis=-1), group))
    # shared values enter the local columns through "f" and leave through "g" (as in a tensor-parallel
    # layer), so that a gradient of this tangent (a Hessian-vector product) is summed over the ranks
    lse = lse if group.size == 1 else copy_to_group(lse, group=group)
    p = ops.exp(ops.sub(logits, ops.reshape(lse, (*lead, 1))))  # this rank's columns of the softmax
    targets = ops.reshape(targets, (*lead, 1))
    onehot = ops.astype(np.equal(targets, np.arange(lo, hi)), p.dtype)
    per_row = _summed(ops.sum(ops.mul(ops.sub(p, onehot), t), axis=-1), group)  # (...) d nll of each row
    kept = ops.astype(np.not_equal(ops.reshape(targets, lead), ignore_index), p.dtype)
    rows = tuple(range(batch_dims, len(lead)))
    weight = ops.mul(kept, 1.0 / np.maximum(ops.sum(kept, axis=rows, keepdims=True), 1))
    return out, ops.astype(ops.sum(ops.mul(per_row, weight), axis=rows), p.dtype)


def _summed(x, group: Group):
    """``x`` summed over the group's ranks (itself alone)."""
    return x if group.size == 1 else reduce_from_group(x, group=group)
