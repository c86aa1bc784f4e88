"""The batching (``lt.vmap``) and forward-mode (``lt.jvp``) rules of :mod:`lt.ops.basic`.

Written with the primitives themselves, never NumPy on the values (a value may be another
transform's tracer), so that the rules compose; NumPy touches only shapes, axes and index arrays.
A batching rule makes one call for the whole batch, leaving the batch axis in place where it can.
Imported by :mod:`lt.ops` once the primitives exist.
"""

from __future__ import annotations

import math

import numpy as np

from ..quant import QuantizedArray
from .basic import (
    add,
    astype,
    concat,
    div,
    exp,
    index,
    linear,
    log,
    matmul,
    mean,
    mul,
    neg,
    reshape,
    split,
    sub,
    sum,
    tanh,
    transpose,
)
from .traces import (
    add_tangents,
    align_front,
    batch_size,
    broadcast_front,
    elementwise_batch,
    move_axis,
    ndim_of,
    shape_of,
    to_front,
    zeros_like,
)

# ----------------------------------------------------------------- helpers


def _params(args, options: dict, *names: tuple[str, object]) -> list:
    """The arguments after the first, each given by position or by keyword: ``names`` are
    ``(name, default)`` pairs in the signature's order."""
    return [args[i] if i < len(args) else options.get(name, default) for i, (name, default) in enumerate(names, 1)]


def _dtype(x) -> np.dtype:
    return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype


def _fit(t, out):
    """Tangent ``t`` broadcast to the shape and cast to the dtype of the output ``out`` (a
    broadcasting operand's tangent covers only its own shape)."""
    if t is None:
        return None
    if shape_of(t) != shape_of(out):
        t = add(t, zeros_like(out))
    return t if _dtype(t) == _dtype(out) else astype(t, _dtype(out))


def _keep_dim(prim):
    """Batching rule of a primitive that maps its first argument elementwise: batch untouched."""

    def rule(args, dims, **options):
        return prim(*args, **options), dims[0]

    return rule


def _linear_in_first(prim):
    """JVP rule of a primitive linear in its first argument (the others static): the tangent
    takes the same call."""

    def rule(primals, tangents, **options):
        out = prim(*primals, **options)
        if tangents[0] is None:
            return out, (None,) * len(out) if isinstance(out, tuple) else None
        return out, prim(tangents[0], *primals[1:], **options)

    return rule


def _value_axis(axis: int, member_ndim: int, bdim: int) -> int:
    """The axis of the batched value that is a member's ``axis``, the batch being at ``bdim``."""
    axis %= member_ndim
    return axis + (axis >= bdim)


# ----------------------------------------------------------------- elementwise

for _prim in (add, sub, mul, div):
    _prim.defbatch(elementwise_batch(_prim))
for _prim in (neg, exp, log, tanh, astype):
    _prim.defbatch(_keep_dim(_prim))


@add.defjvp
def _add_jvp(primals, tangents):
    out = add(*primals)
    return out, _fit(add_tangents(*tangents), out)


@sub.defjvp
def _sub_jvp(primals, tangents):
    ta, tb = tangents
    out = sub(*primals)
    t = ta if tb is None else neg(tb) if ta is None else sub(ta, tb)
    return out, _fit(t, out)


@mul.defjvp
def _mul_jvp(primals, tangents):
    (a, b), (ta, tb) = primals, tangents
    out = mul(a, b)
    t = add_tangents(None if ta is None else mul(ta, b), None if tb is None else mul(a, tb))
    return out, _fit(t, out)


@div.defjvp
def _div_jvp(primals, tangents):
    """``d(a / b) = (da - out · db) / b``."""
    (a, b), (ta, tb) = primals, tangents
    out = div(a, b)
    t = ta if tb is None else neg(mul(out, tb)) if ta is None else sub(ta, mul(out, tb))
    return out, _fit(None if t is None else div(t, b), out)


neg.defjvp(_linear_in_first(neg))


@exp.defjvp
def _exp_jvp(primals, tangents):
    out = exp(primals[0])
    return out, None if tangents[0] is None else mul(tangents[0], out)


@log.defjvp
def _log_jvp(primals, tangents):
    return log(primals[0]), None if tangents[0] is None else div(tangents[0], primals[0])


@tanh.defjvp
def _tanh_jvp(primals, tangents):
    out = tanh(primals[0])
    return out, None if tangents[0] is None else mul(tangents[0], sub(1.0, mul(out, out)))


@astype.defjvp
def _astype_jvp(primals, tangents, **options):
    """The tangent cast alike; none for a cast to a non-float type."""
    (dtype,) = _params(primals, options, ("dtype", None))
    out = astype(*primals, **options)
    if tangents[0] is None or not np.issubdtype(np.dtype(dtype), np.floating):
        return out, None
    return out, astype(tangents[0], dtype)


# ----------------------------------------------------------------- products


@matmul.defbatch
def _matmul_batch(args, dims):
    """A shared 2-D (or quantized) ``b``: a's rows are independent, so every row of the batch
    goes through one 2-D product; else a broadcasting (stacked) matmul, batch first."""
    (a, b), (da, db) = args, dims
    if db is None and (type(b) is QuantizedArray or ndim_of(b) == 2):
        if da == ndim_of(a) - 1:  # the batch is the contracted axis: move it out of the way
            a, da = move_axis(a, da, 0), 0
        if type(b) is QuantizedArray:  # its product already takes the rows as one matrix
            return matmul(a, b), da
        shape = shape_of(a)
        rows = matmul(reshape(a, (math.prod(shape[:-1]), shape[-1])), b)
        return reshape(rows, shape[:-1] + (shape_of(b)[1],)), da
    return elementwise_batch(matmul)(args, dims)


@matmul.defjvp
def _matmul_jvp(primals, tangents):
    (a, b), (ta, tb) = primals, tangents
    out = matmul(a, b)
    t = add_tangents(None if ta is None else matmul(ta, b), None if tb is None else matmul(a, tb))
    return out, _fit(t, out)


@linear.defbatch
def _linear_batch(args, dims):
    """A shared weight: one ``linear`` (the batch stays among x's rows; a batched bias is added
    after, aligned). A batched weight (an ensemble): a batched matmul (B, R, in) @ (B, in, out)."""
    x, w, b = [*args, None][:3]
    dx, dw, db = [*dims, None][:3]
    if dw is None:
        if dx is not None and (db is not None or dx == ndim_of(x) - 1):
            x, dx = to_front(x, dx), 0
        if db is None:
            return linear(x, w, b), dx
        y = linear(x, w)
        return add(y, align_front(b, db, ndim_of(y) - (dx is not None))), 0
    w = to_front(w, dw)
    size, n_in, n_out = shape_of(w)
    if dx is None:
        lead = shape_of(x)[:-1]
        x = reshape(x, (math.prod(lead), n_in))  # (R, in): broadcast against every member's weight
    else:
        x = to_front(x, dx)
        lead = shape_of(x)[1:-1]
        x = reshape(x, (size, math.prod(lead), n_in))  # (B, R, in)
    y = matmul(x, w)  # (B, R, out)
    if b is not None:
        y = add(y, align_front(b, db, 2))
    return reshape(y, (size, *lead, n_out)), 0


@linear.defjvp
def _linear_jvp(primals, tangents):
    """``dx @ w + x @ dw + db``; a quantized weight is a constant."""
    x, w, _ = [*primals, None][:3]
    tx, tw, tb = [*tangents, None][:3]
    out = linear(*primals)
    t = None if tx is None else linear(tx, w)
    t = add_tangents(t, None if tw is None else linear(x, tw))
    return out, _fit(add_tangents(t, tb), out)


# ----------------------------------------------------------------- shapes


@reshape.defbatch
def _reshape_batch(args, dims, **options):
    (shape,) = _params(args, options, ("shape", None))
    a = to_front(args[0], dims[0])
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    return reshape(a, (shape_of(a)[0], *shape)), 0


@transpose.defbatch
def _transpose_batch(args, dims, **options):
    (axes,) = _params(args, options, ("axes", None))
    a, d = args[0], dims[0]
    n = ndim_of(a) - 1
    axes = range(n)[::-1] if axes is None else axes
    return transpose(a, (d, *(_value_axis(ax, n, d) for ax in axes))), 0


@split.defbatch
def _split_batch(args, dims, **options):
    sections, axis = _params(args, options, ("sections", None), ("axis", -1))
    a, d = args[0], dims[0]
    outs = split(a, sections, _value_axis(axis, ndim_of(a) - 1, d))
    return outs, (d,) * len(outs)


@concat.defbatch
def _concat_batch(args, dims, axis=0):
    """Batched at one axis alike: joined there. Else every one batch first (an unbatched one
    repeated: each member's output holds it)."""
    n = next(ndim_of(a) - 1 for a, d in zip(args, dims) if d is not None)
    if len(set(dims)) == 1:
        return concat(*args, axis=_value_axis(axis, n, dims[0])), dims[0]
    size = batch_size(args, dims)
    return concat(*(broadcast_front(a, d, size) for a, d in zip(args, dims)), axis=axis % n + 1), 0


@concat.defjvp
def _concat_jvp(primals, tangents, axis=0):
    out = concat(*primals, axis=axis)
    if all(t is None for t in tangents):
        return out, None
    ts = [zeros_like(p) if t is None else t for p, t in zip(primals, tangents)]
    return out, _fit(concat(*ts, axis=axis), out)


def _is_advanced(item) -> bool:
    return isinstance(item, (np.ndarray, list, tuple, bool, np.bool_))


def _index_batch_axis(items: tuple) -> int:
    """Where the batch lands in ``a[:, *items]`` (``a`` batch first). NumPy keeps the advanced
    indices' axes in place when they are adjacent in the index (then after the batch), else puts
    them first (then the batch follows them). Integers count as advanced beside an array."""
    if not any(_is_advanced(i) for i in items):
        return 0
    where = [k for k, i in enumerate(items) if _is_advanced(i) or isinstance(i, (int, np.integer))]
    if where[-1] - where[0] == len(where) - 1:
        return 0
    arrays = [np.asarray(i) for i in items if _is_advanced(i)]
    return max(1 if x.dtype == bool else x.ndim for x in arrays)  # a boolean mask gives one axis


@index.defbatch
def _index_batch(args, dims, **options):
    """``a[:, *idx]`` with ``a`` batch first: one gather (the index is plain data, shared)."""
    (idx,) = _params(args, options, ("idx", None))
    items = idx if isinstance(idx, tuple) else (idx,)
    return index(to_front(args[0], dims[0]), (slice(None), *items)), _index_batch_axis(items)


for _prim in (reshape, transpose, split, index, sum, mean):
    _prim.defjvp(_linear_in_first(_prim))


# ----------------------------------------------------------------- reductions


def _reduction_batch(prim):
    """Batching rule of ``sum``/``mean``: the members' axes reduced, the batch left in place."""

    def rule(args, dims, **options):
        axis, keepdims = _params(args, options, ("axis", None), ("keepdims", False))
        a, d = args[0], dims[0]
        n = ndim_of(a) - 1
        member = range(n) if axis is None else [axis] if np.isscalar(axis) else axis
        axes = tuple(_value_axis(ax, n, d) for ax in member)
        return prim(a, axes, keepdims), d if keepdims else d - len([ax for ax in axes if ax < d])

    return rule


for _prim in (sum, mean):
    _prim.defbatch(_reduction_batch(_prim))
