"""Data-parallel training over MPI: which rank am I, my rows of the batch, the mean gradient.

Shapes: P ranks, r this rank, B rows of the global batch, T positions, N counted target
tokens in the global batch, n_r of them in rank r's rows.

Every rank draws the *same* global batch from the same key (token ids: cheap), keeps its
contiguous rows (:func:`shard`), and computes the loss and gradient ``g_r`` of the mean
loss over its own ``n_r`` tokens. :func:`mean_gradients` turns those into the gradient of
the global mean loss, ``sum_r (n_r / N) g_r``, with one in-place allreduce per leaf on the
fresh buffer that the scaling by ``n_r / N`` creates anyway (no flat concatenated copy).
Every rank then holds the same gradient and applies the same update to the same params,
so params stay bit-identical everywhere; :func:`check_in_sync` verifies it.

mpi4py is optional (``pip install "lt[mpi]"``) and imported only when the process was
started by an MPI launcher or MPI is asked for, so plain ``lt`` never initialises MPI.
Launch with ``mpiexec -n 4 python -m mpi4py ...``: ``-m mpi4py`` turns an exception on
one rank into an abort of the whole job instead of a deadlock of the others.

    w = lt.distributed.world()                 # (comm, rank, size); SINGLE when not under MPI
    state, log = lt.train(model, opt, state, tokens, ..., comm=w.comm)   # same call on every rank
    if w.is_root: ...                          # anything else that prints or writes

A model split over ranks (tensor parallelism) with sharded optimizer state (ZeRO-1) is
:mod:`lt.tensor_parallel`, built on these pieces: ``lt.train(..., comm=w.comm, tensor_parallel=k)``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from typing import Any, NamedTuple

import numpy as np

from .. import random, tree

__all__ = [
    "World",
    "SINGLE",
    "world",
    "of",
    "shard_rows",
    "shard",
    "rank_rng",
    "mean_gradients",
    "broadcast",
    "barrier",
    "fingerprint",
    "check_in_sync",
    "OutOfSyncError",
]

# Set by mpiexec/mpirun (MPICH's hydra, Open MPI, PMIx) and by srun with an MPI plugin.
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")
_LAUNCHER_VARS = _LAUNCHER_SIZE_VARS + ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")


class OutOfSyncError(RuntimeError):
    """Ranks that should hold identical values (params, optimizer state) do not."""


class World(NamedTuple):
    """This process's place in the job: ``comm`` is an mpi4py communicator, None when alone."""

    comm: Any
    rank: int
    size: int

    @property
    def is_root(self) -> bool:
        """Rank 0: the one that prints, evaluates and writes checkpoints."""
        return self.rank == 0


SINGLE = World(None, 0, 1)


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        size = next((os.environ[v] for v in _LAUNCHER_SIZE_VARS if v in os.environ), None)
        where = f"this process was launched as one of {size} MPI ranks, but " if size else ""
        raise ImportError(
            f'{where}data-parallel training needs mpi4py: pip install "lt[mpi]" '
            "(mpi4py, and the mpich wheel where there is no system MPI)"
        ) from e
    return MPI


def _launcher_size() -> int:
    """The job size an MPI launcher set in the environment; 1 when none is set (or it is not a number)."""
    for var in _LAUNCHER_SIZE_VARS:
        try:
            return int(os.environ[var])
        except (KeyError, ValueError):
            continue
    return 1


def world(mpi: bool | None = None) -> World:
    """The MPI world this process belongs to, or :data:`SINGLE`.

    ``mpi=None`` detects: MPI is used when the process was started by an MPI launcher
    (``mpiexec``, ``srun``, ``python -m mpi4py``) and the job has more than one rank. A launcher's
    variables saying one rank (``PMI_SIZE=1``), or no size at all, mean a plain single process,
    which never needs mpi4py.
    ``mpi=True`` (the CLI's ``--mpi``) requires mpi4py and uses ``COMM_WORLD`` even with one
    rank; ``mpi=False`` never touches MPI.
    """
    if mpi is False:
        return SINGLE
    launched = _launcher_size() > 1 or "mpi4py.run" in sys.modules or "mpi4py.MPI" in sys.modules
    if mpi is None and not launched:
        return SINGLE
    comm = _import_mpi().COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if mpi is None and size == 1:
        return SINGLE
    if size > 1 and rank == 0 and "mpi4py.run" not in sys.modules:
        warnings.warn(
            "running on MPI without `python -m mpi4py`: an exception on one rank will leave "
            "the others waiting forever; launch as `mpiexec -n N python -m mpi4py ...`",
            RuntimeWarning,
            stacklevel=2,
        )
    return World(comm, rank, size)


def of(comm) -> World:
    """The :class:`World` of a communicator (None: a single process)."""
    if comm is None:
        return SINGLE
    return World(comm, comm.Get_rank(), comm.Get_size())


def shard_rows(batch_size: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s contiguous rows of a batch of ``batch_size`` rows split over ``size`` ranks.

    Rows are dealt as evenly as possible (the first ``batch_size % size`` ranks get one
    more), in rank order, so the shards joined in rank order are the whole batch. Every
    rank needs at least one row: fewer rows than ranks is refused.
    """
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not in [0, {size})")
    if batch_size < size:
        raise ValueError(
            f"a batch of {batch_size} rows cannot be split over {size} ranks (each needs "
            f"at least one row): use batch_size >= {size} or fewer ranks"
        )
    base, extra = divmod(batch_size, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def shard(batch, comm) -> tuple[np.ndarray, np.ndarray]:
    """This rank's rows of the global ``(inputs, targets)``: (B, T) or (k, B, T) for k micro-batches."""
    inputs, targets = batch
    w = of(comm)
    rows = shard_rows(np.shape(inputs)[-2], w.rank, w.size)
    return inputs[..., rows, :], targets[..., rows, :]


def rank_rng(rng, comm):
    """The dropout key of this rank's rows: ``rng`` alone, ``fold_in(rng, "rank<r>")`` on P > 1
    ranks, so that shards never share a dropout mask. (So with dropout the masks, unlike the
    batch, depend on the number of ranks; without dropout nothing does.)"""
    w = of(comm)
    if rng is None or w.size == 1:
        return rng
    return random.fold_in(rng, f"rank{w.rank}")


def mean_gradients(comm, loss: float, grads, tokens: int) -> tuple[float, Any, int]:
    """``(loss, grads, tokens)`` of this rank's rows -> those of the global batch, on every rank.

    ``loss`` and ``grads`` are the mean loss over this rank's ``tokens`` counted targets and
    its gradient. The result is the mean loss over all N counted tokens and its gradient,
    ``sum_r (n_r / N) g_r``: shards may hold different numbers of tokens. One small allreduce
    gives N and the loss; then each leaf is scaled into a fresh buffer that is summed in place.
    """
    w = of(comm)
    if w.size == 1:
        return loss, grads, tokens
    from mpi4py import MPI

    totals = np.array([loss * tokens if tokens else 0.0, float(tokens)])  # (2,) float64
    comm.Allreduce(MPI.IN_PLACE, totals, op=MPI.SUM)
    total_tokens = round(float(totals[1]))
    weight = tokens / max(total_tokens, 1)

    def reduce(g):
        buf = np.zeros_like(g) if tokens == 0 else np.multiply(g, g.dtype.type(weight))
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)  # (same shape) summed over ranks
        buf.flags.writeable = False
        return buf

    return float(totals[0]) / max(total_tokens, 1), tree.map(reduce, grads), total_tokens


def broadcast(comm, value, root: int = 0):
    """``value`` as held by rank ``root``, on every rank (the others pass anything, e.g. None).

    A tree's array leaves are sent buffer by buffer (no pickling of big arrays); its structure
    and any other leaves are pickled. Use it to share what only rank 0 read, e.g. a checkpoint
    on a disk the other nodes do not see. The result is a frozen tree.
    """
    w = of(comm)
    if w.size == 1:
        return value
    header = None
    if w.rank == root:
        flat, treedef = tree.flatten(value)
        flat = [np.asarray(x, order="C") if isinstance(x, np.ndarray) else x for x in flat]  # (0-d stays 0-d)
        header = (treedef, [(x.shape, x.dtype.str) if isinstance(x, np.ndarray) else ("value", x) for x in flat])
    treedef, specs = comm.bcast(header, root=root)
    out = []
    for i, spec in enumerate(specs):
        if spec[0] == "value":
            out.append(spec[1])
            continue
        buf = flat[i] if w.rank == root else np.empty(spec[0], np.dtype(spec[1]))
        comm.Bcast(buf, root=root)
        out.append(buf)
    return tree.freeze(tree.unflatten(treedef, out))


def barrier(comm) -> None:
    """Wait until every rank gets here (nothing to wait for when alone)."""
    if of(comm).size > 1:
        comm.Barrier()


def fingerprint(value) -> str:
    """A hash of a tree's structure and every leaf's dtype, shape and bytes."""
    flat, treedef = tree.flatten(value)
    h = hashlib.blake2b(repr(treedef).encode(), digest_size=16)
    for x in flat:
        a = np.asarray(x, order="C")
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


def check_in_sync(comm, value, what: str = "params") -> None:
    """Raise :class:`OutOfSyncError` on every rank unless all ranks hold bit-identical ``value``.

    Collective: every rank must call it at the same point.
    """
    w = of(comm)
    if w.size == 1:
        return
    prints = comm.allgather(fingerprint(value))
    odd = [r for r, p in enumerate(prints) if p != prints[0]]
    if odd:
        raise OutOfSyncError(
            f"the {what} of rank(s) {odd} differ from rank 0's: the ranks diverged "
            "(an allreduce whose result differs between ranks, or a rank that "
            "changed them on its own); the last checkpoint is left as it was"
        )
