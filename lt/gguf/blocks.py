"""ggml's tensor types: their sizes, and Q8_0 / Q4_0 blocks to and from lt's quantized leaves.

Shapes: R rows (a GGUF tensor's outer axis; a Linear weight's output channels), K the row
length (its reduction axis), nb = K / 32 blocks per row.

A GGUF tensor of a block type stores each row as nb blocks of 32 weights:

- Q8_0, 34 bytes: ``d`` (float16), then 32 int8 codes ``q``; weight ``q * d``.
- Q4_0, 18 bytes: ``d`` (float16), then 16 bytes; byte j holds weight j's code in its low
  nibble and weight j + 16's in its high one; weight ``(q - 8) * d``, so codes run -8..7.

Both are lt quantized leaves of group size 32 exactly (``lt.quant.from_codes``): int8 codes, or
int4 codes repacked into lt's nibble order, with ``d`` widened to float32. No float copy of the
matrix is made. :func:`quantize_q8_0` / :func:`quantize_q4_0` make the blocks ggml's reference
quantizer makes from float32 weights, bit for bit (its rounding: Q8_0 rounds half away from
zero, Q4_0 scales by the signed weight of largest magnitude and truncates ``q + 8.5``).
"""

from __future__ import annotations

import numpy as np

from .. import quant

__all__ = [
    "F32",
    "F16",
    "Q4_0",
    "Q8_0",
    "F64",
    "BF16",
    "TYPES",
    "BLOCK",
    "type_name",
    "nbytes",
    "floats",
    "to_leaf",
    "quantize_q8_0",
    "quantize_q4_0",
    "leaf_blocks",
]

F32, F16, Q4_0, Q8_0, F64, BF16 = 0, 1, 2, 8, 28, 30
BLOCK = 32  # weights per Q8_0 / Q4_0 block
# ggml type id -> (name, weights per block, bytes per block): the sizes let a reader check that a
# tensor lies inside the file, whatever its type, before reading it.
TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}  # fmt: skip
_FLOATS = {F32: "<f4", F16: "<f2", F64: "<f8", BF16: "<u2"}


def type_name(kind: int) -> str:
    return TYPES[kind][0] if kind in TYPES else f"type {kind}"


def nbytes(kind: int, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of ggml type ``kind`` and NumPy shape ``shape`` (rows of ``shape[-1]``);
    a ValueError when its rows are not whole blocks."""
    _, block, size = TYPES[kind]
    count = int(np.prod(shape, dtype=object)) if shape else 1
    if shape and shape[-1] % block:
        raise ValueError(f"a {type_name(kind)} tensor's rows must be whole blocks of {block}, got {shape[-1]}")
    return count // block * size


def floats(raw: np.ndarray, kind: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    """The F32 / F16 / BF16 / F64 bytes ``raw`` (uint8) as a ``dtype`` array of ``shape``."""
    stored = raw.view(_FLOATS[kind])
    if kind == BF16:  # a bfloat16 is the top half of a float32
        stored = (stored.astype(np.uint32) << 16).view(np.float32)
    return stored.astype(dtype).reshape(shape)


def to_leaf(raw: np.ndarray, kind: int, rows: int, K: int, *, axis: int, dtype) -> quant.QuantizedArray:
    """Q8_0 / Q4_0 bytes ``raw`` (uint8) of a (rows, K) tensor as an lt leaf of group size 32:
    the logical shape is (K, rows) for ``axis=0`` (a Linear weight (in, out)), (rows, K) for 1."""
    nb = K // BLOCK
    blocks = raw.reshape(rows, nb, TYPES[kind][2])
    scales = blocks[:, :, :2].copy().view("<f2")[:, :, 0].astype(dtype)  # (R, nb)
    if kind == Q8_0:
        codes = blocks[:, :, 2:].view(np.int8).reshape(rows, K)
        bits = 8
    else:
        packed = blocks[:, :, 2:]  # (R, nb, 16)
        codes = np.concatenate([packed & 15, packed >> 4], axis=2).view(np.int8) - np.int8(8)  # (R, nb, 32)
        codes, bits = codes.reshape(rows, K), 4
    if not np.isfinite(scales).all():
        raise ValueError(f"a {type_name(kind)} tensor holds non-finite block scales (NaN or inf); refusing to load it")
    shape = (K, rows) if axis == 0 else (rows, K)
    signed = bool((scales < 0).any())  # Q4_0's d = max / -8 (Q8_0's is never negative, but may be read so)
    return quant.from_codes(codes, scales, bits=bits, group_size=BLOCK, axis=axis, shape=shape, signed_scales=signed)


# ----------------------------------------------------------------- quantizing as ggml does


def _blocks(w: np.ndarray) -> np.ndarray:
    """Rows (R, K) float -> float32 blocks (R, nb, 32)."""
    w = np.asarray(w)
    if w.ndim != 2 or w.shape[1] % BLOCK:
        raise ValueError(f"Q8_0 / Q4_0 quantize rows of whole blocks of {BLOCK}: got a matrix of shape {w.shape}")
    return w.astype(np.float32).reshape(w.shape[0], -1, BLOCK)


def _inverse(d: np.ndarray) -> np.ndarray:
    """1 / d in float32, 0 where d is 0 (an all-zero block)."""
    return np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)


def _pack(d: np.ndarray, payload: np.ndarray) -> np.ndarray:
    """Blocks (R, nb, 2 + n) uint8 from scales (R, nb, 1) float32 and payload bytes (R, nb, n), as rows."""
    head = d.astype("<f2").view(np.uint8)  # (R, nb, 2)
    out = np.concatenate([head, payload], axis=2)
    return out.reshape(out.shape[0], -1)


def quantize_q8_0(w) -> np.ndarray:
    """Rows (R, K) as Q8_0 bytes (R, nb * 34) uint8: ``d = max|w| / 127`` (float32, stored float16),
    ``q = round(w / d)`` with halves away from zero, as ggml rounds them."""
    x = _blocks(w)
    d = np.abs(x).max(axis=2, keepdims=True) / np.float32(127)  # (R, nb, 1)
    a = np.abs(x * _inverse(d))
    whole = np.floor(a)
    q = np.copysign(whole + (a - whole >= np.float32(0.5)), x)  # round half away from zero
    return _pack(d, q.astype(np.int8).view(np.uint8))


def quantize_q4_0(w) -> np.ndarray:
    """Rows (R, K) as Q4_0 bytes (R, nb * 18) uint8: ``d = m / -8`` for m the block's signed weight
    of largest magnitude (the first, on a tie), ``q = min(trunc(w / d + 8.5), 15)``."""
    x = _blocks(w)
    m = np.take_along_axis(x, np.abs(x).argmax(axis=2)[:, :, None], axis=2)  # (R, nb, 1)
    d = m / np.float32(-8)
    q = np.trunc(x * _inverse(d) + np.float32(8.5)).astype(np.uint8).clip(0, 15)  # (R, nb, 32)
    return _pack(d, q[:, :, :16] | (q[:, :, 16:] << 4))


def leaf_blocks(q: quant.QuantizedArray, kind: int) -> np.ndarray | None:
    """``q``'s stored rows as ``kind`` (Q8_0 / Q4_0) bytes (R, nb * size), when that holds exactly
    its values (int8 resp. int4 codes, groups of 32, float16-exact scales); else None."""
    bits = {Q8_0: 8, Q4_0: 4}[kind]
    K = q.shape[q.axis]
    if q.bits != bits or q.group_size != BLOCK or K % BLOCK:
        return None
    with np.errstate(over="ignore"):
        half = q.scales.astype("<f2")
    if not (np.isfinite(half).all() and (half.astype(q.scales.dtype) == q.scales).all()):
        return None
    codes = quant.integer_codes(q).reshape(q.codes.shape[0], -1, BLOCK)  # (R, nb, 32)
    d = half.astype(np.float32)[:, :, None]
    if kind == Q8_0:
        return _pack(d, codes.view(np.uint8))
    u = (codes + np.int8(8)).view(np.uint8)
    return _pack(d, u[:, :, :16] | (u[:, :, 16:] << 4))
