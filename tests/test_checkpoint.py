"""Checkpoints: exact round trips, self-describing headers, atomic writes, specific errors."""

import json
import os

import numpy as np
import pytest

import lt
from lt import checkpoint, optim, random, safetensors_io, tree
from lt.checkpoint import CheckpointError

MODEL = lt.GPT.preset("tiny")
OPT = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(1e-3))


@pytest.fixture
def saved(tmp_path):
    params = MODEL.init(random.key(0))
    state = OPT.init(params)
    _, state = OPT.update(tree.map(np.ones_like, params), state, params)
    path = tmp_path / "ckpt.safetensors"
    checkpoint.save(path, MODEL, params, state, step=17, metadata={"note": "hello"})
    return path, params, state


def test_round_trip_is_exact_and_the_header_describes_the_model(saved):
    path, params, state = saved
    ck = checkpoint.load(path, MODEL, OPT.init(params))
    assert ck.step == 17 and ck.model == MODEL
    for a, b in zip(tree.leaves((params, state)), tree.leaves((ck.params, ck.opt_state))):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    assert tree.structure(ck.opt_state) == tree.structure(state)
    assert all(not x.flags.writeable for x in tree.leaves(ck.params))
    meta = checkpoint.read_metadata(path)
    assert meta["format"] == "lt-checkpoint" and meta["format_version"] == "1" and meta["note"] == "hello"
    assert json.loads(meta["model"])["hidden_dim"] == 32
    model, params2 = checkpoint.load_model(path)              # the file alone rebuilds the model
    assert model == MODEL and np.array_equal(params2["wte"]["w"], params["wte"]["w"])


def test_truncated_file_raises_and_is_left_as_it_was(saved):
    path = saved[0]
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoint.load(path, MODEL)
    assert path.read_bytes() == before


def test_garbage_and_foreign_safetensors_files_are_refused(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError):
        checkpoint.load(junk)
    foreign = tmp_path / "foreign.safetensors"
    safetensors_io.save(foreign, {"x": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match="not an lt checkpoint"):
        checkpoint.load(foreign)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.load(tmp_path / "absent.safetensors")


def test_another_models_checkpoint_names_the_differing_fields(saved):
    with pytest.raises(CheckpointError, match=r"hidden_dim=32 in the file, 64 expected"):
        checkpoint.load(saved[0], lt.GPT.preset("tiny", hidden_dim=64))


def test_missing_or_reshaped_tensor_is_named(saved, tmp_path):
    path = saved[0]
    tensors = safetensors_io.load(path)
    meta = checkpoint.read_metadata(path)
    missing = dict(tensors)
    del missing["params/blocks.1.attn.qkv.w"]
    p1 = tmp_path / "missing.safetensors"
    safetensors_io.save(p1, missing, meta)
    with pytest.raises(CheckpointError, match=r"missing tensor params/blocks\.1\.attn\.qkv\.w"):
        checkpoint.load(p1)
    reshaped = dict(tensors)
    reshaped["opt_state/1.mu.ln_f.scale"] = np.zeros(7, np.float32)
    p2 = tmp_path / "reshaped.safetensors"
    safetensors_io.save(p2, reshaped, meta)
    checkpoint.load(p2)                                    # params alone are fine
    with pytest.raises(CheckpointError, match=r"opt_state/1\.mu\.ln_f\.scale is float32\[7\].*float32\[32\]"):
        checkpoint.load(p2, opt_state_template=OPT.init(saved[1]))


def test_a_failed_write_leaves_the_previous_checkpoint_whole(saved, monkeypatch):
    path, params, state = saved
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk full")
    monkeypatch.setattr(os, "fsync", crash)                 # dies after writing, before the rename
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, MODEL, params, state, step=18)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]     # no temporary file left


def test_saving_wrong_params_is_refused_before_writing(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    with pytest.raises(ValueError, match="GPT params"):
        checkpoint.save(path, MODEL, lt.GPT.preset("small").init(random.key(0)))
    assert not path.exists()
