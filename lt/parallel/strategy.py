"""How ``lt.train`` runs on one process or many: a strategy value that the one training step
and the one loop call at their fixed points (this rank's rows, the gradient's reduction, the
global norm, the update, evaluation, checkpoints).

Shapes: P = tp * dp ranks of one communicator; world rank ``w`` is tensor-parallel rank
``w % tp`` of the data-parallel replica ``w // tp`` (a replica's ranks are neighbours, as in
Megatron-LM, so its frequent allreduces stay on one node when a node holds ``tp`` ranks).

- :class:`DataParallel` (``comm`` None: one process): every rank draws the same global batch,
  computes the gradient of its own rows, and the gradients are averaged over ranks
  (:func:`lt.parallel.mean_gradients`) before the same update everywhere.
- :class:`TensorParallel`: each group of ``size`` neighbouring ranks holds one replica of the
  model split Megatron-style (:class:`lt.parallel.ShardedGPT`); each data-parallel rank keeps
  the optimizer state of its slice of the params (ZeRO-1, :mod:`lt.parallel.zero`). A step:
  this replica's rows; forward and backward of the shard (per block one allreduce over the tp
  ranks after attention and one after the feed-forward, and their conjugates backward; the
  embedding's, the head's and the vocabulary-parallel loss's few more); the gradient averaged
  over the dp ranks; the global gradient norm (one scalar allreduce over the tp ranks), handed
  to the optimizer; each dp rank updates its slices; one allgather.

Checkpoints always hold the whole model, so a run saved with one strategy resumes with any other.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import optim, tree
from .._checks import integer
from ..nn import GPT
from . import mpi, zero
from .collective import Group
from .tensor import ShardedGPT, global_grad_norm

__all__ = ["DataParallel", "TensorParallel", "Mesh", "mesh"]


class DataParallel:
    """One process (``comm`` None or of one rank), or data parallelism over ``comm``'s ranks."""

    def __init__(self, comm=None):
        self.comm = comm
        self.world = mpi.of(comm)

    @property
    def is_root(self) -> bool:
        return self.world.is_root

    def model(self, model: GPT):
        """The model this rank computes with."""
        return model

    def start(self, model: GPT, state, optimizer: optim.GradientTransformation):
        """This rank's training state from the whole one (here: the same)."""
        return state

    def local_batch(self, batch, rng):
        """This rank's rows of the global batch, and its dropout key."""
        if self.world.size == 1:
            return batch, rng
        return mpi.shard(batch, self.comm), mpi.rank_rng(rng, self.comm)

    def reduce(self, loss: float, grads, tokens: int):
        """The global mean loss, its gradient and the global token count, on every rank."""
        return mpi.mean_gradients(self.comm, loss, grads, tokens) if self.world.size > 1 else (loss, grads, tokens)

    def global_norm(self, model, grads) -> float:
        return optim.global_norm(grads)

    def update(self, optimizer: optim.GradientTransformation, grads, opt_state, params, *, grad_norm: float):
        """``(params, opt_state)`` after one update; the optimizer is handed the norm already computed."""
        updates, opt_state = optimizer.update_with(grads, opt_state, params, grad_norm=grad_norm)
        return optim.apply_updates(params, updates), opt_state

    def evaluate(self, compute) -> float:
        """``compute()`` on the root, its value on every rank."""
        return mpi.broadcast(self.comm, compute() if self.is_root else None)

    def check_in_sync(self, model: GPT, state) -> None:
        """Raise ``lt.parallel.OutOfSyncError`` unless every rank holds what it should. Collective."""
        mpi.check_in_sync(self.comm, (state.params, state.opt_state), "params and optimizer state")

    def gather(self, model: GPT, state, optimizer: optim.GradientTransformation):
        """The whole state on the root (None on the other ranks)."""
        return state if self.is_root else None

    def barrier(self) -> None:
        mpi.barrier(self.comm)

    def finish(self, model: GPT, state, optimizer: optim.GradientTransformation):
        """The whole final state on every rank."""
        return state


class Mesh(NamedTuple):
    """This rank's place in the ``tp x dp`` grid: its tensor-parallel group and data-parallel
    communicator (None when dp = 1), and the world it was cut from."""

    world: mpi.World
    tp: Group
    dp: Any

    @property
    def dp_rank(self) -> int:
        return mpi.of(self.dp).rank

    @property
    def dp_size(self) -> int:
        return mpi.of(self.dp).size


def mesh(comm, tensor_parallel: int) -> Mesh:
    """Split ``comm`` (e.g. ``COMM_WORLD``; None: one process) into groups of ``tensor_parallel``
    neighbouring ranks. Collective: every rank calls it with the same size."""
    w = mpi.of(comm)
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


class TensorParallel(DataParallel):
    """``size`` ranks per model replica (tensor parallelism), the replicas data-parallel, the
    optimizer state sharded over them (ZeRO-1). Collective to build: every rank of ``comm``
    makes it with the same ``size``."""

    def __init__(self, comm, size: int):
        super().__init__(comm)
        self.mesh = mesh(comm, size)
        self._sharded: dict[GPT, ShardedGPT] = {}

    def model(self, model: GPT) -> ShardedGPT:
        if model not in self._sharded:
            self._sharded[model] = ShardedGPT(model, self.mesh.tp)
        return self._sharded[model]

    def start(self, model, state, optimizer):
        sharded = self.model(model)
        params = sharded.shard(state.params)
        opt = sharded.shard_like(state.opt_state, state.params)
        m = self.mesh
        return type(state)(params, zero.scatter_state(optimizer, opt, params, m.dp_rank, m.dp_size), int(state.step))

    def local_batch(self, batch, rng):
        return mpi.shard(batch, self.mesh.dp), mpi.rank_rng(rng, self.mesh.dp)

    def reduce(self, loss, grads, tokens):
        return mpi.mean_gradients(self.mesh.dp, loss, grads, tokens)

    def global_norm(self, model, grads) -> float:
        return global_grad_norm(model, grads)

    def update(self, optimizer, grads, opt_state, params, *, grad_norm):
        return zero.update(optimizer, grads, opt_state, params, self.mesh.dp, grad_norm=grad_norm)

    def evaluate(self, compute) -> float:
        """Replica 0's tp ranks compute it together; every rank gets it."""
        return mpi.broadcast(self.comm, compute() if self.mesh.dp_rank == 0 else None)

    def check_in_sync(self, model, state) -> None:
        """Every dp replica holds the same shard, and the tp ranks the same replicated leaves."""
        m = self.mesh
        mpi.check_in_sync(m.dp, state.params, "tensor-parallel params shards")
        if m.tp.size > 1:
            spec = model.spec()
            whole = [x for x, p in zip(tree.leaves(state.params), tree.leaves(spec)) if p.split is None]
            mpi.check_in_sync(m.tp.comm, whole, "replicated params")

    def gather(self, model, state, optimizer):
        """The whole model's training state on world rank 0 (None on the others): ZeRO slices joined
        over each dp group, then tensor-parallel shards joined over replica 0's tp group."""
        m = self.mesh
        opt = zero.gather_state(optimizer, state.opt_state, state.params, m.dp)  # dp root: this shard's whole state
        if m.dp_rank != 0:
            return None
        shards = [(state.params, opt)] if m.tp.size == 1 else m.tp.comm.gather((state.params, opt), root=0)
        if m.tp.rank != 0:
            return None
        sharded = self.model(model)
        params = sharded.gather([s[0] for s in shards])
        return type(state)(params, sharded.gather_like([s[1] for s in shards]), int(state.step))

    def finish(self, model, state, optimizer):
        whole = self.gather(model, state, optimizer)
        mine = tuple(whole) if self.is_root and whole is not None else None
        return type(state)(*mpi.broadcast(self.comm, mine))
