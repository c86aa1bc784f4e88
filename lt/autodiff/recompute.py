"""``lt.remat`` (JAX's ``checkpoint``): keep a function's inputs, not its activations, and
recompute them when the backward pass reaches it.

Under a gradient, the call becomes one node of the tape: the forward runs on plain arrays
(nothing recorded, its activations freed as it goes), and the node's VJP runs the function
again on a fresh tape and walks that back. The recomputation repeats the same operations on
the same inputs (random keys included), so the gradients are bit for bit those without remat.
Under ``lt.vmap`` the batch stays around the node (one batched recomputation); under
``lt.jvp``, which keeps nothing for a backward pass, the function simply runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from .. import tree
from ..ops.primitive import Tape, Tracer
from ..ops.traces import BatchTracer, JVPTracer
from .reverse import backward

__all__ = ["remat"]


def _peel(x):
    """``(chain, bottom)``: the lt.vmap tracers wrapped around ``x`` (outermost first) and the
    value inside them."""
    chain = []
    while type(x) is BatchTracer:
        chain.append((x.bdim, x.trace))
        x = x.value
    return chain, x


def _wrap(chain, bottom):
    for bdim, trace in reversed(chain):
        bottom = BatchTracer(bottom, bdim, trace)
    return bottom


def remat(fn: Callable) -> Callable:
    """``fn`` whose activations are recomputed in the backward pass instead of kept (less
    memory for one more forward pass). Same values, same gradients (bit for bit). Traced
    values must reach ``fn`` as arguments, not through a closure."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        leaves, treedef = tree.flatten((list(args), dict(kwargs)))
        peeled = [_peel(x) for x in leaves]
        inputs = [k for k, (_, b) in enumerate(peeled) if type(b) is Tracer]
        if not inputs or any(type(b) is JVPTracer for _, b in peeled):
            return fn(*args, **kwargs)
        tapes = {peeled[k][1].tape for k in inputs}
        if len(tapes) > 1:
            raise NotImplementedError("lt.remat: arguments traced by two different gradients")
        tape = tapes.pop()

        def run(bottoms: dict):
            """``fn`` on the inputs with their bottoms replaced; its output's leaves peeled."""
            call = [_wrap(c, bottoms[k]) if k in bottoms else x for k, ((c, _), x) in enumerate(zip(peeled, leaves))]
            call_args, call_kwargs = tree.unflatten(treedef, call)
            out = fn(*call_args, **call_kwargs)
            flat, out_def = tree.flatten(out)
            return [_peel(x) for x in flat], out_def

        outs, out_def = run({k: peeled[k][1].value for k in inputs})
        recorded = [
            j for j, (_, b) in enumerate(outs) if isinstance(b, np.ndarray) and np.issubdtype(b.dtype, np.floating)
        ]

        def node_vjp(gs):
            fresh = Tape()
            bottoms = {k: fresh.new(peeled[k][1].value) for k in inputs}
            again, _ = run(bottoms)
            seeds = {}
            for j, g in zip(recorded, gs):
                b = again[j][1]
                if type(b) is Tracer and b.tape is fresh:
                    seeds[b.id] = g
            cts = backward(fresh, seeds)
            return tuple(cts.get(bottoms[k].id) for k in inputs)

        traced = tape.record_call(node_vjp, [peeled[k][1] for k in inputs], [outs[j][1] for j in recorded])
        flat = [_wrap(c, b) for c, b in outs]
        for j, t in zip(recorded, traced):
            flat[j] = _wrap(outs[j][0], t)
        return tree.unflatten(out_def, flat)

    return wrapped
