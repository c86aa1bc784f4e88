"""The compiled attention kernels equal the NumPy reference: the fused full kernel (``attention``)
and the compiled tiles (``blockwise_attention``), outputs and VJPs, over shapes (odd T and S,
head sizes, T != S), causal / mask / none, fully masked rows, float32 and float64, grouped kv
heads and broadcast batch axes; and the kernel paths are the ones that ran."""

import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lt
from lt import ops, random
from lt.ops import kernels

pytest.importorskip("numba")

ATTENTION = importlib.import_module("lt.ops.attention")  # the module (lt.ops.attention is the primitive)
SETTINGS = settings(deadline=None, max_examples=25)
# Reassociated sums and float32's polynomial exp (within 1 ulp): not bitwise, but close.
TOL = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-5)}


@pytest.fixture(autouse=True, scope="module")
def fused_at_every_size():
    """The fused kernel at every size here (lt leaves small calls to NumPy: ``FUSED_MIN_WORK``)."""
    least, ATTENTION.FUSED_MIN_WORK = ATTENTION.FUSED_MIN_WORK, 0
    yield
    ATTENTION.FUSED_MIN_WORK = least


def normal(shape, seed, dtype):
    return random.normal(random.key(seed), shape, dtype)


def make_mask(kind, lead, T, S, seed):
    """None or a bool mask of the kind: a padding mask (B, 1, 1, S), a random (B, 1, T, S) one,
    or one whose even rows see nothing (fully masked rows)."""
    B = lead[0]
    if kind in ("none", "causal"):
        return None
    if kind == "padding":
        return (np.arange(S)[None, :] < np.maximum(1, S - np.arange(B))[:, None])[:, None, None, :]
    if kind == "left_padding":  # the first keys masked for every query: whole first tiles
        return (np.arange(S)[None, :] >= np.minimum(S - 1, 3 + 5 * np.arange(B))[:, None])[:, None, None, :]
    mask = random.bernoulli(random.key(seed), 0.6, (B, 1, T, S))
    if kind == "dead_rows":
        mask[:, :, ::2] = False
    return mask


def call(fn, choice, q, k, v, mask, causal, w):
    """(out, dq, dk, dv) of ``sum(fn(q, k, v) * w)`` with the kernels ``choice``."""
    with kernels.use(choice):
        out = fn(q, k, v, mask, causal)
        grads = lt.grad(lambda q, k, v: ops.sum(fn(q, k, v, mask, causal) * w), argnums=(0, 1, 2))(q, k, v)
    return (out, *grads)


def full(q, k, v, mask, causal):
    return ops.dot_product_attention(q, k, v, mask, causal=causal, kernel="full")


def blockwise(block):
    def f(q, k, v, mask, causal):
        return ops.blockwise_attention(q, k, v, mask, causal=causal, block=block)

    return f


shapes = st.tuples(
    st.integers(1, 2),  # B
    st.sampled_from([(2, 2), (4, 2), (3, 1)]),  # (q heads, kv heads): grouped kv heads when they differ
    st.integers(1, 21),  # T
    st.integers(1, 21),  # S
    st.sampled_from([1, 3, 8, 16]),  # d
    st.sampled_from([1, 5, 8]),  # dv
)
kinds = st.sampled_from(["none", "causal", "padding", "left_padding", "random", "dead_rows"])
dtypes = st.sampled_from([np.float64, np.float32])


def operands(shape, dtype, seed):
    """q (B, Hkv, G, T, d), k and v (B, Hkv, 1, S, ·): grouped kv heads as lt.nn passes them."""
    B, (H, Hkv), T, S, d, dv = shape
    G = H // Hkv
    q = normal((B, Hkv, G, T, d), seed, dtype)
    k = normal((B, Hkv, 1, S, d), seed + 1, dtype)
    v = normal((B, Hkv, 1, S, dv), seed + 2, dtype)
    w = normal((B, Hkv, G, T, dv), seed + 3, dtype)
    return q, k, v, w


def assert_same(a, b, dtype):
    for x, y, name in zip(a, b, ("out", "dq", "dk", "dv")):
        assert x.shape == y.shape and x.dtype == y.dtype, name
        np.testing.assert_allclose(x, y, **TOL[dtype], err_msg=name)


@SETTINGS
@given(shapes, kinds, dtypes, st.integers(0, 2**20))
def test_full_kernel_equals_reference(shape, kind, dtype, seed):
    q, k, v, w = operands(shape, dtype, seed)
    mask = make_mask(kind, shape, shape[2], shape[3], seed)
    if mask is not None:
        mask = mask[:, :, None]  # (B, 1, 1, T|1, S): one axis deeper, as the grouped heads
    causal = kind == "causal"
    assert_same(call(full, "numba", q, k, v, mask, causal, w), call(full, "numpy", q, k, v, mask, causal, w), dtype)


@SETTINGS
@given(shapes, kinds, dtypes, st.sampled_from([None, (4, 8), (1, 3), (16, 5)]), st.integers(0, 2**20))
def test_blockwise_kernel_equals_reference(shape, kind, dtype, block, seed):
    q, k, v, w = operands(shape, dtype, seed)
    mask = make_mask(kind, shape, shape[2], shape[3], seed)
    if mask is not None:
        mask = mask[:, :, None]
    causal = kind == "causal"
    f = blockwise(block)
    assert_same(call(f, "numba", q, k, v, mask, causal, w), call(f, "numpy", q, k, v, mask, causal, w), dtype)


@SETTINGS
@given(st.integers(1, 40), st.integers(1, 40), dtypes, st.booleans(), st.integers(0, 2**20))
def test_kernels_agree_with_each_other(T, S, dtype, causal, seed):
    """The policy's two kernels, both compiled, give the same numbers (and gradients)."""
    q, k, v = (normal((2, 3, n, 8), seed + i, dtype) for i, n in enumerate((T, S, S)))
    w = normal((2, 3, T, 8), seed + 3, dtype)
    a = call(full, "numba", q, k, v, None, causal, w)
    b = call(blockwise((8, 16)), "numba", q, k, v, None, causal, w)
    assert_same(a, b, dtype)


def test_v_with_more_batch_axes_and_weights():
    """v with leading axes q and k lack (blockwise kernel), and the full kernel's weights and their
    cotangent (return_weights), against the reference."""
    q, k = normal((3, 7, 4), 0, np.float64), normal((3, 9, 4), 1, np.float64)
    v = normal((2, 3, 9, 5), 2, np.float64)
    for choice_pair in (("numba", "numpy"),):
        outs = []
        for choice in choice_pair:
            with kernels.use(choice):

                def f(q, k, v):
                    out = ops.blockwise_attention(q, k, v, block=(3, 4))
                    return ops.sum(out * out)

                g = lt.grad(f, argnums=(0, 1, 2))(q, k, v)

                def h(q, k, v):
                    out, p = ops.attention(q, k, v[0], return_weights=True)
                    return ops.sum(out * out) + ops.sum(p * p)

                outs.append((*g, *lt.grad(h, argnums=(0, 1, 2))(q, k, v)))
        for a, b in zip(*outs):
            np.testing.assert_allclose(a, b, **TOL[np.float64])


def test_fully_masked_rows_are_uniform_and_get_no_gradient():
    """A row that sees no key: the mean of v (uniform weights over all S keys), no gradient to q."""
    q, k, v = normal((1, 5, 4), 0, np.float32), normal((1, 6, 4), 1, np.float32), normal((1, 6, 3), 2, np.float32)
    mask = np.ones((5, 6), bool)
    mask[2] = False
    with kernels.use("numba"):
        for f in (lambda q, k, v: ops.attention(q, k, v, mask), lambda q, k, v: ops.blockwise_attention(q, k, v, mask)):
            out = f(q, k, v)
            np.testing.assert_allclose(out[0, 2], v[0].mean(0), rtol=1e-6)
            dq = lt.grad(lambda q, f=f: ops.sum(f(q, k, v)))(q)
            assert np.all(dq[0, 2] == 0)


def test_kernel_paths_run(monkeypatch):
    """With the kernels on, both primitives run their compiled paths (the reference is not used)."""
    ran = []
    for name in ("_full_kernel", "flash"):
        original = getattr(ATTENTION, name)
        monkeypatch.setattr(ATTENTION, name, lambda *a, _o=original, _n=name, **kw: (ran.append(_n), _o(*a, **kw))[1])
    blockwise_module = importlib.import_module("lt.ops.blockwise")
    monkeypatch.setattr(blockwise_module, "flash", ATTENTION.flash)
    q = normal((2, 9, 4), 0, np.float32)
    with kernels.use("numba"):
        ops.attention(q, q, q)
        ops.blockwise_attention(q, q, q, causal=True)
    assert ran == ["_full_kernel", "flash"]
    ran.clear()
    with kernels.use("numpy"):
        ops.attention(q, q, q)
        ops.blockwise_attention(q, q, q, causal=True)
    assert ran == []
