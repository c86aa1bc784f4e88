"""Tensor parallelism as a plan applied to a model: one rank's share of a ``GPT``.

Shapes: V vocabulary, D hidden, F feed-forward, H heads of size d, Hkv key/value heads, P ranks.

:func:`plan` reads the parameter declarations (``lt.nn.Split`` on each ``Param``) and builds
this rank's *local* model: the same ``lt.nn.GPT`` with its parts swapped (``lt.nn.Parts``) for
their shares, the plan entries of Megatron-LM's split (Hugging Face's ``tp_plan`` is the same
idea): a Linear cut by its columns becomes a ``ColumnParallelLinear``, one cut by its rows a
``RowParallelLinear``, the token table a ``VocabParallelEmbedding``, the loss a
``VocabParallelCrossEntropy``; attention keeps H / P heads and the feed-forward ~F / P units.
The model's one forward runs unchanged; no layer knows it is split. The local params tree is
an ordinary frozen lt tree holding only this rank's shard::

    wte.w (V_r, D)  head.w (D, V_r)           the vocabulary rows [lo, hi) (uneven allowed)
    attn.qkv.w (D, (H + 2 Hkv) d / P)         each q|k|v block's columns of this rank's heads
    attn.proj.w (H d / P, D)                  the rows of those heads; proj.b (D,) whole
    ffn.fc.w (D, F_r)  ffn.proj.w (F_r, D)    (gate, up, down alike) F_r ~ F / P hidden units
    everything else (norms, wpe, the row-parallel biases) whole, identical on every rank
"""

from __future__ import annotations

import functools
import math

import attrs
import numpy as np

from .. import random, tree
from ..nn import GPT, Embedding, Linear, Parts
from ..nn.attention import MultiHeadAttention
from ..nn.module import init_params
from . import shards
from .collective import Group, allreduce
from .layers import ColumnParallelLinear, RowParallelLinear, VocabParallelCrossEntropy, VocabParallelEmbedding

__all__ = ["ShardedGPT", "plan", "global_grad_norm"]


def _local_linear(linear: Linear, group: Group):
    """The wrapper for this rank's share of ``linear``, chosen by the axis its weight declares."""
    w = linear.spec()["w"]
    where = shards.ranges(w, group.rank, group.size)
    if where is None:
        return linear
    width = sum(hi - lo for lo, hi in where[1])
    if where[0] == 1:  # columns
        copies = shards.copied_columns(w, group.rank, group.size)
        copied = (copies[0][0], copies[0][2]) if copies else None
        local = Linear(linear.in_dim, width, bias=linear.bias, init_std=linear.init_std)
        return ColumnParallelLinear(local, group, copied)
    local = Linear(width, linear.out_dim, bias=linear.bias, init_std=linear.init_std)
    return RowParallelLinear(local, group)


def _check_heads(attn: MultiHeadAttention, P: int) -> None:
    if attn.num_heads % P:
        raise ValueError(
            f"tensor parallelism over {P} ranks splits the attention heads among them: "
            f"num_heads ({attn.num_heads}) must be divisible by {P}"
        )
    if attn.kv_heads % P and P % attn.kv_heads:
        raise ValueError(
            f"tensor parallelism over {P} ranks: num_kv_heads ({attn.kv_heads}) must divide {P} "
            f"(each key/value head copied to {P} / {attn.kv_heads} ranks) or be divisible by it "
            "(split among them)"
        )


def _local_attention(attn: MultiHeadAttention, group: Group) -> MultiHeadAttention:
    """H / P query heads and their key/value heads (Hkv / P, or one copy when P > Hkv)."""
    _check_heads(attn, group.size)
    kv = shards.unit_range(attn.kv_heads, group.rank, group.size, copies=True)
    return attrs.evolve(
        attn,
        num_heads=attn.num_heads // group.size,
        num_kv_heads=kv[1] - kv[0],
        head_dim=attn.head_dim,
        parts=Parts.of(qkv=_local_linear(attn.qkv, group), proj=_local_linear(attn.proj, group)),
    )


def _local_feedforward(ffn, group: Group):
    """~F / P hidden units: every part's share (first matrices' columns, the last's rows)."""
    lo, hi = group.part(ffn.ffn_dim)
    parts = {name: _local_linear(getattr(ffn, name), group) for name in ffn.spec()}
    return attrs.evolve(ffn, ffn_dim=hi - lo, parts=Parts.of(**parts))


def plan(model: GPT, group: Group) -> GPT:
    """Rank ``group.rank``'s local model: ``model`` with its parts swapped for their shares;
    refused, saying why, when its heads do not divide among the ranks."""
    if group.size == 1:
        return model
    V, D = model.vocab_size, model.hidden_dim
    block = model.block
    local_block = attrs.evolve(
        block, parts=Parts.of(attn=_local_attention(block.attn, group), ffn=_local_feedforward(block.ffn, group))
    )
    lo, hi = group.part(V)
    parts = dict(
        block=local_block,
        wte=VocabParallelEmbedding(Embedding(hi - lo, D), group, V),
        criterion=VocabParallelCrossEntropy(group, V),
    )
    if model.head is not None:
        parts["head"] = _local_linear(model.head, group)
    return attrs.evolve(model, parts=Parts.of(**parts))


@attrs.frozen
class ShardedGPT:
    """Rank ``group.rank``'s share of ``model`` split over ``group``: a wrapper that keeps the
    model's contract for ``init``, ``loss``, ``check_params`` and ``num_params`` (of the local
    shard), and says where it differs: ``apply`` returns this rank's vocabulary columns of the
    logits (B, T, V_r) (join them with ``lt.parallel.allgather_last``); ``generate`` is not offered."""

    model: GPT = attrs.field(validator=attrs.validators.instance_of(GPT))
    group: Group = attrs.field(validator=attrs.validators.instance_of(Group))

    def __attrs_post_init__(self):
        _ = self.local  # heads that do not divide raise here

    @functools.cached_property
    def local(self) -> GPT:
        """The model this rank computes with (its forward communicates at the fixed points)."""
        return plan(self.model, self.group)

    # ------------------------------------------------------------- the model's contract

    def spec(self):
        return self.local.spec()

    def num_params(self) -> int:
        return self.local.num_params()

    def check_params(self, params) -> None:
        self.local.check_params(params)

    def apply(self, params, ids, **options):
        """This rank's vocabulary columns of the logits (B, T, V_r); options as ``GPT.apply``."""
        return self.local.apply(params, ids, **options)

    def loss(self, params, ids, targets=None, **options):
        """The whole model's loss, the same on every rank; options as ``GPT.loss``."""
        return self.local.loss(params, ids, targets, **options)

    def generate(self, *args, **kwargs):
        raise NotImplementedError(
            "ShardedGPT does not generate: gather the whole params (ShardedGPT.gather) and call the model's generate"
        )

    def init(self, rng: random.Key, dtype=np.float32):
        """This rank's shard of ``model.init(rng, dtype)`` (the same numbers), made one leaf at a
        time: at most one whole leaf exists at once, never the whole model."""
        full_spec = self.model.spec()
        flat, treedef = tree.flatten(full_spec)
        out = []
        for path, param in zip(tree.paths(full_spec), flat):
            leaf_rng = rng
            for part in path.split("."):  # the place-derived key lt.nn.init_params gives this leaf
                leaf_rng = random.fold_in(leaf_rng, int(part) if part.isdigit() else part)
            out.append(self._cut(init_params(param, leaf_rng, dtype), param))
        return tree.freeze(tree.unflatten(treedef, out))

    # ------------------------------------------------------------- cutting and joining

    def _cut(self, x, param):
        return shards.cut(np.asarray(x), param, self.group.rank, self.group.size)

    def shard(self, full_params):
        """This rank's params (a frozen tree) cut from the whole model's ``full_params``."""
        return tree.map(self._cut, full_params, self.model.spec())

    def shard_like(self, full_tree, params_like):
        """``full_tree`` (e.g. an optimizer state of the whole params) with every subtree shaped
        like the params cut to this rank's shard; other leaves (step counts) copied."""
        return tree.map_params(self._cut, full_tree, self.model.spec(), other=np.array)

    def gather(self, shards_: list):
        """The whole model's params from every rank's shard (``shards_[r]``: rank r's tree, e.g.
        from ``comm.gather``), a frozen tree; replicated leaves are rank 0's."""
        per_rank = [tree.leaves(s) for s in shards_]
        spec_flat, treedef = tree.flatten(self.model.spec())
        out = [shards.join(p, [leaves[i] for leaves in per_rank]) for i, p in enumerate(spec_flat)]
        return tree.unflatten(treedef, [tree.seal(x) for x in out])

    def gather_like(self, trees: list):
        """:meth:`gather` for every params-shaped subtree of per-rank trees (optimizer states)."""
        spec = self.model.spec()
        pieces = [tree.param_leaves(t, spec) for t in trees]
        at = iter(range(len(pieces[0])))

        def joined(x, param):
            i = next(at)
            return shards.join(param, [p[i] for p in pieces])

        return tree.map_params(joined, trees[0], spec, other=np.array)


def global_grad_norm(sharded: ShardedGPT, grads) -> float:
    """The norm of the whole model's gradient from this rank's shard: split leaves' squares
    summed over the ranks, leaves every rank holds whole counted once (by rank 0), and copied
    units once per copy set (by its first rank). One allreduce of a scalar."""
    rank, size = sharded.group.rank, sharded.group.size
    total = 0.0
    for g, param in zip(tree.leaves(grads), tree.leaves(sharded.model.spec())):
        if param.split is None or size == 1:
            total += float(np.vdot(g, g)) if rank == 0 or size == 1 else 0.0
            continue
        total += float(np.vdot(g, g))
        for lo, hi, sets in shards.copied_columns(param, rank, size):
            if rank % (size // sets):  # not the copy set's first rank
                c = np.take(np.asarray(g), np.arange(lo, hi), axis=param.split.axis)
                total -= float(np.vdot(c, c))
    return math.sqrt(float(allreduce(np.array([total]), sharded.group)[0]))
