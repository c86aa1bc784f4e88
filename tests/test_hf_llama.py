"""lt and transformers compute the same Llama, Qwen2 and Mistral: checkpoints cross both ways.

Tiny ``*ForCausalLM`` models with a seeded random init (every weight, bias and norm scale
drawn, so that a misplaced tensor shows) are saved with ``save_pretrained`` and read by
``lt.hf.from_hf``; ``lt.hf.to_hf`` output is loaded by ``AutoModelForCausalLM``. Logits
agree within 1e-4 in float32 on a left-padded batch, greedy generation gives the same 20
tokens, and in float64 the logits agree within 1e-10 and the loss's gradient equals
torch autograd's within 1e-9 (relative). Skipped without torch and transformers.
"""

import json

import attrs
import numpy as np
import pytest

import lt
from lt import hf, safetensors_io as sio, tree
from lt.hf import HFCheckpointError, llama as hf_llama

torch = pytest.importorskip("torch", reason="Llama cross-checks need torch (pip install torch==2.13.0)")
transformers = pytest.importorskip("transformers", reason="Llama cross-checks need transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


NEW_TOKENS = 20
BASE = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
CONFIGS = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
           "mistral": transformers.MistralConfig}
# name: (family, overrides of BASE); each setting lt maps, once.
CASES = {
    "llama": ("llama", {}),
    "llama-tied-mha-theta-3layers": ("llama", dict(tie_word_embeddings=True, num_key_value_heads=4,
                                                   num_hidden_layers=3, rms_norm_eps=1e-5,
                                                   rope_parameters={"rope_type": "default", "rope_theta": 500.0})),
    "llama-attention_bias": ("llama", dict(attention_bias=True, num_key_value_heads=1)),
    "llama-rope-llama3": ("llama", dict(rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8})),
    "llama-rope-linear": ("llama", dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0,
                                                         "factor": 2.0})),
    "qwen2": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen2-sliding": ("qwen2", dict(use_sliding_window=True, sliding_window=5, max_window_layers=0)),
    "mistral-window-4": ("mistral", dict(sliding_window=4)),
    "mistral-no-window": ("mistral", dict(sliding_window=None)),
}


def hf_model(case: str, seed: int = 0, dtype=torch.float32, attention="eager", **overrides):
    """A random *ForCausalLM (eager attention, eval mode) with every parameter drawn from the seed."""
    family, fields = CASES[case]
    config = CONFIGS[family](**{**BASE, **fields, **overrides}, attn_implementation=attention)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model


def padded_batch(vocab: int, T: int, pads=(0, 3, 7), seed: int = 1):
    """ids (B, T), attention_mask (B, T) with row b left-padded by pads[b], positions from 0
    at each row's first real token (0 on padding), as transformers' generate makes them."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(len(pads), T))
    mask = np.arange(T)[None] >= np.array(pads)[:, None]
    ids = np.where(mask, ids, 0)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    return ids, mask, positions


def hf_logits(model, ids, mask=None, positions=None) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.as_tensor(ids), attention_mask=None if mask is None else torch.as_tensor(mask).long(),
                    position_ids=None if positions is None else torch.as_tensor(positions))
    return out.logits.numpy()


def hf_greedy(model, prompt, mask) -> np.ndarray:
    prompt = torch.as_tensor(prompt)
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.as_tensor(mask).long(), do_sample=False,
                             max_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=0)
    return out[:, prompt.shape[1]:].numpy()


def load_in_transformers(path, dtype=torch.float32):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        path, output_loading_info=True, attn_implementation="eager", dtype=dtype)
    problems = {k: v for k, v in info.items() if v}
    assert not problems, f"transformers reported {problems} loading {path}"
    return model.eval()


def check_logits(hf_m, model, params, T=24, tol=1e-4):
    """lt's logits at every real position of a left-padded batch equal transformers'."""
    ids, mask, positions = padded_batch(model.vocab_size, T)
    ours = model.apply(params, ids, attention_mask=mask, positions=positions)
    theirs = hf_logits(hf_m, ids, mask, positions)
    gap = float(np.max(np.abs(ours - theirs)[mask]))
    assert gap < tol, f"logits differ by {gap}"
    assert float(np.max(np.abs(theirs[mask]))) > 0.5          # not a comparison of near-zeros
    return gap


def check_greedy(hf_m, model, params):
    prompt, mask, _ = padded_batch(model.vocab_size, 8, pads=(0, 2, 5), seed=3)
    expected = hf_greedy(hf_m, prompt, mask)
    got = np.asarray(model.generate(params, prompt, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                                    temperature=0))[:, -NEW_TOKENS:]
    np.testing.assert_array_equal(got, expected)


# ------------------------------------------------------------------ transformers -> lt

@pytest.mark.parametrize("case", list(CASES))
def test_transformers_checkpoint_runs_identically_in_lt(case, tmp_path):
    hf_m = hf_model(case)
    hf_m.save_pretrained(tmp_path)
    model, params = hf.from_hf(tmp_path)
    family, fields = CASES[case]
    c = hf_m.config
    assert (model.norm, model.positional, model.activation) == ("rms", "rope", "swiglu")
    assert model.num_kv_heads in (None, c.num_key_value_heads)
    assert (model.num_kv_heads or model.num_heads) == c.num_key_value_heads
    assert model.tie_embeddings == c.tie_word_embeddings
    assert model.bias == bool(fields.get("attention_bias", False))
    assert bool(model.bias if model.qkv_bias is None else model.qkv_bias) == (
        family == "qwen2" or fields.get("attention_bias", False))
    assert model.sliding_window == fields.get("sliding_window", None)
    assert model.layer_norm_eps == c.rms_norm_eps and model.rope_theta == c.rope_parameters["rope_theta"]
    check_logits(hf_m, model, params)
    check_greedy(hf_m, model, params)


def test_mistral_sliding_window_masks_keys_at_distance_window_or_more(tmp_path):
    """Query i sees key j iff 0 <= i - j < sliding_window (transformers' ``sliding_window_overlay``:
    kv_idx > q_idx - sliding_window): the same weights without the window compute otherwise."""
    hf_m = hf_model("mistral-window-4")
    hf_m.save_pretrained(tmp_path)
    model, params = hf.from_hf(tmp_path)
    assert model.sliding_window == 4
    ids, mask, positions = padded_batch(model.vocab_size, 16)
    windowed = model.apply(params, ids, attention_mask=mask, positions=positions)
    np.testing.assert_allclose(windowed[mask], hf_logits(hf_m, ids, mask, positions)[mask], atol=1e-4)
    full = attrs.evolve(model, sliding_window=None).apply(params, ids, attention_mask=mask, positions=positions)
    real = mask[:, :4]                                          # (padding positions compute garbage)
    assert np.array_equal(full[:, :4][real], windowed[:, :4][real])   # the first 4 see all their keys
    assert np.abs(full - windowed)[0, 4:].max(axis=-1).min() > 1e-6   # every later one loses the oldest
    # In one layer, a key at distance 4 (= the window) from the query changes nothing; at 3 it does.
    one = attrs.evolve(model, num_layers=1)
    one_params = tree.set(params, "blocks", params["blocks"][:1])
    row = ids[:1]
    probe = row.copy()
    probe[0, 2] = (probe[0, 2] + 1) % model.vocab_size
    a, b = one.apply(one_params, row), one.apply(one_params, probe)
    assert np.array_equal(a[0, 6:], b[0, 6:]) and np.abs(a[0, 2:6] - b[0, 2:6]).max(axis=-1).min() > 1e-6


def test_sharded_checkpoint_loads(tmp_path):
    hf_m = hf_model("llama")
    hf_m.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = list(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "model.safetensors.index.json").exists()
    model, params = hf.from_hf(tmp_path)
    check_logits(hf_m, model, params)


@pytest.mark.parametrize("torch_dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_precision_checkpoints_load_as_their_float32_values(torch_dtype, tmp_path):
    hf_m = hf_model("qwen2")
    hf_m.to(torch_dtype).save_pretrained(tmp_path)
    model, params = hf.from_hf(tmp_path)
    assert all(leaf.dtype == np.float32 for leaf in tree.leaves(params))
    q = hf_m.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()
    np.testing.assert_array_equal(params["blocks"][1]["attn"]["qkv"]["w"][:, :32], q.T)
    # transformers' float32 twin of the rounded weights (loaded afresh: casting the half model back
    # with .float() would keep its rotary frequencies rounded to half precision)
    check_logits(load_in_transformers(tmp_path), model, params)


def test_float64_logits_and_loss_gradient_equal_transformers_and_torch_autograd(tmp_path, monkeypatch):
    # transformers computes LlamaRMSNorm and the rotary angles in float32 even in a float64
    # model (LlamaRMSNorm casts to float32; LlamaRotaryEmbedding uses float32 frequencies);
    # lt computes in the params' dtype. For this test only, both pieces of the transformers
    # twin are patched to compute in float64, so the comparison is of the same maths. Its eager
    # attention also takes the softmax in float32 (and turns float64's fill value into -inf, NaN
    # on padding rows), so the twin uses torch's SDPA, which computes in float64.
    llama_mod = transformers.models.llama.modeling_llama

    def rms_norm_64(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def rotary_64(self, x, position_ids):
        c = self.config
        d = c.hidden_size // c.num_attention_heads
        inv_freq = 1.0 / c.rope_parameters["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        freqs = position_ids[..., None].double() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    monkeypatch.setattr(llama_mod.LlamaRMSNorm, "forward", rms_norm_64)
    monkeypatch.setattr(llama_mod.LlamaRotaryEmbedding, "forward", rotary_64)

    hf_m = hf_model("llama", dtype=torch.float64, attention="sdpa")
    hf_m.save_pretrained(tmp_path)
    model, params = hf.from_hf(tmp_path, dtype=np.float64)
    assert params["wte"]["w"].dtype == np.float64
    gap = check_logits(hf_m, model, params, tol=1e-10)
    assert gap < 1e-10

    ids = padded_batch(model.vocab_size, 20, pads=(0, 0), seed=5)[0]
    loss, grads = lt.value_and_grad(model.loss)(params, ids)
    logits = hf_m(torch.as_tensor(ids)).logits
    torch_loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, model.vocab_size),
                                                   torch.as_tensor(ids[:, 1:]).reshape(-1))
    torch_loss.backward()
    assert abs(float(loss) - torch_loss.item()) < 1e-12
    ours = hf_llama.tensors(model, grads)                      # lt's gradients under HF's names
    theirs = {name: p.grad.numpy() for name, p in hf_m.named_parameters()}
    assert set(ours) == set(theirs)
    for name, g in theirs.items():
        rel = np.linalg.norm(ours[name] - g) / np.linalg.norm(g)
        assert rel < 1e-9, f"{name}: relative gradient error {rel}"


# ------------------------------------------------------------------ lt -> transformers

@pytest.mark.parametrize("case", ["llama-tied-mha-theta-3layers", "llama-attention_bias", "llama-rope-llama3",
                                  "qwen2-sliding", "mistral-window-4"])
def test_from_hf_then_to_hf_loads_in_transformers_with_the_same_logits(case, tmp_path):
    hf_m = hf_model(case)
    hf_m.save_pretrained(tmp_path / "hf")
    model, params = hf.from_hf(tmp_path / "hf")
    hf.to_hf(model, params, tmp_path / "lt")
    back = load_in_transformers(tmp_path / "lt")
    assert type(back) is type(hf_m)
    for (name, a), (_, b) in zip(sorted(hf_m.state_dict().items()), sorted(back.state_dict().items())):
        assert torch.equal(a, b), name
    ids, mask, positions = padded_batch(model.vocab_size, 24)
    np.testing.assert_array_equal(hf_logits(back, ids, mask, positions), hf_logits(hf_m, ids, mask, positions))
    again, again_params = hf.from_hf(tmp_path / "lt")
    assert again == model
    assert all(np.array_equal(a, b) for a, b in zip(tree.leaves(params), tree.leaves(again_params)))


LT_MODELS = {
    "llama-gqa": dict(num_kv_heads=2, bias=False),
    "llama-tied-theta": dict(bias=False, tie_embeddings=True, rope_theta=1000.0),
    "qwen2": dict(bias=False, qkv_bias=True, num_kv_heads=1),
    "mistral": dict(bias=False, sliding_window=6),
}


@pytest.mark.parametrize("name", list(LT_MODELS))
def test_lt_export_runs_identically_in_transformers(name, tmp_path):
    model = lt.GPT(vocab_size=90, max_seq_len=48, num_layers=2, num_heads=4, hidden_dim=32, ffn_dim=48,
                   norm="rms", positional="rope", activation="swiglu", layer_norm_eps=1e-6,
                   **{"tie_embeddings": False, **LT_MODELS[name]})
    params = model.init(lt.random.key(4))
    params = tree.map(lambda x: x * 5 if x.ndim == 2 else x, params)     # peaked logits
    hf.to_hf(model, params, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == name.split("-")[0]
    hf_m = load_in_transformers(tmp_path)
    check_logits(hf_m, model, params)
    check_greedy(hf_m, model, params)


@pytest.mark.parametrize("fields, message", [
    (dict(norm="layer"), r"GPT\.norm='layer' cannot be written as Llama"),
    (dict(activation="gelu"), r"GPT\.activation='gelu'"),
    (dict(bias=True, qkv_bias=False), r"bias=True with qkv_bias=False"),
    (dict(bias=True, sliding_window=4), r"sliding_window=4 with bias=True"),
])
def test_to_hf_refuses_rope_models_no_family_computes(fields, message, tmp_path):
    model = lt.GPT(**{**dict(vocab_size=50, max_seq_len=16, num_layers=1, num_heads=2, hidden_dim=8,
                             norm="rms", positional="rope", activation="swiglu", bias=False), **fields})
    with pytest.raises(ValueError, match=message):
        hf.to_hf(model, model.init(lt.random.key(0)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fields, message", [
    (dict(norm="rms"), r"GPT\.norm='rms' cannot be written as GPT-2"),
    (dict(bias=False), r"GPT\.bias=False cannot be written as GPT-2"),
    (dict(num_kv_heads=1), r"GPT\.num_kv_heads=1 cannot be written as GPT-2"),
])
def test_to_hf_refuses_learned_position_models_gpt2_cannot_express(fields, message, tmp_path):
    model = lt.GPT(vocab_size=50, max_seq_len=16, num_layers=1, num_heads=2, hidden_dim=8, **fields)
    with pytest.raises(ValueError, match=message):
        hf.to_hf(model, model.init(lt.random.key(0)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ refusals

def saved(tmp_path, case="llama", **overrides):
    path = tmp_path / case
    hf_model(case, **overrides).save_pretrained(path)
    return path


def edit_config(path, **fields):
    config = json.loads((path / "config.json").read_text())
    config.update(fields)
    for k in [k for k, v in fields.items() if v is ...]:
        del config[k]
    (path / "config.json").write_text(json.dumps(config))
    return path


def edit_tensors(path, edit):
    tensors = sio.load(path / "model.safetensors")
    edit(tensors)
    sio.save(path / "model.safetensors", tensors, {"format": "pt"})
    return path


@pytest.mark.parametrize("case, fields, message", [
    ("llama", dict(model_type="gpt_neox"), r"model_type is 'gpt_neox'; lt reads 'gpt2', 'llama', 'qwen2', 'qwen3', 'mistral'"),
    ("llama", dict(hidden_act="gelu"), r"hidden_act='gelu' is not supported"),
    ("mistral-window-4", dict(hidden_act="relu"), r"hidden_act='relu'"),
    ("llama", dict(mlp_bias=True), r"mlp_bias=True is not supported"),
    ("llama", dict(head_dim=16), r"head_dim=16 is not supported .* = 8"),
    ("llama", dict(num_key_value_heads=3), r"num_attention_heads=4 is not divisible by num_key_value_heads=3"),
    ("llama", dict(num_key_value_heads="two"), r'num_key_value_heads must be a JSON integer or null, got "two"'),
    ("llama", dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}), r"yarn"),
    ("llama", dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}), r"dynamic"),
    ("llama", dict(rope_parameters=..., rope_theta=1e4, rope_scaling={"type": "longrope", "factor": 2.0}),
     r"longrope"),
    ("llama", dict(partial_rotary_factor=0.5), r"partial_rotary_factor=0.5 is not supported"),
    ("llama", dict(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e4}}),
     r"rope_parameters per layer type"),
    ("qwen2", dict(use_sliding_window=True, sliding_window=4, max_window_layers=1, layer_types=...),
     r"max_window_layers=1 .* slides some layers and not others"),
    ("qwen2", dict(use_sliding_window=True, sliding_window=4,
                   layer_types=["full_attention", "sliding_attention"]), r"slides some layers and not others"),
    ("qwen2", dict(layer_types=["full_attention"]), r"layer_types must list"),
    ("qwen2", dict(layer_types=[{}, []]), r"layer_types must list"),
    ("qwen2", dict(use_sliding_window="yes"), r'use_sliding_window must be a JSON boolean \(true or false\), got "yes"'),
    ("llama", dict(rope_parameters={"rope_type": "default", "rope_theta": "big"}), r"rope_theta must be a finite"),
    ("llama", dict(attention_bias="yes"), r'attention_bias must be a JSON boolean \(true or false\), got "yes"'),
])
def test_config_options_lt_cannot_compute_are_refused_by_name(case, fields, message, tmp_path):
    path = edit_config(saved(tmp_path, case), **fields)
    with pytest.raises(ValueError, match=message) as info:
        hf.from_hf(path)
    assert "config.json" in str(info.value)


def test_num_hidden_layers_beyond_the_weights_is_refused_before_building_anything(tmp_path, monkeypatch):
    path = edit_config(saved(tmp_path), num_hidden_layers=10**5)
    monkeypatch.setattr(lt.GPT, "spec", lambda self: pytest.fail("built the spec of a model from a file"))
    with pytest.raises(HFCheckpointError, match=r"config\.json: num_hidden_layers=100000, but the weights "
                                                r"hold 2 blocks \(layers\.0 \.\.\. layers\.1\)"):
        hf.from_hf(path)


def test_a_missing_shard_is_named(tmp_path):
    path = tmp_path / "sharded"
    hf_model("llama").save_pretrained(path, max_shard_size="20KB")
    shard = sorted(path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=rf"shard '{shard.name}' not found"):
        hf.from_hf(path)


@pytest.mark.parametrize("case, edit, error, message", [
    ("llama", lambda t: t.pop("model.layers.1.self_attn.v_proj.weight"), HFCheckpointError,
     r"missing tensor layers\.1\.self_attn\.v_proj\.weight \(lt blocks\.1\.attn\.qkv\.w\), expected shape \(16, 32\)"),
    ("llama", lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": np.zeros((32, 32), np.float32)}),
     HFCheckpointError, r"model\.layers\.0\.self_attn\.k_proj\.weight has shape \(32, 32\), expected \(16, 32\)"),
    ("llama", lambda t: t.update({"model.norm.weight": np.ones(32, np.int32)}),
     HFCheckpointError, r"model\.norm\.weight is I32; weights must be floating point"),
    ("llama", lambda t: t.update({"model.layers.0.mlp.up_proj.bias": np.ones(64, np.float32)}),
     HFCheckpointError, r"unexpected tensors \['layers\.0\.mlp\.up_proj\.bias'\]"),
    ("qwen2", lambda t: t.pop("model.layers.0.self_attn.q_proj.bias"), HFCheckpointError,
     r"missing tensor layers\.0\.self_attn\.q_proj\.bias \(lt blocks\.0\.attn\.qkv\.b\)"),
    ("llama", lambda t: t.pop("lm_head.weight"), HFCheckpointError, r"missing tensor lm_head\.weight"),
])
def test_tensors_that_do_not_fit_the_config_are_named(case, edit, error, message, tmp_path):
    path = edit_tensors(saved(tmp_path, case), edit)
    with pytest.raises(error, match=message):
        hf.from_hf(path)


def test_rotary_buffers_of_old_checkpoints_are_skipped(tmp_path):
    path = saved(tmp_path)
    _, before = hf.from_hf(path)
    edit_tensors(path, lambda t: t.update({"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(4, np.float32)}))
    _, after = hf.from_hf(path)
    assert all(np.array_equal(a, b) for a, b in zip(tree.leaves(before), tree.leaves(after)))


def test_transformers_4_config_fields_rope_theta_and_rope_scaling_are_read(tmp_path):
    path = edit_config(saved(tmp_path, "llama-rope-linear"), rope_parameters=..., rope_theta=10000.0,
                       rope_scaling={"type": "linear", "factor": 2.0})
    model, _ = hf.from_hf(path)
    assert model.rope_theta == 10000.0 and model.rope_scaling == lt.nn.RopeScaling("linear", 2.0)
