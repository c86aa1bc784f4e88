"""The fixed points where a tensor-parallel layer communicates, shared by attention, the
feed-forwards and the vocabulary-parallel embedding and head.

Shapes: ... any leading axes, D hidden, K the input width of a row-parallel layer on one
rank, V vocabulary, V_r this rank's vocabulary rows. ``tp`` is an ``lt.ops.Group`` (or None:
the plain layer, with no communication at all).

Megatron's split: a column-parallel layer takes its input through ``f`` (identity forward,
allreduce of the gradient backward) and yields this rank's columns; a row-parallel layer
multiplies this rank's rows, sums over ranks with ``g`` (allreduce forward, identity
backward), and adds its bias once, after the sum.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..ops.collective import Group

__all__ = ["local_size", "enter", "row_parallel", "vocab_lookup"]


def local_size(n: int, tp: Group | None) -> int:
    """How many of ``n`` split items (heads' columns, hidden units, vocabulary rows) this rank holds."""
    if tp is None:
        return n
    lo, hi = tp.part(n)
    return hi - lo


def enter(x, tp: Group | None):
    """The input of a column-parallel layer: ``f(x)`` (identity; its gradient summed over ranks)."""
    return x if tp is None or tp.size == 1 else ops.copy_to_group(x, group=tp)


def row_parallel(params, x, tp: Group | None):
    """``sum_ranks(x_r @ w_r) + b``: x (..., K) against this rank's rows ``w`` (K, D) -> (..., D),
    the same on every rank; ``b`` (D,) when present is added once, after the sum."""
    b = params.get("b")
    if tp is None:
        return ops.linear(x, params["w"], b)
    y = ops.linear(x, params["w"], None)  # (..., D) this rank's share
    y = y if tp.size == 1 else ops.reduce_from_group(y, group=tp)
    return y if b is None else y + b


def vocab_lookup(w, ids, vocab_size: int, tp: Group):
    """Rows of the vocabulary-parallel table ``w`` (V_r, D) at ``ids`` (...,) -> (..., D): each rank
    looks up the ids in its rows [lo, hi) (zeros elsewhere), and ``g`` sums the ranks' answers."""
    lo, hi = tp.part(vocab_size)
    mine = (ids >= lo) & (ids < hi)  # (...,)
    x = ops.embedding(w, np.where(mine, ids - lo, 0))  # (..., D)
    x = x * mine[..., None].astype(x.dtype)
    return x if tp.size == 1 else ops.reduce_from_group(x, group=tp)
