"""The tracers of ``lt.vmap`` and ``lt.jvp``, and the helpers their per-primitive rules use.

A transform call opens a *trace* with a level higher than every trace open before it. Its
tracers wrap a value of any lower level (a plain array, a gradient :class:`Tracer`, another
transform's tracer). A primitive that sees transform tracers hands the call to the trace of
the highest level (``trace.process``), which applies the primitive's rule: the rule calls
primitives again on the unwrapped values, so each lower level then does its own part. That is
why every rule is written with lt.ops primitives, never with NumPy on the values.

- :class:`BatchTracer` (``lt.vmap``): ``value`` holds the whole batch along axis ``bdim``;
  ``shape`` is one member's.
- :class:`JVPTracer` (``lt.jvp``): a ``primal`` and its ``tangent`` (same shape and dtype).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .primitive import TRANSFORM_TRACERS, ArrayMethods, Primitive, registry

__all__ = [
    "BatchTrace",
    "BatchTracer",
    "JVPTrace",
    "JVPTracer",
    "move_axis",
    "to_front",
    "batch_size",
    "broadcast_front",
    "align_front",
    "elementwise_batch",
    "leading_batch",
    "add_tangents",
    "zeros_like",
    "missing_rules",
]

_levels = itertools.count(1)


def _basic(name: str) -> Primitive:
    return registry()["lt.ops.basic." + name]


# ----------------------------------------------------------------- traces


class _Trace:
    """A transform call: its level, and how it applies a primitive's rule to its tracers."""

    rule: str  # the Primitive attribute holding this transform's rule
    name: str
    tracer: Any  # the tracer type

    def __init__(self):
        self.level = next(_levels)

    @staticmethod
    def parts(t) -> tuple:
        """A tracer's value and its extra (batched axis, tangent)."""
        raise NotImplementedError

    def wrap(self, value, extra):
        raise NotImplementedError

    def process(self, prim: Primitive, args: tuple, options: dict):
        """``prim(*args)``: this trace's tracers unwrapped (the others are constants here), the
        rule applied, the results wrapped again."""
        mine = [type(a) is self.tracer and getattr(a, "trace", None) is self for a in args]
        values = [self.parts(a)[0] if m else a for a, m in zip(args, mine)]
        extras = [self.parts(a)[1] if m else None for a, m in zip(args, mine)]
        rule = getattr(prim, self.rule)
        if rule is None:
            raise NotImplementedError(f"{self.name}: the primitive {prim.__name__} has no {self.rule} rule")
        out, extra = rule(values, extras, **options)
        if isinstance(out, tuple):
            return tuple(self.wrap(o, e) for o, e in zip(out, extra))
        return self.wrap(out, extra)


class BatchTrace(_Trace):
    """One ``lt.vmap`` call: a level and the batch size. A tracer's extra is its batched axis."""

    rule, name = "batch", "lt.vmap"

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    @staticmethod
    def parts(t):
        return t.value, t.bdim

    def wrap(self, value, bdim):
        return value if bdim is None else BatchTracer(value, bdim, self)


class JVPTrace(_Trace):
    """One ``lt.jvp`` call: a level. A tracer's extra is its tangent."""

    rule, name = "jvp", "lt.jvp"

    @staticmethod
    def parts(t):
        return t.primal, t.tangent

    def wrap(self, primal, tangent):
        return primal if tangent is None else JVPTracer(primal, tangent, self)


# ----------------------------------------------------------------- tracers


class BatchTracer(ArrayMethods):
    """A batch of values seen as one member: ``value`` has the batch along axis ``bdim``."""

    __slots__ = ("value", "bdim", "trace")

    def __init__(self, value, bdim: int, trace: BatchTrace):
        self.value, self.bdim, self.trace = value, bdim, trace

    @property
    def shape(self) -> tuple:
        s = np.shape(self.value) if not isinstance(self.value, ArrayMethods) else self.value.shape
        return tuple(s[: self.bdim]) + tuple(s[self.bdim + 1 :])

    dtype = property(lambda self: self.value.dtype)
    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: int(np.prod(self.shape, dtype=np.int64)))

    def __repr__(self) -> str:
        return f"BatchTracer(shape={self.shape}, dtype={self.dtype}, batch={self.trace.size})"

    def map_keys(self, fn: Callable) -> BatchTracer:
        """A batch of random keys (an object array of ``lt.random.Key``, from ``lt.random.stack``):
        ``fn`` applied to each member's key (how ``lt.random.fold_in`` and ``split`` batch)."""
        keys = np.moveaxis(np.asarray(self.value), self.bdim, 0)
        out = np.empty(len(keys), dtype=object)
        out[:] = [fn(k) for k in keys]
        return BatchTracer(out, 0, self.trace)

    def plain_values(self) -> np.ndarray:
        """Every member's plain values (batch first), for checks of ids and masks."""
        return self._members()

    def _members(self) -> np.ndarray:
        """The plain batched array (batch first), for a value the batch does not change."""
        v: Any = self.value
        while isinstance(v, ArrayMethods):
            v = getattr(v, "primal", None) if isinstance(v, JVPTracer) else getattr(v, "value", None)
        return np.moveaxis(np.asarray(v), self.bdim, 0)

    def _scalar(self, kind):
        members = self._members()
        if members.size and not (members == members.reshape(-1)[0]).all():
            raise TypeError(
                f"{kind}() of a value batched by lt.vmap that differs between members (a Python "
                "branch on it cannot be batched); keep it an array and use lt.ops"
            )
        return kind(members.reshape(-1)[0])

    def __float__(self) -> float:
        return self._scalar(float)

    def __int__(self) -> int:
        return self._scalar(int)

    def __bool__(self) -> bool:
        return self._scalar(bool)

    def __array__(self, *args, **kwargs):
        raise TypeError(
            "a value batched by lt.vmap reached a NumPy function; use the operations in lt.ops "
            "(elementwise NumPy ufuncs such as np.sqrt are batched, without derivatives)"
        )

    def other_ufunc(self, ufunc, method, inputs, kwargs):
        """An elementwise NumPy ufunc with no lt primitive (np.sqrt, np.maximum, ...): applied to
        the batch, members aligned; no derivative (a gradient tracer below refuses it)."""
        if method != "__call__" or kwargs or ufunc.signature is not None:
            raise TypeError(f"np.{ufunc.__name__}.{method} on a value batched by lt.vmap is not supported")
        dims = [a.bdim if type(a) is BatchTracer and a.trace is self.trace else None for a in inputs]
        rank = max(np.ndim(a) if d is None else a.ndim for a, d in zip(inputs, dims))
        vals = [a if d is None else align_front(a.value, d, rank) for a, d in zip(inputs, dims)]
        return BatchTracer(ufunc(*vals), 0, self.trace)

    def __array_function__(self, func, types, args, kwargs):
        """The NumPy functions model code applies to ids, masks and shapes: answered for one member."""
        if func is np.shape:
            return self.shape
        if func is np.ndim:
            return self.ndim
        if func is np.size:
            return self.size
        if func is np.reshape:
            return _basic("reshape")(
                args[0], kwargs.get("newshape", kwargs.get("shape", args[1] if len(args) > 1 else None))
            )
        raise TypeError(
            f"np.{func.__name__} on a value batched by lt.vmap is not supported; use the operations in lt.ops"
        )


class JVPTracer(ArrayMethods):
    """A value and its tangent, carried forward through every primitive by its JVP rule."""

    __slots__ = ("primal", "tangent", "trace")

    def __init__(self, primal, tangent, trace: JVPTrace):
        self.primal, self.tangent, self.trace = primal, tangent, trace

    shape = property(
        lambda self: tuple(np.shape(self.primal)) if not isinstance(self.primal, ArrayMethods) else self.primal.shape
    )
    dtype = property(lambda self: self.primal.dtype)
    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: int(np.prod(self.shape, dtype=np.int64)))

    def __repr__(self) -> str:
        return f"JVPTracer(shape={self.shape}, dtype={self.dtype})"

    def __float__(self) -> float:
        return float(self.primal)

    def __int__(self) -> int:
        return int(self.primal)

    def __array__(self, *args, **kwargs):
        raise TypeError(
            "a value traced by lt.jvp reached a NumPy function; use the operations in lt.ops "
            "(or float(x) for a value without tangent)"
        )

    def __array_function__(self, func, types, args, kwargs):
        if func is np.shape:
            return self.shape
        if func is np.ndim:
            return self.ndim
        raise TypeError(f"np.{func.__name__} on a value traced by lt.jvp is not supported; use lt.ops")


TRANSFORM_TRACERS.update({BatchTracer, JVPTracer})
BatchTrace.tracer, JVPTrace.tracer = BatchTracer, JVPTracer


# ----------------------------------------------------------------- helpers for batching rules


def ndim_of(x) -> int:
    return x.ndim if isinstance(x, ArrayMethods) else np.ndim(x)


def shape_of(x) -> tuple:
    return tuple(x.shape) if isinstance(x, ArrayMethods) else np.shape(x)


def move_axis(x, src: int, dst: int):
    """``np.moveaxis(x, src, dst)`` as a transpose primitive (nothing when already there)."""
    n = ndim_of(x)
    src, dst = src % n, dst % n
    if src == dst:
        return x
    order = [i for i in range(n) if i != src]
    order.insert(dst, src)
    return _basic("transpose")(x, tuple(order))


def to_front(x, dim: int | None):
    """``x`` with its batched axis ``dim`` first (unchanged when ``dim`` is None)."""
    return x if dim is None else move_axis(x, dim, 0)


def batch_size(args: Sequence, dims: Sequence) -> int:
    """The batch size: the length of any batched argument's batched axis."""
    for a, d in zip(args, dims):
        if d is not None:
            return shape_of(a)[d]
    raise ValueError("batch_size: no batched argument")


def broadcast_front(x, dim: int | None, size: int):
    """``x`` batched along axis 0 with ``size`` members: moved there, or repeated when unbatched
    (a read-only broadcast for a plain array; ``x + zeros`` for a traced one, so that its
    derivative flows)."""
    if dim is not None:
        return move_axis(x, dim, 0)
    shape = (size,) + shape_of(x)
    if isinstance(x, ArrayMethods):
        return _basic("add")(x, np.zeros(shape, x.dtype))
    return np.broadcast_to(x, shape)


def align_front(x, dim: int | None, rank: int):
    """A batched ``x`` with its batch first and ones inserted after it so that one member has
    ``rank`` dimensions (NumPy broadcasting then pairs members with members); an unbatched ``x``
    unchanged (it broadcasts against every member alike)."""
    if dim is None:
        return x
    x = move_axis(x, dim, 0)
    shape = shape_of(x)
    missing = rank - (len(shape) - 1)
    if missing > 0:
        x = _basic("reshape")(x, (shape[0],) + (1,) * missing + shape[1:])
    return x


def elementwise_batch(prim: Primitive) -> Callable:
    """The batching rule of a broadcasting elementwise primitive (``add``, ``mul``, ``gelu``, ...):
    batched arguments aligned batch-first, the primitive applied once; the batch is axis 0."""

    def rule(args, dims, **options):
        rank = max((ndim_of(a) - (d is not None) for a, d in zip(args, dims)), default=0)
        aligned = [align_front(a, d, rank) for a, d in zip(args, dims)]
        return prim(*aligned, **options), 0

    return rule


def leading_batch(prim: Primitive, batched: Sequence[int] = (0,)) -> Callable:
    """The batching rule of a primitive that broadcasts over leading axes of the arguments at
    positions ``batched`` and must see the others unbatched (softmax, attention, ...): those
    arguments aligned batch-first, the primitive applied once. An argument outside ``batched``
    that is batched is refused (write a specific rule for it)."""

    def rule(args, dims, **options):
        for i, d in enumerate(dims):
            if d is not None and i not in batched:
                raise NotImplementedError(f"lt.vmap: {prim.__name__} has no rule for argument {i} batched")
        rank = max(ndim_of(args[i]) - (dims[i] is not None) for i in batched)
        aligned = [align_front(a, d, rank) if i in batched else a for i, (a, d) in enumerate(zip(args, dims))]
        return prim(*aligned, **options), 0

    return rule


# ----------------------------------------------------------------- helpers for forward-mode rules


def add_tangents(a, b):
    """``a + b`` where None is a zero tangent."""
    if a is None:
        return b
    if b is None:
        return a
    return _basic("add")(a, b)


def zeros_like(x):
    """Zeros of ``x``'s shape and dtype (a plain array: a tangent the primal does not reach)."""
    return np.zeros(shape_of(x), x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)


def missing_rules() -> dict[str, list[str]]:
    """For every primitive defined so far, the rules it lacks (``vjp``, ``batch``, ``jvp``)."""
    out = {}
    for name, prim in registry().items():
        lacking = [rule for rule in ("vjp", "batch", "jvp") if getattr(prim, rule) is None]
        if lacking:
            out[name] = lacking
    return out


def constant_map(fn: Callable, x):
    """``fn`` (NumPy without derivative: a step, a mask) on the value under ``x``, vmap batches kept in place."""
    if type(x) is BatchTracer:
        return BatchTracer(constant_map(fn, x.value), x.bdim, x.trace)
    if type(x) is JVPTracer:
        return constant_map(fn, x.primal)
    if isinstance(x, ArrayMethods):  # a gradient Tracer
        traced: Any = x
        return constant_map(fn, traced.value)
    return fn(x)
