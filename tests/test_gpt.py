"""lt.GPT: presets, parameter counts, a reference forward pass, loss, errors, reproducibility."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lt
from lt import nn, random, tree

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = lt.GPT.preset("tiny")


# ------------------------------------------------------------- a reference written plainly

def ref_layer_norm(x, p, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def ref_gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def ref_attention(x, p, n_head):
    T, D = x.shape
    q, k, v = np.split(x @ p["qkv"]["w"] + p["qkv"]["b"], 3, axis=-1)
    heads = []
    for h in np.split(np.arange(D), n_head):
        s = q[:, h] @ k[:, h].T / np.sqrt(len(h))
        s = s + np.triu(np.full((T, T), -1e10), 1)
        w = np.exp(s - s.max(-1, keepdims=True))
        heads.append(w / w.sum(-1, keepdims=True) @ v[:, h])
    return np.hstack(heads) @ p["proj"]["w"] + p["proj"]["b"]


def ref_gpt(params, ids, n_head):
    """GPT-2 forward for one sequence (T,), the picoGPT way."""
    x = params["wte"]["w"][ids] + params["wpe"]["w"][np.arange(len(ids))]
    for b in params["blocks"]:
        x = x + ref_attention(ref_layer_norm(x, b["ln1"]), b["attn"], n_head)
        h = ref_gelu(ref_layer_norm(x, b["ln2"]) @ b["ffn"]["fc"]["w"] + b["ffn"]["fc"]["b"])
        x = x + h @ b["ffn"]["proj"]["w"] + b["ffn"]["proj"]["b"]
    return ref_layer_norm(x, params["ln_f"]) @ params["wte"]["w"].T


def randomized(params, seed):
    """Params with every leaf (biases and norms too) perturbed, so no term is trivially zero."""
    return tree.map(lambda x: x + 0.1 * random.normal(random.fold_in(random.key(seed), x.size), x.shape, x.dtype), params)


def test_tiny_forward_matches_the_reference():
    params = randomized(TINY.init(random.key(0), np.float64), 1)
    ids = random.randint(random.key(2), (3, 17), 0, TINY.vocab_size)
    logits = TINY.apply(params, ids)
    assert logits.shape == (3, 17, 500) and logits.dtype == np.float64
    for b in range(3):
        assert np.allclose(logits[b], ref_gpt(params, ids[b], TINY.num_heads), atol=1e-10)
    assert np.allclose(TINY.apply(params, ids[1]), logits[1])          # (T,) -> (T, V)


def test_loss_is_mean_next_token_cross_entropy_with_ignore_index():
    params = TINY.init(random.key(0), np.float64)
    ids = random.randint(random.key(3), (2, 9), 0, 500)
    targets = random.randint(random.key(4), (2, 9), 0, 500)
    targets[0, 3] = targets[1, 8] = -100
    logits = TINY.apply(params, ids)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    kept = [(b, t) for b in range(2) for t in range(9) if targets[b, t] != -100]
    expected = -np.mean([logp[b, t, targets[b, t]] for b, t in kept])
    assert np.isclose(TINY.loss(params, ids, targets), expected)
    shifted = -np.mean(np.take_along_axis(TINY.apply(params, ids[:, :-1]) - 0, ids[:, 1:, None], -1)
                       - np.log(np.exp(TINY.apply(params, ids[:, :-1])).sum(-1, keepdims=True)))
    assert np.isclose(TINY.loss(params, ids), shifted)


def test_an_untrained_model_predicts_near_uniform():
    params = TINY.init(random.key(0))
    loss = TINY.loss(params, random.randint(random.key(1), (4, 64), 0, 500))
    assert abs(float(loss) - np.log(500)) < 0.1


PRESET_TABLE = {"tiny": (500, 2, 2, 32, 128), "small": (1000, 4, 4, 64, 256),
                "medium": (5000, 6, 6, 192, 768), "large": (10000, 12, 8, 256, 1024),
                "gpt2": (50257, 12, 12, 768, 3072)}


@pytest.mark.parametrize("name", list(PRESET_TABLE))
def test_presets_match_the_table_and_num_params_counts_leaves(name):
    m = lt.GPT.preset(name)
    assert (m.vocab_size, m.num_layers, m.num_heads, m.hidden_dim, m.ffn_dim) == PRESET_TABLE[name]
    if name != "gpt2":
        assert m.num_params() == tree.size(m.init(random.key(0)))


def test_gpt2_preset_has_gpt2s_parameter_count():
    m = lt.GPT.preset("gpt2")
    assert m.max_seq_len == 1024 and m.num_params() == 124_439_808
    untied = lt.GPT.preset("gpt2", tie_embeddings=False)
    assert untied.num_params() == 124_439_808 + 50257 * 768


def test_variants_change_the_tree_as_documented():
    sinus = lt.GPT.preset("tiny", positional="sinusoidal", tie_embeddings=False)
    p = sinus.init(random.key(0))
    assert "wpe" not in p and p["head"]["w"].shape == (32, 500)
    ids = random.randint(random.key(1), (2, 5), 0, 500)
    assert sinus.apply(p, ids).shape == (2, 5, 500)


def test_hidden_states_are_embeddings_then_each_block():
    params = TINY.init(random.key(0), np.float64)
    ids = random.randint(random.key(1), (2, 6), 0, 500)
    logits, hidden = TINY.apply(params, ids, return_hidden_states=True)
    assert len(hidden) == TINY.num_layers + 1 and all(h.shape == (2, 6, 32) for h in hidden)
    assert np.allclose(hidden[0], params["wte"]["w"][ids] + params["wpe"]["w"][:6])
    mask = nn.causal_mask(6)
    assert np.allclose(hidden[1], TINY.block.apply(params["blocks"][0], hidden[0], mask))
    assert np.allclose(TINY.logits(params, hidden[-1]), logits)


def test_causal_logits_at_t_ignore_tokens_after_t():
    params = TINY.init(random.key(0))
    ids = random.randint(random.key(1), (1, 10), 0, 500)
    other = ids.copy()
    other[0, 6:] = (other[0, 6:] + 1) % 500
    a, b = TINY.apply(params, ids), TINY.apply(params, other)
    assert np.array_equal(a[:, :6], b[:, :6]) and not np.allclose(a[:, 6:], b[:, 6:])


def test_padding_mask_keeps_real_tokens_independent_of_padding():
    params = TINY.init(random.key(0))
    ids = random.randint(random.key(1), (1, 8), 0, 500)
    padded = np.concatenate([ids, np.zeros((1, 4), int)], axis=1)
    mask = np.arange(12)[None] < 8
    assert np.allclose(TINY.apply(params, padded, attention_mask=mask)[:, :8], TINY.apply(params, ids), atol=1e-6)


def test_dropout_only_with_a_key():
    m = lt.GPT.preset("tiny", dropout=0.2)
    params = m.init(random.key(0))
    ids = random.randint(random.key(1), (2, 8), 0, 500)
    assert np.array_equal(m.apply(params, ids), TINY.apply(params, ids))
    a = m.apply(params, ids, rng=random.key(5))
    assert np.array_equal(a, m.apply(params, ids, rng=random.key(5)))
    assert not np.allclose(a, m.apply(params, ids, rng=random.key(6)))


def test_init_keys_come_from_places_not_order():
    rng = random.key(3)
    two, three = TINY.init(rng), lt.GPT.preset("tiny", num_layers=3).init(rng)
    for path, leaf in tree.items(two):
        if path.endswith("proj.w"):       # residual projections: same draws, std 0.02/sqrt(2L)
            assert np.allclose(leaf * np.sqrt(4 / 6), tree.get(three, path), rtol=1e-6), path
        else:
            assert np.array_equal(leaf, tree.get(three, path)), path
    block_rng = random.fold_in(random.fold_in(rng, "blocks"), 1)
    alone = TINY.block.init(block_rng)
    assert all(np.array_equal(a, b) for a, b in zip(tree.leaves(alone), tree.leaves(two["blocks"][1])))
    assert not np.array_equal(two["blocks"][0]["attn"]["qkv"]["w"], two["blocks"][1]["attn"]["qkv"]["w"])


def test_gpt2_init_scales_residual_projections():
    m = lt.GPT.preset("small")
    p = m.init(random.key(0), np.float64)
    assert abs(p["blocks"][0]["attn"]["qkv"]["w"].std() - 0.02) < 0.001
    assert abs(p["blocks"][0]["ffn"]["proj"]["w"].std() - 0.02 / np.sqrt(8)) < 0.0005
    assert np.all(p["blocks"][0]["ln1"]["scale"] == 1) and np.all(p["blocks"][0]["attn"]["qkv"]["b"] == 0)


def test_same_key_gives_bit_identical_params_and_logits_in_a_fresh_process():
    code = ("import hashlib, numpy as np, lt; m = lt.GPT.preset('tiny'); p = m.init(lt.random.key(11)); "
            "ids = np.arange(20).reshape(2, 10); h = hashlib.sha256(); "
            "[h.update(x.tobytes()) for x in lt.tree.leaves(p)]; h.update(m.apply(p, ids).tobytes()); "
            "print(h.hexdigest())")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=ROOT).stdout.strip() for _ in range(2)}
    assert len(runs) == 1 and len(runs.pop()) == 64


# ------------------------------------------------------------- errors

@pytest.mark.parametrize("overrides,field", [
    ({"hidden_dim": 33}, "divisible"), ({"num_layers": 0}, "num_layers"),
    ({"vocab_size": -3}, "vocab_size"), ({"dropout": 1.0}, "dropout"), ({"dropout": -0.1}, "dropout"),
    ({"positional": "alibi"}, "positional"), ({"activation": "geglu"}, "activation"), ({"norm": "batch"}, "norm"),
    ({"num_heads": 4, "hidden_dim": 32, "num_kv_heads": 3}, "num_kv_heads"), ({"max_seq_len": 2.5}, "max_seq_len"),
])
def test_bad_hyperparameters_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        lt.GPT.preset("tiny", **overrides)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="tiny"):
        lt.GPT.preset("huge")


def test_bad_ids_are_named():
    params = TINY.init(random.key(0))
    with pytest.raises(ValueError, match="500"):
        TINY.apply(params, np.array([[1, 500]]))
    with pytest.raises(ValueError, match="-1"):
        TINY.apply(params, np.array([[-1, 2]]))
    with pytest.raises(TypeError, match="integer"):
        TINY.apply(params, np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="max_seq_len=128"):
        TINY.apply(params, np.zeros((1, 129), int))
    with pytest.raises(ValueError, match="targets"):
        TINY.loss(params, np.zeros((1, 4), int), np.full((1, 4), 999))


def test_mismatched_params_name_the_path_expected_and_found():
    params = TINY.init(random.key(0))
    wrong = tree.set(params, "blocks.1.attn.qkv.w", np.zeros((32, 64), np.float32))
    with pytest.raises(ValueError, match=r"blocks\.1\.attn\.qkv\.w.*\(32, 64\).*\(32, 96\)"):
        TINY.apply(wrong, np.zeros((1, 3), int))
    small = lt.GPT.preset("small").init(random.key(0))
    with pytest.raises(ValueError, match="GPT params"):
        TINY.apply(small, np.zeros((1, 3), int))
    missing = tree.set(params, "ln_f", {"scale": params["ln_f"]["scale"]})
    with pytest.raises(ValueError, match="missing ln_f.bias"):
        TINY.apply(missing, np.zeros((1, 3), int))
