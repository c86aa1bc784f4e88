"""Files are input: nothing read from a checkpoint, a safetensors file, a Hugging Face
directory or a tokenizer file is trusted before it is checked, and one load is of one file."""

import json
import os
import shutil
import threading
import time

import numpy as np
import pytest

import lt
from lt import checkpoint, hf, random, safetensors_io, tokenizers, tree
from lt.checkpoint import CheckpointError, NonFiniteCheckpointError
from lt.hf import HFCheckpointError
from lt.safetensors_io import SafetensorsError
from lt.tokenizers import TokenizerFileError

SMALL = lt.GPT(vocab_size=16, max_seq_len=8, num_layers=2, num_heads=2, hidden_dim=8, ffn_dim=16)


def _saved(tmp_path, name="ckpt.safetensors", model=SMALL, step=3):
    path = tmp_path / name
    checkpoint.save(path, model, model.init(random.key(0)), step=step)
    return path


def _rewrite(path, out, *, tensors=None, meta=None):
    """A copy of checkpoint ``path`` at ``out`` with tensors and/or metadata changed."""
    all_tensors = safetensors_io.load(path)
    all_meta = checkpoint.read_metadata(path)
    all_tensors = tensors(all_tensors) if tensors else all_tensors
    all_meta.update(meta or {})
    safetensors_io.save(out, all_tensors, all_meta)
    return out


def _with_model_field(path, out, **fields):
    config = json.loads(checkpoint.read_metadata(path)["model"])
    config.update(fields)
    return _rewrite(path, out, meta={"model": json.dumps(config)})


def _raw_safetensors(path, header: bytes, data: bytes = b""):
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)
    return path


# ------------------------------------------------------------------ 1. one load, one file

def _uniform(value, tmp_path, name):
    params = tree.map(lambda x: np.full_like(x, value), SMALL.init(random.key(0)))
    path = tmp_path / name
    checkpoint.save(path, SMALL, params, step=int(value))
    return path


def test_a_load_never_mixes_two_checkpoints_renamed_over_each_other(tmp_path):
    sources = [_uniform(0.0, tmp_path, "zeros.src"), _uniform(1.0, tmp_path, "ones.src")]
    target = tmp_path / "ckpt.safetensors"
    shutil.copyfile(sources[0], target)
    stop = threading.Event()

    def writer():                                   # training: a new checkpoint renamed into place
        i = 0
        while not stop.is_set():
            tmp = tmp_path / f".tmp{i % 2}"
            shutil.copyfile(sources[i % 2], tmp)
            os.replace(tmp, target)
            i += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    mixed, loads, deadline = [], 0, time.monotonic() + 20
    try:
        while loads < 200 and time.monotonic() < deadline:
            ck = checkpoint.load(target)
            values = {float(v) for x in tree.leaves(ck.params) for v in np.unique(x)}
            if len(values) != 1 or values != {float(ck.step)}:
                mixed.append((loads, sorted(values), ck.step))
            st_values = {float(v) for x in safetensors_io.load(target).values() for v in np.unique(x)}
            if len(st_values) != 1:
                mixed.append((loads, "safetensors_io.load", sorted(st_values)))
            loads += 1
    finally:
        stop.set()
        thread.join()
    assert loads >= 20
    assert not mixed, f"loads mixed two files: {mixed[:5]}"


def test_tensors_come_from_the_file_that_was_opened(tmp_path):
    """Deterministic form of the race: the path is replaced between header and tensor reads."""
    zeros, ones = _uniform(0.0, tmp_path, "zeros.src"), _uniform(1.0, tmp_path, "ones.src")
    target = tmp_path / "ckpt.safetensors"
    shutil.copyfile(zeros, target)
    with safetensors_io.SafeTensors(target) as st:
        shutil.copyfile(ones, tmp_path / ".tmp")
        os.replace(tmp_path / ".tmp", target)
        assert all(np.all(st[name] == 0) for name in st)
    with pytest.raises(ValueError, match="closed"):
        st["params/wte.w"]


# ------------------------------------------------------------------ 2. sizes and paths

def _no_big_spec(monkeypatch):
    """Make building the spec of a model over 2 layers fail the test (it would hang or fill memory)."""
    spec = lt.GPT.spec

    def guarded(self):
        assert self.num_layers <= 2, f"built the spec of a {self.num_layers}-layer model from a file"
        return spec(self)
    monkeypatch.setattr(lt.GPT, "spec", guarded)


def test_checkpoint_num_layers_far_beyond_the_file_is_refused_at_once(tmp_path, monkeypatch):
    bad = _with_model_field(_saved(tmp_path), tmp_path / "bad.safetensors", num_layers=10**9)
    _no_big_spec(monkeypatch)
    with pytest.raises(CheckpointError, match=r"num_layers=1000000000, but the file holds params of 2 blocks"):
        checkpoint.load(bad)


def test_checkpoint_huge_hidden_dim_is_refused_from_the_header_without_allocating(tmp_path):
    bad = _with_model_field(_saved(tmp_path), tmp_path / "bad.safetensors",
                            hidden_dim=2**20, ffn_dim=2**22, vocab_size=2**20)
    with pytest.raises(CheckpointError, match=r"tensor params/\S+ is float32\[.*\], the model's params expects"):
        checkpoint.load(bad)


def _hf_dir(tmp_path, model=SMALL):
    params = model.init(random.key(0))
    return hf.to_hf(model, params, tmp_path / "hf")


def test_hf_config_n_layer_far_beyond_the_weights_is_refused_at_once(tmp_path, monkeypatch):
    path = _hf_dir(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["n_layer"] = 10**5
    (path / "config.json").write_text(json.dumps(config))
    _no_big_spec(monkeypatch)
    with pytest.raises(HFCheckpointError, match=r"config\.json: n_layer=100000, but the weights hold 2 blocks"):
        hf.from_hf(path)


def _sharded(tmp_path, shard_name):
    path = _hf_dir(tmp_path)
    (path / "model.safetensors").rename(tmp_path / "outside.safetensors")
    names = list(safetensors_io.load(tmp_path / "outside.safetensors"))
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {n: shard_name for n in names}}))
    return path


@pytest.mark.parametrize("shard", ["../outside.safetensors", "ABSOLUTE"])
def test_hf_shard_names_outside_the_model_directory_are_refused(tmp_path, shard):
    shard = str(tmp_path / "outside.safetensors") if shard == "ABSOLUTE" else shard
    path = _sharded(tmp_path, shard)
    with pytest.raises(HFCheckpointError, match="is outside the model directory"):
        hf.from_hf(path)


def test_hf_shard_symlinked_outside_the_model_directory_is_refused(tmp_path):
    path = _sharded(tmp_path, "shard.safetensors")
    os.symlink(tmp_path / "outside.safetensors", path / "shard.safetensors")
    with pytest.raises(HFCheckpointError, match="is outside the model directory"):
        hf.from_hf(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_are_refused_not_waited_on(tmp_path):
    path = _sharded(tmp_path, "shard.safetensors")
    os.mkfifo(path / "shard.safetensors")
    with pytest.raises(HFCheckpointError, match="shard 'shard.safetensors' is not a regular file"):
        hf.from_hf(path)
    with pytest.raises(SafetensorsError, match="is not a regular file"):
        safetensors_io.SafeTensors(path / "shard.safetensors")
    (path / "config.json").unlink()
    os.mkfifo(path / "config.json")
    with pytest.raises(HFCheckpointError, match=r"config\.json: is not a regular file"):
        hf.from_hf(path)


def test_a_header_of_too_many_tensors_is_refused_before_parsing(tmp_path, monkeypatch):
    monkeypatch.setattr(safetensors_io, "MAX_TENSORS", 10)
    header = {f"t{i}": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]} for i in range(11)}
    path = _raw_safetensors(tmp_path / "junk.safetensors", json.dumps(header).encode())
    with pytest.raises(SafetensorsError, match=r"junk\.safetensors: its header lists about 11 tensors, "
                                               r"more than the 10 lt reads"):
        safetensors_io.SafeTensors(path)


def test_the_default_tensor_bound_is_far_above_any_model():
    assert safetensors_io.MAX_TENSORS == 100_000


def test_a_header_length_over_the_limit_is_refused_without_reading(tmp_path):
    path = tmp_path / "big.safetensors"
    path.write_bytes((200 * 2**20).to_bytes(8, "little") + b"{}")
    with pytest.raises(SafetensorsError, match=r"big\.safetensors is corrupt or not safetensors: its header "
                                               r"length says 209715200 bytes, more than"):
        safetensors_io.SafeTensors(path)


def test_a_tokenizer_file_pattern_other_than_gpt2s_is_refused(tmp_path):
    tok = tokenizers.BPETokenizer.train("hello hello world world", 258)
    data = tok.to_dict()
    data["pattern"] = r"(a+)+$"                     # catastrophic backtracking on "aaaa...b"
    path = tmp_path / "tok.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=r"tok\.json: .*pattern '\(a\+\)\+\$' is not one lt knows"):
        tokenizers.load(path)
    data["pattern"] = tokenizers.GPT2_PATTERN       # the known pattern still loads
    path.write_text(json.dumps(data), encoding="utf-8")
    assert np.array_equal(tokenizers.load(path).encode("hello world"), tok.encode("hello world"))


# ------------------------------------------------------------------ 3. one error line, not a traceback

def test_integer_params_are_refused_naming_the_tensor(tmp_path):
    bad = _rewrite(_saved(tmp_path), tmp_path / "bad.safetensors",
                   tensors=lambda t: {k: v.astype(np.int32) for k, v in t.items()})
    with pytest.raises(CheckpointError, match=r"tensor params/\S+ is I32; params must be floating point"):
        checkpoint.load(bad)


@pytest.mark.parametrize("field, value, message", [
    ("step", "abc", r"header field 'step' is 'abc', expected a non-negative integer"),
    ("step", "-4", r"header field 'step' is '-4'"),
])
def test_bad_step_metadata_is_named(tmp_path, field, value, message):
    bad = _rewrite(_saved(tmp_path), tmp_path / "bad.safetensors", meta={field: value})
    with pytest.raises(CheckpointError, match=message) as info:
        checkpoint.load(bad)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("fields, message", [
    ({"layer_norm_eps": "abc"}, r"GPT\.layer_norm_eps must be a finite number > 0, got 'abc'"),
    ({"num_layers": "abc"}, r"GPT\.num_layers must be a positive integer, got 'abc'"),
    ({"tie_embeddings": "no"}, r"GPT\.tie_embeddings must be true or false"),
    ({"mystery": 1}, r"mystery"),
])
def test_bad_model_config_fields_are_named(tmp_path, fields, message):
    bad = _with_model_field(_saved(tmp_path), tmp_path / "bad.safetensors", **fields)
    with pytest.raises(CheckpointError, match=r"header field 'model' .*" + message) as info:
        checkpoint.load(bad)
    assert str(bad) in str(info.value)


def test_a_model_config_that_is_not_json_is_named(tmp_path):
    bad = _rewrite(_saved(tmp_path), tmp_path / "bad.safetensors", meta={"model": "[" * 100_000})
    with pytest.raises(CheckpointError, match=r"header field 'model' is not a JSON model config"):
        checkpoint.load(bad)


def _deep(depth=100_000) -> bytes:
    return b'{"a":' + b"[" * depth + b"]" * depth + b"}"


def test_a_deeply_nested_header_is_refused_naming_the_file(tmp_path):
    path = _raw_safetensors(tmp_path / "deep.safetensors", _deep())
    with pytest.raises(SafetensorsError, match=r"deep\.safetensors is corrupt: its header JSON is nested too deeply"):
        safetensors_io.SafeTensors(path)
    with pytest.raises(CheckpointError, match=r"deep\.safetensors is corrupt"):
        checkpoint.load(path)


def test_a_deeply_nested_hf_config_is_refused_naming_the_file(tmp_path):
    path = _hf_dir(tmp_path)
    (path / "config.json").write_bytes(_deep())
    with pytest.raises(HFCheckpointError, match=r"config\.json: the model config \(config\.json\) is JSON nested"):
        hf.from_hf(path)


# ------------------------------------------------------------------ 4. non-finite trees

@pytest.mark.parametrize("bad_value, kind", [(np.nan, "NaN"), (np.inf, "inf")])
def test_save_refuses_non_finite_params_and_keeps_the_last_good_file(tmp_path, bad_value, kind):
    path = _saved(tmp_path)
    before = path.read_bytes()
    params = SMALL.init(random.key(1))
    w = np.array(params["blocks"][1]["attn"]["qkv"]["w"])
    w[0, 3] = bad_value
    params = tree.set(params, "blocks.1.attn.qkv.w", w)
    with pytest.raises(NonFiniteCheckpointError,
                       match=rf"step 9: params leaf blocks\.1\.attn\.qkv\.w 1 of its \d+ values are "
                             rf"non-finite \({kind}\); checkpoint not written"):
        checkpoint.save(path, SMALL, params, step=9)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors"]   # no temporary left


def test_save_refuses_a_non_finite_optimizer_state(tmp_path):
    params = SMALL.init(random.key(0))
    opt = lt.optim.adam(1e-3)
    state = opt.init(params)
    path_, leaf = next((p, x) for p, x in tree.items(state) if np.asarray(x).dtype.kind == "f"
                       and np.asarray(x).size > 1)
    state = tree.set(state, path_, np.full_like(leaf, np.nan))
    with pytest.raises(NonFiniteCheckpointError, match=rf"step 4: optimizer state leaf opt_state/{path_} "):
        checkpoint.save(tmp_path / "c.safetensors", SMALL, params, state, step=4)
    assert not (tmp_path / "c.safetensors").exists()


def test_load_refuses_non_finite_params_naming_the_tensor(tmp_path):
    def poison(t):
        w = t["params/ln_f.scale"].copy()
        w[1] = np.nan
        return {**t, "params/ln_f.scale": w}
    bad = _rewrite(_saved(tmp_path), tmp_path / "bad.safetensors", tensors=poison)
    with pytest.raises(NonFiniteCheckpointError, match=r"bad\.safetensors: params tensor params/ln_f\.scale "
                                                       r"1 of its 8 values are non-finite \(NaN\)"):
        checkpoint.load(bad)
    assert issubclass(NonFiniteCheckpointError, CheckpointError)
    assert issubclass(NonFiniteCheckpointError, FloatingPointError)
