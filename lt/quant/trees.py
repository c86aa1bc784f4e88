"""Quantizing a params tree: which leaves (from the model's declarations), and what it costs.

:func:`quantize` turns every float matrix a model declares into a quantized leaf
(:mod:`lt.quant.arrays`); position tables, norms and biases stay float.
"""

from __future__ import annotations

import numpy as np

from .. import tree
from .arrays import FLOAT_DTYPES, check_bits, dequantize_array, group_size_for, is_quantized, quantize_array

__all__ = ["plan", "quantize", "planned_nbytes", "dequantize", "describe"]


def plan(param) -> int | None:
    """The reduction axis :func:`quantize` groups the leaf declared by ``param`` (an
    ``lt.nn.Param``) along: 0 for a Linear weight (in, out), 1 for a table (rows looked up by id,
    and the tied head ``h @ table.T``); None where it stays float (position tables, norm
    scales, biases, anything not a matrix)."""
    if len(param.shape) != 2:
        return None
    return {"weight": 0, "head": 0, "table": 1}.get(param.role)


def quantize(params, bits: int = 8, group_size: int | str | None = None, *, model):
    """``params`` with every float matrix of ``model`` quantized (:func:`quantize_array`); a new frozen tree.

    ``bits`` 8 or 4; ``group_size`` weights per scale along the reduction axis, ``"channel"``
    for one scale per output channel, None for the default (int8 per channel, int4 32).
    Which leaves, and along which axis, comes from ``model``'s parameter declarations (its
    ``spec()``; :func:`plan`): Linear weights (in, out) are grouped along ``in`` (axis 0),
    tables (the token table, also the tied LM head) along their rows (axis 1); position
    tables, norms and biases stay float. A group larger than a matrix's rows is clamped to
    one per row (as ``"channel"``). A leaf that is already quantized is refused: dequantize
    the tree first to quantize it again.
    """
    bits = check_bits(bits)
    spec = model.spec()
    flat, treedef = tree.flatten(params)
    decls, spec_def = tree.flatten(spec)
    if spec_def != treedef:
        raise ValueError(
            "lt.quantize: params do not fit the model's spec() "
            + (tree.mismatch(params, spec) or "(a different structure)")
        )

    def one(path: str, x, param):
        if is_quantized(x):
            raise ValueError(
                f"lt.quantize: {path} is already quantized (int{x.bits}); "
                "quantize the float tree (lt.dequantize(params) gives one)"
            )
        axis = plan(param)
        if axis is None or not (isinstance(x, np.ndarray) and x.dtype in FLOAT_DTYPES):
            return x
        try:
            return quantize_array(x, bits, group_size, axis=axis)
        except ValueError as e:
            raise ValueError(f"lt.quantize: {path}: {e}") from None

    return tree.freeze(tree.unflatten(treedef, [one(p, x, d) for p, x, d in zip(tree.paths(params), flat, decls)]))


def planned_nbytes(spec, bits: int | None, group_size: int | str | None = None, itemsize: int = 4) -> int:
    """The bytes :func:`quantize` would make of params declared by ``spec`` (a model's ``spec()``:
    nothing is allocated); ``bits=None`` is the float size."""
    total = 0
    for leaf in tree.leaves(spec):
        shape = tuple(leaf.shape)
        axis = None if bits is None else plan(leaf)
        if bits is None or axis is None:
            total += int(np.prod(shape)) * itemsize
            continue
        R, K = shape[1 - axis], shape[axis]
        G = group_size_for(K, bits, group_size)
        g = -(-K // G)
        total += R * g * G * bits // 8 + R * g * itemsize
    return total


def dequantize(params):
    """``params`` with every quantized leaf replaced by its float matrix; a new frozen tree."""
    if is_quantized(params):
        return dequantize_array(params)
    return tree.map(lambda x: dequantize_array(x) if is_quantized(x) else x, params)


def describe(params) -> str:
    """``"float32"``, ``"int8"``, ``"int4"`` or a mix such as ``"int4+int8"``: the tree's matrix formats."""
    kinds = sorted({f"int{x.bits}" for x in tree.leaves(params) if is_quantized(x)})
    if not kinds:
        dtypes = sorted({str(getattr(x, "dtype", "")) for x in tree.leaves(params)} - {""})
        return "+".join(dtypes) or "empty"
    return "+".join(kinds)
