"""ZeRO stage 1 (Rajbhandari et al. 2020): optimizer state sharded over the data-parallel ranks.

Shapes: P data-parallel ranks, n a leaf's number of elements, n_r ~ n / P of them on rank r.

Every data-parallel rank holds the same params and, after the gradient allreduce, the same
gradient. Rank r keeps the optimizer state (AdamW's two moments: 8 of its 16 bytes per float32
parameter) of its contiguous slice [lo, hi) of each *flattened* leaf only, updates that slice,
and one allgather over the ranks rebuilds every leaf. AdamW works element by element, so the
slices' updates are exactly the full update.

The optimizer itself is any ``lt.optim`` transformation, run on the tree of this rank's
slices (the params' structure, so a weight-decay mask tree fits it). A slice of a leaf with two
or more dimensions keeps its rank as shape (1, ..., 1, n_r), so the default weight-decay mask
(matrices decay) still sees a matrix. The norm of the whole gradient, which clipping needs and
no rank can compute from its slices, is handed to the optimizer as ``grad_norm`` (an extra
argument of ``update``, as optax's ``GradientTransformationExtraArgs``). lt's transforms all
take it; a hand-written ``update`` without ``**extra`` runs too, but then must not compute a
global norm of its own (it would see this rank's slices only).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .. import optim, tree
from .collective import split_range

__all__ = ["ZeroState", "init", "update", "slices", "gather_state", "scatter_state"]


class ZeroState(NamedTuple):
    """The optimizer's state of this rank's slices (the structure of ``optimizer.init(params)``)."""

    inner: Any


def _slice(x: np.ndarray, rank: int, size: int) -> np.ndarray:
    lo, hi = split_range(x.size, rank, size)
    return np.asarray(x).reshape(-1)[lo:hi].reshape((1,) * max(x.ndim - 1, 0) + (hi - lo,))


def slices(params, rank: int, size: int):
    """Rank ``rank``'s slice of every leaf (read-only views), a frozen tree."""
    return tree.map(lambda x: _slice(x, rank, size), params)


def init(optimizer: optim.GradientTransformation, params, rank: int, size: int) -> ZeroState:
    """The state of this rank's slices of ``params``."""
    return ZeroState(optimizer.init(slices(params, rank, size)))


def update(
    optimizer: optim.GradientTransformation, grads, state: ZeroState, params, comm, *, grad_norm: float
) -> tuple[Any, ZeroState]:
    """``(new params, new state)``: this rank updates its slices, one allgather over ``comm`` (the
    data-parallel ranks, None when alone) joins them. ``grads`` is the whole gradient (identical
    on every rank) and ``grad_norm`` the norm of the whole model's gradient (across tensor-parallel
    shards too), which the optimizer's clipping is handed."""
    rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    p = slices(params, rank, size)
    upd, inner = optimizer.update_with(slices(grads, rank, size), state.inner, p, grad_norm=grad_norm)
    new = optim.apply_updates(p, upd)
    return _allgather(new, params, comm, rank, size), ZeroState(inner)


def _allgather(new_slices, params, comm, rank: int, size: int):
    """Every leaf whole again: each rank's slices of all leaves sent as one buffer, one Allgatherv."""
    flat_p, treedef = tree.flatten(params)
    mine = [np.asarray(x).reshape(-1) for x in tree.leaves(new_slices)]
    if size == 1:
        return tree.freeze(tree.unflatten(treedef, [m.reshape(p.shape) for m, p in zip(mine, flat_p)]))
    from mpi4py import MPI

    bounds = [[split_range(x.size, r, size) for x in flat_p] for r in range(size)]  # [rank][leaf] (lo, hi)
    counts = [sum(hi - lo for lo, hi in b) for b in bounds]
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
    send = np.concatenate(mine) if mine else np.empty(0, flat_p[0].dtype)
    recv = np.empty(sum(counts), send.dtype)
    mpi_type = MPI.DOUBLE if send.dtype == np.float64 else MPI.FLOAT
    comm.Allgatherv([send, mpi_type], [recv, counts, displs, mpi_type])
    out = []
    for i, p in enumerate(flat_p):
        leaf = np.empty(p.size, p.dtype)
        for r in range(size):
            lo, hi = bounds[r][i]
            at = displs[r] + sum(h - l for l, h in bounds[r][:i])
            leaf[lo:hi] = recv[at : at + hi - lo]
        out.append(leaf.reshape(p.shape))
    return tree.freeze(tree.unflatten(treedef, out))


def gather_state(optimizer: optim.GradientTransformation, state: ZeroState, params, comm, root: int = 0):
    """The optimizer state of the whole ``params`` (the structure of ``optimizer.init(params)``),
    on rank ``root``; None on the others. Collective over ``comm``. The slices are found by
    structure (the subtrees shaped like ``params``), never by names."""
    rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    mine = [np.asarray(x).reshape(-1) for x in tree.param_leaves(state.inner, params)]
    per_rank = [mine] if size == 1 else comm.gather(mine, root=root)  # each rank's pieces, in rank order
    if rank != root:
        return None
    at = iter(range(len(mine)))

    def joined(x, p):
        i = next(at)
        return np.concatenate([pieces[i] for pieces in per_rank]).reshape(np.shape(p))

    return tree.map_params(joined, state.inner, params, other=np.array)


def scatter_state(optimizer: optim.GradientTransformation, full_state, params, rank: int, size: int) -> ZeroState:
    """This rank's :class:`ZeroState` cut from the optimizer state of the whole ``params``
    (``full_state``, as :func:`gather_state` returns it or a checkpoint holds it)."""
    return ZeroState(
        tree.map_params(lambda x, p: np.array(_slice(np.asarray(x), rank, size)), full_state, params, other=np.array)
    )
