"""Model parallelism over MPI: a ``tp x dp`` grid of ranks, tensor-parallel layers, ZeRO-1.

Shapes: P = tp * dp ranks of one ``COMM_WORLD``; world rank ``w`` is tensor-parallel rank
``w % tp`` of the data-parallel replica ``w // tp`` (a replica's ranks are neighbours, as in
Megatron-LM, so its frequent allreduces stay on one node when a node holds ``tp`` ranks).

A training step on every rank, in order, with the communication at these fixed points:

1. its replica's rows of the global batch (``lt.distributed.shard`` over the dp ranks);
2. forward and backward of :class:`lt.nn.ShardedGPT` on its shard: per block one allreduce
   over the tp ranks after attention and one after the feed-forward (``g``), and their
   conjugates in the backward (``f``); the embedding's ``g``, the head's ``f``, and the
   vocabulary-parallel loss's two small allreduces of (B·T,) numbers;
3. the gradient averaged over the dp ranks (``lt.distributed.mean_gradients``);
4. the global gradient norm: each rank's sum of squares (replicated leaves counted on tp
   rank 0 only), one allreduce of a scalar over the tp ranks;
5. ZeRO-1 (:mod:`lt.zero`): each dp rank updates its slice of every leaf; one allgather.

Checkpoints hold the whole model (:func:`gather_state` to world rank 0), so a run saved at
one ``tp`` resumes at any other (:func:`shard_state` cuts a whole state).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from . import checkpoint, data, distributed, optim, tree, zero
from ._checks import integer
from .nn import GPT, ShardedGPT
from .nn.sharded import shard_leaf
from .ops.collective import Group, allreduce, sum_over_replicas
from .training import TrainState, check_finite, evaluate, gradient_fn

__all__ = [
    "Mesh",
    "mesh",
    "shard_model",
    "shard_state",
    "gather_state",
    "global_grad_norm",
    "make_train_step",
    "check_in_sync",
    "Plan",
    "plan",
]


class Mesh(NamedTuple):
    """This rank's place in the ``tp x dp`` grid: its tensor-parallel group and data-parallel
    communicator (None when dp = 1), and the world it was cut from."""

    world: distributed.World
    tp: Group
    dp: Any

    @property
    def dp_rank(self) -> int:
        return distributed.of(self.dp).rank

    @property
    def dp_size(self) -> int:
        return distributed.of(self.dp).size


def mesh(comm, tensor_parallel: int) -> Mesh:
    """Split ``comm`` (e.g. ``COMM_WORLD``; None: one process) into groups of ``tensor_parallel``
    neighbouring ranks. Collective: every rank calls it with the same size."""
    w = distributed.of(comm)
    k = integer(tensor_parallel, "tensor_parallel", 1)
    if w.size % k:
        raise ValueError(
            f"tensor_parallel={k} must divide the number of MPI ranks ({w.size}): the ranks form "
            f"a tp x dp grid; launch a multiple of {k} ranks or choose a divisor of {w.size}"
        )
    if w.size == 1:
        return Mesh(w, Group(None, 0, 1), None)
    tp_comm = comm.Split(w.rank // k, w.rank)
    dp_comm = comm.Split(w.rank % k, w.rank)
    return Mesh(w, Group.of(tp_comm), dp_comm if w.size > k else None)


def shard_model(model: GPT, m: Mesh) -> ShardedGPT:
    """This rank's share of ``model``."""
    return ShardedGPT.of(model, m.tp)


def _param_path(model: ShardedGPT, path: str) -> str | None:
    """The params path that an optimizer-state ``path`` (``1.mu.blocks.0.attn.qkv.w``) ends in."""
    parts = path.split(".")
    return next((q for q in (".".join(parts[k:]) for k in range(len(parts))) if q in _shapes(model)), None)


@functools.lru_cache(maxsize=8)
def _shapes(model: ShardedGPT) -> dict:
    spec = model.full.spec()
    return dict(zip(tree.paths(spec), (p.shape for p in tree.leaves(spec))))


def shard_state(model: ShardedGPT, optimizer: optim.GradientTransformation, state: TrainState, m: Mesh) -> TrainState:
    """This rank's training state (params shard, ZeRO-1 optimizer state, step) cut from the
    whole ``state`` (as ``TrainState.create`` or a checkpoint gives it)."""
    params = model.shard(state.params)

    def cut(path, x):
        q = _param_path(model, path)
        return np.array(x) if q is None or np.ndim(x) == 0 else _shard(model, q, x)

    opt_items = tree.items(state.opt_state)
    treedef = tree.flatten(state.opt_state)[1]
    opt_shard = tree.freeze(tree.unflatten(treedef, [cut(p, x) for p, x in opt_items]))
    return TrainState(params, zero.scatter_state(optimizer, opt_shard, params, m.dp_rank, m.dp_size), int(state.step))


def _shard(model: ShardedGPT, q: str, x) -> np.ndarray:
    return shard_leaf(np.asarray(x), model.split(q))


def gather_state(
    model: ShardedGPT, optimizer: optim.GradientTransformation, state: TrainState, m: Mesh
) -> TrainState | None:
    """The whole model's training state on world rank 0 (None on the others): ZeRO slices joined
    over each dp group, then tensor-parallel shards joined over replica 0's tp group."""
    opt = zero.gather_state(optimizer, state.opt_state, state.params, m.dp)  # dp root: this shard's whole state
    if m.dp_rank != 0:
        return None
    tp = m.tp
    shards = [(state.params, opt)] if tp.size == 1 else tp.comm.gather((state.params, opt), root=0)
    if tp.rank != 0:
        return None
    params = model.gather([s[0] for s in shards])
    treedef = tree.flatten(opt)[1]
    out = []
    for i, path in enumerate(tree.paths(opt)):
        q = _param_path(model, path)
        pieces = [tree.leaves(s[1])[i] for s in shards]
        out.append(np.array(pieces[0]) if q is None or np.ndim(pieces[0]) == 0 else model.join(q, pieces))
    return TrainState(params, tree.freeze(tree.unflatten(treedef, out)), int(state.step))


def global_grad_norm(model: ShardedGPT, grads) -> float:
    """The norm of the whole model's gradient from this rank's shard: split leaves' squares summed
    over the tp ranks, replicated leaves (identical on every rank) counted once, and copied
    key/value columns once per copy set (by its first rank)."""
    total = 0.0
    copies = model.block.attn.kv_replicas
    for path, g in tree.items(grads):
        if model.split(path) is not None or model.tp.rank == 0:
            total += float(np.vdot(g, g))
            cols = model.copied_columns(path)
            if cols is not None and model.tp.rank % copies:
                c = np.asarray(g)[..., cols[0] : cols[1]]
                total -= float(np.vdot(c, c))
    return math.sqrt(float(allreduce(np.array([total]), model.tp)[0]))


def make_train_step(
    model: ShardedGPT, optimizer: optim.GradientTransformation, m: Mesh, *, ignore_index: int = -100
) -> Callable:
    """``train_step(state, batch, rng) -> (state, metrics)`` on this rank's shard and ZeRO slices;
    ``batch`` is the global batch (B, T) or (k, B, T), as for ``lt.make_train_step``. Collective."""
    grads_of = gradient_fn(model, ignore_index)

    def train_step(state: TrainState, batch, rng=None):
        (inputs, targets), rng = distributed.shard(batch, m.dp), distributed.rank_rng(rng, m.dp)
        loss, grads, tokens = grads_of(state.params, inputs, targets, rng)
        loss, grads, tokens = distributed.mean_gradients(m.dp, loss, grads, tokens)
        grad_norm = global_grad_norm(model, grads)
        check_finite(state.step, loss, grad_norm)
        params, opt_state = zero.update(optimizer, grads, state.opt_state, state.params, m.dp, grad_norm=grad_norm)
        params = sync_replicated(model, params)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": optim.current_learning_rate(opt_state), "tokens": tokens}
        return TrainState(params, opt_state, state.step + 1), metrics

    return train_step


def sync_replicated(model: ShardedGPT, params):
    """``params`` with the leaves every tp rank holds whole taken from tp rank 0 (one broadcast).

    Their gradients are identical on every tp rank, but the clipping norm that each rank's
    optimizer recomputes from its own slices plus the ``rest`` of :mod:`lt.zero` can differ in
    the last bit between ranks; this keeps the copies bit-identical (a few KB per layer)."""
    tp = model.tp
    if tp.size == 1:
        return params
    params = _sync_copied_kv(model, params)
    items = tree.items(params)
    whole = [i for i, (p, _) in enumerate(items) if model.split(p) is None]
    buf = np.concatenate([np.ravel(items[i][1]) for i in whole])
    tp.comm.Bcast(buf, root=0)
    flat, treedef = tree.flatten(params)
    at = 0
    for i in whole:
        n = flat[i].size
        flat[i] = buf[at : at + n].reshape(flat[i].shape)
        at += n
    return tree.freeze(tree.unflatten(treedef, flat))


def _sync_copied_kv(model: ShardedGPT, params):
    """The key/value columns that several tp ranks hold copies of, taken from each copy set's first rank."""
    if model.block.attn.kv_replicas == 1:
        return params
    for path, x in tree.items(params):
        cols = model.copied_columns(path)
        if cols is not None:
            own = sum_over_replicas(
                np.ascontiguousarray(x[..., cols[0] : cols[1]]), model.tp, model.kv_heads, owner_only=True
            )
            params = tree.set(params, path, np.concatenate([x[..., : cols[0]], own], axis=-1))
    return params


def check_in_sync(model: ShardedGPT, params, m: Mesh) -> None:
    """Raise ``lt.distributed.OutOfSyncError`` unless every dp replica holds the same shard and
    the tp ranks the same replicated leaves. Collective."""
    distributed.check_in_sync(m.dp, params, "tensor-parallel params shards")
    if m.tp.size > 1:
        whole = {p: x for p, x in tree.items(params) if model.split(p) is None}
        distributed.check_in_sync(m.tp.comm, whole, "replicated params")


class Plan(NamedTuple):
    """What ``lt.train`` runs under tensor parallelism: the sharded starting state, the step,
    the evaluator and checkpointer (collective; None when not asked for), and ``finish`` (the
    whole final state, on every rank)."""

    state: TrainState
    train_step: Callable
    eval_loss: Callable | None
    save: Callable | None
    finish: Callable


def plan(
    model: GPT,
    optimizer: optim.GradientTransformation,
    state: TrainState,
    comm,
    tensor_parallel: int,
    *,
    val_tokens=None,
    eval_every: int = 0,
    batch_size: int = 1,
    seq_len: int = 1,
    eval_batches=None,
    checkpoint_path=None,
    checkpoint_metadata: dict | None = None,
) -> Plan:
    """``lt.train``'s pieces for ``tensor_parallel`` ranks per replica: the whole ``state`` cut into
    this rank's share, and functions that join it again for evaluation and checkpoints."""
    m = mesh(comm, tensor_parallel)
    sharded = shard_model(model, m)
    start = shard_state(sharded, optimizer, state, m)

    def eval_loss(params) -> float:  # replica 0's tp ranks compute it together
        ev = (
            evaluate(sharded, params, data.sequential_windows(val_tokens, batch_size, seq_len, eval_batches))
            if m.dp_rank == 0
            else None
        )
        return distributed.broadcast(m.world.comm, ev and ev["loss"])

    def save(s: TrainState) -> None:
        check_in_sync(sharded, s.params, m)
        whole = gather_state(sharded, optimizer, s, m)
        if m.world.is_root and whole is not None:  # (whole is None on every other rank)
            checkpoint.save(checkpoint_path, model, whole.params, whole.opt_state, whole.step, checkpoint_metadata)
        distributed.barrier(m.world.comm)

    def finish(s: TrainState) -> TrainState:
        whole = gather_state(sharded, optimizer, s, m)
        mine = tuple(whole) if m.world.is_root and whole is not None else None
        return TrainState(*distributed.broadcast(m.world.comm, mine))

    return Plan(
        start,
        make_train_step(sharded, optimizer, m),
        eval_loss if val_tokens is not None and eval_every else None,
        save if checkpoint_path else None,
        finish,
    )
