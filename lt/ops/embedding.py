"""The token table's two primitives: the embedding gather and the tied LM head.

Shapes: V vocabulary (rows of the table), D hidden, ... any leading axes, N rows.
"""

from __future__ import annotations

import numpy as np

from ..quant import QuantizedArray
from . import quantized
from .basic import add, decode_product, index, matmul, reshape, transpose
from .primitive import primitive
from .traces import add_tangents, ndim_of, shape_of, to_front

__all__ = ["embedding", "unembed"]


@primitive
def embedding(w, ids):
    """Rows of ``w`` (V, D) at integer ``ids`` (...,) -> (..., D); a quantized ``w`` dequantizes
    only those rows (and is a constant to the VJP)."""
    if type(w) is QuantizedArray:
        return quantized.take(w, ids), (None, None, ids)
    return np.take(w, ids, axis=0), (w.shape, w.dtype, ids)


@embedding.defvjp
def _embedding_vjp(res, g):
    shape, dtype, ids = res
    if shape is None:  # a quantized table: a constant
        return None, None
    dw = np.zeros(shape, dtype)
    np.add.at(dw, np.ravel(ids), g.reshape(-1, shape[1]))  # scatter-add: repeated ids sum
    return dw, None


@embedding.defbatch
def _embedding_batch(args, dims):
    """One gather; from a batched table (B, V, D) at ``[b, ids_b]`` (no copy of a broadcast table)."""
    w, ids = args
    dw, di = dims
    if dw is None:
        return embedding(w, ids), di
    w = to_front(w, dw)
    size, vocab, width = shape_of(w)
    rank = ndim_of(ids) - (di is not None)
    members = np.arange(size).reshape((size,) + (1,) * rank)
    if isinstance(ids, np.ndarray):
        return index(w, (members, ids if di is None else np.moveaxis(ids, di, 0))), 0
    # ids traced by an enclosing vmap: they must reach a primitive as an argument
    return embedding(reshape(w, (size * vocab, width)), add(to_front(ids, di), members * vocab)), 0


@embedding.defjvp
def _embedding_jvp(primals, tangents):
    """The tangent table's rows at the same ids (the gather is linear in the table)."""
    w, ids = primals
    dw = tangents[0]
    return embedding(w, ids), None if dw is None else embedding(dw, ids)


@primitive
def unembed(h, w):
    """Scores of ``h`` (..., D) against every row of ``w`` (V, D): ``h @ w.T`` -> (..., V).

    The tied LM head. Its VJP makes ``dw`` in ``w``'s own (V, D) layout, so adding the
    embedding's gradient to it is a contiguous add, not a strided one. A quantized ``w``
    is dequantized a tile at a time (``lt.ops.quantized``) and is a constant to the VJP.
    """
    h2 = h.reshape(-1, w.shape[1])  # (N, D)
    if type(w) is QuantizedArray:
        scores = quantized.matmul_t(h2, w)  # (N, V)
    elif (fast := decode_product(h2, w, transposed=True)) is not None:  # few rows: a kernel streams w once
        scores = fast
    elif h2.shape[0] == 1:  # one row (batch-1 decoding): a matrix-vector
        scores = (w @ h2[0])[None]  # product over w as stored, 1.2-1.4x the
    else:  # (1, D) @ (D, V)-view matmul on gpt2
        scores = h2 @ w.T  # (N, V)
    return scores.reshape(h.shape[:-1] + (w.shape[0],)), (h2, w, h.shape)


@unembed.defvjp
def _unembed_vjp(res, g):
    h2, w, h_shape = res
    g2 = g.reshape(-1, w.shape[0])  # (N, V)
    if type(w) is QuantizedArray:  # a constant: dh only
        return quantized.matmul(g2, w).reshape(h_shape), None
    return (g2 @ w).reshape(h_shape), g2.T @ h2  # (N, D) -> (..., D); (V, D)


@unembed.defbatch
def _unembed_batch(args, dims):
    """One call; a batched table (B, V, D) as one batched product ``h (B, N, D) @ wᵀ (B, D, V)``."""
    h, w = args
    dh, dw = dims
    if dw is None:
        if dh == ndim_of(h) - 1:
            h, dh = to_front(h, dh), 0
        return unembed(h, w), dh
    w = to_front(w, dw)
    size, vocab, width = shape_of(w)
    member = list(shape_of(h))
    if dh is not None:
        del member[dh]
    lead = tuple(member[:-1])
    rows = int(np.prod(lead, dtype=np.int64))
    h = reshape(h, (rows, width)) if dh is None else reshape(to_front(h, dh), (size, rows, width))
    scores = matmul(h, transpose(w, (0, 2, 1)))  # (B, N, V)
    return reshape(scores, (size, *lead, vocab)), 0


@unembed.defjvp
def _unembed_jvp(primals, tangents):
    """``unembed(dh, w) + unembed(h, dw)``: the product is bilinear."""
    h, w = primals
    dh, dw = tangents
    out = unembed(h, w)
    t = None if dh is None else unembed(dh, w)
    return out, add_tangents(t, None if dw is None else unembed(h, dw))
