"""lt.nn layers against their definitions."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lt
from lt import nn, random

rng = random.key(0)


def normal(shape, seed=0, dtype=np.float64):
    return random.normal(random.key(seed), shape, dtype)


@given(st.integers(1, 4), st.integers(1, 6), st.integers(2, 40), st.integers(0, 1000))
def test_layer_norm_rows_have_zero_mean_unit_variance_before_scale_and_shift(b, t, d, seed):
    ln = nn.LayerNorm(d)
    x = normal((b, t, d), seed) * 3.0 + 1.5
    y = ln.apply(ln.init(rng, np.float64), x)
    assert np.allclose(y.mean(-1), 0.0, atol=1e-9)
    assert np.allclose(y.var(-1), 1.0 / (1.0 + ln.eps / x.var(-1)), rtol=1e-9)
    params = {"scale": normal((d,), seed + 1), "bias": normal((d,), seed + 2)}
    assert np.allclose(ln.apply(params, x), y * params["scale"] + params["bias"])


def test_linear_is_x_at_w_plus_b():
    lin = nn.Linear(5, 3)
    p = lin.init(rng, np.float64)
    assert p["w"].shape == (5, 3) and np.all(p["b"] == 0)
    p = {"w": p["w"], "b": normal((3,), 4)}
    x = normal((2, 4, 5), 3)
    assert np.allclose(lin.apply(p, x), np.einsum("bti,io->bto", x, p["w"]) + p["b"])
    assert "b" not in nn.Linear(5, 3, bias=False).init(rng)


def test_linear_init_std_is_the_field():
    p = nn.Linear(300, 400, init_std=0.05).init(rng, np.float64)
    assert abs(p["w"].std() - 0.05) < 0.001


def test_embedding_looks_up_rows_and_scores_against_them():
    emb = nn.Embedding(7, 4)
    p = emb.init(rng, np.float64)
    ids = np.array([[0, 6, 6], [3, 2, 1]])
    assert np.array_equal(emb.apply(p, ids), p["w"][ids])
    h = normal((2, 3, 4), 1)
    assert np.allclose(emb.attend(p, h), h @ p["w"].T)
    with pytest.raises(ValueError, match="7"):
        emb.apply(p, np.array([7]))
    with pytest.raises(TypeError, match="integer"):
        emb.apply(p, np.array([1.0]))


def test_sinusoidal_positions_interleave_sin_and_cos():
    pe = nn.PositionalEncoding(50, 6)
    table = pe.apply({}, np.arange(50), dtype=np.float64)
    for pos in (0, 1, 17, 49):
        for i in range(3):
            angle = pos / 10000 ** (2 * i / 6)
            assert math.isclose(table[pos, 2 * i], math.sin(angle), abs_tol=1e-12)
            assert math.isclose(table[pos, 2 * i + 1], math.cos(angle), abs_tol=1e-12)
    assert pe.init(rng) == {}
    assert nn.PositionalEncoding(10, 5).apply({}, np.arange(10)).shape == (10, 5)


def test_learned_positions_are_rows_of_a_table():
    pe = nn.LearnedPositionalEncoding(10, 4)
    p = pe.init(rng)
    assert np.array_equal(pe.apply(p, np.array([[3, 4]])), p["w"][[[3, 4]]])
    with pytest.raises(ValueError, match="positions"):
        pe.apply(p, np.array([10]))


def test_feed_forward_gelu_and_relu_match_their_formulas():
    x = normal((2, 3, 4), 5)
    for act, f in [("gelu", lambda h: 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))),
                   ("relu", lambda h: np.maximum(h, 0))]:
        ffn = nn.FeedForward(4, 8, activation=act)
        p = ffn.init(rng, np.float64)
        p = lt.tree.set(p, "fc.b", normal((8,), 6))
        expected = f(x @ p["fc"]["w"] + p["fc"]["b"]) @ p["proj"]["w"] + p["proj"]["b"]
        assert np.allclose(ffn.apply(p, x), expected)


def test_dropout_zeroes_at_the_rate_and_keeps_the_mean():
    d = nn.Dropout(0.25)
    x = np.ones((400, 500), np.float32)
    y = d.apply({}, x, rng=random.key(3))
    assert abs((y == 0).mean() - 0.25) < 0.01
    assert np.allclose(y[y != 0], 1 / 0.75)
    assert abs(y.mean() - 1.0) < 0.01
    assert d.apply({}, x) is x                       # no key: deterministic identity
    assert np.array_equal(d.apply({}, x, rng=random.key(3)), y)


@pytest.mark.parametrize("make,field", [
    (lambda: nn.Linear(0, 3), "in_dim"),
    (lambda: nn.LayerNorm(-1), "dim"),
    (lambda: nn.Dropout(1.0), "rate"),
    (lambda: nn.FeedForward(4, 8, activation="swish"), "activation"),
    (lambda: nn.MultiHeadAttention(10, 3), "divisible"),
])
def test_bad_hyperparameters_raise_at_construction_naming_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_components_are_frozen():
    ln = nn.LayerNorm(4)
    with pytest.raises(Exception):
        ln.dim = 5
