"""Reverse-mode differentiation over lt's primitives, on plain arrays: the tape walk behind
``value_and_grad`` and ``grad`` (``lt.autodiff.gradients``), and ``vjp``.

The differentiated arguments' floating-point leaves become tracers on a fresh tape; the
function runs once, recording each primitive; the tape is then walked backwards, each
node's VJP turning its outputs' cotangents into its inputs'. Integer and boolean leaves
(token ids, masks) and everything else (keys, configs) pass through untraced; their
gradient is zeros of their own shape and dtype, so a gradient tree always has the
structure of its argument.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import tree
from ..ops.primitive import TRANSFORM_TRACERS, Tape, Tracer, value_of
from ..quant import QuantizedArray

__all__ = ["gradient_call", "argnums_tuple", "ClosedOverTrace", "vjp", "is_float_array", "backward"]


def is_float_array(x) -> bool:
    return isinstance(x, (np.ndarray, np.floating, float)) and np.issubdtype(np.asarray(x).dtype, np.floating)


def _trace(tape: Tape, arg):
    """``arg`` with every floating-point leaf replaced by a tracer on ``tape``.

    A quantized leaf (``lt.quant``) is refused: it is inference-only. Differentiate the
    dequantized tree, or pass the quantized one as an argument outside ``argnums``, where
    the primitives treat it as a constant (gradients flow to their other inputs)."""

    def trace(x):
        if type(x) is QuantizedArray:
            raise _QuantizedLeaf
        return tape.new(np.asarray(x)) if is_float_array(x) else x

    try:
        return tree.map(trace, arg)
    except _QuantizedLeaf:
        path, x = next((p, x) for p, x in tree.items(arg) if type(x) is QuantizedArray)
        raise TypeError(
            f"cannot differentiate with respect to the quantized leaf {path or '<root>'} "
            f"(int{x.bits}): quantized weights are inference-only; differentiate "
            "lt.dequantize(params), or pass the quantized tree outside argnums (a constant)"
        ) from None


class _QuantizedLeaf(Exception):
    """Raised inside :func:`_trace`'s walk at a quantized leaf; reported with its path."""


def backward(tape: Tape, seeds: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Cotangents of every traced value, from the cotangents of the outputs in ``seeds``."""
    cts = dict(seeds)
    owned: set[int] = set()  # ids whose cotangent is a sum made here: added to in place
    for node in reversed(tape.nodes):
        gs = [cts.pop(i, None) for i in node.outputs]
        owned.difference_update(node.outputs)
        if all(g is None for g in gs):
            continue
        g: np.ndarray | tuple[np.ndarray, ...] | None
        if node.out_meta is None:
            g = gs[0]
        else:
            g = tuple(np.zeros(s, d) if x is None else x for x, (s, d) in zip(gs, node.out_meta))
        in_cts = node.prim.vjp(node.residual, g)
        node.residual = None  # free activations as we go
        for i, ct in zip(node.inputs, in_cts):
            if i is None or ct is None:
                continue
            if i not in cts:
                cts[i] = ct
            elif i in owned and cts[i].shape == np.shape(ct) and cts[i].dtype == np.result_type(cts[i], ct):
                cts[i] += ct
            else:
                cts[i] = cts[i] + ct
                owned.add(i)
    return cts


def _untrace(x):
    return tree.map(value_of, x)


def _gradient_tree(traced_arg, original_arg, cts: dict):
    def leaf_grad(t, x):
        if type(t) is Tracer:
            g = cts.get(t.id)
            if g is None:
                return np.zeros(t.shape, t.dtype)
            g = np.ascontiguousarray(g, dtype=t.dtype)
            return g if g.shape == t.shape else g.reshape(t.shape)  # no needless view: a view of a
            # writeable array is copied to seal it
        return np.zeros(np.shape(x), np.asarray(x).dtype) if isinstance(x, (np.ndarray, np.generic)) else x

    return tree.map(leaf_grad, traced_arg, original_arg)


class ClosedOverTrace(Exception):
    """The differentiated function's value came out traced by an enclosing ``lt.vmap`` or
    ``lt.jvp`` it reached through a closure; the caller redoes the gradient under that trace."""

    def __init__(self, trace):
        super().__init__("closed-over trace")
        self.trace = trace


def argnums_tuple(argnums, n_args: int) -> tuple[int, ...]:
    """``argnums`` (an int or a sequence) as non-negative positions, each checked."""
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for i in nums:
        if not -n_args <= i < n_args:
            raise ValueError(f"argnums {i} is out of range for a call with {n_args} positional arguments")
    return tuple(i % n_args for i in nums)


def gradient_call(fn, nums: tuple[int, ...], has_aux: bool, args, kwargs):
    """One reverse-mode gradient over plain arrays: trace the arguments at ``nums``, run ``fn``,
    walk the tape back. Returns ``(value or (value, aux), tuple of gradient trees)``."""
    tape = Tape()
    traced = list(args)
    for i in nums:
        traced[i] = _trace(tape, args[i])
    out = fn(*traced, **kwargs)
    value, aux = out if has_aux else (out, None)
    if type(value) in TRANSFORM_TRACERS:
        raise ClosedOverTrace(value.trace)
    if np.ndim(value_of(value)) != 0:
        raise TypeError(f"value_and_grad needs a function with a scalar output, got shape {np.shape(value_of(value))}")
    seeds = {value.id: np.ones((), value.dtype)} if type(value) is Tracer else {}
    cts = backward(tape, seeds)
    grads = tuple(_gradient_tree(traced[i], args[i], cts) for i in nums)
    result: Any = np.asarray(value_of(value))
    if has_aux:
        result = (result, _untrace(aux))
    return result, grads


def vjp(fn: Callable, *primals):
    """``(fn(*primals), pullback)``: ``pullback(cotangent)`` gives one cotangent per primal.

    ``fn`` returns one array; the tape is kept until the pullback runs (once).
    """
    tape = Tape()
    traced = [_trace(tape, p) for p in primals]
    out = fn(*traced)
    value = np.asarray(value_of(out))

    def pullback(cotangent):
        cotangent = np.asarray(cotangent, dtype=value.dtype)
        if cotangent.shape != value.shape:
            raise ValueError(f"cotangent shape {cotangent.shape} != output shape {value.shape}")
        cts = backward(tape, {out.id: cotangent} if type(out) is Tracer else {})
        return tuple(_gradient_tree(t, p, cts) for t, p in zip(traced, primals))

    return value, pullback
