"""lt.value_and_grad / grad / vjp: JAX's meaning, whole-model gradients, zero tracing cost outside."""

import numpy as np
import pytest

import lt
from lt import ops, random, tree
from lt.ops.primitive import Tape
from lt.testing import check_grads

TINY = lt.GPT.preset("tiny")


def params64(model, seed=0):
    p = model.init(random.key(seed), np.float64)
    return tree.map(lambda x: x + 0.05 * random.normal(random.fold_in(random.key(seed + 1), x.size), x.shape), p)


def test_whole_gpt_passes_the_finite_difference_check():
    ids = random.randint(random.key(2), (2, 7), 0, 500)
    check_grads(TINY.loss, [params64(TINY), ids], num_directions=4)


def test_whole_gpt_with_dropout_untied_head_and_padding_passes():
    model = lt.GPT.preset("tiny", dropout=0.2, tie_embeddings=False, positional="sinusoidal", activation="relu")
    ids = random.randint(random.key(2), (2, 7), 0, 500)
    mask = np.array([[True] * 7, [True] * 4 + [False] * 3])
    check_grads(lambda p: model.loss(p, ids, rng=random.key(5), attention_mask=mask), [params64(model)])


def test_gradient_has_the_structure_of_the_argument_and_is_frozen():
    params = TINY.init(random.key(0))
    ids = random.randint(random.key(1), (2, 5), 0, 500)
    loss, grads = lt.value_and_grad(TINY.loss)(params, ids)
    assert tree.structure(grads) == tree.structure(params)
    assert all(g.shape == p.shape and g.dtype == p.dtype for g, p in zip(tree.leaves(grads), tree.leaves(params)))
    assert all(not g.flags.writeable for g in tree.leaves(grads))
    assert isinstance(loss, np.ndarray) and loss.shape == () and np.isclose(loss, TINY.loss(params, ids))


def test_argnums_has_aux_and_non_differentiable_leaves():
    def f(x, y, stuff):
        out = ops.sum(ops.mul(x, y)) + ops.sum(stuff["w"])
        return out, {"twice": ops.mul(x, 2.0), "ids": stuff["ids"]}

    x, y = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    stuff = {"w": np.array([0.5, 0.5]), "ids": np.array([1, 2]), "rng": random.key(0)}
    (value, aux), (gx, gs) = lt.value_and_grad(f, argnums=(0, 2), has_aux=True)(x, y, stuff)
    assert value == 12.0 and np.array_equal(aux["twice"], [2.0, 4.0]) and isinstance(aux["twice"], np.ndarray)
    assert np.array_equal(gx, y) and np.array_equal(gs["w"], [1.0, 1.0])
    assert np.array_equal(gs["ids"], [0, 0]) and gs["ids"].dtype == stuff["ids"].dtype
    assert gs["rng"] == stuff["rng"]                     # keys pass through untouched
    g_only = lt.grad(lambda x: ops.sum(ops.mul(x, x)))(x)
    assert np.array_equal(g_only, 2 * x)


def test_unused_and_constant_inputs_get_zero_gradients():
    g = lt.grad(lambda x, y: ops.sum(y), argnums=(0, 1))(np.ones(3), np.ones(2))
    assert np.array_equal(g[0], np.zeros(3)) and np.array_equal(g[1], np.ones(2))
    assert np.array_equal(lt.grad(lambda x: 3.0)(np.ones(2)), np.zeros(2))


def test_value_used_twice_accumulates():
    g = lt.grad(lambda x: ops.sum(x * x + x))(np.array([1.0, -2.0]))
    assert np.array_equal(g, [3.0, -3.0])


def test_non_scalar_output_is_refused():
    with pytest.raises(TypeError, match="scalar"):
        lt.value_and_grad(lambda x: x * 2.0)(np.ones(3))


def test_vjp_pulls_back_any_cotangent():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    out, pullback = lt.vjp(lambda x: ops.tanh(x), x)
    (gx,) = pullback(np.ones_like(x))
    assert np.allclose(out, np.tanh(x)) and np.allclose(gx, 1 - np.tanh(x) ** 2)


def test_numpy_ufuncs_with_a_primitive_dispatch_and_others_fail_loudly():
    x = np.array([0.5, -1.0])
    assert np.allclose(lt.grad(lambda x: ops.sum(np.exp(x) * np.ones(2) + x))(x), np.exp(x) + 1)
    with pytest.raises(TypeError, match="lt.ops"):
        lt.grad(lambda x: ops.sum(np.sin(x)))(x)
    with pytest.raises(TypeError, match="lt.ops"):
        lt.grad(lambda x: ops.sum(np.asarray(x)))(x)


def test_a_plain_forward_pass_records_nothing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a tape was used outside value_and_grad")
    monkeypatch.setattr(Tape, "record", refuse)
    monkeypatch.setattr(Tape, "new", refuse)
    params = TINY.init(random.key(0))
    logits = TINY.apply(params, np.zeros((1, 4), int))
    assert type(logits) is np.ndarray


def test_value_and_grad_leaves_its_inputs_untouched():
    params = TINY.init(random.key(0))
    before = [x.copy() for x in tree.leaves(params)]
    lt.value_and_grad(TINY.loss)(params, np.ones((2, 6), int), rng=random.key(1))
    assert all(np.array_equal(a, b) for a, b in zip(before, tree.leaves(params)))
