"""Every primitive's VJP against finite differences (float64), over hypothesis-drawn shapes."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lt
from lt import ops, random
from lt.testing import check_grads

settings.register_profile("grads", deadline=None, max_examples=25)
settings.load_profile("grads")

seeds = st.integers(0, 2**20)
dims = st.integers(1, 4)
shapes = st.lists(dims, min_size=1, max_size=3).map(tuple)


def normal(shape, seed):
    return random.normal(random.key(seed), shape, np.float64)


@st.composite
def broadcast_pair(draw):
    """Two shapes that broadcast together: b drops leading axes and squeezes some to 1."""
    a = draw(shapes)
    drop = draw(st.integers(0, len(a)))
    b = tuple(1 if draw(st.booleans()) else n for n in a[drop:])
    return (a, b) if draw(st.booleans()) else (b, a)


@pytest.mark.parametrize("op", [ops.add, ops.sub, ops.mul, ops.div])
@given(broadcast_pair(), seeds)
def test_broadcasting_elementwise(op, pair, seed):
    a, b = normal(pair[0], seed), normal(pair[1], seed + 1)
    if op is ops.div:
        b = np.abs(b) + 0.5
    check_grads(op, [a, b], argnums=(0, 1))


@pytest.mark.parametrize("op", [ops.exp, ops.tanh, ops.neg, ops.gelu, ops.relu])
@given(shapes, seeds)
def test_unary(op, shape, seed):
    x = normal(shape, seed)
    if op is ops.relu:
        x = x + np.sign(x) * 0.01               # keep away from the kink
    check_grads(op, [x])


@given(shapes, seeds)
def test_log(shape, seed):
    check_grads(ops.log, [np.abs(normal(shape, seed)) + 0.3])


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.booleans(), seeds)
def test_matmul_with_broadcast_batch(batch, n, k, m, broadcast_b, seed):
    a = normal((batch, 2, n, k), seed)
    b = normal((k, m) if broadcast_b else (batch, 1, k, m), seed + 1)
    check_grads(ops.matmul, [a, b], argnums=(0, 1))


@given(st.lists(dims, min_size=0, max_size=2).map(tuple), dims, dims, st.booleans(), seeds)
def test_linear(lead, n_in, n_out, bias, seed):
    x, w = normal(lead + (n_in,), seed), normal((n_in, n_out), seed + 1)
    args = [x, w, normal((n_out,), seed + 2)] if bias else [x, w]
    check_grads(ops.linear, args, argnums=tuple(range(len(args))))


@given(shapes, seeds, st.data())
def test_reshape_transpose_index(shape, seed, data):
    x = normal(shape, seed)
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    check_grads(lambda x: ops.transpose(x, perm), [x])
    check_grads(lambda x: ops.reshape(x, (-1,)), [x])
    picks = np.array(data.draw(st.lists(st.integers(0, shape[0] - 1), min_size=1, max_size=5)))
    check_grads(lambda x: x[picks], [x])                  # repeated picks must sum
    check_grads(lambda x: x[..., :1], [x])


@given(st.lists(st.integers(1, 3), min_size=1, max_size=3), seeds)
def test_split_concat(sizes, seed):
    parts = [normal((2, n), seed + i) for i, n in enumerate(sizes)]
    check_grads(lambda *p: ops.concat(*p, axis=1), parts, argnums=tuple(range(len(parts))))
    whole = normal((2, 3 * len(sizes)), seed)
    check_grads(lambda x: ops.split(x, len(sizes), axis=1)[-1] * 2.0, [whole])   # unused outputs


@given(shapes, seeds, st.booleans())
def test_sum_mean(shape, seed, keepdims):
    x = normal(shape, seed)
    axis = len(shape) - 1
    check_grads(lambda x: ops.sum(x, axis=axis, keepdims=keepdims), [x])
    check_grads(lambda x: ops.mean(x, axis=None), [x])
    check_grads(lambda x: ops.mean(x, axis=(0,), keepdims=keepdims), [x])


@given(st.lists(dims, min_size=0, max_size=2).map(tuple), st.integers(2, 9), seeds)
def test_layer_norm(lead, d, seed):
    x = normal(lead + (d,), seed) * 2 + 1
    check_grads(ops.layer_norm, [x, normal((d,), seed + 1), normal((d,), seed + 2)], argnums=(0, 1, 2))


@given(st.integers(1, 3), st.integers(2, 6), seeds)
def test_masked_softmax(b, n, seed):
    x = normal((b, n, n), seed)
    mask = random.bernoulli(random.key(seed), 0.6, (n, n))
    mask[:, 0] = True
    check_grads(lambda x: ops.softmax(x, mask), [x])
    check_grads(lambda x: ops.softmax(x, None, 0), [x])


@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), st.integers(1, 4),
       st.sampled_from(["none", "causal", "padding", "random"]), st.sampled_from([0.0, 0.3]), seeds)
def test_attention(b, h, t, s, d, mask_kind, rate, seed):
    q, k, v = normal((b, h, t, d), seed), normal((b, h, s, d), seed + 1), normal((b, h, s, d + 1), seed + 2)
    mask = {"none": None,
            "causal": np.tril(np.ones((t, s), bool), s - t),
            "padding": lt.nn.padding_mask(np.minimum(np.arange(b) + 1, s), s),
            "random": random.bernoulli(random.key(seed), 0.5, (b, 1, t, s))}[mask_kind]
    rng = random.key(seed) if rate else None
    check_grads(lambda q, k, v: ops.attention(q, k, v, mask, rate, rng), [q, k, v], argnums=(0, 1, 2))
    w = normal((b, h, t, s), seed + 3)
    check_grads(lambda q, k, v: ops.sum(ops.attention(q, k, v, mask, rate, rng, return_weights=True)[1] * w),
                [q, k, v], argnums=(0, 1, 2))


@given(st.integers(2, 6), st.integers(1, 4), st.lists(st.integers(0, 5), min_size=1, max_size=8), seeds)
def test_embedding_scatter_adds_repeated_ids(vocab, d, ids, seed):
    ids = np.array(ids) % vocab
    check_grads(lambda w: ops.embedding(w, ids.reshape(1, -1)), [normal((vocab, d), seed)])


def test_embedding_gradient_counts_each_occurrence():
    w = normal((4, 2), 0)
    _, g = lt.value_and_grad(lambda w: ops.sum(ops.embedding(w, np.array([1, 1, 1, 3]))))(w)
    assert np.array_equal(g, [[0, 0], [3, 3], [0, 0], [1, 1]])


@given(st.integers(1, 3), st.integers(1, 5), st.integers(2, 7), seeds)
def test_cross_entropy_with_ignored_positions(b, t, v, seed):
    logits = normal((b, t, v), seed) * 3
    targets = random.randint(random.key(seed), (b, t), -1, v)
    targets[targets < 0] = -100
    check_grads(lambda x: ops.cross_entropy(x, targets), [logits])
    zero_ignored = np.where(targets < 0, 0, targets)
    check_grads(lambda x: ops.cross_entropy(x, zero_ignored, ignore_index=0), [logits])


def test_cross_entropy_backward_is_softmax_minus_onehot():
    logits = normal((3, 5), 1)
    targets = np.array([4, -100, 0])
    _, g = lt.value_and_grad(lambda x: ops.cross_entropy(x, targets))(logits)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = (p - np.eye(5)[[4, 0, 0]]) / 2
    expected[1] = 0
    assert np.allclose(g, expected)


@given(shapes, st.sampled_from([0.1, 0.5, 0.9]), seeds)
def test_dropout(shape, rate, seed):
    check_grads(lambda x: ops.dropout(x, rate, random.key(seed)), [normal(shape, seed)])


def test_astype_round_trips_the_cotangent_dtype():
    x = normal((3,), 0)
    _, g = lt.value_and_grad(lambda x: ops.sum(ops.astype(x, np.float32)))(x)
    assert g.dtype == np.float64 and np.array_equal(g, np.ones(3))


@given(st.lists(dims, min_size=0, max_size=2).map(tuple), dims, dims, seeds)
def test_unembed(lead, v, d, seed):
    h, w = normal(lead + (d,), seed), normal((v, d), seed + 1)
    assert np.allclose(ops.unembed(h, w), h @ w.T)
    check_grads(ops.unembed, [h, w], argnums=(0, 1))


def test_softmax_of_a_fully_masked_column_has_no_gradient_whatever_the_masks_rank():
    """A mask of lower rank broadcast along a non-negative axis: the dead rows are x's, not the mask's."""
    x = normal((3, 4), 1)
    mask = np.array([True, False, True, True])  # (4,): column 1 is masked along axis 0
    w = normal((3, 4), 2)
    g = lt.grad(lambda x: ops.sum(ops.mul(ops.softmax(x, mask, axis=0), w)))(x)
    np.testing.assert_array_equal(g[:, 1], 0.0)
    check_grads(lambda x: ops.softmax(x, mask, axis=0), [x])


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_attention_gradient_when_v_has_more_leading_axes_than_the_weights(rate):
    """q, k (T, d), v (N, S, dv): the weights are shared by the N outputs and counted once."""
    q, k, v = normal((3, 4), 1), normal((5, 4), 2), normal((2, 5, 3), 3)
    w_out, w_p = normal((2, 3, 3), 4), normal((3, 5), 5)
    rng = random.key(6)

    def f(q, k, v):
        out, p = ops.attention(q, k, v, None, rate, rng, return_weights=True)
        return ops.add(ops.sum(ops.mul(out, w_out)), ops.sum(ops.mul(p, w_p)))

    check_grads(f, [q, k, v], argnums=(0, 1, 2))


@pytest.mark.parametrize("causal", [False, True])
def test_blockwise_attention_gradient_when_v_has_more_leading_axes(causal):
    """q, k (T, d), v (N, S, dv): every tile broadcast to the output's leading axes, then summed back."""
    q, k, v = normal((3, 4), 1), normal((5, 4), 2), normal((2, 5, 3), 3)
    check_grads(lambda q, k, v: ops.blockwise_attention(q, k, v, causal=causal, block=(2, 2)), [q, k, v], argnums=(0, 1, 2))
