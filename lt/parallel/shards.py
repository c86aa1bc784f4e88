"""Which part of a declared leaf each tensor-parallel rank holds, and cutting and joining by it.

Shapes: P ranks, r one of them; a leaf's split axis holds blocks of ``units[i]`` units of
``unit`` elements each (``lt.nn.Split``). Rank r holds, of every block, the units
``split_range(n, r, P)`` (contiguous, the first n % P ranks one more), joined in block order;
a block of n < P units, where P is a multiple of n and the declaration allows ``copies``, is
held whole by P / n consecutive ranks: rank r holds unit ``r // (P / n)``. Everything here
reads the declarations (``Param.split``), never a path.
"""

from __future__ import annotations

import numpy as np

from .collective import split_range

__all__ = ["unit_range", "ranges", "cut", "join", "copied_columns"]


def _copied(n: int, size: int, copies: bool) -> bool:
    return copies and n < size and size % n == 0


def unit_range(n: int, rank: int, size: int, copies: bool = False) -> tuple[int, int]:
    """[lo, hi) of the ``n`` units of one block that ``rank`` of ``size`` holds."""
    if _copied(n, size, copies):
        u = rank // (size // n)
        return u, u + 1
    return split_range(n, rank, size)


def ranges(param, rank: int, size: int) -> tuple[int, tuple[tuple[int, int], ...]] | None:
    """(axis, ((lo, hi), ...)): the index ranges of the split axis that ``rank`` holds, in order;
    None for a leaf every rank holds whole."""
    split = param.split
    if split is None or size == 1:
        return None
    out, base = [], 0
    for n in split.units:
        lo, hi = unit_range(n, rank, size, split.copies)
        out.append((base + lo * split.unit, base + hi * split.unit))
        base += n * split.unit
    return split.axis, tuple(out)


def cut(x, param, rank: int, size: int) -> np.ndarray:
    """Rank ``rank``'s part of the whole leaf ``x`` declared by ``param``, a fresh array."""
    where = ranges(param, rank, size)
    if where is None:
        return np.array(x)
    axis, parts = where
    return np.concatenate([np.take(x, np.arange(lo, hi), axis=axis) for lo, hi in parts], axis=axis)


def join(param, pieces: list) -> np.ndarray:
    """The whole leaf declared by ``param`` from every rank's piece (``pieces[r]``), a fresh
    array; a leaf every rank holds whole is rank 0's (copies too: rank 0's of each)."""
    size = len(pieces)
    per_rank = [ranges(param, r, size) for r in range(size)]
    if per_rank[0] is None:
        return np.array(pieces[0])
    axis = param.split.axis
    x = np.empty(param.shape, np.asarray(pieces[0]).dtype)
    for r, where in enumerate(per_rank):
        at = 0
        for lo, hi in where[1] if where is not None else ():
            src, dst = [slice(None)] * x.ndim, [slice(None)] * x.ndim
            src[axis], dst[axis] = slice(at, at + hi - lo), slice(lo, hi)
            x[tuple(dst)] = pieces[r][tuple(src)]
            at += hi - lo
    return x


def copied_columns(param, rank: int, size: int) -> tuple[tuple[int, int, int], ...]:
    """((lo, hi, copy sets), ...): the ranges of ``rank``'s part (along the split axis) that
    are a copy of units other ranks hold too, each with the number of copy sets (the block's
    units): several ranks hold them, so sums over ranks must count each once."""
    split = param.split
    if split is None or size == 1:
        return ()
    out, at = [], 0
    for n in split.units:
        lo, hi = unit_range(n, rank, size, split.copies)
        width = (hi - lo) * split.unit
        if _copied(n, size, split.copies):
            out.append((at, at + width, n))
        at += width
    return tuple(out)
