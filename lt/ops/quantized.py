"""Products with quantized weights (:class:`lt.quant.QuantizedArray`), a tile at a time.

Shapes: M input rows, R stored rows of the leaf, K its reduction axis, G group size,
g groups per row, Kp = g * G, n stored rows per tile.

NumPy has no int8 GEMM, so a product dequantizes a tile of n stored rows (about a MiB of
floats, so it stays in cache) and hands it to the BLAS; the float matrix never exists
whole, and peak memory stays near the quantized size. One buffer is allocated per call
and reused by every tile. With few input rows (decoding: M = B, often 1) the scales are
applied to per-group partial sums instead, ``y[m, r] = sum_j s[r, j] (c[r, j] . x[m, j])``:
the tile needs only the codes cast to float (one pass), not scaled (a second pass).

The primitives call three functions here, so they know both leaf kinds:
``matmul(x, w)`` = ``x @ w``, ``matmul_t(x, w)`` = ``x @ w.T`` and ``take(w, ids)`` = ``w[ids]``.
Quantized leaves are inference-only: the primitives give no gradient for them.

With the kernels on (``lt.ops.kernels``), a product with few input rows reads the codes
directly (``kernels.quantized.rows8`` / ``rows4``: dequantized in registers, every code read
once), and the tiles of the others, and gathered rows, are dequantized by one compiled pass
(``decode8`` / ``decode4``) instead of NumPy's three or four. The NumPy code below stays the
reference they are tested against.
"""

from __future__ import annotations

import numpy as np

from ..quant import QuantizedArray, dequantize_array, dequantize_codes, signed_codes
from . import kernels
from .kernels import quantized as kq  # compiled at the first call, not at import

__all__ = ["matmul", "matmul_t", "take", "TILE_ELEMENTS"]

TILE_ELEMENTS = 1 << 18  # floats per tile: 1 MiB of float32, inside a core's L2
# With the kernels a tile is dequantized in one pass, so it may outgrow L2: bigger tiles make fewer,
# larger BLAS calls (gpt2 prefill of 128 tokens: 1.08-1.12x float32's time against 1.17x, 2-core EPYC).
KERNEL_TILE_ELEMENTS = 1 << 20
_FEW_ROWS = 4  # up to this many input rows, scales go on partial sums


def _tile_rows(q: QuantizedArray, fast: bool = False) -> int:
    return max(1, (KERNEL_TILE_ELEMENTS if fast else TILE_ELEMENTS) // (q.num_groups * q.group_size))


def _buffers(q: QuantizedArray, n: int, fast: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """The tile buffer (n, Kp) in the leaf's dtype, and int4's unpacking scratch (n, Kp) int8
    (NumPy's path only: the kernels unpack in registers)."""
    Kp = q.num_groups * q.group_size
    return np.empty((n, Kp), q.dtype), (np.empty((n, Kp), np.int8) if q.bits == 4 and not fast else None)


def _kernels_cover(x: np.ndarray) -> bool:
    return x.dtype in (np.float32, np.float64) and kernels.enabled()


def _decode(q: QuantizedArray, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Stored rows ``rows`` (n,) int64 of ``q`` dequantized into ``out`` (n, Kp) by the kernel."""
    (kq.decode8 if q.bits == 8 else kq.decode4)(q.codes, q.scales, rows, out)
    return out


def _kernel_few_rows(x: np.ndarray, q: QuantizedArray, dtype) -> np.ndarray:
    """``x`` (M, K) @ stored rowsᵀ -> (M, R) read from the codes (M small: decoding)."""
    M, K = x.shape
    Kp = q.num_groups * q.group_size
    if Kp == K:
        xp = np.ascontiguousarray(x, dtype)
    else:  # the padding's codes are zeros
        xp = np.zeros((M, Kp), dtype)
        xp[:, :K] = x
    out = np.empty((M, q.scales.shape[0]), dtype)
    (kq.rows8 if q.bits == 8 else kq.rows4)(xp, q.codes, q.scales, out)
    return out


def _rows_product(x: np.ndarray, q: QuantizedArray) -> np.ndarray:
    """``x`` (M, K) @ stored rowsᵀ -> (M, R): each stored row is one output column."""
    M, K = x.shape
    R, g, G = q.scales.shape[0], q.num_groups, q.group_size
    dtype = np.result_type(x.dtype, q.dtype)
    fast = _kernels_cover(x)
    if fast and M <= _FEW_ROWS:
        return _kernel_few_rows(x, q, dtype)
    out = np.empty((M, R), dtype)
    n = min(_tile_rows(q, fast), R)
    buf, scratch = _buffers(q, n, fast)  # reused by every tile
    if M <= _FEW_ROWS:
        xp = np.zeros((M, g * G), dtype)
        xp[:, :K] = x
        xg = xp.reshape(M, g, G).transpose(1, 2, 0)  # (g, G, M)
        for a in range(0, R, n):
            b = min(a + n, R)
            c = signed_codes(q.codes[a:b], q.bits, G, buf[: b - a], None if scratch is None else scratch[: b - a])
            if g == 1:  # one scale per row
                np.multiply((c @ xp.T).T, q.scales[a:b, 0], out=out[:, a:b])
            else:
                part = np.matmul(c.reshape(b - a, g, G).transpose(1, 0, 2), xg)  # (g, n, M) per-group dots
                out[:, a:b] = np.einsum("jnm,nj->mn", part, q.scales[a:b])  # scaled, summed over groups
        return out
    for a in range(0, R, n):
        b = min(a + n, R)
        if fast:
            w = _decode(q, np.arange(a, b), buf[: b - a])[:, :K]  # (n, K)
        else:
            w = dequantize_codes(
                q.codes[a:b], q.scales[a:b], q.bits, G, K, buf[: b - a], None if scratch is None else scratch[: b - a]
            )  # (n, K)
        np.matmul(x, w.T, out=out[:, a:b])
    return out


def _cols_product(x: np.ndarray, q: QuantizedArray) -> np.ndarray:
    """``x`` (M, R) @ stored rows -> (M, K): the stored rows are summed, weighted by ``x``."""
    M = x.shape[0]
    R, K = q.scales.shape[0], q.shape[q.axis]
    dtype = np.result_type(x.dtype, q.dtype)
    out = np.zeros((M, K), dtype)
    fast = _kernels_cover(x)
    n = min(_tile_rows(q, fast), R)
    buf, scratch = _buffers(q, n, fast)
    for a in range(0, R, n):
        b = min(a + n, R)
        if fast:
            out += x[:, a:b] @ _decode(q, np.arange(a, b), buf[: b - a])[:, :K]
            continue
        w = dequantize_codes(
            q.codes[a:b],
            q.scales[a:b],
            q.bits,
            q.group_size,
            K,
            buf[: b - a],
            None if scratch is None else scratch[: b - a],
        )  # (n, K)
        out += x[:, a:b] @ w
    return out


def _check(x, q: QuantizedArray, k: int, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != k:
        raise ValueError(f"{what}: input {x.shape} does not fit a quantized weight of shape {q.shape}")
    return x


def matmul(x, q: QuantizedArray) -> np.ndarray:
    """``x @ w`` for ``x`` (M, in) and a quantized ``w`` (in, out) -> (M, out)."""
    x = _check(x, q, q.shape[0], "matmul")
    return _rows_product(x, q) if q.axis == 0 else _cols_product(x, q)


def matmul_t(x, q: QuantizedArray) -> np.ndarray:
    """``x @ w.T`` for ``x`` (M, D) and a quantized ``w`` (V, D) -> (M, V)."""
    x = _check(x, q, q.shape[1], "matmul_t")
    return _rows_product(x, q) if q.axis == 1 else _cols_product(x, q)


def take(q: QuantizedArray, ids) -> np.ndarray:
    """Rows ``w[ids]`` of a quantized ``w`` (V, D): (...,) -> (..., D), only those rows dequantized."""
    ids = np.asarray(ids)
    if q.axis == 0:  # rows cut across groups: whole matrix
        return np.take(dequantize_array(q), ids, axis=0)
    flat = ids.reshape(-1)
    V = q.shape[0]
    if kernels.enabled() and flat.dtype.kind in "iu" and (not flat.size or (flat.min() >= -V and flat.max() < V)):
        flat = np.where(flat < 0, flat + V, flat).astype(np.int64)  # as NumPy's indexing reads them
        out = _decode(q, flat, np.empty((flat.size, q.num_groups * q.group_size), q.dtype))
        return np.ascontiguousarray(out[:, : q.shape[1]]).reshape(ids.shape + (q.shape[1],))
    rows = dequantize_codes(q.codes[flat], q.scales[flat], q.bits, q.group_size, q.shape[1])  # (N, D)
    return np.ascontiguousarray(rows).reshape(ids.shape + (q.shape[1],))
