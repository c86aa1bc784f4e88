"""``lt.vmap``: a function of one member turned into a function of a batch, by a batching rule
per primitive (a batched matmul is one matmul over the whole batch, never a Python loop).

``in_axes`` says, per positional argument, which axis of each array leaf holds the batch
(None: the leaf is shared by every member); ``out_axes`` where the batch goes in the outputs.
Each is an int or None for everything, or a tuple with one entry per argument (per output
when the function returns a tuple), each entry an int, None, or a tree of them shaped like
that argument.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import numpy as np

from .. import tree
from ..ops.primitive import ArrayMethods
from ..ops.traces import BatchTrace, BatchTracer, broadcast_front, move_axis, shape_of
from ..random import Key

__all__ = ["vmap", "axes_like", "unbatch", "UNBATCHED"]


def _is_array(x) -> bool:
    return isinstance(x, (np.ndarray, np.generic, ArrayMethods))


class _Unbatched:
    """The axis of a leaf that is not batched (None in ``in_axes``; a leaf, unlike None in lt.tree)."""

    def __repr__(self) -> str:
        return "None"


UNBATCHED = _Unbatched()


def _axes_tree(ax, arg, where: str):
    """``ax`` (an int, None, or a tree prefix of ``arg`` with such leaves) as a tree shaped like
    ``arg`` with one axis (or UNBATCHED) per leaf."""
    if ax is None or isinstance(ax, int):
        leaf_ax = UNBATCHED if ax is None else ax
        return tree.map(lambda _: leaf_ax, arg)
    if isinstance(ax, Mapping):
        if not isinstance(arg, Mapping) or set(ax) != set(arg):
            raise ValueError(f"lt.vmap: {where} is a mapping whose keys do not match its value's")
        return {k: _axes_tree(ax[k], arg[k], f"{where}[{k!r}]") for k in arg}
    if isinstance(ax, (tuple, list)):
        if not isinstance(arg, (tuple, list)) or len(ax) != len(arg):
            raise ValueError(f"lt.vmap: {where} has {len(ax)} entries for a value that does not have as many")
        built = [_axes_tree(a, x, f"{where}[{i}]") for i, (a, x) in enumerate(zip(ax, arg))]
        return type(arg)(*built) if hasattr(arg, "_fields") else tuple(built)
    raise TypeError(f"lt.vmap: {where} must be an int, None or a tree of them, got {type(ax).__name__}")


def axes_like(axes, args: tuple, what: str) -> list:
    """``axes`` (int, None, or one entry per item of ``args``, each an int, None or a tree
    prefix of its item) as one tree of axes per item, shaped like it."""
    if axes is None or isinstance(axes, int):
        per = [axes] * len(args)
    else:
        per = list(axes)
        if len(per) != len(args):
            raise ValueError(f"lt.vmap: {what} has {len(per)} entries for {len(args)} values")
    return [_axes_tree(ax, arg, f"{what}[{i}]") for i, (ax, arg) in enumerate(zip(per, args))]


def _batch_size(args: tuple, axes: list) -> int:
    sizes = {}
    for i, (arg, ax) in enumerate(zip(args, axes)):
        for (path, leaf), (_, a) in zip(tree.items(arg), tree.items(ax)):
            if a is UNBATCHED:
                continue
            name = f"argument {i}" + (f" leaf {path}" if path else "")
            if isinstance(leaf, Key):
                raise TypeError(
                    f"lt.vmap: {name} is one random key; batch keys as lt.random.stack(keys), or give it in_axes None"
                )
            if not _is_array(leaf):
                raise TypeError(f"lt.vmap: {name} ({type(leaf).__name__}) is not an array; give it in_axes None")
            shape = shape_of(leaf)
            if not -len(shape) <= a < len(shape):
                raise ValueError(f"lt.vmap: {name} of shape {shape} has no axis {a}")
            sizes[name] = shape[a]
    if not sizes:
        raise ValueError("lt.vmap: no argument is batched (every in_axes is None)")
    if len(set(sizes.values())) > 1:
        raise ValueError("lt.vmap: batched axes differ in size: " + ", ".join(f"{k}: {v}" for k, v in sizes.items()))
    return next(iter(sizes.values()))


def unbatch(x, trace: BatchTrace, axis: int | None):
    """An output leaf of the batched function as a plain value with its batch at ``axis``: a
    member's value repeated when the batch did not reach it."""
    axis = None if axis is UNBATCHED else axis
    if type(x) is BatchTracer and x.trace is trace:
        if axis is None:
            raise ValueError("lt.vmap: an output with out_axes None depends on the batch")
        return move_axis(x.value, x.bdim, axis % (x.ndim + 1))
    if axis is None or not _is_array(x):
        return x
    front = broadcast_front(x, None, trace.size)
    if isinstance(front, np.ndarray):
        front = np.ascontiguousarray(front)
    return move_axis(front, 0, axis % (len(shape_of(front))))


def vmap(fn: Callable, in_axes=0, out_axes=0) -> Callable:
    """``fn`` mapped over a batch axis of its arguments (JAX's ``vmap``): ``vmap(f)(xs)``
    equals ``stack([f(x) for x in xs])``, computed as one batched call.

    Composes with ``lt.value_and_grad`` both ways (``vmap(grad(loss), in_axes=(None, 0, 0))``
    gives per-example gradients), with ``lt.jvp`` and with itself. Random keys are batched as
    ``lt.random.stack(keys)``: each member then draws from its own key (``fold_in``, ``split``,
    dropout), as it would alone."""

    @functools.wraps(fn)
    def batched(*args):
        axes = axes_like(in_axes, args, "in_axes")
        size = _batch_size(args, axes)
        trace = BatchTrace(size)

        def wrap(leaf, ax):
            if ax is UNBATCHED:
                return leaf
            return BatchTracer(leaf, ax % len(shape_of(leaf)), trace)

        out = fn(*(tree.map(wrap, arg, ax) for arg, ax in zip(args, axes)))
        if isinstance(out_axes, (tuple, list)):
            if not isinstance(out, tuple):
                raise ValueError("lt.vmap: out_axes is a sequence but the function returned one value")
            outs = axes_like(out_axes, out, "out_axes")
            return tuple(tree.map(lambda x, a: unbatch(x, trace, a), o, ax) for o, ax in zip(out, outs))
        return tree.map(lambda x: unbatch(x, trace, out_axes), out)

    return batched
