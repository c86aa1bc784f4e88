"""lt.vmap, lt.jvp, lt.hvp, lt.remat and gradients of gradients: the facts a user relies on,
on whole models as well as small functions (float64 wherever a tolerance is stated)."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lt
from lt import ops

settings.register_profile("transforms", deadline=None, max_examples=15)


def normal(shape, seed, dtype=np.float64):
    return lt.random.normal(lt.random.key(seed), shape, dtype)


def tiny(**fields):
    return lt.GPT.preset("tiny", max_seq_len=16, **fields)


def tokens(model, shape, seed):
    return lt.random.randint(lt.random.key(seed), shape, 0, model.vocab_size)


def assert_trees_close(a, b, rtol=1e-10, atol=1e-12):
    assert lt.tree.structure(a) == lt.tree.structure(b)
    for (path, x), (_, y) in zip(lt.tree.items(a), lt.tree.items(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=path)


# ----------------------------------------------------------------- vmap


def mlp(params, x):
    h = ops.tanh(ops.linear(x, params["w1"], params["b1"]))
    return ops.sum(ops.mul(h, h), axis=-1)


def mlp_params(seed, d=3, h=4):
    return {"w1": normal((d, h), seed), "b1": normal((h,), seed + 1)}


@settings(settings.get_profile("transforms"))
@given(st.integers(1, 4), st.integers(0, 2), st.integers(0, 2**20))
def test_vmap_equals_a_stack_of_calls_for_any_batch_axis(n, axis, seed):
    params = mlp_params(seed)
    xs = [normal((2, 3), seed + 10 + i) for i in range(n)]
    batched = np.stack(xs, axis=axis)
    got = lt.vmap(mlp, in_axes=(None, axis))(params, batched)
    np.testing.assert_allclose(got, np.stack([mlp(params, x) for x in xs]), rtol=1e-12)


def test_vmap_over_params_trees_and_out_axes():
    members = [mlp_params(s) for s in range(3)]
    x = normal((5, 3), 99)
    stacked = lt.tree.stack(members)
    got = lt.vmap(mlp, in_axes=(0, None), out_axes=1)(stacked, x)  # (5, members)
    np.testing.assert_allclose(got, np.stack([mlp(p, x) for p in members], axis=1), rtol=1e-12)
    # a tree of axes: only w1 batched, b1 shared
    mixed = {"w1": stacked["w1"], "b1": members[0]["b1"]}
    got = lt.vmap(mlp, in_axes=({"w1": 0, "b1": None}, None))(mixed, x)
    expected = [mlp({"w1": p["w1"], "b1": members[0]["b1"]}, x) for p in members]
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-12)


def test_vmap_of_vmap_is_a_double_map():
    xs = normal((2, 3, 5, 3), 7)
    params = mlp_params(0)
    got = lt.vmap(lt.vmap(mlp, in_axes=(None, 0)), in_axes=(None, 1))(params, xs)  # (3, 2, 5)
    expected = np.stack([np.stack([mlp(params, xs[i, j]) for i in range(2)]) for j in range(3)])
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_vmap_refuses_what_it_cannot_batch():
    params = mlp_params(0)
    with pytest.raises(ValueError, match="differ in size"):
        lt.vmap(lambda a, b: a + b)(np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="no argument is batched"):
        lt.vmap(mlp, in_axes=None)(params, np.ones((2, 3)))
    with pytest.raises(TypeError, match="one random key"):
        lt.vmap(lambda k, x: x, in_axes=(0, 0))(lt.random.key(0), np.ones(2))
    with pytest.raises(ValueError, match="has no axis 2"):
        lt.vmap(mlp, in_axes=(None, 2))(params, np.ones((2, 3)))
    with pytest.raises(TypeError, match="differs between members"):
        lt.vmap(lambda x: float(x))(np.arange(3.0))


def test_numpy_ufuncs_without_primitives_are_batched():
    xs = np.array([[1.0, 4.0], [9.0, 16.0]])
    got = lt.vmap(lambda x: np.maximum(np.sqrt(x), 2.5))(xs)
    np.testing.assert_array_equal(got, np.maximum(np.sqrt(xs), 2.5))


# ----------------------------------------------------------------- per-example gradients


def test_per_example_gradients_of_a_gpt_loss_equal_each_example_alone():
    model = tiny()
    params = lt.tree.map(lambda p: p.astype(np.float64), model.init(lt.random.key(0)))
    ids, targets = tokens(model, (4, 6), 1), tokens(model, (4, 6), 2)
    per_example = lt.vmap(lt.grad(model.loss), in_axes=(None, 0, 0))(params, ids, targets)
    for i in range(4):
        alone = lt.grad(model.loss)(params, ids[i], targets[i])
        assert_trees_close(lt.tree.map(lambda g, i=i: g[i], per_example), alone)


def test_per_example_gradients_through_a_closure_equal_passing_the_data():
    params = mlp_params(3)
    xs = normal((4, 2, 3), 5)
    by_argument = lt.vmap(lt.grad(lambda p, x: ops.sum(mlp(p, x))), in_axes=(None, 0))(params, xs)
    by_closure = lt.vmap(lambda x: lt.grad(lambda p: ops.sum(mlp(p, x)))(params))(xs)
    assert_trees_close(by_argument, by_closure, rtol=0, atol=0)


def test_gradient_of_a_vmapped_function_is_the_sum_of_member_gradients():
    params = mlp_params(1)
    xs = normal((3, 2, 3), 2)
    total = lt.grad(lambda p: ops.sum(lt.vmap(mlp, in_axes=(None, 0))(p, xs)))(params)
    each = [lt.grad(lambda p, x=x: ops.sum(mlp(p, x)))(params) for x in xs]
    assert_trees_close(total, lt.tree.map(lambda *g: sum(g), *each))


# ----------------------------------------------------------------- jvp, higher order


def test_jvp_of_a_gpt_loss_agrees_with_finite_differences():
    model = tiny()
    params = lt.tree.map(lambda p: p.astype(np.float64), model.init(lt.random.key(0)))
    ids = tokens(model, (2, 6), 1)
    v = lt.tree.map(lambda p: normal(p.shape, 5), params)
    loss = lambda p: model.loss(p, ids)  # noqa: E731
    value, slope = lt.jvp(loss, (params,), (v,))
    eps = 1e-6
    moved = lambda s: lt.tree.map(lambda p, t: p + s * t, params, v)  # noqa: E731
    numeric = (float(loss(moved(eps))) - float(loss(moved(-eps)))) / (2 * eps)
    assert float(value) == pytest.approx(float(loss(params)), rel=1e-12)
    assert float(slope) == pytest.approx(numeric, rel=1e-5)


def test_grad_of_grad_of_scalar_functions():
    f = lambda x: ops.tanh(x) * x * x  # noqa: E731
    x = np.float64(0.7)
    second = lt.grad(lt.grad(f))(x)
    t = np.tanh(x)
    d1 = lambda x: (1 - np.tanh(x) ** 2) * x * x + 2 * x * np.tanh(x)  # noqa: E731
    assert float(second) == pytest.approx((d1(x + 1e-6) - d1(x - 1e-6)) / 2e-6, rel=1e-6)
    assert t  # the primal itself is used above
    third = lt.grad(lt.grad(lt.grad(lambda x: x * x * x * x)))(np.float64(1.5))
    assert float(third) == pytest.approx(24 * 1.5, rel=1e-10)


def test_hvp_of_a_gpt_loss_agrees_with_finite_differences_of_the_gradient_and_is_symmetric():
    model = tiny(num_layers=1)
    params = lt.tree.map(lambda p: p.astype(np.float64), model.init(lt.random.key(0)))
    ids = tokens(model, (2, 5), 1)
    loss = lambda p: model.loss(p, ids)  # noqa: E731
    u = lt.tree.map(lambda p: normal(p.shape, 7), params)
    v = lt.tree.map(lambda p: normal(p.shape, 8), params)
    hv = lt.hvp(loss, params, v)
    eps = 1e-5
    g = lambda s: lt.grad(loss)(lt.tree.map(lambda p, t: p + s * t, params, v))  # noqa: E731
    numeric = lt.tree.map(lambda a, b: (a - b) / (2 * eps), g(eps), g(-eps))
    for (path, x), (_, y) in zip(lt.tree.items(hv), lt.tree.items(numeric)):  # finite differences: noise ~1e-6
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(y).max()), err_msg=path)
    hu = lt.hvp(loss, params, u)
    dot = lambda a, b: sum(float(np.vdot(x, y)) for x, y in zip(lt.tree.leaves(a), lt.tree.leaves(b)))  # noqa: E731
    assert dot(u, hv) == pytest.approx(dot(v, hu), rel=1e-9)


def test_jvp_of_grad_is_the_hessian_vector_product():
    f = lambda x: ops.sum(ops.exp(x) * ops.tanh(x[::-1]))  # noqa: E731
    x, v = normal((4,), 1), normal((4,), 2)
    _, forward_over_reverse = lt.jvp(lt.grad(f), (x,), (v,))
    np.testing.assert_allclose(forward_over_reverse, lt.hvp(f, x, v), rtol=1e-12)


def test_jvp_of_jvp_and_vmap_of_jvp():
    f = lambda x: ops.sum(ops.tanh(x) * x)  # noqa: E731
    x, u, v = normal((3,), 1), normal((3,), 2), normal((3,), 3)
    _, second = lt.jvp(lambda y: lt.jvp(f, (y,), (u,))[1], (x,), (v,))
    np.testing.assert_allclose(second, np.vdot(v, lt.hvp(f, x, u)), rtol=1e-10)
    tangents = normal((5, 3), 4)
    batched = lt.vmap(lambda t: lt.jvp(f, (x,), (t,))[1])(tangents)
    np.testing.assert_allclose(batched, [lt.jvp(f, (x,), (t,))[1] for t in tangents], rtol=1e-12)


# ----------------------------------------------------------------- remat


@pytest.mark.parametrize("preset", ["tiny", "llama-tiny"])
def test_remat_gives_the_same_loss_and_gradients_bit_for_bit(preset):
    model = lt.GPT.preset(preset, max_seq_len=16)
    params = model.init(lt.random.key(0))
    ids = tokens(model, (2, 9), 1)
    plain = lt.value_and_grad(model.loss)(params, ids)
    again = lt.value_and_grad(attrs.evolve(model, remat=True).loss)(params, ids)
    assert float(plain[0]) == float(again[0])
    assert_trees_close(plain[1], again[1], rtol=0, atol=0)


def test_remat_composes_with_vmap_and_with_grad_of_its_pieces():
    params = mlp_params(0)
    xs = normal((3, 2, 3), 1)
    plain = lt.vmap(lt.grad(lambda p, x: ops.sum(mlp(p, x))), in_axes=(None, 0))(params, xs)
    remat = lt.vmap(lt.grad(lambda p, x: ops.sum(lt.remat(mlp)(p, x))), in_axes=(None, 0))(params, xs)
    assert_trees_close(plain, remat, rtol=0, atol=0)
    assert lt.remat(mlp)(params, xs[0]).tolist() == mlp(params, xs[0]).tolist()


# ----------------------------------------------------------------- trees


@given(st.integers(1, 4))
def test_tree_stack_and_unstack_round_trip(n):
    trees = [mlp_params(i) for i in range(n)]
    back = lt.tree.unstack(lt.tree.stack(trees))
    assert len(back) == n
    for a, b in zip(back, trees):
        assert_trees_close(a, b, rtol=0, atol=0)


def test_tree_stack_refuses_mismatched_trees():
    with pytest.raises(ValueError, match="different shapes"):
        lt.tree.stack([{"w": np.ones(2)}, {"w": np.ones(3)}])
    with pytest.raises(ValueError, match="structure"):
        lt.tree.stack([{"w": np.ones(2)}, {"v": np.ones(2)}])


def test_a_gpt_with_dropout_under_vmap_draws_each_members_masks_from_its_own_key():
    model = tiny(dropout=0.2)  # embedding, attention weights and residual dropout
    params = model.init(lt.random.key(0))
    ids = tokens(model, (3, 2, 8), 1)
    keys = [lt.random.key(i) for i in range(3)]
    # Up to float rounding: a member's loss may be summed by the compiled cross-entropy alone and by
    # NumPy under vmap; another member's masks would change it in the second or third digit.
    got = lt.vmap(lambda i, k: model.loss(params, i, rng=k))(ids, lt.random.stack(keys))
    np.testing.assert_allclose(got, [float(model.loss(params, i, rng=k)) for i, k in zip(ids, keys)], rtol=1e-6)
    shared = lt.vmap(lambda i: model.loss(params, i, rng=keys[0]))(ids)
    np.testing.assert_allclose(shared, [float(model.loss(params, i, rng=keys[0])) for i in ids], rtol=1e-6)
    assert abs(got[1] - shared[1]) > 1e-4  # different keys, different masks
