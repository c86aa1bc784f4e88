"""The compiled AdamW kernel against its NumPy reference (``lt.optim.adam_update._adam_block``).

The kernel makes the reference's operations in the reference's order, but numba's ``contract``
may fuse a product and a sum into one rounding, so the two agree to a few units in the last place
of the terms, not bit for bit. The bound checked, elementwise, with eps the dtype's epsilon:

    |m'_k - m'_n| <= 4 eps (|g - m| (1 - b1) + |m|)
    |v'_k - v'_n| <= 4 eps (g^2 + v)
    |u_k - u_n|   <= 8 eps (step (|g - m| (1 - b1) + |m|) / d + |decay p| + |u|),  d = sqrt(v') / rc + eps

(v' = (1 - b2) g^2 + b2 v never cancels, so the denominator is good to a few eps; m' may cancel,
and its absolute error carries into u). A donated update (outputs over the inputs) is bit for bit
the undonated one, on either path.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lt
from lt.donation import Donation
from lt.ops import kernels
from lt.optim import adam_update as adam_mod

pytest.importorskip("numba")

HYPER = (0.9, 0.999, 1e-8)


def _state(rng: np.random.Generator, n: int, dtype, scale: float):
    g = rng.standard_normal(n) * scale
    m = rng.standard_normal(n) * scale * 0.3
    v = m * m + rng.random(n) * scale * scale * 0.1  # a second moment at least m^2, as Adam's are
    p = rng.standard_normal(n)
    return tuple(x.astype(dtype) for x in (g, m, v, p))


@contextlib.contextmanager
def small_blocks():
    """Blocks of a few dozen elements: several per leaf and a ragged last one, on both paths."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(adam_mod, "_CHUNK", 64)
        mp.setattr(adam_mod, "_KERNEL_CHUNK", 40)
        yield


def _run(choice: str, g, m, v, p, hyper, decay):
    """``(m', v', u)`` as new arrays, from ``choice``'s path (blocks run in order, on this thread)."""
    return tuple(np.array(o) for o, _ in _run_donated(choice, g, m, v, p, hyper, decay, None))


def _bounds(g, m, v, p, hyper, decay, ref):
    b1, _, eps, step, rc = hyper
    e = np.finfo(m.dtype).eps
    g, m, v, p = (x.astype(np.float64) for x in (g, m, v, p))
    terms_m = np.abs(g - m) * (1 - b1) + np.abs(m)
    d = np.sqrt(ref[1].astype(np.float64)) / rc + eps
    tol_m = 4 * e * terms_m
    tol_v = 4 * e * (g * g + v)
    tol_u = 8 * e * (step * terms_m / d + np.abs(decay * p) + np.abs(ref[2]))
    return tol_m, tol_v, tol_u


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 700),
    dtype=st.sampled_from([np.float32, np.float64]),
    t=st.sampled_from([None, 1, 2, 1000]),  # None: no bias correction
    decay=st.sampled_from([0.0, 1e-3]),
    scale=st.sampled_from([1e-6, 1.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_kernel_equals_the_numpy_blocks(n, dtype, t, decay, scale, seed):
    g, m, v, p = _state(np.random.default_rng(seed), n, dtype, scale)
    b1, b2, eps = HYPER
    lr = 3e-4
    hyper = (b1, b2, eps, lr, 1.0) if t is None else (b1, b2, eps, lr / (1 - b1**t), np.sqrt(1 - b2**t))
    with small_blocks():
        ref = _run("numpy", g, m, v, p, hyper, decay)
        got = _run("numba", g, m, v, p, hyper, decay)
    for a, b, tol in zip(got, ref, _bounds(g, m, v, p, hyper, decay, ref)):
        assert a.dtype == b.dtype == dtype
        assert np.all(np.abs(a.astype(np.float64) - b) <= tol)


@pytest.mark.parametrize("choice", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("given", ["mvg", "mv"])  # all three written over (one in-place pass), or the moments only
def test_a_donated_leaf_is_bit_for_bit_the_undonated(choice, dtype, given):
    with small_blocks():
        g, m, v, p = (lt.tree.seal(x) for x in _state(np.random.default_rng(0), 1001, dtype, 1.0))
        hyper = (0.9, 0.999, 1e-8, 1e-3 / 0.1, np.sqrt(1 - 0.999))
        fresh = _run(choice, g, m, v, p, hyper, 1e-2)
        donated = {"m": m, "v": v, "g": g}
        outs = _run_donated(choice, g, m, v, p, hyper, 1e-2, Donation(*(donated[k] for k in given)))
    for (buf, leaf), want, name in zip(outs, fresh, "mvg"):
        if name in given:
            assert leaf is donated[name] and np.shares_memory(buf, leaf)  # written over the input
        else:
            assert leaf is None and not np.shares_memory(buf, donated[name])
        np.testing.assert_array_equal(buf, want)


def _run_donated(choice, g, m, v, p, hyper, decay, given):
    """``(buffer, donated leaf or None)`` for ``(m', v', u)``, from ``choice``'s path."""
    with kernels.use(choice):
        outs, tasks = adam_mod._adam_leaf(g, m, v, p, hyper, decay, given)
        for task in tasks:
            task()
    return outs


@settings(max_examples=15, deadline=None)
@given(
    dtype=st.sampled_from([np.float32, np.float64]),
    mask_bits=st.lists(st.booleans(), min_size=4, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_adamw_with_a_decay_mask_equals_the_reference(dtype, mask_bits, seed):
    rng = np.random.default_rng(seed)
    shapes = {"w": (7, 5), "b": (5,), "e": (3, 2, 4), "s": ()}
    params = lt.tree.freeze({k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()})
    grads = lt.tree.freeze({k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()})
    mask = lt.tree.freeze(dict(zip(sorted(shapes), mask_bits)))
    opt = lt.optim.adamw(lt.optim.warmup_cosine(1e-2, warmup=2, total=10), weight_decay=0.1, mask=mask)
    results = {}
    for choice in ("numpy", "numba"):
        with kernels.use(choice):
            state, p = opt.init(params), params
            for _ in range(3):
                updates, state = opt.update(grads, state, p)
                p = lt.optim.apply_updates(p, updates)
            results[choice] = (p, state)
    (p_ref, s_ref), (p_got, s_got) = results["numpy"], results["numba"]
    assert int(s_got.schedule.count) == 3 and float(s_got.schedule.learning_rate) == float(s_ref.schedule.learning_rate)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(lt.tree.leaves((p_got, s_got.mu, s_got.nu)), lt.tree.leaves((p_ref, s_ref.mu, s_ref.nu))):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.max(np.abs(b)))


def test_a_leaf_the_kernel_does_not_cover_runs_the_reference():
    """A float64 parameter with float32 moments (NumPy's promotion rules decide its dtypes): the
    reference runs even with the kernels on, so the bits are NumPy's."""
    rng = np.random.default_rng(1)
    g, m, v = (lt.tree.seal(x) for x in _state(rng, 300, np.float32, 1.0)[:3])
    p = lt.tree.seal(rng.standard_normal(300))
    hyper = (0.9, 0.999, 1e-8, 1e-3, 1.0)
    for a, b in zip(_run("numba", g, m, v, p, hyper, 0.1), _run("numpy", g, m, v, p, hyper, 0.1)):
        np.testing.assert_array_equal(a, b)
