"""Forward mode: ``lt.jvp``, Jacobian-vector products by a JVP rule per primitive."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .. import tree
from ..ops.primitive import ArrayMethods
from ..ops.traces import JVPTrace, JVPTracer, shape_of

__all__ = ["jvp", "is_float"]


def is_float(x) -> bool:
    """Whether ``x`` is a floating-point array or scalar, plain or traced (what takes a tangent,
    or a gradient)."""
    dtype = (
        x.dtype
        if isinstance(x, ArrayMethods)
        else np.asarray(x).dtype
        if isinstance(x, (np.ndarray, np.generic, float))
        else None
    )
    return dtype is not None and bool(np.issubdtype(dtype, np.floating))


def _pair(trace: JVPTrace, primal, tangent, where: str):
    """A primal leaf and its tangent as one traced value (the primal alone for a zero tangent)."""
    if tangent is None or not is_float(primal):
        return primal
    if not isinstance(tangent, ArrayMethods):
        tangent = np.asarray(tangent)
    if shape_of(tangent) != shape_of(primal):
        raise ValueError(f"lt.jvp: the tangent of {where} has shape {shape_of(tangent)}, its primal {shape_of(primal)}")
    if tangent.dtype != primal.dtype:
        tangent = tangent.astype(primal.dtype)
    return JVPTracer(primal, tangent, trace)


def _split(trace: JVPTrace, x):
    """An output leaf as ``(primal, tangent)``: zeros where the inputs' tangents do not reach."""
    if type(x) is JVPTracer and x.trace is trace:
        return x.primal, x.tangent
    if is_float(x):
        return x, np.zeros(shape_of(x), x.dtype)
    return x, None


def jvp(fn: Callable, primals: Sequence, tangents: Sequence):
    """``(fn(*primals), J·tangents)``: the output and its directional derivative along
    ``tangents`` (JAX's ``jvp``), one forward pass carrying a tangent beside each value.

    ``tangents`` has one tree per primal, shaped like it (None, or None leaves, for zero
    tangents; integer leaves take none). Returns two trees shaped like ``fn``'s output."""
    primals, tangents = tuple(primals), tuple(tangents)
    if len(primals) != len(tangents):
        raise ValueError(f"lt.jvp: {len(primals)} primals but {len(tangents)} tangents")
    trace = JVPTrace()
    args = []
    for i, (p, t) in enumerate(zip(primals, tangents)):
        if t is None:
            args.append(p)
            continue
        problem = tree.mismatch(tree.map(lambda _: 0, p), tree.map(lambda _: 0, t))
        if problem:
            raise ValueError(f"lt.jvp: tangents[{i}] is not shaped like primals[{i}]: {problem}")
        args.append(tree.map(lambda a, b, i=i: _pair(trace, a, b, f"primals[{i}]"), p, t))
    flat, treedef = tree.flatten(fn(*args))
    split = [_split(trace, x) for x in flat]
    return tree.unflatten(treedef, [s[0] for s in split]), tree.unflatten(treedef, [s[1] for s in split])
