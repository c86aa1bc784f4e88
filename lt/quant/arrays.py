"""Quantized weight leaves: int8 and int4 codes with one scale per group (llama.cpp's Q8_0 / Q4_0).

Shapes: R stored rows (the output axis), K the reduction axis, G the group size,
g = ceil(K / G) groups per row, Kp = g * G (K padded with zero weights).

A :class:`QuantizedArray` stands in a params tree where a float matrix stood: it is one
leaf for ``lt.tree`` (flatten, map, paths, set), immutable (frozen attributes, read-only
arrays), picklable, and shows the float matrix's ``shape`` and the ``dtype`` it computes
in, so a model's parameter checks accept it. The matmul primitives (``lt.ops.linear``,
``unembed``, ``embedding``, ``matmul``) know both leaf kinds and dequantize one
cache-sized tile at a time (``lt.ops.quantized``): a model never holds the float matrix.

Storage: groups of G consecutive weights along the *reduction* axis, one scale each, so
one group feeds one partial dot product. ``axis`` is that axis of the logical matrix: 0
for a Linear weight (in, out) (the stored rows are its output columns), 1 for an
embedding table (V, D) (the stored rows are its rows: a gathered row and ``h @ w.T`` both
read whole groups).

Schemes (symmetric, no zero point; ``s`` the group's scale, ``c`` its integer codes):

- int8: ``s = max|w| / 127``, ``c = round(w / s)`` in [-127, 127], int8 codes (R, Kp).
- int4: codes in [-8, 7] (all 16 levels, as Q4_0) with a signed scale per group chosen to
  minimise the group's squared error among ``s = m / d``, ``m`` the group's largest-magnitude
  weight (signed), ``d`` in :data:`INT4_DIVISORS` (-8 is Q4_0's ``max / -8``, 7 the symmetric
  ``max / 7``): a third to a half of ``max / 7``'s perplexity cost (``bench_quant.py``). Stored
  ``c + 8`` in a nibble, two to a byte: (R, Kp / 2) uint8. Byte j of a stored row holds code j
  in its low nibble and code j + Kp / 2 in its high one (llama.cpp pairs the halves of each
  block of 32 the same way): unpacking is two contiguous passes over bytes, and with an even
  number of groups each group sits in one half. :func:`from_codes` takes codes in [-8, 7], so
  llama.cpp's Q4_0 blocks load as an int4 leaf of group size 32 with exactly their values.
  Leaves of the older ``max / 7`` scheme (non-negative scales) load as they are: a leaf
  records whether its scales are signed.

Dequantized, an int8 ``c * s`` is within ``s / 2`` of ``w`` (plus float rounding); an int4 one
within ``|s| / 2`` where ``w / s`` lies in [-8.5, 7.5], and within ``2 |s|`` always (a candidate
may clip the largest weight when that lowers the group's error). An all-zero group has
``s = 0`` and dequantizes to exact zeros. Scales are stored in the compute dtype, and are
non-negative unless the leaf says ``signed_scales``: Q4_0's ``d = max / -8`` is negative
wherever a block's largest weight is positive, and its codes cannot be flipped to fit (-(-8)
is no int4), so such a leaf keeps the sign in its scales (c * s is the same product).
"""

from __future__ import annotations

import numpy as np

from .. import tree

__all__ = [
    "QuantizedArray",
    "quantize_array",
    "dequantize_array",
    "from_codes",
    "integer_codes",
    "signed_codes",
    "dequantize_codes",
    "is_quantized",
    "SCHEMES",
    "DEFAULT_GROUP_SIZE",
    "INT4_DIVISORS",
]

SCHEMES = {8: 127, 4: 7}  # bits -> the largest code magnitude
# bits -> the group size ``group_size=None`` means: int8 one scale per output channel (row-wise,
# as bitsandbytes; the fastest to decode, since scales then multiply whole dot products), int4
# one per 32 weights (Q4_0's block: 4 bits alone are too coarse for a whole row).
DEFAULT_GROUP_SIZE: dict[int, int | str] = {8: "channel", 4: 32}
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# int4's candidate scales are m / d (m the group's signed largest weight), tried in this order; the
# first of the least squared error wins. -8 is Q4_0's choice, 7 the symmetric max / 7.
INT4_DIVISORS = tuple(np.linspace(-9.0, -6.0, 16).tolist() + np.linspace(6.0, 8.0, 8).tolist())


def _int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_bits(bits) -> int:
    """``bits`` as the int 8 or 4 (a NumPy integer too), or a ValueError naming it."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits not in SCHEMES:
        raise ValueError(f"bits must be 8 or 4 (an int), got {bits!r}")
    return int(bits)


def group_size_for(K: int, bits: int, group_size: int | str | None) -> int:
    """The group size G used for rows of K weights: None is the scheme's default
    (:data:`DEFAULT_GROUP_SIZE`), ``"channel"`` one group per row; a larger group than a row is
    clamped to one (it would only pad the row with zeros). For int4 a row's group is K rounded
    up to even (two codes to a byte); an empty row still gets G >= 1 (2)."""
    row = max(K + (K % 2 if bits == 4 else 0), 2 if bits == 4 else 1)
    group_size = DEFAULT_GROUP_SIZE[bits] if group_size is None else group_size
    if group_size == "channel":
        return row
    return min(_int(group_size, "group_size", 1), row)


class QuantizedArray:
    """A 2-D float matrix stored as integer codes plus one scale per group of G weights.

    ``codes`` int8 (R, Kp) for 8 bits, uint8 (R, Kp / 2) for 4; ``scales`` (R, g) float32
    or float64 (the dtype the leaf computes in); ``axis`` the logical reduction axis (0 or 1);
    ``shape`` the logical (float) shape; ``signed_scales`` allows negative scales (Q4_0's).
    Arrays that may be held elsewhere are copied, and all are made read-only: the leaf is as
    immutable as a float leaf.
    """

    __slots__ = ("codes", "scales", "bits", "group_size", "axis", "shape", "signed_scales")
    codes: np.ndarray
    scales: np.ndarray
    bits: int
    group_size: int
    axis: int
    shape: tuple[int, ...]
    signed_scales: bool

    def __init__(
        self, codes, scales, *, bits: int, group_size: int, axis: int, shape, copy: bool = True, signed_scales=False
    ):
        bits = _int(bits, "bits", 1)
        if bits not in SCHEMES:
            raise ValueError(f"bits must be 8 or 4, got {bits}")
        group_size = _int(group_size, "group_size", 1)
        if bits == 4 and group_size % 2:
            raise ValueError(f"int4 packs two codes to a byte: group_size must be even, got {group_size}")
        if axis not in (0, 1):
            raise ValueError(f"axis must be 0 or 1 (the reduction axis of a matrix), got {axis!r}")
        shape = tuple(_int(n, "shape", 0) for n in shape)
        if len(shape) != 2:
            raise ValueError(f"a quantized leaf is a matrix: shape must have 2 dimensions, got {shape}")
        codes, scales = np.asarray(codes), np.asarray(scales)
        R, K = shape[1 - axis], shape[axis]
        g = -(-K // group_size)
        want_codes = (R, g * group_size // (8 // bits))
        want_dtype = np.dtype(np.int8 if bits == 8 else np.uint8)
        if codes.dtype != want_dtype or codes.shape != want_codes:
            raise ValueError(
                f"int{bits} codes of a {shape} matrix (groups of {group_size} along axis {axis}) "
                f"must be {want_dtype}{list(want_codes)}, got {codes.dtype}{list(codes.shape)}"
            )
        if scales.dtype not in FLOAT_DTYPES or scales.shape != (R, g):
            raise ValueError(
                f"scales of a {shape} matrix (groups of {group_size} along axis {axis}) must be "
                f"float32 or float64 of shape {[R, g]}, got {scales.dtype}{list(scales.shape)}"
            )
        if not isinstance(signed_scales, (bool, np.bool_)):
            raise ValueError(f"signed_scales must be True or False, got {signed_scales!r}")
        if not np.isfinite(scales).all():
            raise ValueError("scales must be finite" + ("" if signed_scales else " and non-negative"))
        if not signed_scales and not (scales >= 0).all():
            raise ValueError(
                "scales must be finite and non-negative (give signed_scales=True for Q4_0's signed scales)"
            )
        seal = tree.freeze_leaf if copy else tree.seal
        for name, value in (
            ("codes", seal(np.ascontiguousarray(codes))),
            ("scales", seal(np.ascontiguousarray(scales))),
            ("bits", bits),
            ("group_size", group_size),
            ("axis", axis),
            ("shape", shape),
            ("signed_scales", bool(signed_scales)),
        ):
            object.__setattr__(self, name, value)

    # What a float leaf answers, so that shape checks and lt.tree utilities treat it as one.
    dtype = property(lambda self: self.scales.dtype)
    ndim = property(lambda self: 2)
    size = property(lambda self: self.shape[0] * self.shape[1])
    nbytes = property(lambda self: self.codes.nbytes + self.scales.nbytes)
    num_groups = property(lambda self: self.scales.shape[1])

    @property
    def scheme(self) -> dict:
        """What a checkpoint header records: bits, group size and reduction axis (and
        ``signed_scales: True`` where set, so that a leaf without it is recorded as before)."""
        scheme: dict = {"bits": self.bits, "group_size": self.group_size, "axis": self.axis}
        return {**scheme, "signed_scales": True} if self.signed_scales else scheme

    def _refuse(self, *args, **kwargs):
        raise TypeError(
            "a QuantizedArray cannot be changed in place; quantize a new matrix "
            "(lt.quantize / lt.quant.quantize_array) and lt.tree.set it"
        )

    __setattr__ = __delattr__ = _refuse

    def __reduce__(self):
        return _rebuild, (
            self.codes,
            self.scales,
            self.bits,
            self.group_size,
            self.axis,
            self.shape,
            self.signed_scales,
        )

    def __repr__(self) -> str:
        return (
            f"QuantizedArray(int{self.bits}, shape={self.shape}, dtype={self.dtype}, "
            f"group_size={self.group_size}, axis={self.axis}, nbytes={self.nbytes})"
        )

    def __array__(self, *args, **kwargs):
        raise TypeError(
            f"a quantized int{self.bits} leaf {self.shape} is not a float array; the lt.ops matmuls "
            "take it as it is, lt.quant.dequantize_array(leaf) gives the float matrix"
        )

    def __getitem__(self, idx):
        """Whole groups only: a slice of stored rows (``w[:, a:b]`` of a Linear weight, ``w[a:b]``
        of a table), as a new quantized leaf that shares nothing writeable."""
        idx = idx if isinstance(idx, tuple) else (idx,)
        idx = idx + (slice(None),) * (2 - len(idx)) if len(idx) <= 2 else idx
        rows, red = (idx[1 - self.axis], idx[self.axis]) if len(idx) == 2 else (None, None)
        if not isinstance(rows, slice) or red != slice(None):
            raise TypeError(
                f"a quantized leaf can be sliced along its stored rows only (axis {1 - self.axis}), "
                f"got {idx!r}; dequantize it first (lt.quant.dequantize_array)"
            )
        shape = list(self.shape)
        shape[1 - self.axis] = len(range(*rows.indices(self.shape[1 - self.axis])))
        return QuantizedArray(self.codes[rows], self.scales[rows], **self.scheme, shape=shape)


def _rebuild(codes, scales, bits, group_size, axis, shape, signed_scales=False):
    return QuantizedArray(
        codes, scales, bits=bits, group_size=group_size, axis=axis, shape=shape, copy=False, signed_scales=signed_scales
    )


def is_quantized(x) -> bool:
    return type(x) is QuantizedArray


# ----------------------------------------------------------------- quantize

_CHUNK = 1 << 20  # weights quantized per pass (float64 work stays ~8 MiB)


def quantize_array(w, bits: int = 8, group_size: int | str | None = None, axis: int = 0) -> QuantizedArray:
    """The matrix ``w`` (2-D, finite floats) quantized in groups of ``group_size`` along ``axis``
    (its reduction axis: 0 for a Linear weight (in, out), 1 for an embedding table).
    ``bits`` the integer 8 or 4. ``group_size="channel"`` is one group per stored row (per
    output channel; rounded up to even for int4); ``None`` is the scheme's default
    (:data:`DEFAULT_GROUP_SIZE`); a group larger than a row is clamped to one row, the same
    as ``"channel"`` (a larger one would only pad with zeros). An empty matrix ((0, n) or
    (n, 0)) quantizes to an empty leaf of its shape."""
    w = np.asarray(w)
    if w.ndim != 2 or w.dtype not in FLOAT_DTYPES:
        raise TypeError(f"quantize_array needs a float32 or float64 matrix, got {w.dtype}{list(w.shape)}")
    bits = check_bits(bits)
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 or 1, got {axis!r}")
    if not np.isfinite(w).all():
        raise ValueError("cannot quantize a matrix holding NaN or inf")
    K = w.shape[axis]
    G = group_size_for(K, bits, group_size)
    if bits == 4 and G % 2:
        raise ValueError(f"int4 packs two codes to a byte: group_size must be even, got {G}")
    rows = w.T if axis == 0 else w  # (R, K)
    R, g = rows.shape[0], -(-K // G)
    codes = np.empty((R, g * G // (8 // bits)), np.int8 if bits == 8 else np.uint8)
    scales = np.empty((R, g), w.dtype)
    step = max(1, _CHUNK // max(1, g * G))
    for a in range(0, R, step):  # a block of stored rows at a time
        b = min(a + step, R)
        block = np.zeros((b - a, g * G), np.float64)
        block[:, :K] = rows[a:b]
        block = block.reshape(b - a, g, G)  # (n, g, G)
        if bits == 8:
            scales[a:b] = np.abs(block).max(axis=2) / SCHEMES[bits]  # (n, g)
        else:
            scales[a:b] = _int4_scales(block, w.dtype)
        s = scales[a:b].astype(np.float64)  # codes from the scale as stored
        c = _codes(block, s, -SCHEMES[bits] - (bits == 4), SCHEMES[bits]).astype(np.int8)  # (n, g, G)
        codes[a:b] = c.reshape(b - a, -1) if bits == 8 else _pack4(c.reshape(b - a, -1))
    signed = bits == 4
    return QuantizedArray(
        codes, scales, bits=bits, group_size=G, axis=axis, shape=w.shape, copy=False, signed_scales=signed
    )


def _codes(block: np.ndarray, s: np.ndarray, low: int, high: int) -> np.ndarray:
    """``clip(round(block / s), low, high)`` as floats: block (n, g, G), s (n, g); 0 where s is 0."""
    c = np.divide(block, s[:, :, None], out=np.zeros_like(block), where=s[:, :, None] != 0)
    return np.clip(np.rint(c, out=c), low, high, out=c)


def _int4_scales(block: np.ndarray, dtype) -> np.ndarray:
    """Per group of ``block`` (n, g, G) float64, the candidate scale ``m / d`` (``d`` in
    :data:`INT4_DIVISORS`, as stored in ``dtype``) whose codes in [-8, 7] give the least squared
    error -> (n, g) ``dtype``; the first such candidate on ties."""
    m = np.take_along_axis(block, np.abs(block).argmax(axis=2)[:, :, None], axis=2)[:, :, 0]  # (n, g)
    best = np.zeros(m.shape, dtype)
    best_err = np.full(m.shape, np.inf)
    for d in INT4_DIVISORS:
        s = (m / d).astype(dtype)
        sd = s.astype(np.float64)
        c = _codes(block, sd, -8, 7)
        c *= sd[:, :, None]
        c -= block
        err = np.einsum("ngk,ngk->ng", c, c)  # (n, g) squared error of the dequantized group
        better = err < best_err
        best[better], best_err[better] = s[better], err[better]
    return best


def _pack4(c: np.ndarray) -> np.ndarray:
    """Signed int4 codes (n, Kp) in [-8, 7] -> stored bytes (n, Kp / 2): byte j holds code j + 8
    in its low nibble and code j + Kp / 2 + 8 in its high one."""
    u = (c + 8).astype(np.uint8)
    half = u.shape[1] // 2
    return u[:, :half] | (u[:, half:] << 4)


def from_codes(codes, scales, *, bits: int, group_size: int, axis: int, shape, signed_scales=False) -> QuantizedArray:
    """The leaf whose stored row r holds ``codes[r] * scales[r, j]`` in group j, exactly: a reader of
    another block format (GGUF's Q8_0 and Q4_0) hands over integer codes and lt packs them.

    ``codes`` (R, Kp) integers: int8 in [-128, 127] for 8 bits, [-8, 7] for 4 (Q4_0 uses -8);
    ``scales`` (R, g) float32 or float64; ``shape`` the logical matrix, ``axis`` its reduction
    axis (as :class:`QuantizedArray`, ``signed_scales`` too). A code outside the range raises."""
    bits = check_bits(bits)
    codes = np.asarray(codes)
    low, high = (-128, 127) if bits == 8 else (-8, 7)
    if codes.ndim != 2 or codes.dtype.kind not in "iu":
        raise TypeError(f"from_codes needs an integer matrix of codes, got {codes.dtype}{list(codes.shape)}")
    if codes.size and (int(codes.min()) < low or int(codes.max()) > high):
        bad = int(codes.min()) if int(codes.min()) < low else int(codes.max())
        raise ValueError(f"int{bits} codes must lie in [{low}, {high}], got {bad}")
    if bits == 4 and codes.shape[1] % 2:
        raise ValueError(f"int4 packs two codes to a byte: a stored row needs an even length, got {codes.shape[1]}")
    packed = codes.astype(np.int8) if bits == 8 else _pack4(codes.astype(np.int8))
    return QuantizedArray(
        packed,
        scales,
        bits=bits,
        group_size=group_size,
        axis=axis,
        shape=shape,
        copy=False,
        signed_scales=signed_scales,
    )


def integer_codes(q: QuantizedArray) -> np.ndarray:
    """The signed integer codes of ``q``'s stored rows, (R, Kp) int8: :func:`from_codes`' inverse."""
    if q.bits == 8:
        return q.codes.copy()
    half = q.codes.shape[1]
    out = np.empty((q.codes.shape[0], 2 * half), np.int8)
    out[:, :half] = q.codes & 15
    out[:, half:] = q.codes >> 4
    return out - np.int8(8)


def signed_codes(
    codes: np.ndarray, bits: int, group_size: int, out: np.ndarray, scratch: np.ndarray | None = None
) -> np.ndarray:
    """The integer codes of stored rows ``codes`` as floats in ``out`` (n, Kp): unpacked, unscaled.

    int4 unpacks into ``scratch`` (n, Kp) int8 first: the nibble arithmetic runs on bytes,
    and one contiguous cast (NumPy's fastest loop) makes the floats."""
    if bits == 8:
        np.copyto(out, codes, casting="unsafe")
        return out
    half = codes.shape[1]  # Kp / 2
    u = np.empty(out.shape, np.int8) if scratch is None else scratch
    bytes_ = u.view(np.uint8)
    np.bitwise_and(codes, 15, out=bytes_[:, :half])  # codes [0, Kp/2): low nibbles
    np.right_shift(codes, 4, out=bytes_[:, half:])  # codes [Kp/2, Kp): high nibbles
    np.subtract(u, 8, out=u)  # stored c + 8 -> c
    np.copyto(out, u, casting="unsafe")
    return out


def dequantize_codes(
    codes: np.ndarray,
    scales: np.ndarray,
    bits: int,
    group_size: int,
    K: int,
    out: np.ndarray | None = None,
    scratch: np.ndarray | None = None,
) -> np.ndarray:
    """Stored rows (codes (n, ...), scales (n, g)) as floats (n, K), written into ``out`` (n, Kp)
    (``scratch``: (n, Kp) int8 for int4's unpacking)."""
    n, g = scales.shape
    out = np.empty((n, g * group_size), scales.dtype) if out is None else out
    signed_codes(codes, bits, group_size, out, scratch)
    o = out.reshape(n, g, group_size)
    np.multiply(o, scales[:, :, None], out=o)
    return out[:, :K]


def dequantize_array(q: QuantizedArray) -> np.ndarray:
    """The float matrix ``q`` stands for (``shape``, ``dtype``), read-only."""
    rows = dequantize_codes(q.codes, q.scales, q.bits, q.group_size, q.shape[q.axis])  # (R, K)
    return tree.seal(np.ascontiguousarray(rows.T if q.axis == 0 else rows))
