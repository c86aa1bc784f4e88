"""lt.hf without transformers: round trips, the files' layout, and the errors users see."""

import json

import numpy as np
import pytest

import lt
from lt import hf, tree
from lt import safetensors_io as sio

TINY = dict(vocab_size=50, max_seq_len=12, num_layers=2, num_heads=2, hidden_dim=8)
MODELS = {
    "tied": lt.GPT(**TINY),
    "untied-relu": lt.GPT(**TINY, tie_embeddings=False, activation="relu", ffn_dim=20,
                          dropout=0.25, layer_norm_eps=1e-6),
}


def exported(tmp_path, name="tied", dtype=np.float32):
    model = MODELS[name]
    params = model.init(lt.random.key(7), dtype)
    return model, params, hf.to_hf(model, params, tmp_path / name)


def rewrite(path, edit):
    """Apply ``edit`` to the dict of tensors in ``path``/model.safetensors and save it back."""
    tensors = sio.load(path / "model.safetensors")
    edit(tensors)
    sio.save(path / "model.safetensors", tensors, {"format": "pt"})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(MODELS))
def test_to_hf_then_from_hf_returns_every_param_bit_for_bit(name, dtype, tmp_path):
    model, params, path = exported(tmp_path, name, dtype)
    loaded_model, loaded = hf.from_hf(path, dtype=dtype)
    assert loaded_model == model
    assert tree.paths(loaded) == tree.paths(params)
    for (p, a), b in zip(tree.items(params), tree.leaves(loaded)):
        assert b.dtype == dtype and b.shape == a.shape, p
        assert np.array_equal(a, b), p
        assert not b.flags.writeable, p
    assert isinstance(loaded, tree.FrozenDict)
    ids = np.arange(10) % model.vocab_size
    np.testing.assert_array_equal(loaded_model.apply(loaded, ids), model.apply(params, ids))


def test_written_files_have_gpt2_names_layout_and_config(tmp_path):
    model, params, path = exported(tmp_path, "untied-relu")
    st = sio.SafeTensors(path / "model.safetensors")
    assert st.metadata == {"format": "pt"}
    assert set(st) == {"lm_head.weight"} | {f"transformer.{hf.hf_name(p)}" for p in tree.paths(params)
                                            if p != "head.w"}
    np.testing.assert_array_equal(st["lm_head.weight"], params["head"]["w"].T)        # (V, D)
    np.testing.assert_array_equal(st["transformer.h.1.attn.c_attn.weight"],
                                  params["blocks"][1]["attn"]["qkv"]["w"])            # (D, 3D), as is
    np.testing.assert_array_equal(st["transformer.h.0.ln_2.weight"], params["blocks"][0]["ln2"]["scale"])
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert (config["n_embd"], config["n_layer"], config["n_head"], config["n_inner"],
            config["n_positions"], config["vocab_size"]) == (8, 2, 2, 20, 12, 50)
    assert config["activation_function"] == "relu" and config["tie_word_embeddings"] is False
    assert config["resid_pdrop"] == config["embd_pdrop"] == config["attn_pdrop"] == 0.25
    assert config["layer_norm_epsilon"] == 1e-6 and config["bos_token_id"] is None
    _, _, tied = exported(tmp_path, "tied")
    assert "lm_head.weight" not in sio.SafeTensors(tied / "model.safetensors")
    assert json.loads((tied / "config.json").read_text())["activation_function"] == "gelu_new"
    assert sorted(p.name for p in tied.iterdir()) == ["config.json", "model.safetensors"]


def test_gpt2_vocabulary_gets_endoftext_as_bos_and_eos():
    config = hf.config_from_gpt(lt.GPT.preset("gpt2"))
    assert config["bos_token_id"] == config["eos_token_id"] == 50256


def test_checkpoint_variants_transformers_writes_load_the_same(tmp_path):
    """No ``transformer.`` prefix, causal-mask buffers, a tied ``lm_head.weight``: all accepted."""
    model, params, path = exported(tmp_path)

    def as_old_checkpoint(tensors):
        for name in list(tensors):
            tensors[name.removeprefix("transformer.")] = tensors.pop(name)
        for i in range(model.num_layers):
            tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 12, 12), np.float32))
            tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
        tensors["lm_head.weight"] = tensors["wte.weight"]
    rewrite(path, as_old_checkpoint)
    _, loaded = hf.from_hf(path)
    assert all(np.array_equal(a, b) for a, b in zip(tree.leaves(params), tree.leaves(loaded)))


def test_float16_weights_load_as_float32(tmp_path):
    _, params, path = exported(tmp_path)
    rewrite(path, lambda t: t.update({k: v.astype(np.float16) for k, v in t.items()}))
    _, loaded = hf.from_hf(path)
    w = loaded["blocks"][0]["ffn"]["fc"]["w"]
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, params["blocks"][0]["ffn"]["fc"]["w"].astype(np.float16))


def test_sharded_checkpoint_loads(tmp_path):
    _, params, path = exported(tmp_path)
    tensors = sio.load(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        sio.save(path / file, {n: tensors[n] for n in part}, {"format": "pt"})
    index = {"weight_map": {n: f for f, part in shards.items() for n in part}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    _, loaded = hf.from_hf(path)
    assert all(np.array_equal(a, b) for a, b in zip(tree.leaves(params), tree.leaves(loaded)))


def test_missing_tensor_names_it_and_its_expected_shape(tmp_path):
    *_, path = exported(tmp_path)
    rewrite(path, lambda t: t.pop("transformer.h.1.mlp.c_fc.weight"))
    with pytest.raises(ValueError, match=r"missing tensor h\.1\.mlp\.c_fc\.weight .*\(8, 32\)"):
        hf.from_hf(path)


def test_untied_config_without_lm_head_is_a_missing_tensor(tmp_path):
    *_, path = exported(tmp_path, "untied-relu")
    rewrite(path, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(ValueError, match=r"missing tensor lm_head\.weight .*\(50, 8\)"):
        hf.from_hf(path)


def test_wrong_shape_names_the_tensor_with_found_and_expected_shapes(tmp_path):
    *_, path = exported(tmp_path)
    rewrite(path, lambda t: t.update({"transformer.wpe.weight": np.zeros((16, 8), np.float32)}))
    with pytest.raises(ValueError, match=r"transformer\.wpe\.weight has shape \(16, 8\), expected \(12, 8\)"):
        hf.from_hf(path)
    *_, path = exported(tmp_path, "untied-relu")
    rewrite(path, lambda t: t.update({"lm_head.weight": t["lm_head.weight"].T.copy()}))
    with pytest.raises(ValueError, match=r"lm_head\.weight has shape \(8, 50\), expected \(50, 8\)"):
        hf.from_hf(path)


def test_unexpected_tensor_is_refused(tmp_path):
    *_, path = exported(tmp_path)
    rewrite(path, lambda t: t.update({"transformer.h.2.ln_1.weight": np.ones(8, np.float32)}))
    with pytest.raises(ValueError, match=r"unexpected tensors \['h\.2\.ln_1\.weight'\]"):
        hf.from_hf(path)


def test_truncated_weights_raise(tmp_path):
    *_, path = exported(tmp_path)
    file = path / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(sio.SafetensorsError, match="truncated"):
        hf.from_hf(path)


def test_missing_files_raise_naming_what_is_there(tmp_path):
    *_, path = exported(tmp_path)
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors.*pytorch_model\.bin"):
        hf.from_hf(path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hf.from_hf(tmp_path / "nowhere")


def test_sinusoidal_model_is_refused_and_nothing_written(tmp_path):
    model = lt.GPT(**TINY, positional="sinusoidal")
    with pytest.raises(ValueError, match="positional='sinusoidal'"):
        hf.to_hf(model, model.init(lt.random.key(0)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_to_hf_checks_params_against_the_model(tmp_path):
    params = lt.GPT(**TINY).init(lt.random.key(0))
    with pytest.raises(ValueError, match=r"missing head\.w"):
        hf.to_hf(lt.GPT(**TINY, tie_embeddings=False), params, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def write_config(tmp_path, **fields):
    *_, path = exported(tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **fields}))
    return path


@pytest.mark.parametrize("field,value,message", [
    ("scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx=True"),
    ("scale_attn_weights", False, "scale_attn_weights=False"),
    ("add_cross_attention", True, "add_cross_attention=True"),
    ("activation_function", "gelu", "activation_function='gelu'.*exact erf"),
    ("activation_function", "silu", "activation_function='silu'"),
    ("model_type", "gpt_neo", "model_type is 'gpt_neo'"),
    ("n_head", 3, "divisible"),
])
def test_config_options_lt_cannot_compute_are_refused(field, value, message, tmp_path):
    path = write_config(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=message) as info:
        hf.from_hf(path)
    assert "config.json" in str(info.value)


def test_config_options_that_do_not_change_the_maths_are_accepted(tmp_path):
    for activation in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate"):
        path = write_config(tmp_path, activation_function=activation, reorder_and_upcast_attn=True)
        assert hf.from_hf(path)[0].activation == "gelu"


def test_dropout_rates_must_agree_unless_chosen(tmp_path):
    path = write_config(tmp_path, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.0)
    with pytest.raises(ValueError, match="pass dropout="):
        hf.from_hf(path)
    assert hf.from_hf(path, dropout=0.05)[0].dropout == 0.05


def test_missing_config_fields_take_gpt2_defaults():
    model = hf.gpt_from_config({"model_type": "gpt2"})
    assert model == lt.GPT.preset("gpt2", dropout=0.1)
    assert hf.gpt_from_config({"n_embd": 16, "n_head": 2, "n_inner": None}).ffn_dim == 64


def test_from_hf_refuses_other_dtypes(tmp_path):
    *_, path = exported(tmp_path)
    with pytest.raises(TypeError, match="float16"):
        hf.from_hf(path, dtype=np.float16)
