"""Llama-family settings of lt.GPT: grouped-query attention, rotary positions, RMS norm,
SwiGLU, Qwen2's q/k/v biases and Mistral's sliding window, all on the one forward pass."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lt
import lt.testing
from lt import random, tree

FAMILIES = {
    "llama": {},
    "mqa": {"num_kv_heads": 1},
    "qwen2": {"qkv_bias": True},
    "mistral": {"sliding_window": 4},
    "mha": {"num_kv_heads": None},
}


def model_of(family, **extra):
    return lt.GPT.preset("llama-tiny", **{**FAMILIES[family], **extra})


def test_the_params_are_llamas_no_biases_no_position_table_rms_scales_only():
    model = lt.GPT.preset("llama-tiny")
    paths = tree.paths(model.init(random.key(0)))
    assert "wpe.w" not in paths and not [p for p in paths if p.endswith(".b") or p.endswith(".bias")]
    assert {p.split(".", 2)[2] for p in paths if p.startswith("blocks.0.")} == {
        "ln1.scale", "ln2.scale", "attn.qkv.w", "attn.proj.w", "ffn.gate.w", "ffn.up.w", "ffn.down.w"}
    qkv = model.init(random.key(0))["blocks"][0]["attn"]["qkv"]["w"]
    d = model.hidden_dim // model.num_heads
    assert qkv.shape == (model.hidden_dim, (model.num_heads + 2 * model.num_kv_heads) * d)
    qwen = lt.tree.paths(model_of("qwen2").init(random.key(0)))
    assert "blocks.0.attn.qkv.b" in qwen and "blocks.0.attn.proj.b" not in qwen


def _repeat_kv_reference(model, params, ids):
    """The same model computed with keys/values repeated to every query head (as Hugging Face's
    repeat_kv does), in plain NumPy: what grouped-query attention must equal."""
    B, T = ids.shape
    H, Hkv, D = model.num_heads, model.kv_heads, model.hidden_dim
    d = D // H
    rope = model.block.rope
    x = params["wte"]["w"][ids]

    def rms(x, s):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + model.layer_norm_eps) * s
    for bp in params["blocks"]:
        h = rms(x, bp["ln1"]["scale"])
        qkv = h @ bp["attn"]["qkv"]["w"]
        q, k, v = np.split(qkv, [H * d, (H + Hkv) * d], axis=-1)
        q, k, v = (t.reshape(B, T, n, d).transpose(0, 2, 1, 3) for t, n in ((q, H), (k, Hkv), (v, Hkv)))
        pos = np.broadcast_to(np.arange(T), (B, T))
        q, k = rope.apply({}, q, pos), rope.apply({}, k, pos)
        k, v = np.repeat(k, H // Hkv, axis=1), np.repeat(v, H // Hkv, axis=1)
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + np.where(np.tril(np.ones((T, T), bool)), 0, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        a = (w / w.sum(-1, keepdims=True)) @ v
        x = x + a.transpose(0, 2, 1, 3).reshape(B, T, D) @ bp["attn"]["proj"]["w"]
        h = rms(x, bp["ln2"]["scale"])
        g, u = h @ bp["ffn"]["gate"]["w"], h @ bp["ffn"]["up"]["w"]
        x = x + (g / (1 + np.exp(-g)) * u) @ bp["ffn"]["down"]["w"]
    return rms(x, params["ln_f"]["scale"]) @ params["wte"]["w"].T


@pytest.mark.parametrize("family", ["llama", "mqa", "mha"])
def test_grouped_query_attention_equals_repeating_the_kv_heads(family):
    model = model_of(family)
    params = model.init(random.key(1), np.float64)
    ids = random.randint(random.key(2), (2, 9), 0, model.vocab_size)
    assert np.allclose(model.apply(params, ids), _repeat_kv_reference(model, params, ids), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_kv_cache_decoding_equals_full_recomputation_with_left_padding(family):
    model = model_of(family)
    params = model.init(random.key(3), np.float64)
    prompts = [random.randint(random.key(4), (7,), 0, model.vocab_size),
               random.randint(random.key(5), (3,), 0, model.vocab_size)]
    out = lt.generate.generate(model, params, prompts, max_new_tokens=6, temperature=0)   # (2, 13), row 1 padded
    mask = np.ones(out.shape, bool)
    mask[1, :4] = False
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    full = model.apply(params, out, attention_mask=mask, positions=positions)
    assert np.array_equal(out[:, 7:], np.argmax(full[:, 6:-1], -1))           # each token is the full pass's argmax
    logits, cache = lt.generate.prefill(model, params, prompts)
    assert cache.keys[0].shape[1] == model.kv_heads                           # the cache holds kv heads only
    for t in range(7, 13):
        assert np.allclose(logits, full[:, t - 1], rtol=1e-10, atol=1e-12)
        logits, cache = lt.generate.extend(model, params, cache, out[:, t])


@settings(deadline=None, max_examples=20)
@given(st.integers(1, 6), st.integers(0, 9), st.integers(0, 9))
def test_a_sliding_window_hides_exactly_the_keys_that_far_back(window, i, j):
    model = lt.GPT.preset("llama-tiny", num_layers=1, sliding_window=window)   # one layer: no relay
    params = model.init(random.key(6), np.float64)
    ids = random.randint(random.key(7), (10,), 0, model.vocab_size)
    other = ids.copy()
    other[j] = (other[j] + 1) % model.vocab_size
    changed = not np.allclose(model.apply(params, ids)[i], model.apply(params, other)[i], rtol=0, atol=1e-13)
    assert changed == (i - window < j <= i)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_the_loss_gradient_matches_finite_differences(family):
    model = model_of(family, sliding_window=3) if family == "mistral" else model_of(family)
    params = model.init(random.key(8), np.float64)
    ids = random.randint(random.key(9), (2, 8), 0, model.vocab_size)
    lt.testing.check_grads(lambda p: model.loss(p, ids), [params])


def test_a_llama_shaped_model_learns():
    text = np.tile(np.arange(20), 30)
    model = lt.GPT.preset("llama-tiny", vocab_size=20, max_seq_len=32)
    opt = lt.optim.adamw(3e-3)
    state = lt.TrainState.create(model.init(random.key(10)), opt)
    state, log = lt.train(model, opt, state, text, steps=60, batch_size=8, seq_len=32, rng=random.key(11),
                          log_every=20, progress=False, verbose=False)
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]


def test_a_llama_checkpoint_with_rope_scaling_and_a_window_loads_as_the_same_model(tmp_path):
    model = lt.GPT.preset("llama-tiny", sliding_window=8,
                          rope_scaling=lt.nn.RopeScaling("llama3", 8.0, original_max_position_embeddings=64))
    params = model.init(random.key(12))
    lt.checkpoint.save(tmp_path / "c.safetensors", model, params)
    again, loaded = lt.checkpoint.load_model(tmp_path / "c.safetensors")
    assert again == model and again.rope_scaling.original_max_position_embeddings == 64
    ids = random.randint(random.key(13), (1, 12), 0, model.vocab_size)
    assert np.array_equal(again.apply(loaded, ids), model.apply(params, ids))


def test_num_kv_heads_equal_to_num_heads_is_plain_multi_head():
    assert lt.GPT.preset("llama-tiny", num_kv_heads=4) == lt.GPT.preset("llama-tiny", num_kv_heads=None)
    with pytest.raises(ValueError, match="rope_scaling"):
        lt.GPT.preset("llama-tiny", rope_scaling="llama3")
    with pytest.raises(ValueError, match="yarn"):
        lt.GPT.preset("llama-tiny", rope_scaling={"rope_type": "yarn", "factor": 2.0})


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_a_whole_model_gives_the_same_numbers_with_either_attention_kernel(family):
    model = model_of(family)
    params = model.init(random.key(14), np.float64)
    ids = random.randint(random.key(15), (2, 20), 0, model.vocab_size)
    full = model.apply(params, ids, kernel="full")
    assert np.allclose(model.apply(params, ids, kernel="blockwise"), full, rtol=1e-12, atol=1e-12)
    g_full = lt.grad(lambda p: model.loss(p, ids, kernel="full"))(params)
    g_block = lt.grad(lambda p: model.loss(p, ids, kernel="blockwise"))(params)
    assert all(np.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(tree.leaves(g_full), tree.leaves(g_block)))
