"""``value_and_grad``, ``grad`` and ``hvp`` as the user calls them, under any other transform.

The tape (``reverse``) runs its primitives' VJPs as NumPy code on plain arrays, so a gradient
taken inside another transform is computed by moving that transform, not by differentiating
the VJPs:

- inside ``lt.vmap`` (per-example gradients): the tape goes *under* the batch. Each
  differentiated leaf is batched (a shared one repeated, as a read-only view), the function
  runs once on the whole batch, and the gradient of the members' summed values is each
  member's own gradient, since no member's value depends on another's leaves.
- inside ``lt.jvp`` (``jvp(grad(f))``, a Hessian-vector product): the tangent of
  ``grad f`` along ``t`` is ``grad <grad f, t>`` (mixed partials commute), the gradient of
  ``f``'s JVP: reverse mode over forward mode, which needs only first-order VJPs.
- inside another ``value_and_grad`` (``grad(grad(f))``): the inner call becomes one node on
  the outer tape, whose VJP is again a gradient of a JVP.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import ops, threads, tree
from ..ops.primitive import TRANSFORM_TRACERS, ArrayMethods, Tracer, value_of
from ..ops.traces import BatchTrace, BatchTracer, JVPTrace, JVPTracer, broadcast_front, shape_of, zeros_like
from .batching import unbatch
from .forward import is_float, jvp
from .reverse import ClosedOverTrace, argnums_tuple, gradient_call

__all__ = ["value_and_grad", "grad", "hvp", "gradient_under_transforms"]


def _value(out, has_aux: bool):
    return out[0] if has_aux else out


def _tops(args):
    """The highest-level transform trace among the leaves of ``args``, and any gradient tape."""
    top, tape = None, None
    for x in tree.leaves(list(args)):
        if type(x) in TRANSFORM_TRACERS:
            if top is None or x.trace.level > top.level:
                top = x.trace
        elif type(x) is Tracer:
            tape = x.tape
    return top, tape


def gradient_under_transforms(fn, nums: tuple[int, ...], has_aux: bool, args, kwargs):
    """``(value or (value, aux), tuple of gradient trees)`` of ``fn`` at ``args``, whatever
    traces them: the one entry point of every gradient."""
    top, tape = _tops(args)
    if isinstance(top, BatchTrace):
        return _under_batch(fn, nums, has_aux, args, kwargs, top)
    if isinstance(top, JVPTrace):
        return _under_jvp(fn, nums, has_aux, args, kwargs, top)
    if tape is not None:
        return _on_outer_tape(fn, nums, has_aux, args, kwargs)
    try:
        return gradient_call(fn, nums, has_aux, args, kwargs)
    except ClosedOverTrace as closed:
        if isinstance(closed.trace, BatchTrace):  # per-member gradients of a closure over a batch
            return _under_batch(fn, nums, has_aux, args, kwargs, closed.trace)
        raise NotImplementedError(
            "the function given to lt.value_and_grad reached a value traced by an enclosing lt.jvp "
            "through a closure; pass that value as an argument instead"
        ) from None


def _under_batch(fn, nums, has_aux, args, kwargs, trace: BatchTrace):
    """Per-member gradients under ``lt.vmap``: the gradient of the members' summed values with
    respect to the batched leaves (see the module's docstring)."""
    floats = [tree.map(is_float, args[i]) for i in nums]

    def lift(x):
        if not is_float(x):
            return 0  # a placeholder: the leaf itself reaches fn through `summed`'s closure
        if type(x) is BatchTracer and x.trace is trace:
            return broadcast_front(x.value, x.bdim, trace.size)
        return broadcast_front(x, None, trace.size)

    lifted = [tree.map(lift, args[i]) for i in nums]

    def summed(*batched):
        full = list(args)
        for k, i in enumerate(nums):
            full[i] = tree.map(
                lambda b, orig, f: BatchTracer(b, 0, trace) if f else orig, batched[k], args[i], floats[k]
            )
        out = fn(*full, **kwargs)
        value = unbatch(_value(out, has_aux), trace, 0)  # (members,)
        aux = tree.map(lambda x: unbatch(x, trace, 0), out[1]) if has_aux else None
        return ops.sum(value), (value, aux)

    (_, (value, aux)), grads = gradient_under_transforms(summed, tuple(range(len(nums))), True, lifted, {})

    def member(g, orig, f):
        return BatchTracer(g, 0, trace) if f else np.zeros(shape_of(orig), np.asarray(value_of(orig)).dtype)

    grads = tuple(tree.map(member, g, args[i], f) for g, i, f in zip(grads, nums, floats))
    result: Any = BatchTracer(value, 0, trace)
    if has_aux:
        result = (
            result,
            tree.map(lambda x: BatchTracer(x, 0, trace) if isinstance(x, (np.ndarray, ArrayMethods)) else x, aux),
        )
    return result, grads


def _split_jvp(x, trace: JVPTrace):
    if type(x) is JVPTracer and x.trace is trace:
        return x.primal, x.tangent
    return x, (zeros_like(x) if is_float(x) else x)


def _under_jvp(fn, nums, has_aux, args, kwargs, trace: JVPTrace):
    """The gradient and its tangent under ``lt.jvp``: the tangent of ``grad f`` along ``t`` is
    the gradient of ``f``'s JVP along ``t`` (reverse over forward)."""
    primals = [tree.map(lambda x: _split_jvp(x, trace)[0], a) for a in args]
    tangents = [tree.map(lambda x: _split_jvp(x, trace)[1], a) for a in args]
    out, grads = gradient_under_transforms(fn, nums, has_aux, primals, kwargs)

    def directional(*p):
        return jvp(lambda *b: _value(fn(*b, **kwargs), has_aux), p, tangents)[1]

    t_value, t_grads = gradient_under_transforms(directional, nums, False, primals, {})
    value = trace.wrap(_value(out, has_aux), t_value)
    grads = tuple(
        tree.map(lambda g, tg: trace.wrap(g, tg) if is_float(g) else g, g_i, tg_i) for g_i, tg_i in zip(grads, t_grads)
    )
    return ((value, out[1]) if has_aux else value), grads


def _on_outer_tape(fn, nums, has_aux, args, kwargs):
    """A gradient of traced values (``grad(grad(f))``): computed on their plain values, and
    recorded on the outer tape as one node whose VJP, for cotangents ``(c_v, c_g)`` of the value
    and the gradient, is the gradient of ``c_v f + <grad f, c_g>`` (a gradient of a JVP)."""
    raw = [tree.map(value_of, a) for a in args]
    out, grads = gradient_call(fn, nums, has_aux, raw, kwargs)
    value = _value(out, has_aux)
    flat_g, g_def = tree.flatten(list(grads))
    plain_g = list(flat_g)  # kept for the VJP (flat_g gets the traced outputs below)
    outputs = [k for k, g in enumerate(flat_g) if is_float(g)]
    inputs = [(i, p) for i, a in enumerate(args) for p, x in enumerate(tree.leaves(a)) if type(x) is Tracer]
    positions = sorted({i for i, _ in inputs})
    tape = next(x.tape for a in args for x in tree.leaves(a) if type(x) is Tracer)

    def node_vjp(gs):
        c_value, c_grads = gs[0], list(gs[1:])
        filled = [np.zeros(np.shape(g), np.asarray(g).dtype) for g in plain_g]
        for k, c in zip(outputs, c_grads):
            filled[k] = c
        c_trees = tree.unflatten(g_def, filled)
        tangents = [None] * len(raw)
        for i, c in zip(nums, c_trees):
            tangents[i] = c

        def contracted(*sel):
            full = list(raw)
            for k, i in enumerate(positions):
                full[i] = sel[k]
            v, t = jvp(lambda *b: _value(fn(*b, **kwargs), has_aux), full, tangents)
            return ops.add(ops.mul(v, c_value), t)

        _, g_sel = gradient_call(contracted, tuple(range(len(positions))), False, [raw[i] for i in positions], {})
        leaves = {i: tree.leaves(g_sel[k]) for k, i in enumerate(positions)}
        return tuple(leaves[i][p] for i, p in inputs)

    traced_inputs = [tree.leaves(args[i])[p] for i, p in inputs]
    traced = tape.record_call(node_vjp, traced_inputs, [np.asarray(value)] + [flat_g[k] for k in outputs])
    for k, t in zip(outputs, traced[1:]):
        flat_g[k] = t
    grads = tuple(tree.unflatten(g_def, flat_g))
    return ((traced[0], out[1]) if has_aux else traced[0]), grads


def value_and_grad(fn: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False) -> Callable:
    """A function returning ``(fn(...), gradient of fn)`` with respect to ``argnums``.

    ``fn`` must return a scalar (or ``(scalar, aux)`` with ``has_aux``). The gradient is a
    tree shaped like the argument (a tuple of trees when ``argnums`` is a sequence), frozen.
    Works inside ``lt.vmap`` (per-example gradients), ``lt.jvp`` and another gradient.
    """

    @functools.wraps(fn)
    @threads.adaptive  # BLAS threads: the free cores, decided per call
    def wrapped(*args, **kwargs):
        nums = argnums_tuple(argnums, len(args))
        out, grads = gradient_under_transforms(fn, nums, has_aux, args, kwargs)
        return out, (grads[0] if isinstance(argnums, int) else grads)

    return wrapped


def grad(fn: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False) -> Callable:
    """The gradient of scalar ``fn`` with respect to ``argnums`` (JAX's ``grad``)."""
    vg = value_and_grad(fn, argnums, has_aux)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        value, g = vg(*args, **kwargs)
        return (g, value[1]) if has_aux else g

    return wrapped


def hvp(fn: Callable, x, v):
    """``H v``: the Hessian of scalar ``fn`` at ``x`` times ``v`` (both trees shaped like ``x``).

    Reverse mode over forward mode: the gradient of ``x -> <grad fn(x), v>``, that directional
    derivative computed by :func:`lt.jvp`. It needs only first-order VJPs and the JVP rules
    (the VJPs are NumPy code, not themselves differentiable), and costs about two gradient
    evaluations: one forward pass carrying tangents, one backward pass through it."""
    return grad(lambda p: jvp(fn, (p,), (v,))[1])(x)
