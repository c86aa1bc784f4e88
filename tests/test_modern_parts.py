"""Llama-family parts (issue 16's groundwork): RMS norm, rotary embedding, SwiGLU.

Each primitive's VJP against finite differences (float64); each part against the formula
Hugging Face's Llama computes (transformers, when installed); RoPE's relative-position property.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lt
from lt import ops, random
from lt.nn import GatedFeedForward, RMSNorm
from lt.nn.rotary import RopeScaling, RotaryEmbedding, rope_inv_freq
from lt.testing import check_grads

settings.register_profile("modern", deadline=None, max_examples=25)
seeds = st.integers(0, 2**20)


def normal(shape, seed, dtype=np.float64):
    return random.normal(random.key(seed), shape, dtype)


@settings(settings.get_profile("modern"))
@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 6), seeds)
def test_rms_norm_vjp_matches_finite_differences(b, t, d, seed):
    x, scale = normal((b, t, d), seed), normal((d,), seed + 1)
    check_grads(lambda x, s: ops.rms_norm(x, s, 1e-6), [x, scale], argnums=(0, 1))


@settings(settings.get_profile("modern"))
@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 4), seeds)
def test_rope_vjp_matches_finite_differences(h, t, pairs, seed):
    d = 2 * pairs
    x = normal((2, h, t, d), seed)
    cos, sin = RotaryEmbedding(d).angles(np.arange(t)[None].repeat(2, 0), np.float64)
    check_grads(lambda x: ops.rope(x, cos, sin), [x])


@settings(settings.get_profile("modern"))
@given(st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), seeds)
def test_swiglu_vjp_matches_finite_differences(shape, seed):
    check_grads(ops.swiglu, [normal(shape, seed) * 3, normal(shape, seed + 1)], argnums=(0, 1))


def test_rms_norm_is_the_formula():
    x, scale = normal((2, 3, 8), 0), normal((8,), 1)
    expected = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5) * scale
    assert np.allclose(RMSNorm(8, 1e-5).apply({"scale": scale}, x), expected, rtol=1e-13, atol=0)


def test_swiglu_feed_forward_is_down_of_silu_gate_times_up():
    ffn = GatedFeedForward(6, 10)
    params = ffn.init(random.key(0), np.float64)
    x = normal((2, 3, 6), 2)
    gate, up = x @ params["gate"]["w"], x @ params["up"]["w"]
    expected = (gate / (1 + np.exp(-gate)) * up) @ params["down"]["w"]
    assert np.allclose(ffn.apply(params, x), expected, rtol=1e-12, atol=1e-14)
    assert lt.tree.paths(params) == ["down.w", "gate.w", "up.w"]          # no biases


@settings(settings.get_profile("modern"))
@given(st.integers(1, 8), st.integers(0, 200), st.integers(0, 200), st.integers(0, 500), seeds)
def test_rope_scores_depend_only_on_the_offset(pairs, m, n, shift, seed):
    d = 2 * pairs
    rope = RotaryEmbedding(d, theta=500.0)
    q, k = normal((1, 1, 1, d), seed), normal((1, 1, 1, d), seed + 1)

    def score(i, j):
        return float(np.sum(rope.apply({}, q, np.array([[i]])) * rope.apply({}, k, np.array([[j]]))))
    assert np.isclose(score(m, n), score(m + shift, n + shift), rtol=1e-9, atol=1e-9)


def test_rope_at_position_zero_is_the_identity_and_keeps_norms():
    rope = RotaryEmbedding(8)
    x = normal((1, 2, 5, 8), 3)
    y = rope.apply({}, x, np.arange(5)[None])
    assert np.array_equal(y[:, :, 0], x[:, :, 0])
    assert np.allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-13)


def test_other_rope_scaling_types_are_refused_by_name():
    with pytest.raises(ValueError, match="yarn"):
        RopeScaling.from_config({"rope_type": "yarn", "factor": 4.0})
    assert RopeScaling.from_config({"rope_type": "default"}) is None
    assert RopeScaling.from_config({"type": "linear", "factor": 2.0}) == RopeScaling("linear", 2.0)


# ------------------------------------------------------------------ against transformers

def _hf_inv_freq(head_dim: int, theta: float, scaling):
    """The frequencies of transformers' LlamaRotaryEmbedding for that config."""
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    config = llama.LlamaConfig(hidden_size=2 * head_dim, num_attention_heads=2, max_position_embeddings=256,
                               rope_theta=theta, rope_scaling=scaling)
    return llama.LlamaRotaryEmbedding(config).inv_freq.double().numpy()


@pytest.mark.parametrize("scaling", [
    None,
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
])
def test_frequencies_are_hugging_faces(scaling):
    theta, d = 10000.0, 64
    ours = rope_inv_freq(d, theta, RopeScaling.from_config(scaling))
    theirs = _hf_inv_freq(d, theta, scaling)
    assert np.allclose(ours, theirs, rtol=3e-7, atol=0)                  # Hugging Face works in float32


def test_rms_norm_matches_llamas():
    """In float32. (LlamaRMSNorm normalises in float32 even in a float64 model; lt computes in
    the input's dtype, so float64 agrees only to float32 precision.)"""
    torch = pytest.importorskip("torch")
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    x, scale = normal((2, 4, 16), 4, np.float32), normal((16,), 5, np.float32)
    hf = llama.LlamaRMSNorm(16, eps=1e-6)
    with torch.no_grad():
        hf.weight.copy_(torch.from_numpy(scale))
        expected = hf(torch.from_numpy(x)).numpy()
    assert np.allclose(RMSNorm(16, 1e-6).apply({"scale": scale}, x), expected, rtol=2e-6, atol=1e-7)


def test_rotary_embedding_matches_llamas():
    torch = pytest.importorskip("torch")
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    x = normal((2, 3, 7, 16), 6, np.float32)
    positions = np.array([[0, 1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 2, 3, 4]])   # row 1 left-padded
    cos = np.cos(positions[..., None] * rope_inv_freq(16, 10000.0))
    cos = np.concatenate([cos, cos], -1)[:, None]
    sin = np.sin(positions[..., None] * rope_inv_freq(16, 10000.0))
    sin = np.concatenate([sin, sin], -1)[:, None]
    t = torch.from_numpy(x)
    q, _ = llama.apply_rotary_pos_emb(t, t, torch.from_numpy(cos[:, 0]).float(), torch.from_numpy(sin[:, 0]).float())
    assert np.allclose(RotaryEmbedding(16).apply({}, x, positions), q.numpy(), rtol=1e-5, atol=1e-6)
