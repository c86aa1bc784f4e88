"""What makes an operation differentiable: a forward, its VJP, and a tape that records them.

Outside ``lt.value_and_grad`` a primitive is its forward on plain NumPy arrays and
nothing more. Inside, the function's inputs are :class:`Tracer` values; a primitive
that sees one computes the same forward on the underlying arrays and appends a node
(its VJP and what that VJP needs) to the tracer's :class:`Tape`. ``lt.autodiff`` walks
the tape backwards.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

__all__ = ["Tracer", "Tape", "Primitive", "primitive", "value_of"]


class Tracer:
    """An array recorded on a tape. Supports shape queries and arithmetic through lt.ops.

    NumPy ufuncs that lt has a primitive for (add, multiply, exp, ...) dispatch to it; other
    NumPy functions refuse it (they would silently drop the gradient): use :mod:`lt.ops`,
    or ``float(t)`` for a value that needs no gradient.
    """

    __slots__ = ("value", "tape", "id")
    __array_priority__ = 1000
    ufuncs: dict = {}               # NumPy ufunc -> lt primitive, filled in by lt.ops.basic

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """``ndarray + tracer``, ``np.exp(tracer)``, ...: the lt primitive, where there is one."""
        op = self.ufuncs.get(ufunc)
        if op is None or method != "__call__" or kwargs:
            raise TypeError(f"np.{ufunc.__name__} on a traced value inside lt.value_and_grad has no "
                            "gradient; use the operations in lt.ops")
        return op(*inputs)

    def __init__(self, value: np.ndarray, tape: "Tape", id_: int):
        self.value, self.tape, self.id = value, tape, id_

    shape = property(lambda self: self.value.shape)
    dtype = property(lambda self: self.value.dtype)
    ndim = property(lambda self: self.value.ndim)
    size = property(lambda self: self.value.size)

    def __len__(self) -> int:
        return len(self.value)

    def __float__(self) -> float:
        return float(self.value)

    def __repr__(self) -> str:
        return f"Tracer(shape={self.shape}, dtype={self.dtype})"

    def __array__(self, *args, **kwargs):
        raise TypeError("a traced value reached a NumPy function inside lt.value_and_grad; "
                        "use the operations in lt.ops (or float(x) for a value without gradient)")


def value_of(x):
    """The plain array behind ``x`` (``x`` itself when it is not traced)."""
    return x.value if type(x) is Tracer else x


class _Node:
    __slots__ = ("prim", "inputs", "residual", "outputs", "out_meta")

    def __init__(self, prim, inputs, residual, outputs, out_meta):
        self.prim, self.inputs, self.residual = prim, inputs, residual
        self.outputs, self.out_meta = outputs, out_meta


class Tape:
    """The record of one differentiated call: nodes in the order they ran."""

    def __init__(self):
        self.nodes: list[_Node] = []
        self._count = 0

    def new(self, value) -> Tracer:
        """A fresh traced value (an input of the differentiated function, or an output)."""
        self._count += 1
        return Tracer(value, self, self._count)

    def record(self, prim: "Primitive", args: tuple, residual, out):
        inputs = tuple(a.id if type(a) is Tracer else None for a in args)
        if isinstance(out, tuple):
            traced = tuple(self.new(o) for o in out)
            meta = tuple((o.shape, o.dtype) for o in out)
            self.nodes.append(_Node(prim, inputs, residual, tuple(t.id for t in traced), meta))
            return traced
        traced = self.new(out)
        self.nodes.append(_Node(prim, inputs, residual, (traced.id,), None))
        return traced


def _tape_of(args) -> Tape | None:
    tape = None
    for a in args:
        if type(a) is Tracer:
            if tape is None:
                tape = a.tape
            elif a.tape is not tape:
                raise NotImplementedError("nested lt.value_and_grad is not supported")
    return tape


class Primitive:
    """A differentiable operation.

    ``forward(*args, **options) -> (out, residual)`` runs on plain arrays; ``out`` may be a
    tuple for several outputs. ``vjp(residual, g) -> cotangents``, one per positional
    argument (``None`` where there is none), with ``g`` a tuple when ``out`` is. The VJP
    must not modify ``g`` or the residual in place.
    """

    def __init__(self, forward: Callable):
        self.forward = forward
        self.vjp: Callable | None = None
        functools.update_wrapper(self, forward)

    def defvjp(self, vjp: Callable) -> Callable:
        """Decorator: register the VJP written under the forward."""
        self.vjp = vjp
        return vjp

    def __call__(self, *args, **options) -> Any:
        tape = _tape_of(args)
        if tape is None:
            return self.forward(*args, **options)[0]
        values = tuple(a.value if type(a) is Tracer else a for a in args)
        out, residual = self.forward(*values, **options)
        return tape.record(self, args, residual, out)

    def __repr__(self) -> str:
        return f"<lt primitive {self.__name__}>"


def primitive(forward: Callable) -> Primitive:
    """Decorator: turn ``forward(*args) -> (out, residual)`` into a :class:`Primitive`."""
    return Primitive(forward)
