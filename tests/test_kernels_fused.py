"""The fused kernels (norms, GELU, SwiGLU, ReLU², softmax cross-entropy, rotary embedding) against
their NumPy references, through the primitives' forwards and VJPs: ``kernels.use("numba")`` against
``kernels.use("numpy")``.

The kernels reassociate sums (a row's mean, the parameters' sums over rows) and compute exp with
their own polynomial (relative error ~2e-7 in float32, ~1e-14 in float64), so they agree with
NumPy to a few units of the dtype's precision, scaled by the sizes involved, not bit for bit:

    |k - n| <= TOL[dtype] · (|n| + S),   TOL = 3e-5 (float32), 1e-11 (float64)

with S the magnitude of the terms behind each value: max |n| for elementwise results, the sum
of the terms' bounds for a sum over rows (dscale, dbias), the size of the terms that cancel in
a norm's dx (ReLU² makes the reference's operations in its order: bit for bit). Each case runs
on the serial kernel and on the parallel one (forced by lowering the size threshold); the
parallel one gives the same bits on any number of threads.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lt
from lt.ops import kernels
from lt.ops.elementwise import gelu, relu_squared
from lt.ops.gated import swiglu
from lt.ops.kernels import jit
from lt.ops.loss import cross_entropy
from lt.ops.norms import layer_norm, rms_norm
from lt.ops.rotary import rope

pytest.importorskip("numba")

TOL = {np.float32: 3e-5, np.float64: 1e-11}
DTYPES = st.sampled_from([np.float32, np.float64])
LEAD = st.lists(st.integers(1, 5), min_size=0, max_size=2).map(tuple)
SIZE = st.sampled_from([1, 2, 3, 7, 16, 33, 64, 65, 127, 300])
CASES = settings(max_examples=25, deadline=None)


@contextlib.contextmanager
def path(parallel: bool, threads: int = 2):
    """The parallel kernels (at any size, on ``threads`` threads) or the serial ones."""
    with mock.patch.object(jit, "PARALLEL_BYTES", 0 if parallel else 1 << 62), lt.threads.pin(threads):
        yield


def both(fn, parallel: bool):
    """``fn()`` with the kernels and with the NumPy reference: (kernel result, reference result)."""
    with kernels.use("numba"), path(parallel):
        got = fn()
    with kernels.use("numpy"):
        want = fn()
    return got, want


def close(got, want, dtype, scale=None) -> None:
    """|got - want| <= TOL (|want| + scale), scale max |want| unless given; same dtype and shape."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    if scale is None:
        scale = np.max(np.abs(want), initial=0.0)
    bound = TOL[dtype] * (np.abs(want) + scale)
    assert np.all(np.abs(got.astype(np.float64) - want) <= bound), np.max(np.abs(got - want) - bound)


def _arrays(seed: int, shape, dtype, n: int, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(shape) * spread).astype(dtype) for _ in range(n)]


def _forward_and_vjp(prim, args, g):
    out, res = prim.forward(*args)
    return out, res, prim.vjp(res, g)


# ----------------------------------------------------------------- norms


@pytest.mark.parametrize("parallel", [False, True])
@CASES
@given(lead=LEAD, d=SIZE, dtype=DTYPES, seed=st.integers(0, 2**16))
def test_layer_norm_equals_reference(parallel, lead, d, dtype, seed):
    x, g = _arrays(seed, (*lead, d), dtype, 2)
    x += dtype(3.0)  # a mean to subtract
    scale, bias = _arrays(seed + 1, (d,), dtype, 2)
    got, want = both(lambda: _forward_and_vjp(layer_norm, (x, scale, bias), g), parallel)
    (y, (xhat, rstd, s), (dx, dscale, dbias)), (y0, (xhat0, rstd0, _), (dx0, dscale0, dbias0)) = got, want
    assert s is scale
    for a, b in ((y, y0), (xhat, xhat0), (rstd, rstd0)):
        close(a, b, dtype, None if d > 1 else 1.0)
    close(dx, dx0, dtype, 3 * np.max(np.abs(g * scale) * rstd0))  # dx cancels: the terms' size
    rows = int(np.prod(lead))
    close(dscale, dscale0, dtype, np.abs(g).reshape(rows, d).sum(0) * np.max(np.abs(xhat0)))  # xhat: absolute errors
    close(dbias, dbias0, dtype, np.abs(g).reshape(rows, d).sum(0))


@pytest.mark.parametrize("parallel", [False, True])
@CASES
@given(lead=LEAD, d=SIZE, dtype=DTYPES, seed=st.integers(0, 2**16))
def test_rms_norm_equals_reference(parallel, lead, d, dtype, seed):
    x, g = _arrays(seed, (*lead, d), dtype, 2, spread=2.0)
    (scale,) = _arrays(seed + 1, (d,), dtype, 1)
    got, want = both(lambda: _forward_and_vjp(rms_norm, (x, scale), g), parallel)
    (y, (xhat, rstd, _), (dx, dscale)), (y0, (xhat0, rstd0, _), (dx0, dscale0)) = got, want
    for a, b in ((y, y0), (xhat, xhat0), (rstd, rstd0)):
        close(a, b, dtype)
    close(dx, dx0, dtype, 2 * np.max(np.abs(g * scale) * rstd0))
    close(dscale, dscale0, dtype, np.abs(g).reshape(-1, d).sum(0) * np.max(np.abs(xhat0)))


def test_norms_fall_back_where_the_kernels_do_not_cover():
    """float16, a transposed (non-contiguous) x, a scale of another shape: the NumPy code runs."""
    x = np.random.default_rng(0).standard_normal((6, 5))
    for args in ((x.astype(np.float16), np.ones(5, np.float16)), (x.T, np.ones(6)), (x, np.ones((1, 5)))):
        got, want = both(lambda args=args: rms_norm.forward(*args)[0], parallel=False)
        np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------- GELU and SwiGLU


@pytest.mark.parametrize("parallel", [False, True])
@CASES
@given(lead=LEAD, d=SIZE, dtype=DTYPES, seed=st.integers(0, 2**16), spread=st.sampled_from([0.1, 1.0, 4.0, 30.0]))
def test_gelu_equals_reference(parallel, lead, d, dtype, seed, spread):
    x, g = _arrays(seed, (*lead, d), dtype, 2, spread)
    got, want = both(lambda: _forward_and_vjp(gelu, (x,), g), parallel)
    (y, (_, t), (dx,)), (y0, (_, t0), (dx0,)) = got, want
    # The reference's 1 + tanh(u) is exact only to eps: far left it is 0 where GELU (and the
    # kernel's x / (1 + exp(-2u))) is a tiny negative number, so y's error is within |x| eps / 2 more.
    close(y, y0, dtype, np.max(np.abs(y0), initial=0.0) + np.max(np.abs(x)) * np.finfo(dtype).eps / (2 * TOL[dtype]))
    close(t, t0, dtype, 1.0)
    close(dx, dx0, dtype, np.max(np.abs(g) * (1 + np.abs(x))))


@pytest.mark.parametrize("parallel", [False, True])
@CASES
@given(lead=LEAD, d=SIZE, dtype=DTYPES, seed=st.integers(0, 2**16), spread=st.sampled_from([0.1, 1.0, 4.0, 30.0]))
def test_swiglu_equals_reference(parallel, lead, d, dtype, seed, spread):
    gate, up, g = _arrays(seed, (*lead, d), dtype, 3, spread)
    with np.errstate(over="ignore"):  # NumPy's exp(-gate) overflows to inf for gate < -89: sigmoid 0
        got, want = both(lambda: _forward_and_vjp(swiglu, (gate, up), g), parallel)
    (h, (_, _, sig), (dgate, dup)), (h0, (_, _, sig0), (dgate0, dup0)) = got, want
    close(h, h0, dtype)
    close(sig, sig0, dtype, 1.0)
    close(dup, dup0, dtype)
    close(dgate, dgate0, dtype, np.max(np.abs(g * up) * (1 + np.abs(gate))))


@pytest.mark.parametrize("parallel", [False, True])
@CASES
@given(lead=LEAD, d=SIZE, dtype=DTYPES, seed=st.integers(0, 2**16))
def test_relu_squared_is_the_reference_bit_for_bit(parallel, lead, d, dtype, seed):
    """The same operations in the same order: r = max(x, 0), y = r · r, d = 2 (g · r)."""
    x, g = _arrays(seed, (*lead, d), dtype, 2)
    x.reshape(-1)[:3] = np.array([np.nan, np.inf, -np.inf])[: x.size]
    got, want = both(lambda: _forward_and_vjp(relu_squared, (x,), g), parallel)
    for a, b in zip((got[0], got[1], *got[2]), (want[0], want[1], *want[2])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_at_the_edges(dtype):
    """Huge, tiny, infinite and NaN inputs come out as NumPy's (the exp's ends: 0, inf, NaN kept)."""
    x = np.array([0.0, -0.0, 1e-30, -1e-30, 9.0, -9.0, 80.0, -80.0, 1e4, -1e4, 1e30, -1e30, np.inf, -np.inf, np.nan])
    x = x.astype(dtype)
    with np.errstate(all="ignore"):
        for fn in (lambda: gelu.forward(x)[0], lambda: swiglu.forward(x, np.ones_like(x))[0]):
            got, want = both(fn, parallel=False)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            ok = ~np.isnan(want)
            np.testing.assert_allclose(got[ok], want[ok], rtol=TOL[dtype], atol=1e-20)  # NumPy: 0 for e^-66


# ----------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("parallel", [False, True])
@CASES
@given(
    lead=st.lists(st.integers(1, 5), min_size=1, max_size=2).map(tuple),
    v=SIZE,
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
    ignored=st.sampled_from([0.0, 0.3, 1.0]),
    batch_dims=st.sampled_from([0, 1]),
    spread=st.sampled_from([1.0, 10.0, 100.0]),
)
def test_cross_entropy_equals_reference(parallel, lead, v, dtype, seed, ignored, batch_dims, spread):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((*lead, v)) * spread).astype(dtype)
    targets = rng.integers(0, v, lead).astype(rng.choice([np.int32, np.int64]))
    targets[rng.random(lead) < ignored] = -1  # ignored rows; all of them at 1.0
    batch_dims = min(batch_dims, len(lead) - 1) if len(lead) > 1 else 0
    g = rng.standard_normal(lead[:batch_dims]).astype(dtype)

    def run():
        loss, res = cross_entropy.forward(logits, targets, -1, batch_dims)
        p = res[0].copy()  # the kernels' VJP writes the gradient over the softmax
        return loss, p, cross_entropy.vjp(res, g)[0]

    (loss, p, d), (loss0, p0, d0) = both(run, parallel)
    close(loss, loss0, dtype, 1.0)
    close(p, p0, dtype, 1.0)
    close(d, d0, dtype, np.max(np.abs(g), initial=0.0))
    assert np.all(d[targets == -1] == 0)


# ----------------------------------------------------------------- rotary embedding


@pytest.mark.parametrize("parallel", [False, True])
@CASES
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 9), st.sampled_from([2, 4, 8, 32, 64])),
    per_row=st.booleans(),
    transposed=st.booleans(),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
)
def test_rope_equals_reference(parallel, shape, per_row, transposed, dtype, seed):
    """Forward and VJP of a (B, H, T, d) x, contiguous or the transposed view the heads are,
    with angles shared by the batch or one row each: each output the reference's up to its
    two products' rounding (a fused multiply-add)."""
    B, H, T, d = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, H, d) if transposed else shape).astype(dtype)
    x = np.swapaxes(x, 1, 2) if transposed else x
    g = rng.standard_normal(shape).astype(dtype)
    angle = rng.uniform(-10, 10, (B if per_row else 1, 1, T, d))
    cos, sin = np.cos(angle).astype(dtype), np.sin(angle).astype(dtype)
    got, want = both(lambda: _forward_and_vjp(rope, (x, cos, sin), g), parallel)
    (y, _, (dx, *_)), (y0, _, (dx0, *_)) = got, want
    close(y, y0, dtype, 2 * np.max(np.abs(x)))
    close(dx, dx0, dtype, 2 * np.max(np.abs(g)))


def test_rope_falls_back_where_the_kernel_does_not_cover():
    """Angles of another layout than (1 or B, 1, T, d), or a 3-D x: the NumPy code runs."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 8)).astype(np.float32)
    angle = rng.standard_normal((4, 8))
    for args in (
        (x, np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)),
        (x[0], np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)),
    ):
        got, want = both(lambda args=args: rope.forward(*args)[0], parallel=False)
        np.testing.assert_array_equal(got, want)


def test_cross_entropy_gradient_takes_the_softmax_buffer():
    """With the kernels the VJP writes over the residual's softmax: no second (N, V) buffer."""
    logits = np.random.default_rng(0).standard_normal((2, 3, 11)).astype(np.float32)
    with kernels.use("numba"):
        _, res = cross_entropy.forward(logits, np.array([[1, 2, 3], [4, -100, 10]]))
        d = cross_entropy.vjp(res, np.float32(1.0))[0]
    assert d.shape == logits.shape and np.shares_memory(d, res[0])


def test_gradients_match_with_and_without_kernels():
    """A small GPT's loss and gradients are the reference's, to float32's tolerance."""
    model = lt.GPT.preset("tiny")
    params = model.init(lt.random.key(0))
    ids = lt.random.randint(lt.random.key(1), (2, 16), 0, model.vocab_size)
    loss_and_grad = lt.value_and_grad(model.loss)
    (loss, grads), (loss0, grads0) = both(lambda: loss_and_grad(params, ids, ids), parallel=False)
    np.testing.assert_allclose(loss, loss0, rtol=1e-5)
    for a, b in zip(lt.tree.leaves(grads), lt.tree.leaves(grads0)):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5 * np.max(np.abs(b)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_thread_count_changes_no_bit(dtype):
    """Rows are independent, and the norms' parameter sums go through partial sums over row
    ranges fixed by the shape: the parallel kernels give the same bits on 1 and on 2 threads."""
    x, g, u = _arrays(0, (37, 129), dtype, 3)
    t = np.random.default_rng(1).integers(0, 129, 37)
    angles = tuple(f(np.arange(37 * 128).reshape(37, 1, 1, 128)).astype(dtype) for f in (np.cos, np.sin))
    calls = [
        lambda: _forward_and_vjp(layer_norm, (x, u[0], u[1]), g),
        lambda: _forward_and_vjp(rms_norm, (x, u[0]), g),
        lambda: _forward_and_vjp(gelu, (x,), g),
        lambda: _forward_and_vjp(swiglu, (x, u), g),
        lambda: _forward_and_vjp(relu_squared, (x,), g),
        lambda: _forward_and_vjp(cross_entropy, (x, t), np.asarray(1.0, dtype)),
        lambda: _forward_and_vjp(rope, (x.reshape(37, 1, 1, 129)[:, :, :, :128],) + angles, g[:, None, None, :128]),
    ]
    with kernels.use("numba"):
        for call in calls:
            with path(parallel=True, threads=1):
                one = lt.tree.leaves(call())
            with path(parallel=True, threads=2):
                two = lt.tree.leaves(call())
            for a, b in zip(one, two):
                if isinstance(a, np.ndarray):
                    np.testing.assert_array_equal(a, b)
