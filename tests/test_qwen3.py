"""Qwen3: lt's ``qk_norm=True`` llama-shaped GPT is Hugging Face's Qwen3 and llama.cpp's ``qwen3``.

lt -> ``to_hf`` -> ``Qwen3ForCausalLM`` and a transformers-made Qwen3 -> ``from_hf`` give the
same logits (float32, 1e-4); a GGUF export holds the ``qwen3`` architecture and the q/k norm
tensors, loads back bit for bit, and (where llama-cpp-python is installed) llama.cpp computes
lt's logits within 1e-3 and the same greedy tokens. Norm scales are drawn away from 1 so that a
norm that is dropped, swapped (q for k) or misplaced shows.
"""

import json

import numpy as np
import pytest

import lt
from lt import hf, tree


def qwen3_model(**over) -> lt.GPT:
    fields = dict(vocab_size=96, max_seq_len=48, num_layers=2, num_heads=4, hidden_dim=32, ffn_dim=48,
                  norm="rms", positional="rope", activation="swiglu", layer_norm_eps=1e-6, bias=False,
                  tie_embeddings=False, qk_norm=True, num_kv_heads=2)  # fmt: skip
    return lt.GPT(**{**fields, **over})


def jittered(model: lt.GPT, seed: int = 4):
    """Params with peaked logits and every norm scale (q/k norms included) drawn around 1."""
    params = model.init(lt.random.key(seed))
    rng = np.random.default_rng(seed)

    def draw(path, x):
        if path.endswith("scale"):
            return (1 + 0.3 * rng.standard_normal(x.shape)).astype(x.dtype)
        if x.ndim == 1:  # biases
            return (0.2 * rng.standard_normal(x.shape)).astype(x.dtype)
        return x * 5

    return tree.freeze(tree.unflatten(tree.structure(params), [draw(p, x) for p, x in tree.items(params)]))


# ------------------------------------------------------------------ config and refusals


def test_a_qk_norm_llama_shaped_model_is_written_as_a_qwen3_config():
    config = hf.config_from_gpt(qwen3_model())
    assert config["model_type"] == "qwen3" and config["architectures"] == ["Qwen3ForCausalLM"]
    assert (config["head_dim"], config["num_key_value_heads"], config["rms_norm_eps"]) == (8, 2, 1e-6)
    assert config["attention_bias"] is False and config["use_sliding_window"] is False
    assert hf.config_from_gpt(qwen3_model(bias=True))["attention_bias"] is True
    back = hf.gpt_from_config(config)
    assert back.qk_norm and back.num_kv_heads == 2 and back.bias is False


def test_a_gpt2_shaped_model_with_qk_norm_is_still_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"GPT\.qk_norm=True cannot be written as GPT-2"):
        hf.config_from_gpt(lt.GPT.preset("tiny", qk_norm=True))


@pytest.mark.parametrize("fields, message", [
    (dict(qkv_bias=True), r"GPT\.qk_norm=True with qkv_bias=True and bias=False"),
    (dict(logit_softcap=30.0), r"GPT\.logit_softcap=30\.0 cannot be written"),
])  # fmt: skip
def test_qk_norm_with_what_qwen3_does_not_compute_is_refused_by_name(fields, message, tmp_path):
    model = qwen3_model(**fields)
    with pytest.raises(ValueError, match=message):
        hf.to_hf(model, model.init(lt.random.key(0)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_qwen3_config_without_head_dim_means_transformers_default_128_and_is_refused(tmp_path):
    config = hf.config_from_gpt(qwen3_model())
    del config["head_dim"]
    with pytest.raises(ValueError, match=r"head_dim=128 is not supported"):
        hf.gpt_from_config(config)


# ------------------------------------------------------------------ transformers


def _transformers():
    torch = pytest.importorskip("torch", reason="the Qwen3 cross-check needs torch")
    transformers = pytest.importorskip("transformers", reason="the Qwen3 cross-check needs transformers")
    if not hasattr(transformers, "Qwen3ForCausalLM"):
        pytest.skip("this transformers has no Qwen3ForCausalLM")
    transformers.logging.set_verbosity_error()
    return torch, transformers


def _hf_logits(torch, hf_model, ids) -> np.ndarray:
    with torch.no_grad():
        return hf_model(torch.as_tensor(ids)).logits.numpy()


LT_CASES = {
    "gqa-untied": {},
    "mha-tied-theta": dict(num_kv_heads=None, tie_embeddings=True, rope_theta=1000.0),
    "attention_bias": dict(bias=True, num_kv_heads=1),
    "sliding-window": dict(sliding_window=5),
}


@pytest.mark.parametrize("case", list(LT_CASES))
def test_lt_export_runs_identically_in_transformers_qwen3(case, tmp_path):
    torch, transformers = _transformers()
    model = qwen3_model(**LT_CASES[case])
    params = jittered(model)
    hf.to_hf(model, params, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "qwen3"
    hf_m, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager", dtype=torch.float32
    )
    assert not {k: v for k, v in info.items() if v}, info  # no missing, unexpected or mismatched tensor
    assert type(hf_m).__name__ == "Qwen3ForCausalLM"
    ids = np.random.default_rng(1).integers(0, model.vocab_size, size=(3, 24))
    ours, theirs = model.apply(params, ids), _hf_logits(torch, hf_m.eval(), ids)
    assert np.abs(theirs).max() > 0.5
    gap = float(np.abs(ours - theirs).max())
    print(f"max |logit gap| vs transformers ({case}): {gap:.2e}")
    assert gap < 1e-4, f"max |logit gap| {gap}"
    # the q/k norms are live: without them (scales as drawn, maths off) the logits differ
    plain = lt.GPT(**{**_fields(model), "qk_norm": False})
    stripped = {**params, "blocks": [{**b, "attn": {k: v for k, v in b["attn"].items() if "norm" not in k}}
                                     for b in params["blocks"]]}  # fmt: skip
    assert np.abs(plain.apply(stripped, ids) - theirs).max() > 1e-2


def _fields(model: lt.GPT) -> dict:
    import attrs

    return {f.name: getattr(model, f.name) for f in attrs.fields(type(model)) if f.init}


def test_transformers_qwen3_checkpoint_runs_identically_in_lt(tmp_path):
    torch, transformers = _transformers()
    config = transformers.Qwen3Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                      max_position_embeddings=64, attn_implementation="eager")  # fmt: skip
    torch.manual_seed(0)
    hf_m = transformers.Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in hf_m.named_parameters():
            p.copy_(1 + 0.3 * torch.randn_like(p) if name.endswith("norm.weight") else 0.15 * torch.randn_like(p))
    hf_m.save_pretrained(tmp_path)
    model, params = hf.from_hf(tmp_path)
    assert model.qk_norm and model.num_kv_heads == 2 and model.bias is False and not model.tie_embeddings
    k_norm = hf_m.model.layers[1].self_attn.k_norm.weight.detach().numpy()
    np.testing.assert_array_equal(params["blocks"][1]["attn"]["k_norm"]["scale"], k_norm)
    ids = np.random.default_rng(2).integers(0, 100, size=(2, 20))
    gap = float(np.abs(model.apply(params, ids) - _hf_logits(torch, hf_m, ids)).max())
    print(f"max |logit gap| transformers -> lt: {gap:.2e}")
    assert gap < 1e-4, f"max |logit gap| {gap}"


# ------------------------------------------------------------------ GGUF


@pytest.fixture
def exported(tmp_path):
    pytest.importorskip("gguf", reason="GGUF export needs the gguf package")
    model = qwen3_model(vocab_size=320, max_seq_len=64)
    params = jittered(model)
    path = tmp_path / "qwen3.gguf"
    lt.gguf.save(path, model, params)
    return model, params, path


def test_gguf_export_is_llama_cpps_qwen3_with_the_q_and_k_norms(exported):
    import gguf

    model, params, path = exported
    reader = gguf.GGUFReader(str(path))
    fields = reader.fields
    arch = fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "qwen3"
    key_length = fields["qwen3.attention.key_length"]
    assert int(key_length.parts[key_length.data[0]][0]) == model.head_dim
    expected_names = {gguf.TENSOR_NAMES[t].format(bid=0) for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.QWEN3]}
    tensors = {t.name: t for t in reader.tensors}
    block0 = {n.removesuffix(".weight") for n in tensors if n.startswith("blk.0.")}
    assert {"blk.0.attn_q_norm", "blk.0.attn_k_norm"} <= block0 <= expected_names  # llama.cpp's qwen3 names
    for i in range(model.num_layers):
        for which in "qk":
            stored = np.asarray(tensors[f"blk.{i}.attn_{which}_norm.weight"].data)
            np.testing.assert_array_equal(stored, params["blocks"][i]["attn"][f"{which}_norm"]["scale"])
    attn = params["blocks"][0]["attn"]
    assert not np.array_equal(attn["q_norm"]["scale"], attn["k_norm"]["scale"])  # a swap would show


@pytest.mark.filterwarnings("ignore:.*no tokenizer loaded")
def test_gguf_round_trip_gives_the_same_model_and_identical_logits(exported):
    model, params, path = exported
    back, back_params, _ = lt.gguf.load(path)
    assert back.qk_norm and back.num_kv_heads == model.num_kv_heads
    ids = np.random.default_rng(3).integers(0, model.vocab_size, size=(2, 30))
    np.testing.assert_array_equal(back.apply(back_params, ids), model.apply(params, ids))


def test_gguf_refuses_qk_norm_with_attention_biases_naming_the_field(tmp_path):
    pytest.importorskip("gguf", reason="GGUF export needs the gguf package")
    model = qwen3_model(bias=True)
    with pytest.raises(ValueError, match=r"GPT\.bias=True with qk_norm=True cannot be written as GGUF"):
        lt.gguf.save(tmp_path / "m.gguf", model, model.init(lt.random.key(0)))
    assert not (tmp_path / "m.gguf").exists()


def test_llama_cpp_computes_lts_logits_and_greedy_tokens(tmp_path):
    pytest.importorskip("gguf", reason="GGUF export needs the gguf package")
    llama_cpp = pytest.importorskip("llama_cpp", reason="the cross-check runs llama.cpp: pip install llama-cpp-python")
    pytest.importorskip("regex", reason="byte-level BPE needs regex: pip install 'lt[text]'")
    text = "the quick brown fox jumps over the lazy dog; naïve café, 日本語 " * 8
    tok = lt.BPETokenizer.train(text, 320, special_tokens=["<|endoftext|>"])
    model = qwen3_model(vocab_size=tok.vocab_size, max_seq_len=64)
    params = jittered(model)
    path = tmp_path / "qwen3.gguf"
    lt.gguf.save(path, model, params, tokenizer=tok)
    # type_k / type_v 0: an F32 KV cache (llama.cpp's default F16 cache alone moves logits by ~1e-3)
    llm = llama_cpp.Llama(str(path), n_ctx=model.max_seq_len, n_batch=model.max_seq_len, logits_all=True,
                          verbose=False, n_threads=1, seed=0, type_k=0, type_v=0)  # fmt: skip
    ids = tok.encode(text)[: model.max_seq_len].tolist()
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)])
    ours = model.apply(params, np.array(ids))
    assert np.abs(ours).max() > 1.0
    gap = float(np.abs(theirs - ours).max())
    print(f"max |logit gap| vs llama.cpp: {gap:.2e}")
    assert gap < 1e-3, f"max |logit gap| vs llama.cpp {gap}"

    def greedy(step, seq, n=20):
        seq = list(seq)
        for _ in range(n):
            seq.append(int(np.argmax(step(seq))))
        return seq

    def llama_cpp_step(seq):
        llm.reset()
        llm.eval(seq)
        return np.asarray(llm.scores[len(seq) - 1])

    prompt = tok.encode("the quick brown").tolist()
    assert greedy(llama_cpp_step, prompt) == greedy(lambda s: model.apply(params, np.array(s))[-1], prompt)
