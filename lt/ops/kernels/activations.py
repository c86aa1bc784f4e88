"""Fused elementwise kernels: GELU (tanh form), SwiGLU and ReLU², forward and backward, one pass each.

Arrays are flat (n,) and C-contiguous (the caller ravels them); outputs are allocated by the
caller. Work goes in blocks of ``BLOCK`` elements; ``prange`` over the blocks in the parallel
twin. NumPy's versions take 8-12 passes over memory (one per ufunc, and temporaries); these
read each input once and write each output once.

**exp in the loop.** numba's ``np.exp``/``np.tanh`` are scalar libm calls (no vector maths
library here): 4-30x slower than NumPy's SIMD ones. So the forwards inline a vectorisable exp:
``exp(v) = 2^k · P(r)``, ``k = round(v / ln 2)``, ``r = v - k ln 2`` (ln 2 split in two, Cody and
Waite), ``P`` the degree-11 Taylor polynomial (relative error ~2e-7 in float32, ~1e-14 in
float64), ``2^k`` built in the exponent bits of an integer view of an output (``bits``: the same
memory as a float output, written first, read back as float by the second loop of a block).
Below ``EXP_LO`` the result is 0 and above ``EXP_HI`` inf (NumPy's underflow and overflow,
a little before NumPy's own limits: in float32 exp(-87) ~ 1.6e-38), NaN stays NaN.
``exp_constants(dtype)`` gives the constants in the array's dtype: numba would widen float32
arithmetic to float64 at the first Python float literal, so the kernels use no literals, only
these. Divisions are ``np.divide``: ``/`` checks for a zero divisor (numba's Python error model)
and keeps the loop scalar (4x slower measured). A block's loops run over slices from index 0:
indices from a variable start made numba check for negative ones and not vectorise (10x).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .jit import prange, twin

__all__ = [
    "BLOCK",
    "exp_constants",
    "gelu_constants",
    "gelu_forward",
    "gelu_backward",
    "swiglu_forward",
    "swiglu_backward",
    "relu_squared_forward",
    "relu_squared_backward",
]

BLOCK = 2048  # elements per block: a few arrays of it stay in L1 between a block's two loops

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


@functools.cache
def exp_constants(dtype, *extra: float) -> tuple:
    """The exp's constants in ``dtype``, then ``extra`` ones (a kernel's own, from index 18):
    ``(1/ln2, ln2_hi, ln2_lo, EXP_LO, EXP_HI, 0.5, 1, 1/11!, ..., 1/2!, inf)``, and with them the
    integer view's type, exponent bias and shift: ``(constants, int dtype, bias, shift)``."""
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        lo, hi, ln2 = -87.0, 88.0, (0.693359375, -2.12194440e-4)
        bits = (np.int32, 127, 23)
    else:
        lo, hi, ln2 = -708.0, 709.0, (6.93147180369123816490e-01, 1.90821492927058770002e-10)
        bits = (np.int64, 1023, 52)
    values = [1 / math.log(2), *ln2, lo, hi, 0.5, 1.0] + [1 / math.factorial(k) for k in range(11, 1, -1)] + [math.inf]
    return (tuple(dtype.type(v) for v in values + list(extra)), *bits)


@functools.cache
def gelu_constants(dtype) -> tuple:
    """:func:`exp_constants` with GELU's: [18] 2√(2/π), [19] 2√(2/π)·0.044715, [20] √(2/π),
    [21] 3·0.044715·√(2/π)."""
    return exp_constants(dtype, 2 * _GELU_C, 2 * _GELU_C * _GELU_A, _GELU_C, 3 * _GELU_A * _GELU_C)


def _gelu_forward(x, t, y, ybits, c, bias, shift):
    """y = 0.5 x (1 + tanh(u)) = x · s, t = tanh(u) = 2s - 1, u = √(2/π) (x + 0.044715 x³), with
    s = sigmoid(2u) = 1 / (1 + exp(-2u)). x, t, y: (n,); ybits: y's memory as integers (2^k)."""
    n = x.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(lo + BLOCK, n)
        xs, ts, ys, bs = x[lo:hi], t[lo:hi], y[lo:hi], ybits[lo:hi]  # slices: indices from 0 vectorise
        for i in range(hi - lo):  # t = P(r), ybits = 2^k's bits, for exp(-2u)
            v = xs[i]
            w = -v * (c[18] + c[19] * v * v)  # -2u
            under, over = w < c[3], w > c[4]
            w = c[4] if over else w
            w = c[3] if under else w
            k = np.floor(w * c[0] + c[5])
            r = w - k * c[1] - k * c[2]
            p = c[7] * r + c[8]
            p = p * r + c[9]
            p = p * r + c[10]
            p = p * r + c[11]
            p = p * r + c[12]
            p = p * r + c[13]
            p = p * r + c[14]
            p = p * r + c[15]
            p = p * r + c[16]
            ts[i] = c[6] - c[6] if under else (c[17] if over else p * r * r + r + c[6])  # exp: 0 or inf past the ends
            bs[i] = (np.int64(k) + bias) << shift
        for i in range(hi - lo):
            e = ts[i] * ys[i]
            sg = np.divide(c[6], c[6] + e)  # np.divide: `/` checks for zero (Python's error model) and stays scalar
            ts[i] = sg + sg - c[6]
            ys[i] = xs[i] * sg


def _gelu_backward(x, t, g, d, c):
    """d = g (0.5 (1 + t) + 0.5 x (1 - t²) √(2/π) (1 + 3·0.044715 x²)): GELU's VJP; x, t, g, d (n,);
    c: :func:`gelu_constants` ([5] 0.5, [6] 1, [20] √(2/π), [21] 3·0.044715·√(2/π))."""
    n = x.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(lo + BLOCK, n)
        xs, ts, gs, ds = x[lo:hi], t[lo:hi], g[lo:hi], d[lo:hi]
        for i in range(hi - lo):
            v, s = xs[i], ts[i]
            slope = v * (c[6] - s * s) * (c[20] + c[21] * v * v)
            ds[i] = gs[i] * c[5] * (c[6] + s + slope)


def _swiglu_forward(gate, up, sig, h, hbits, c, bias, shift):
    """sig = sigmoid(gate) = 1 / (1 + exp(-gate)), h = gate · sig · up; all (n,); hbits: h's
    memory as integers (the exp's 2^k); c: :func:`exp_constants`."""
    n = gate.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(lo + BLOCK, n)
        gs, us, ss, hs, bs = gate[lo:hi], up[lo:hi], sig[lo:hi], h[lo:hi], hbits[lo:hi]
        for i in range(hi - lo):  # sig = P(r), hbits = 2^k's bits, for exp(-gate)
            w = -gs[i]
            under, over = w < c[3], w > c[4]
            w = c[4] if over else w
            w = c[3] if under else w
            k = np.floor(w * c[0] + c[5])
            r = w - k * c[1] - k * c[2]
            p = c[7] * r + c[8]
            p = p * r + c[9]
            p = p * r + c[10]
            p = p * r + c[11]
            p = p * r + c[12]
            p = p * r + c[13]
            p = p * r + c[14]
            p = p * r + c[15]
            p = p * r + c[16]
            ss[i] = c[6] - c[6] if under else (c[17] if over else p * r * r + r + c[6])  # exp: 0 or inf past the ends
            bs[i] = (np.int64(k) + bias) << shift
        for i in range(hi - lo):
            s = np.divide(c[6], c[6] + ss[i] * hs[i])
            ss[i] = s
            hs[i] = gs[i] * s * us[i]


def _swiglu_backward(gate, up, sig, g, dgate, dup, one):
    """dup = g · silu, dgate = g · up · sig (1 + gate (1 - sig)), silu = gate · sig; all (n,);
    ``one``: 1 in the arrays' dtype."""
    n = gate.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(lo + BLOCK, n)
        gs, us, ss, cs, dgs, dus = gate[lo:hi], up[lo:hi], sig[lo:hi], g[lo:hi], dgate[lo:hi], dup[lo:hi]
        for i in range(hi - lo):
            a, s, gi = gs[i], ss[i], cs[i]
            dus[i] = gi * a * s
            dgs[i] = gi * us[i] * s * (one + a * (one - s))


def _relu_squared_forward(x, r, y, zero):
    """r = max(x, 0) (NaN kept, as np.maximum), y = r²; all (n,); ``zero`` in x's dtype."""
    n = x.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(lo + BLOCK, n)
        xs, rs, ys = x[lo:hi], r[lo:hi], y[lo:hi]
        for i in range(hi - lo):
            v = xs[i]
            v = zero if v < zero else v
            rs[i] = v
            ys[i] = v * v


def _relu_squared_backward(r, g, d):
    """d = 2 g r (ReLU²'s VJP, r = max(x, 0)); all (n,)."""
    n = r.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(lo + BLOCK, n)
        rs, gs, ds = r[lo:hi], g[lo:hi], d[lo:hi]
        for i in range(hi - lo):
            e = gs[i] * rs[i]
            ds[i] = e + e


gelu_forward = twin(_gelu_forward)
gelu_backward = twin(_gelu_backward)
swiglu_forward = twin(_swiglu_forward)
swiglu_backward = twin(_swiglu_backward)
relu_squared_forward = twin(_relu_squared_forward)
relu_squared_backward = twin(_relu_squared_backward)
