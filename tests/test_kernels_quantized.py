"""The compiled kernels of quantized products, gathers and few-row float products equal their
NumPy references (``lt.ops.kernels.use("numba")`` against ``use("numpy")``).

Tolerances: a product's error is bounded by ``rtol * (|x| @ |w|)`` elementwise (rtol 1e-5 in
float32, 1e-12 in float64): the kernels add in another order (fastmath reassociation). Where the
arithmetic is the same (a dequantized code is one product ``c * s``; a gather; the tiles handed
to the BLAS) the results are equal bit for bit.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

import lt
from lt import ops, quant
from lt.ops import basic, kernels, quantized

RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
SETTINGS = dict(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def leaves(draw):
    """A quantized leaf of random shape and scheme: ``quantize_array``'s, or ``from_codes``' with
    signed scales and Q4_0's code -8 (as a GGUF file's)."""
    bits = draw(st.sampled_from([8, 4]))
    axis = draw(st.sampled_from([0, 1]))
    R, K = draw(st.integers(1, 20)), draw(st.integers(1, 100))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (K, R) if axis == 0 else (R, K)
    if draw(st.booleans()):
        group = draw(st.sampled_from([None, "channel", 2, 4, 6, 8, 16, 32, 64]))
        return quant.quantize_array(rng.standard_normal(shape).astype(dtype), bits, group, axis), rng
    G = draw(st.sampled_from([2, 4, 8, 32])) if bits == 4 else draw(st.sampled_from([1, 3, 8, 32]))
    g = -(-K // G)
    low, high = (-128, 127) if bits == 8 else (-8, 7)
    codes = rng.integers(low, high + 1, (R, g * G))
    codes[:, K:] = 0  # the padding holds zero weights
    scales = rng.standard_normal((R, g)).astype(dtype)
    leaf = quant.from_codes(codes, scales, bits=bits, group_size=G, axis=axis, shape=shape, signed_scales=True)
    return leaf, rng


def _both(fn, *args):
    with kernels.use("numpy"):
        ref = fn(*args)
    with kernels.use("numba"):
        got = fn(*args)
    return ref, got


def _close(got, ref, x, w, dtype):
    """|got - ref| <= rtol * (|x| @ |w|) (+ the dtype's tiny for all-zero products)."""
    assert got.shape == ref.shape and got.dtype == ref.dtype
    bound = RTOL[np.dtype(dtype)] * (np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64))
    assert np.all(np.abs(got.astype(np.float64) - ref) <= bound + np.finfo(dtype).tiny)


@settings(**SETTINGS)
@given(leaf=leaves(), M=st.integers(1, 9), transposed=st.booleans())
def test_quantized_products_equal_the_numpy_reference(leaf, M, transposed):
    """``x @ w`` and ``x @ w.T``: the codes read directly for M <= 4 (both storage axes: rows of
    the product, or its columns), the kernel-dequantized tiles through the BLAS beyond."""
    q, rng = leaf
    w = quant.dequantize_array(q)  # (in, out) as the product sees it
    if transposed:
        w = w.T
    x = rng.standard_normal((M, w.shape[0])).astype(q.dtype)
    ref, got = _both(quantized.matmul_t if transposed else quantized.matmul, x, q)
    reads_codes = M <= quantized._FEW_ROWS and q.axis == (1 if transposed else 0)
    if reads_codes:
        _close(got, ref, x, w, q.dtype)
    else:  # the same tiles (each weight one product c * s) through the same BLAS calls
        assert np.array_equal(got, ref)


@settings(**SETTINGS)
@given(leaf=leaves(), n=st.integers(0, 12))
def test_gathered_rows_are_the_numpy_references_bit_for_bit(leaf, n):
    q, rng = leaf
    V = q.shape[0]
    ids = rng.integers(-V, V, (n,)).reshape(-1, 1) if n else np.zeros((0,), np.int64)
    ref, got = _both(quantized.take, q, ids)
    assert got.dtype == ref.dtype and np.array_equal(got, ref)


def test_a_gather_out_of_range_raises_as_numpy_does():
    q = quant.quantize_array(np.ones((5, 8), np.float32), 4, axis=1)
    for choice in ("numpy", "numba"):
        with kernels.use(choice), pytest.raises(IndexError):
            quantized.take(q, np.array([5]))


@settings(**SETTINGS)
@given(
    M=st.integers(1, 4),
    K=st.integers(1, 700),
    N=st.integers(1, 70),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_few_row_float_products_equal_the_blas(M, K, N, dtype, seed):
    """``linear`` (x @ w, w (in, out)) and ``unembed`` (h @ w.T, w (V, D)) with up to 4 rows on the
    matrix-vector kernels (their size threshold lowered to reach small shapes)."""
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((M, K)).astype(dtype), rng.standard_normal((K, N)).astype(dtype)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(basic, "DECODE_MIN_SIZE", 0)
        mp.setattr(basic, "FLOAT_DECODE_KERNELS", True)
        ref, got = _both(ops.linear, x, w)
        _close(got, ref, x, w, dtype)
        h = rng.standard_normal((M, N)).astype(dtype)
        ref, got = _both(ops.unembed, h, w)  # w as a (V, D) = (K, N) table
        _close(got, ref, h, w.T, dtype)


def test_the_float_kernels_leave_gradients_alone():
    """``linear``'s VJP through the kernel path is the BLAS path's (the forward is the only change)."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 300)), rng.standard_normal((300, 400))

    def loss(w, x):
        y = ops.linear(x, w)
        return ops.sum(ops.mul(y, y))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(basic, "FLOAT_DECODE_KERNELS", True)
        mp.setattr(basic, "DECODE_MIN_SIZE", 0)
        ref, got = _both(lambda w: lt.grad(loss)(w, x), w)
    assert np.allclose(got, ref, rtol=1e-10, atol=0)
