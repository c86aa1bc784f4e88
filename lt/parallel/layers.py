"""Tensor-parallel wrappers: a plain component's share on one rank, with the communication at
Megatron-LM's fixed points. ``lt.parallel.tensor`` chooses them from the parameter
declarations (a Linear cut by its columns becomes a :class:`ColumnParallelLinear`, by its rows
a :class:`RowParallelLinear`, a cut table a :class:`VocabParallelEmbedding`); the layers
themselves never know.

Shapes: ... any leading axes, K a row-parallel layer's input width on one rank, D hidden,
V vocabulary, V_r = this rank's vocabulary rows [lo, hi).

- column-parallel: the input enters through ``f`` (identity forward, gradient summed over the
  ranks backward); the output is this rank's columns;
- row-parallel: this rank's rows multiply its columns of the input, ``g`` sums the ranks'
  answers (allreduce forward, identity backward), the bias is added once, after the sum.
"""

from __future__ import annotations

import attrs
import numpy as np

from .. import ops
from ..nn import Embedding, Linear, Module
from .collective import Group, copy_to_group, copy_to_replicas, parallel_cross_entropy, reduce_from_group

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "VocabParallelEmbedding", "VocabParallelCrossEntropy"]


def enter(x, group: Group):
    """``f(x)``: the input of a column-parallel product (identity; its gradient summed over ranks)."""
    return x if group.size == 1 else copy_to_group(x, group=group)


def leave(y, group: Group):
    """``g(y)``: the sum over ranks of a row-parallel product's shares."""
    return y if group.size == 1 else reduce_from_group(y, group=group)


@attrs.frozen
class ColumnParallelLinear(Module):
    """This rank's columns of a Linear: ``f(x) @ w_r + b_r`` (..., in) -> (..., out_r).

    ``copied`` (first column, copy sets): the columns from there on are a copy of units that
    several ranks hold whole (a key/value head shared by P / Hkv ranks); their gradient is
    summed over the ranks of each copy set (one of ``copy sets`` consecutive blocks of ranks)."""

    linear: Linear
    group: Group
    copied: tuple[int, int] | None = None

    def spec(self):
        return self.linear.spec()

    def apply(self, params, x, *, rng=None):
        if self.copied is not None:
            params = self._shared(params)
        return self.linear.apply(params, enter(x, self.group))

    def _shared(self, params):
        start, sets = self.copied
        if np.shape(params["w"])[-1] != self.linear.out_dim:
            raise NotImplementedError("cross-attention with key/value heads copied over tensor-parallel ranks")
        out = {}
        for name, x in params.items():
            own, copy = ops.split(x, [start], axis=-1)
            out[name] = ops.concat(own, copy_to_replicas(copy, group=self.group, blocks=sets), axis=-1)
        return out


@attrs.frozen
class RowParallelLinear(Module):
    """This rank's rows of a Linear: ``g(x_r @ w_r) + b`` (..., K) -> (..., out), the same on
    every rank; the bias (out,) is whole on every rank and added once, after the sum."""

    linear: Linear
    group: Group

    def spec(self):
        return self.linear.spec()

    def apply(self, params, x, *, rng=None):
        y = leave(ops.linear(x, params["w"], None), self.group)  # (..., out)
        return y + params["b"] if self.linear.bias else y


@attrs.frozen
class VocabParallelEmbedding(Module):
    """This rank's rows [lo, hi) of a token table (V_r, D) of a vocabulary of ``vocab_size``:
    looked up by every rank (zeros for ids outside its rows) and summed by ``g``; as the tied
    head, this rank's columns of the logits ``f(h) @ w_r.T`` (..., V_r)."""

    table: Embedding
    group: Group
    vocab_size: int

    def spec(self):
        return self.table.spec()

    def lookup(self, params, ids):
        """Checked ids (...) -> (..., D), the same on every rank."""
        lo, hi = self.group.part(self.vocab_size)
        mine = (ids >= lo) & (ids < hi)  # (...)
        x = ops.embedding(params["w"], np.where(mine, ids - lo, 0))  # (..., D)
        return leave(x * mine[..., None].astype(x.dtype), self.group)

    def attend(self, params, h):
        """(..., D) -> this rank's vocabulary columns (..., V_r)."""
        return self.table.attend(params, enter(h, self.group))


@attrs.frozen
class VocabParallelCrossEntropy(Module):
    """The loss of logits split along the vocabulary (this rank's (..., V_r) columns), never
    gathered: ``lt.parallel.parallel_cross_entropy``, the same number on every rank."""

    group: Group
    vocab_size: int

    def spec(self):
        return {}

    def apply(self, params, logits, targets, *, ignore_index: int = -100):
        return parallel_cross_entropy(
            logits, targets, group=self.group, vocab_size=self.vocab_size, ignore_index=ignore_index
        )
