"""The NanoGPT speedrun's model options on lt.GPT: QK-norm, ReLU², logit soft-capping,
zero-initialised output projections; each off by default, each differentiable."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lt
from lt import generate as gen, ops, random, tree
from lt.testing import check_grads

SPEEDRUN = dict(qk_norm=True, activation="relu2", logit_softcap=5.0, zero_init_projections=True)


def small(**options):
    return lt.GPT.preset("llama-tiny", vocab_size=40, hidden_dim=32, num_heads=4, ffn_dim=48, max_seq_len=24, **options)


def jittered(model, seed=0, dtype=np.float64):
    """Params with every leaf moved off its init (zero projections and unit scales included)."""
    params = model.init(random.key(seed), dtype=dtype)
    return tree.map(lambda x: x + random.normal(random.fold_in(random.key(seed + 1), x.size), x.shape, dtype) * 0.3,
                    params)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), st.integers(0, 2**16),
       st.floats(0.5, 20.0))
def test_relu_squared_and_softcap_vjps_agree_with_finite_differences(shape, seed, cap):
    x = random.normal(random.key(seed), shape, np.float64) * 3
    x = x + np.sign(x) * 0.01  # away from relu's kink
    check_grads(ops.relu_squared, [x])
    check_grads(lambda a: ops.softcap(a, cap), [x])
    np.testing.assert_allclose(ops.relu_squared(x), np.maximum(x, 0) ** 2, rtol=1e-15)
    np.testing.assert_allclose(ops.softcap(x, cap), cap * np.tanh(x / cap), rtol=1e-14)


def test_the_options_are_off_by_default_and_leave_the_params_and_numbers_unchanged():
    plain = small()
    assert (plain.qk_norm, plain.logit_softcap, plain.zero_init_projections) == (False, None, False)
    params = plain.init(random.key(0))
    assert not any("_norm" in p for p in tree.paths(params))


def test_the_loss_with_every_option_has_the_gradient_of_finite_differences():
    model = small(**SPEEDRUN)
    params = jittered(model)
    ids = random.randint(random.key(3), (2, 9), 0, model.vocab_size)
    leaves = {p: x for p, x in tree.items(params)}
    names = ["blocks.0.attn.q_norm.scale", "blocks.0.attn.k_norm.scale", "blocks.1.attn.qkv.w", "blocks.0.ffn.fc.w",
             "wte.w"]

    def loss(*xs):
        p = params
        for name, x in zip(names, xs):
            p = tree.set(p, name, x)
        return model.loss(p, ids[:, :-1], ids[:, 1:])

    check_grads(loss, [leaves[n] for n in names], argnums=tuple(range(len(names))), rtol=1e-4)


def test_with_qk_norm_scaling_a_heads_queries_changes_nothing():
    """Each head's queries are RMS-normalised: the query weights' scale drops out of the output
    (up to the norm's epsilon, made negligible here)."""
    model = small(qk_norm=True, layer_norm_eps=1e-30)
    params = jittered(model)
    ids = random.randint(random.key(4), (2, 7), 0, model.vocab_size)
    w = np.array(params["blocks"][0]["attn"]["qkv"]["w"])
    w[:, : model.hidden_dim] *= 7.5  # every query column
    scaled = tree.set(params, "blocks.0.attn.qkv.w", w)
    np.testing.assert_allclose(model.apply(scaled, ids), model.apply(params, ids), rtol=1e-9, atol=1e-12)
    plain = small(layer_norm_eps=1e-30)  # without QK-norm the same scaling changes the output
    params = jittered(plain)
    w = np.array(params["blocks"][0]["attn"]["qkv"]["w"])
    w[:, : plain.hidden_dim] *= 7.5
    assert not np.allclose(plain.apply(tree.set(params, "blocks.0.attn.qkv.w", w), ids), plain.apply(params, ids))


@settings(max_examples=20, deadline=None)
@given(st.floats(0.5, 30.0), st.integers(0, 2**16))
def test_soft_capped_logits_stay_inside_the_cap(cap, seed):
    model = small(logit_softcap=cap)
    params = model.init(random.key(seed))
    params = tree.set(params, "ln_f.scale", params["ln_f"]["scale"] * 1e4)  # logits far past any cap
    logits = model.apply(params, random.randint(random.key(seed), (1, 6), 0, model.vocab_size))
    assert np.all(np.abs(logits) <= np.float32(cap))


def test_zero_initialised_projections_start_every_block_as_the_identity():
    model = small(zero_init_projections=True)
    params = model.init(random.key(0))
    for path, x in tree.items(params):
        assert (np.all(x == 0) and not np.signbit(x).any()) == path.endswith(("attn.proj.w", "ffn.down.w")), path
    ids = random.randint(random.key(1), (2, 5), 0, model.vocab_size)
    _, hidden = model.apply(params, ids, return_hidden_states=True)
    for h in hidden[1:]:
        np.testing.assert_array_equal(h, hidden[0])
    grads = lt.grad(model.loss)(params, ids[:, :-1], ids[:, 1:])
    assert np.abs(grads["blocks"][0]["attn"]["proj"]["w"]).max() > 0  # and they learn


def test_cached_decoding_with_every_option_gives_the_full_forwards_tokens():
    model = small(**SPEEDRUN)
    params = jittered(model, dtype=np.float32)
    prompt = random.randint(random.key(5), (5,), 0, model.vocab_size)
    out = gen.generate(model, params, prompt, max_new_tokens=10, temperature=0)
    seq = list(prompt)
    for _ in range(10):
        seq.append(int(np.argmax(model.apply(params, np.array(seq))[-1])))
    assert out.tolist() == seq


def test_a_checkpoint_keeps_the_options(tmp_path):
    model = small(**SPEEDRUN)
    params = model.init(random.key(0))
    lt.checkpoint.save(tmp_path / "m.safetensors", model, params)
    back = lt.checkpoint.load(tmp_path / "m.safetensors")
    assert back.model == model


@pytest.mark.parametrize(
    "option, preset",
    [(dict(qk_norm=True), "tiny")]
    + [(o, p) for o in (dict(logit_softcap=30.0), dict(activation="relu2")) for p in ("tiny", "llama-tiny")],
)
def test_hugging_face_export_refuses_what_no_family_computes(option, preset):
    with pytest.raises(ValueError, match=f"GPT.{next(iter(option))}=.* cannot be written"):
        lt.hf.config_from_gpt(lt.GPT.preset(preset, **option))


def test_qk_norm_on_a_llama_shaped_model_exports_as_qwen3():
    config = lt.hf.config_from_gpt(lt.GPT.preset("llama-tiny", qk_norm=True))
    assert (config["model_type"], config["architectures"]) == ("qwen3", ["Qwen3ForCausalLM"])
