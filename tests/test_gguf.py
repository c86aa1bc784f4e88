"""GGUF out and in: what the gguf package reads back from lt's files, and what lt loads from them.

The references are the ggml project's own: ``gguf.GGUFReader`` reads the metadata and tensors,
``gguf.get_tensor_name_map`` names Hugging Face tensors as llama.cpp does, ``gguf.quants`` makes
and reads the blocks. Expected tensors are built from lt's Hugging Face export (lt.hf), with
llama.cpp's q/k row permutation written out here.
"""

import warnings

import numpy as np
import pytest

import lt
from lt import quant
from lt.hf import gpt2 as hf_gpt2
from lt.hf import llama as hf_llama
from lt.tokenizers.gpt2 import text_to_token

gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf package: pip install 'lt[gguf]'")
pytestmark = pytest.mark.filterwarnings("ignore:.*no tokenizer loaded:lt.gguf.GGUFWarning")  # files saved without one

TEXT = "Ünïcödé — naïve café, 日本語のテキスト, emoji 🤖🚀, ½ ≠ ∞; the quick brown fox. " * 8
ARCH = {"gpt2": gguf.MODEL_ARCH.GPT2, "llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}
MODELS = {  # name -> (preset, overrides, llama.cpp architecture)
    "gpt2": ("tiny", {}, "gpt2"),
    "gpt2-untied": ("tiny", {"tie_embeddings": False}, "gpt2"),
    "llama-gqa": ("llama-tiny", {}, "llama"),
    "llama-bias-untied": ("llama-tiny", {"bias": True, "tie_embeddings": False}, "llama"),
    "llama-linear-rope": (
        "llama-tiny",
        {"rope_scaling": {"kind": "linear", "factor": 2.0}, "rope_theta": 5e5},
        "llama",
    ),
    "qwen2": ("llama-tiny", {"qkv_bias": True}, "qwen2"),
}


@pytest.fixture(scope="module")
def bpe():
    pytest.importorskip("regex", reason="byte-level BPE needs regex: pip install 'lt[text]'")
    return lt.BPETokenizer.train(TEXT, 300, special_tokens=["<|endoftext|>"])


def make(name, vocab=320, seed=0):
    preset, over, arch = MODELS[name]
    model = lt.GPT.preset(preset, vocab_size=vocab, **over)
    return model, model.init(lt.random.key(seed)), arch


def save(path, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", lt.gguf.GGUFWarning)  # no fallback notes where none is expected
        return lt.gguf.save(path, *args, **kwargs)


def llama_pairs(w, heads):
    """llama.cpp's row order for q and k: each head's two halves interleaved (convert_hf_to_gguf's permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def expected_tensors(model, params, arch):
    """GGUF name -> float32 array in ggml's layout, from lt's Hugging Face tensors."""
    fam = hf_gpt2 if arch == "gpt2" else hf_llama
    names = gguf.get_tensor_name_map(ARCH[arch], model.num_layers)
    out = {}
    for hf_name, w in fam.tensors(model, params).items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        w = np.asarray(w, np.float32)
        if arch == "gpt2" and w.ndim == 2 and hf_name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            w = w.T  # GPT-2's Conv1D stores (in, out); GGUF stores rows of in
        if arch == "llama" and ".attn_q." in name:
            w = llama_pairs(w, model.num_heads)
        if arch == "llama" and ".attn_k." in name:
            w = llama_pairs(w, model.kv_heads)
        out[name] = w
    if arch == "gpt2" and model.tie_embeddings:
        out["output.weight"] = out["token_embd.weight"]
    return out


def read(path):
    """(metadata dict, {name: (ggml type, data)}) as the gguf package reads the file."""
    r = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: (t.tensor_type, np.asarray(t.data)) for t in r.tensors}
    return meta, tensors


@pytest.mark.parametrize("name", list(MODELS))
def test_an_f32_file_holds_the_metadata_llama_cpp_reads_and_lts_weights_exactly(name, tmp_path, bpe):
    model, params, arch = make(name)
    save(tmp_path / "m.gguf", model, params, tokenizer=bpe)
    meta, tensors = read(tmp_path / "m.gguf")
    a = arch
    assert meta["general.architecture"] == arch and meta["general.file_type"] == 0
    assert meta[f"{a}.block_count"] == model.num_layers and meta[f"{a}.embedding_length"] == model.hidden_dim
    assert meta[f"{a}.context_length"] == model.max_seq_len and meta[f"{a}.feed_forward_length"] == model.ffn_dim
    assert meta[f"{a}.attention.head_count"] == model.num_heads
    if arch == "gpt2":
        assert meta[f"{a}.attention.layer_norm_epsilon"] == pytest.approx(model.layer_norm_eps)
    else:
        assert meta[f"{a}.attention.head_count_kv"] == model.kv_heads
        assert meta[f"{a}.attention.layer_norm_rms_epsilon"] == pytest.approx(model.layer_norm_eps)
        assert meta[f"{a}.rope.freq_base"] == pytest.approx(model.rope_theta)
        assert meta[f"{a}.rope.dimension_count"] == model.head_dim
        if model.rope_scaling is not None:
            assert meta[f"{a}.rope.scaling.type"] == "linear" and meta[f"{a}.rope.scaling.factor"] == 2.0
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert len(meta["tokenizer.ggml.tokens"]) == model.vocab_size  # padded to the table's rows
    assert meta["tokenizer.ggml.eos_token_id"] == bpe.special_ids["<|endoftext|>"]
    expected = expected_tensors(model, params, arch)
    assert set(tensors) == set(expected)
    for tname, want in expected.items():
        kind, data = tensors[tname]
        assert kind == gguf.GGMLQuantizationType.F32, tname
        assert np.array_equal(data.reshape(want.shape), want), tname


@pytest.mark.parametrize("kind", ["q8_0", "q4_0", "f16"])
@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "qwen2", "llama-bias-untied"])
def test_quantized_tensors_are_what_gguf_quants_makes_of_the_same_weights(name, kind, tmp_path):
    model, params, arch = make(name)
    save(tmp_path / "m.gguf", model, params, type=kind)
    _, tensors = read(tmp_path / "m.gguf")
    qtype = getattr(gguf.GGMLQuantizationType, kind.upper())
    for tname, want in expected_tensors(model, params, arch).items():
        got_kind, data = tensors[tname]
        if want.ndim == 1 or tname == "position_embd.weight":  # vectors and positions stay F32
            assert got_kind == gguf.GGMLQuantizationType.F32, tname
            continue
        assert got_kind == qtype, tname
        assert np.array_equal(data.reshape(-1), gguf.quants.quantize(want, qtype).reshape(-1)), tname


@pytest.mark.parametrize("name", list(MODELS))
def test_export_then_load_gives_the_same_model_and_exactly_the_same_logits(name, tmp_path, bpe):
    model, params, _ = make(name)
    save(tmp_path / "m.gguf", model, params, tokenizer=bpe)
    model2, params2, tok2 = lt.gguf.load(tmp_path / "m.gguf")
    assert model2 == model
    ids = bpe.encode(TEXT)[: model.max_seq_len][None]
    assert np.array_equal(model2.apply(params2, ids), model.apply(params, ids))
    assert np.array_equal(tok2.encode(TEXT), bpe.encode(TEXT))


@pytest.mark.parametrize("kind, bits", [("q8_0", 8), ("q4_0", 4)])
@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "qwen2"])
def test_a_quantized_file_loads_as_quantized_leaves_computing_with_exactly_the_files_values(name, kind, bits, tmp_path):
    model, params, arch = make(name)
    save(tmp_path / "m.gguf", model, params, type=kind)
    model2, params2, _ = lt.gguf.load(tmp_path / "m.gguf")
    _, tensors = read(tmp_path / "m.gguf")
    qleaves = [x for x in lt.tree.leaves(params2) if quant.is_quantized(x)]
    assert qleaves and all(x.bits == bits and x.group_size == 32 for x in qleaves)
    # every matrix of the file, read back by lt, is the gguf package's own dequantization of it
    floats = quant.dequantize(params2)
    again = expected_tensors(model2, floats, arch)
    for tname, (got_kind, data) in tensors.items():
        values = gguf.quants.dequantize(data, got_kind).reshape(again[tname].shape)
        assert np.array_equal(again[tname], values), tname
    # the quantized leaves compute what those float values compute
    ids = np.arange(40)[None] % model.vocab_size
    np.testing.assert_allclose(model2.apply(params2, ids), model.apply(floats, ids), rtol=1e-4, atol=1e-4)
    # and each weight moved at most the scheme's bound: half a step d (Q8_0: round to nearest) or one step
    # (Q4_0: the code 8 is clipped to 7), plus |code| times the float16 rounding of d (2**-11 d)
    w, w2 = params["wte"]["w"], floats["wte"]["w"]
    d = np.abs(w.reshape(w.shape[0], -1, 32)).max(-1, keepdims=True) / (127 if bits == 8 else 8)
    bound = d * ((0.5 + 127 * 2**-11) if bits == 8 else (1 + 8 * 2**-11))
    assert (np.abs(w - w2).reshape(d.shape[0], -1, 32) <= bound).all()


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_a_loaded_quantized_model_exports_its_blocks_unchanged(kind, tmp_path):
    model, params, _ = make("llama-gqa")
    save(tmp_path / "a.gguf", model, params, type=kind)
    model2, params2, _ = lt.gguf.load(tmp_path / "a.gguf")
    save(tmp_path / "b.gguf", model2, params2, type=kind)  # no requantizing note: the blocks are written as they are
    (_, first), (_, second) = read(tmp_path / "a.gguf"), read(tmp_path / "b.gguf")
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[n][1], second[n][1]) for n in first)


def test_tokenizer_ids_survive_the_file_bpe_and_char_on_a_unicode_heavy_text(tmp_path, bpe):
    char = lt.CharTokenizer.fit(TEXT)
    bytes_only = lt.BPETokenizer.train(TEXT, 256)  # no merges at all
    ascii_text = "ascii only, no merges"
    for tok, text in ((bpe, TEXT), (bytes_only, TEXT), (lt.CharTokenizer.fit(ascii_text), ascii_text), (char, TEXT)):
        model = lt.GPT.preset("llama-tiny", vocab_size=tok.vocab_size + 7)  # a table padded past the ids
        save(tmp_path / "t.gguf", model, model.init(lt.random.key(1)), tokenizer=tok)
        back = lt.gguf.load_tokenizer(tmp_path / "t.gguf")
        assert type(back) is type(tok) and back.vocab_size == tok.vocab_size
        assert np.array_equal(back.encode(text), tok.encode(text)) and back.decode(tok.encode(text)) == text
    meta, _ = read(tmp_path / "t.gguf")  # the char tokenizer's: merges join each character's bytes, nothing else
    assert meta["tokenizer.ggml.token_type"][-7:] == [5] * 7
    assert "æĹ ¥" in meta["tokenizer.ggml.merges"]  # 日 is E6 97 A5: (E6 97) + A5
    tokens = [text_to_token(t) for t in meta["tokenizer.ggml.tokens"][: char.vocab_size]]
    assert [t.decode("utf-8") for t in tokens] == list(char.chars)  # one character each: no byte tokens


def test_tokenizers_gguf_cannot_hold_are_refused_before_anything_is_written(tmp_path):
    model, params, _ = make("llama-gqa", vocab=4)
    out = tmp_path / "m.gguf"
    with pytest.raises(ValueError, match="lone surrogate"):
        lt.gguf.save(out, model, params, tokenizer=lt.CharTokenizer(["a", "\ud800"]))
    with pytest.raises(ValueError, match="vocab_size 4"):
        lt.gguf.save(out, model, params, tokenizer=lt.CharTokenizer(list("abcde")))
    with pytest.raises(TypeError, match=r"CharTokenizer or lt\.BPETokenizer"):
        lt.gguf.save(out, model, params, tokenizer=object())
    assert not out.exists() and not list(tmp_path.iterdir())


def test_models_llama_cpp_cannot_compute_are_refused_naming_the_field(tmp_path):
    relu = lt.GPT.preset("tiny", activation="relu")
    with pytest.raises(ValueError, match="activation"):
        lt.gguf.save(tmp_path / "m.gguf", relu, relu.init(lt.random.key(0)))
    with pytest.raises(ValueError, match="type must be one of"):
        lt.gguf.save(tmp_path / "m.gguf", *make("gpt2")[:2], type="q5_k")
    assert not list(tmp_path.iterdir())


def test_a_sliding_window_model_is_written_with_the_window_as_its_context(tmp_path):
    model = lt.GPT.preset("llama-tiny", sliding_window=64)  # mistral; llama.cpp's llama attends to all of it
    save(tmp_path / "m.gguf", model, model.init(lt.random.key(0)))
    meta, _ = read(tmp_path / "m.gguf")
    assert meta["general.architecture"] == "llama" and meta["llama.context_length"] == 64


def test_a_failed_export_leaves_the_old_file_and_no_temporary_file(tmp_path):
    model, params, _ = make("llama-gqa")
    out = tmp_path / "m.gguf"
    save(out, model, params)
    before = out.read_bytes()
    bad = lt.tree.set(params, "ln_f.scale", np.full(model.hidden_dim, np.nan, np.float32))
    with pytest.raises(ValueError, match=r"ln_f\.scale.*non-finite"):
        lt.gguf.save(out, model, bad)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_rows_that_are_not_whole_blocks_fall_back_to_f16_with_a_note(tmp_path):
    model = lt.GPT.preset("llama-tiny", hidden_dim=48, num_heads=4, num_kv_heads=2, vocab_size=64)  # rows of 48
    params = model.init(lt.random.key(0))
    with pytest.warns(lt.gguf.GGUFWarning, match="not whole blocks of 32; written as F16"):
        lt.gguf.save(tmp_path / "m.gguf", model, params, type="q8_0")
    _, tensors = read(tmp_path / "m.gguf")
    assert tensors["blk.0.ffn_up.weight"][0] == gguf.GGMLQuantizationType.F16  # rows of D = 48
    assert tensors["blk.0.ffn_down.weight"][0] == gguf.GGMLQuantizationType.Q8_0  # rows of F = 96
