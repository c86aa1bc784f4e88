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

__all__ = ["ArrayMethods", "Tracer", "Tape", "Primitive", "primitive", "value_of", "registry", "TRANSFORM_TRACERS"]


_registry: dict[str, Primitive] = {}  # every primitive by "module.name", filled as they are defined

# The tracer types of lt.vmap and lt.jvp (``lt.ops.traces``), registered there: a primitive that
# sees one hands the call to that tracer's trace (the one of the highest level among its arguments).
TRANSFORM_TRACERS: set[type] = set()


def registry() -> dict[str, Primitive]:
    """Every primitive defined so far, by ``"module.name"`` (a copy)."""
    return dict(_registry)


def _op(name: str) -> Primitive:
    """The primitive ``name`` of :mod:`lt.ops.basic`, looked up when called: those primitives are
    built on this module, so they exist only after this class does."""
    return _registry["lt.ops.basic." + name]


class ArrayMethods:
    """The array interface model code writes (arithmetic, ``@``, indexing, reshape, sum, ...),
    each one primitive of lt.ops: shared by every traced value (:class:`Tracer` for gradients,
    and the tracers of ``lt.vmap`` and ``lt.jvp``)."""

    __slots__ = ()
    __array_priority__ = 1000
    shape: Any  # each tracer type gives these (one member's shape under lt.vmap)
    dtype: Any
    ndim: Any
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

    def __len__(self) -> int:
        return self.shape[0]

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """``ndarray + tracer``, ``np.exp(tracer)``, ...: the lt primitive, where there is one."""
        name = self._ufuncs.get(ufunc)
        if name is None or method != "__call__" or kwargs:
            return self.other_ufunc(ufunc, method, inputs, kwargs)
        return _op(name)(*inputs)

    def other_ufunc(self, ufunc, method, inputs, kwargs):
        """A NumPy ufunc without an lt primitive: refused (it would drop the derivative)."""
        raise TypeError(f"np.{ufunc.__name__} on a traced value has no derivative rule; use the operations in lt.ops")

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


class Tracer(ArrayMethods):
    """An array recorded on a tape (inside ``lt.value_and_grad``).

    NumPy ufuncs that lt has a primitive for (add, multiply, exp, ...) dispatch to it; other
    NumPy functions refuse it (they would silently drop the gradient): use :mod:`lt.ops`,
    or ``float(t)`` for a value that needs no gradient.
    """

    __slots__ = ("value", "tape", "id")

    def __init__(self, value: np.ndarray, tape: Tape, id_: int):
        self.value, self.tape, self.id = value, tape, id_

    shape = property(lambda self: self.value.shape)
    dtype = property(lambda self: self.value.dtype)
    ndim = property(lambda self: self.value.ndim)
    size = property(lambda self: self.value.size)

    def __float__(self) -> float:
        return float(self.value)

    def __repr__(self) -> str:
        return f"Tracer(shape={self.shape}, dtype={self.dtype})"

    def __array__(self, *args, **kwargs):
        raise TypeError(
            "a traced value reached a NumPy function inside lt.value_and_grad; "
            "use the operations in lt.ops (or float(x) for a value without gradient)"
        )

    def other_ufunc(self, ufunc, method, inputs, kwargs):
        raise TypeError(
            f"np.{ufunc.__name__} on a traced value inside lt.value_and_grad has no "
            "gradient; use the operations in lt.ops"
        )


def value_of(x):
    """The plain array behind ``x`` (``x`` itself when it is not traced)."""
    return x.value if type(x) is Tracer else x


class _Node:
    __slots__ = ("prim", "inputs", "residual", "outputs", "out_meta")

    def __init__(self, prim, inputs, residual, outputs, out_meta):
        self.prim, self.inputs, self.residual = prim, inputs, residual
        self.outputs, self.out_meta = outputs, out_meta


class _Call:
    """A recorded call's stand-in for a primitive: its VJP ignores the (empty) residual."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable):
        self.fn = fn

    def vjp(self, residual, gs):
        return self.fn(gs)


class Tape:
    """The record of one differentiated call: nodes in the order they ran."""

    def __init__(self):
        self.nodes: list[_Node] = []
        self._count = 0

    def new(self, value) -> Tracer:
        """A fresh traced value (an input of the differentiated function, or an output)."""
        self._count += 1
        return Tracer(value, self, self._count)

    def record_call(self, vjp: Callable, inputs: list[Tracer], outputs: list[np.ndarray]) -> list[Tracer]:
        """Record a whole call as one node (``lt.remat``, a gradient inside a gradient): its
        ``inputs`` (tracers on this tape) gave ``outputs`` (plain arrays, returned traced);
        ``vjp(gs) -> cotangents`` maps a tuple of output cotangents to one per input."""
        outs = [self.new(o) for o in outputs]
        meta = tuple((o.shape, o.dtype) for o in outputs)
        call = _Call(vjp)
        self.nodes.append(_Node(call, tuple(t.id for t in inputs), None, tuple(t.id for t in outs), meta))
        return outs

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
                raise NotImplementedError(
                    "values traced by two different lt.value_and_grad calls met in one operation: an "
                    "inner gradient reached an outer one's traced value through a closure; pass that "
                    "value to the inner function as an argument instead"
                )
    return tape


def _top_trace(args):
    """The trace of highest level among the lt.vmap / lt.jvp tracers in ``args`` (None if none)."""
    top = None
    for a in args:
        if type(a) in TRANSFORM_TRACERS and (top is None or a.trace.level > top.level):
            top = a.trace
    return top


class Primitive:
    """A differentiable operation.

    ``forward(*args, **options) -> (out, residual)`` runs on plain arrays; ``out`` may be a
    tuple for several outputs. ``vjp(residual, g) -> cotangents``, one per positional
    argument (``None`` where there is none), with ``g`` a tuple when ``out`` is. The VJP
    must not modify ``g`` in place. It runs once per recorded call (the tape drops the residual
    after it), so it may write its result into a buffer of the residual the forward made itself
    (cross-entropy's softmax becomes the logits' gradient), never into one it was given.

    The other transforms need two more rules, each written with lt.ops primitives so that it
    composes with every transform (``lt.ops.traces`` has the helpers):

    - ``batch(args, dims, **options) -> (out, out_dim)`` (``lt.vmap``): ``dims[i]`` is the
      axis of ``args[i]`` that is batched, or None; ``out_dim`` the batched axis of ``out``
      (a tuple of them for several outputs; None for an output the batch does not reach).
    - ``jvp(primals, tangents, **options) -> (out, out_tangent)`` (``lt.jvp``): ``tangents[i]``
      is None where the tangent is zero (or the argument is not differentiable); so may the
      output tangent be.
    """

    __name__: str  # the forward's, set by functools.update_wrapper

    def __init__(self, forward: Callable):
        self.forward = forward
        self.vjp: Callable | None = None
        self.batch: Callable | None = None
        self.jvp: Callable | None = None
        functools.update_wrapper(self, forward)
        _registry[f"{forward.__module__}.{forward.__name__}"] = self

    def defvjp(self, vjp: Callable) -> Callable:
        """Decorator: register the VJP written under the forward."""
        self.vjp = vjp
        return vjp

    def defbatch(self, rule: Callable) -> Callable:
        """Decorator: register the batching rule (``lt.vmap``)."""
        self.batch = rule
        return rule

    def defjvp(self, rule: Callable) -> Callable:
        """Decorator: register the forward-mode rule (``lt.jvp``)."""
        self.jvp = rule
        return rule

    def __call__(self, *args, **options) -> Any:
        traced = False
        for a in args:
            kind = type(a)
            if kind in TRANSFORM_TRACERS:
                return _top_trace(args).process(self, args, options)
            traced = traced or kind is Tracer
        tape = _tape_of(args) if traced else None
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
