"""Everything that runs lt over several processes, in one package, above the layers: the MPI
world and data parallelism (:mod:`.mpi`), communication as differentiable primitives
(:mod:`.collective`), tensor parallelism as a plan applied to a model (:mod:`.tensor`, with
its wrappers in :mod:`.layers` and the cutting of declared leaves in :mod:`.shards`), ZeRO-1
(:mod:`.zero`), and the strategies ``lt.train`` runs with (:mod:`.strategy`).

    w = lt.parallel.world()                                   # SINGLE when not under MPI
    state, log = lt.train(model, opt, state, tokens, ..., strategy=lt.parallel.DataParallel(w.comm))
    state, log = lt.train(..., strategy=lt.parallel.TensorParallel(w.comm, 2))   # 2 ranks per replica
"""

from .collective import (
    Group,
    allgather_last,
    allreduce,
    copy_to_group,
    copy_to_replicas,
    parallel_cross_entropy,
    reduce_from_group,
    split_range,
)
from .layers import ColumnParallelLinear, RowParallelLinear, VocabParallelCrossEntropy, VocabParallelEmbedding
from .mpi import (
    SINGLE,
    OutOfSyncError,
    World,
    barrier,
    broadcast,
    check_in_sync,
    fingerprint,
    mean_gradients,
    rank_rng,
    shard,
    shard_rows,
    world,
)
from .strategy import DataParallel, Mesh, TensorParallel, mesh
from .tensor import ShardedGPT, global_grad_norm, plan

__all__ = [
    "World",
    "SINGLE",
    "world",
    "shard_rows",
    "shard",
    "rank_rng",
    "mean_gradients",
    "broadcast",
    "barrier",
    "fingerprint",
    "check_in_sync",
    "OutOfSyncError",
    "Group",
    "split_range",
    "allreduce",
    "allgather_last",
    "copy_to_group",
    "copy_to_replicas",
    "reduce_from_group",
    "parallel_cross_entropy",
    "ColumnParallelLinear",
    "RowParallelLinear",
    "VocabParallelEmbedding",
    "VocabParallelCrossEntropy",
    "ShardedGPT",
    "plan",
    "global_grad_norm",
    "DataParallel",
    "TensorParallel",
    "Mesh",
    "mesh",
]
