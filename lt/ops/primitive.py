"""What makes an operation differentiable: a forward, its VJP, and a tape that records them.

Outside ``lt.value_and_grad`` a primitive is its forward on plain NumPy arrays and
nothing more. Inside, the function's inputs are :class:`Tracer` values; a primitive
that sees one computes the same forward on the underlying arrays and appends a node
(its VJP and what that VJP needs) to the tracer's :class:`Tape`. ``lt.autodiff`` walks
the tape backwards.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

__all__ = ["Tracer", "Tape", "Primitive", "primitive", "value_of"]


_registry: dict[str, Primitive] = {}  # every primitive by "module.name", filled as they are defined


def _op(name: str) -> Primitive:
    """The primitive ``name`` of :mod:`lt.ops.basic`, looked up when called: those primitives are
    built on this module, so they exist only after this class does."""
    return _registry["lt.ops.basic." + name]


class Tracer:
    """An array recorded on a tape. Supports shape queries and arithmetic through lt.ops.

    NumPy ufuncs that lt has a primitive for (add, multiply, exp, ...) dispatch to it; other
    NumPy functions refuse it (they would silently drop the gradient): use :mod:`lt.ops`,
    or ``float(t)`` for a value that needs no gradient.
    """

    __slots__ = ("value", "tape", "id")
    __array_priority__ = 1000
    _ufuncs: ClassVar[dict] = {
        np.add: "add",
        np.subtract: "sub",
        np.multiply: "mul",
        np.true_divide: "div",
        np.negative: "neg",
        np.exp: "exp",
        np.log: "log",
        np.tanh: "tanh",
        np.matmul: "matmul",
    }

    def __init__(self, value: np.ndarray, tape: Tape, id_: int):
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
        raise TypeError(
            "a traced value reached a NumPy function inside lt.value_and_grad; "
            "use the operations in lt.ops (or float(x) for a value without gradient)"
        )

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """``ndarray + tracer``, ``np.exp(tracer)``, ...: the lt primitive, where there is one."""
        name = self._ufuncs.get(ufunc)
        if name is None or method != "__call__" or kwargs:
            raise TypeError(
                f"np.{ufunc.__name__} on a traced value inside lt.value_and_grad has no "
                "gradient; use the operations in lt.ops"
            )
        return _op(name)(*inputs)

    # The arithmetic and methods model code writes, each one primitive of lt.ops.
    def __add__(self, other):
        return _op("add")(self, other)

    def __radd__(self, other):
        return _op("add")(other, self)

    def __sub__(self, other):
        return _op("sub")(self, other)

    def __rsub__(self, other):
        return _op("sub")(other, self)

    def __mul__(self, other):
        return _op("mul")(self, other)

    def __rmul__(self, other):
        return _op("mul")(other, self)

    def __truediv__(self, other):
        return _op("div")(self, other)

    def __rtruediv__(self, other):
        return _op("div")(other, self)

    def __neg__(self):
        return _op("neg")(self)

    def __matmul__(self, other):
        return _op("matmul")(self, other)

    def __rmatmul__(self, other):
        return _op("matmul")(other, self)

    def __getitem__(self, idx):
        return _op("index")(self, idx)

    def reshape(self, *shape):
        return _op("reshape")(self, shape[0] if len(shape) == 1 else shape)

    def transpose(self, *axes):
        return _op("transpose")(self, (axes[0] if len(axes) == 1 else axes) or None)

    T = property(lambda self: _op("transpose")(self))

    def sum(self, axis=None, keepdims=False):
        return _op("sum")(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        return _op("mean")(self, axis, keepdims)

    def astype(self, dtype):
        return _op("astype")(self, dtype)


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

    def record(self, prim: Primitive, args: tuple, residual, out):
        inputs = tuple(a.id if type(a) is Tracer else None for a in args)
        if isinstance(out, tuple):
            outs = tuple(self.new(o) for o in out)
            meta = tuple((o.shape, o.dtype) for o in out)
            self.nodes.append(_Node(prim, inputs, residual, tuple(t.id for t in outs), meta))
            return outs
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

    __name__: str  # the forward's, set by functools.update_wrapper

    def __init__(self, forward: Callable):
        self.forward = forward
        self.vjp: Callable | None = None
        functools.update_wrapper(self, forward)
        _registry[f"{forward.__module__}.{forward.__name__}"] = self

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
