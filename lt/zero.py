"""ZeRO stage 1 (Rajbhandari et al. 2020): optimizer state sharded over the data-parallel ranks.

Shapes: P data-parallel ranks, n a leaf's number of elements, n_r ~ n / P of them on rank r.

Every data-parallel rank holds the same params and, after the gradient allreduce, the same
gradient. Rank r keeps the optimizer state (AdamW's two moments: 8 of its 16 bytes per float32
parameter) of its contiguous slice [lo, hi) of each *flattened* leaf only, updates that slice,
and one allgather over the ranks rebuilds every leaf. AdamW works element by element, so the
slices' updates are exactly the full update.

The optimizer itself is any ``lt.optim`` transformation, run on the tree
``{"slice": slices, "rest": scalar}``. A slice of a leaf with two or more dimensions keeps its
rank as shape (1, ..., 1, n_r), so the default weight-decay mask (matrices decay) still sees a
matrix. ``rest`` carries the norm of every element outside this rank's slices, so that the
global norm ``clip_by_global_norm`` computes over the tree is the norm of the whole gradient;
its own update is discarded. (A weight-decay ``mask`` given as a tree cannot fit this tree:
give one as a function of the params, or the default.)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from . import optim, tree
from .ops.collective import split_range

__all__ = ["ZeroState", "init", "update", "slices", "gather_state", "scatter_state"]


class ZeroState(NamedTuple):
    """The optimizer's state of this rank's slices (a tree ``{"slice": ..., "rest": ...}``)."""

    inner: Any


def _slice(x: np.ndarray, rank: int, size: int) -> np.ndarray:
    lo, hi = split_range(x.size, rank, size)
    return np.asarray(x).reshape(-1)[lo:hi].reshape((1,) * max(x.ndim - 1, 0) + (hi - lo,))


def slices(params, rank: int, size: int):
    """Rank ``rank``'s slice of every leaf (read-only views), a frozen tree."""
    return tree.map(lambda x: _slice(x, rank, size), params)


def _wrap(slice_tree, rest: float, dtype) -> tree.FrozenDict:
    return tree.freeze({"rest": np.asarray(rest, dtype), "slice": slice_tree})


def _dtype(params):
    return tree.leaves(params)[0].dtype


def init(optimizer: optim.GradientTransformation, params, rank: int, size: int) -> ZeroState:
    """The state of this rank's slices of ``params``."""
    return ZeroState(optimizer.init(_wrap(slices(params, rank, size), 0.0, _dtype(params))))


def update(
    optimizer: optim.GradientTransformation, grads, state: ZeroState, params, comm, *, grad_norm: float
) -> tuple[Any, ZeroState]:
    """``(new params, new state)``: this rank updates its slices, one allgather over ``comm`` (the
    data-parallel ranks, None when alone) joins them. ``grads`` is the whole gradient (identical
    on every rank) and ``grad_norm`` the norm of the whole model's gradient (across tensor-parallel
    shards too), which the optimizer's clipping sees."""
    rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    g = slices(grads, rank, size)
    mine = optim.global_norm(g)
    rest = math.sqrt(max(grad_norm**2 - mine**2, 0.0))
    dtype = _dtype(params)
    p = slices(params, rank, size)
    upd, inner = optimizer.update(_wrap(g, rest, dtype), state.inner, _wrap(p, 0.0, dtype))
    new = optim.apply_updates(p, upd["slice"])
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


def _full_path(path: str) -> str | None:
    """The path in a whole-params optimizer state of the sliced state's ``path``; None for ``rest``."""
    parts = path.split(".")
    if "rest" in parts and parts[-1] == "rest":
        return None
    return ".".join(p for p in parts if p != "slice")


def gather_state(optimizer: optim.GradientTransformation, state: ZeroState, params, comm, root: int = 0):
    """The optimizer state of the whole ``params`` (the structure of ``optimizer.init(params)``),
    on rank ``root``; None on the others. Collective over ``comm``."""
    rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    s_items = tree.items(state.inner)
    sliced = {_full_path(p): x for p, x in s_items if ".slice." in f".{p}." or p.startswith("slice.")}
    other = {p: x for p, x in s_items if _full_path(p) is not None and _full_path(p) not in sliced}
    pieces = {p: np.asarray(x).reshape(-1) for p, x in sliced.items()}
    per_rank = [pieces] if size == 1 else comm.gather(pieces, root=root)  # each rank's pieces, in rank order
    if rank != root:
        return None
    template = optimizer.init(tree.map(lambda x: np.zeros((0,) * np.ndim(x), np.asarray(x).dtype), params))
    shapes = {p: np.shape(x) for p, x in tree.items(params)}
    out = []
    for p in tree.paths(template):
        if p in other:
            out.append(np.array(other[p]))
            continue
        parts = p.split(".")
        shape = next(shapes[q] for q in (".".join(parts[k:]) for k in range(len(parts))) if q in shapes)
        out.append(np.concatenate([g[p] for g in per_rank]).reshape(shape))
    return tree.freeze(tree.unflatten(tree.flatten(template)[1], out))


def scatter_state(optimizer: optim.GradientTransformation, full_state, params, rank: int, size: int) -> ZeroState:
    """This rank's :class:`ZeroState` cut from the optimizer state of the whole ``params``
    (``full_state``, as :func:`gather_state` returns it or a checkpoint holds it)."""
    template = init(optimizer, params, rank, size)
    full = dict(tree.items(full_state))
    flat = []
    for p, x in tree.items(template.inner):
        q = _full_path(p)
        if q is None:
            flat.append(np.zeros_like(x))
        elif ".slice." in f".{p}.":
            flat.append(np.array(_slice(np.asarray(full[q]), rank, size)))
        else:
            flat.append(np.array(full[q]))
    return ZeroState(tree.freeze(tree.unflatten(tree.flatten(template.inner)[1], flat)))
