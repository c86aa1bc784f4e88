"""The token table's two primitives: the embedding gather and the tied LM head.

Shapes: V vocabulary (rows of the table), D hidden, ... any leading axes, N rows.
"""

from __future__ import annotations

import numpy as np

from ..quant import QuantizedArray
from . import quantized
from .primitive import primitive

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
