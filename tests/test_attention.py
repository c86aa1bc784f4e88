"""Masks and attention: weights, masking, causality, multi-head against a loop reference."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lt import nn, random


def normal(shape, seed=0):
    return random.normal(random.key(seed), shape, np.float64)


@given(st.integers(0, 40))
def test_causal_mask_allows_exactly_the_past(t):
    m = nn.causal_mask(t)
    assert m.shape == (t, t) and m.dtype == bool
    i, j = np.indices((t, t))
    assert np.array_equal(m, j <= i)


@given(st.lists(st.integers(0, 12), min_size=1, max_size=6), st.integers(0, 4))
def test_padding_mask_marks_real_positions_for_any_lengths(lengths, extra):
    max_len = max(lengths) + extra
    m = nn.padding_mask(np.array(lengths), max_len)
    assert m.shape == (len(lengths), 1, 1, max_len)
    for b, n in enumerate(lengths):
        assert m[b, 0, 0].sum() == n and m[b, 0, 0, :n].all()


def test_padding_mask_rejects_lengths_over_max_len():
    with pytest.raises(ValueError, match="seq_lengths"):
        nn.padding_mask(np.array([3, 9]), 5)


@settings(deadline=None)
@given(st.integers(1, 3), st.integers(1, 7), st.integers(1, 7), st.integers(1, 5), st.integers(0, 100))
def test_attention_rows_sum_to_one_and_masked_keys_get_zero(b, t, s, d, seed):
    q, k, v = normal((b, 2, t, d), seed), normal((b, 2, s, d), seed + 1), normal((b, 2, s, d), seed + 2)
    mask = random.bernoulli(random.key(seed), 0.6, (b, 1, t, s))
    mask[..., 0] = True                                   # no row fully masked here
    out, w = nn.scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    assert np.allclose(w.sum(-1), 1.0)
    assert np.all(w[np.broadcast_to(~mask, w.shape)] == 0.0)
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(d)
    scores = np.where(mask, scores, -np.inf)
    ref = np.exp(scores - scores.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    assert np.allclose(w, ref) and np.allclose(out, ref @ v)


def test_fully_masked_row_is_uniform_not_nan():
    q, k, v = normal((1, 1, 2, 3)), normal((1, 1, 4, 3), 1), normal((1, 1, 4, 3), 2)
    mask = np.array([[True, True, False, False], [False] * 4])
    out, w = nn.scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    assert np.all(np.isfinite(out)) and np.allclose(w[0, 0, 1], 0.25)


def test_attention_dropout_needs_a_key_and_scales_kept_weights():
    q, k, v = normal((1, 1, 3, 2)), normal((1, 1, 3, 2), 1), np.eye(3)[None, None]
    plain, w = nn.scaled_dot_product_attention(q, k, v, return_weights=True)
    assert np.array_equal(nn.scaled_dot_product_attention(q, k, v, dropout=0.5), plain)
    dropped = nn.scaled_dot_product_attention(q, k, v, dropout=0.5, rng=random.key(1))
    # with v = I, the output is the dropped-and-rescaled weights themselves
    assert np.all(np.isclose(dropped, 0.0) | np.isclose(dropped, 2 * w))


def reference_mha(p, x, mask, num_heads):
    """Multi-head attention written head by head with explicit loops."""
    B, T, D = x.shape
    d = D // num_heads
    qkv = x @ p["qkv"]["w"] + p["qkv"]["b"]
    out = np.zeros((B, T, D))
    for b in range(B):
        for h in range(num_heads):
            q = qkv[b, :, h * d:(h + 1) * d]
            k = qkv[b, :, D + h * d:D + (h + 1) * d]
            v = qkv[b, :, 2 * D + h * d:2 * D + (h + 1) * d]
            for i in range(T):
                s = np.array([q[i] @ k[j] / np.sqrt(d) if mask[i, j] else -np.inf for j in range(T)])
                w = np.exp(s - s.max())
                out[b, i, h * d:(h + 1) * d] = (w / w.sum()) @ v
    return out @ p["proj"]["w"] + p["proj"]["b"]


def test_multi_head_attention_matches_a_loop_reference():
    mha = nn.MultiHeadAttention(12, 3)
    p = mha.init(random.key(0), np.float64)
    p = {"qkv": {"w": p["qkv"]["w"] * 10, "b": normal((36,), 5)}, "proj": {"w": p["proj"]["w"], "b": normal((12,), 6)}}
    x = normal((2, 5, 12), 7)
    mask = nn.causal_mask(5)
    assert np.allclose(mha.apply(p, x, x, x, mask), reference_mha(p, x, mask, 3))


def test_cross_attention_uses_the_column_blocks_of_qkv():
    mha = nn.MultiHeadAttention(8, 2)
    p = mha.init(random.key(1), np.float64)
    x = normal((1, 4, 8), 2)
    # the same array passed as three different objects takes the separate-projection path
    assert np.allclose(mha.apply(p, x, x.copy(), x.copy()), mha.apply(p, x, x, x))


def test_causal_outputs_do_not_see_the_future():
    mha = nn.MultiHeadAttention(8, 2)
    p = mha.init(random.key(1), np.float64)
    x = normal((1, 6, 8), 3)
    y = x.copy()
    y[:, 4:] += 10.0
    mask = nn.causal_mask(6)
    a, b = mha.apply(p, x, x, x, mask), mha.apply(p, y, y, y, mask)
    assert np.allclose(a[:, :4], b[:, :4]) and not np.allclose(a[:, 4:], b[:, 4:])
