"""Hugging Face hub names, offline: a hub cache built here (models--org--name/blobs, snapshots/<rev>
linking to the blobs, refs/main) holding tiny GPT-2 and Llama checkpoints, loaded by name with
HF_HUB_OFFLINE=1; a local directory without huggingface_hub; clear errors otherwise."""

import hashlib
import json
import os
import pathlib
import sys

import numpy as np
import pytest

import lt
from lt import cli, hf, safetensors_io
from lt.hf import hub

pytest.importorskip("regex", reason='the tiny checkpoints use a byte-level BPE tokenizer: pip install "lt[text]"')

TEXT = "the quick brown fox jumps over the lazy dog. " * 40
REVISION = "0123456789abcdef0123456789abcdef01234567"


def model_dir(path, model: lt.GPT, seed: int):
    """A Hugging Face model directory: config.json, model.safetensors, GPT-2 tokenizer files."""
    params = model.init(lt.random.key(seed))
    hf.to_hf(model, params, path)
    lt.tokenizers.BPETokenizer.train(TEXT, model.vocab_size).save_gpt2_files(path / "vocab.json",
                                                                              path / "merges.txt")
    return params


def shard(path):
    """Split ``path``/model.safetensors into two shards named by model.safetensors.index.json."""
    single = path / "model.safetensors"
    with safetensors_io.SafeTensors(single) as st:
        tensors = {name: np.array(st[name]) for name in st}
    names = sorted(tensors)
    parts = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in parts.items():
        safetensors_io.save(path / file, {n: tensors[n] for n in part}, {"format": "pt"})
    (path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: file for file, part in parts.items() for n in part}}))
    single.unlink()


def cache_repo(cache, repo_id: str, source):
    """Lay ``source``'s files out as huggingface_hub's cache does: content-named blobs, a snapshot
    of relative links to them, and refs/main naming the snapshot's revision."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    for file in sorted(source.iterdir()):
        data = file.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.join("..", "..", "blobs", blob))
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


GPT2 = lt.GPT(vocab_size=280, max_seq_len=32, num_layers=2, num_heads=2, hidden_dim=16, ffn_dim=64)
LLAMA = lt.GPT.preset("llama-tiny", vocab_size=280, max_seq_len=32)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """Local model directories and their params: GPT-2, Llama, and a sharded Llama."""
    root = tmp_path_factory.mktemp("models")
    made = {"gpt2": model_dir(root / "gpt2", GPT2, 0), "llama": model_dir(root / "llama", LLAMA, 1)}
    made["llama-sharded"] = model_dir(root / "llama-sharded", LLAMA, 2)
    shard(root / "llama-sharded")
    return root, made


@pytest.fixture
def offline_cache(local, tmp_path, monkeypatch):
    """A hub cache holding org/tiny-gpt2, org/tiny-llama and org/tiny-llama-sharded; offline."""
    pytest.importorskip("huggingface_hub", reason="hub names need huggingface_hub: pip install 'lt[hf]'")
    root, _ = local
    cache = tmp_path / "hub"
    for name in ("gpt2", "llama", "llama-sharded"):
        cache_repo(cache, f"org/tiny-{name}", root / name)
    cache_repo(cache, "tiny-gpt2", root / "gpt2")          # a name without an org, as "gpt2" is
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)                         # no local folder named like a repo
    return cache


def same_tree(a, b) -> bool:
    return lt.tree.paths(a) == lt.tree.paths(b) and all(
        np.array_equal(x, y) for x, y in zip(lt.tree.leaves(a), lt.tree.leaves(b)))


@pytest.mark.parametrize("repo,name,model", [("org/tiny-gpt2", "gpt2", GPT2), ("tiny-gpt2", "gpt2", GPT2),
                                             ("org/tiny-llama", "llama", LLAMA),
                                             ("org/tiny-llama-sharded", "llama-sharded", LLAMA)])
def test_a_cached_hub_name_loads_the_same_model_and_params_as_its_directory(offline_cache, local, repo, name, model):
    loaded_model, params = hf.from_hf(repo)
    assert loaded_model == model
    assert same_tree(params, local[1][name])
    folder = "models--" + repo.replace("/", "--")
    assert hf.resolve(repo) == offline_cache / folder / "snapshots" / REVISION


def test_a_cached_hub_name_gives_the_tokenizer_of_its_directory(offline_cache, local):
    by_name, by_path = hf.load_tokenizer("org/tiny-gpt2"), hf.load_tokenizer(local[0] / "gpt2")
    ids = by_name.encode("the lazy fox")
    assert np.array_equal(ids, by_path.encode("the lazy fox")) and len(ids) < len("the lazy fox")
    assert by_name.decode(ids) == "the lazy fox"


def test_lt_generate_hf_takes_a_hub_name_and_writes_what_the_directory_gives(offline_cache, local, capsys):
    flags = ["--prompt", "the quick", "--max-new-tokens", "8", "--temperature", "0"]
    assert cli.main(["generate", "--hf", "org/tiny-llama", *flags]) == 0
    by_name = capsys.readouterr().out
    assert cli.main(["generate", "--hf", str(local[0] / "llama"), *flags]) == 0
    assert by_name == capsys.readouterr().out and by_name.startswith("the quick")


def test_hf_home_is_honoured_when_hf_hub_cache_is_unset(offline_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(offline_cache.parent))          # HF_HOME/hub is the cache
    assert hf.from_hf("org/tiny-gpt2")[0] == GPT2
    monkeypatch.setenv("HF_HOME", str(offline_cache.parent / "elsewhere"))
    with pytest.raises(FileNotFoundError, match=r"not in the Hugging Face cache .*elsewhere"):
        hf.from_hf("org/tiny-gpt2")


def test_without_the_variables_the_hubs_own_settings_apply(offline_cache, monkeypatch):
    from huggingface_hub import constants
    for name in ("HF_HUB_CACHE", "HF_HOME", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(offline_cache))   # as read from the environment at import
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hf.from_hf("org/tiny-llama")[0] == LLAMA
    with pytest.raises(FileNotFoundError, match=f"not in the Hugging Face cache {offline_cache}; HF_HUB_OFFLINE"):
        hf.from_hf("org/absent")


def test_offline_and_not_cached_is_a_clear_error(offline_cache, capsys):
    with pytest.raises(FileNotFoundError, match=r"org/absent is not a local directory and not in the Hugging Face "
                                                r"cache .*HF_HUB_OFFLINE is set"):
        hf.from_hf("org/absent")
    assert cli.main(["generate", "--hf", "org/absent"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lt: error: org/absent is not a local directory")


def test_a_local_directory_needs_no_huggingface_hub_and_a_name_then_names_the_extra(local, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)    # `import huggingface_hub` raises ImportError
    monkeypatch.chdir(local[0].parent)
    model, params = hf.from_hf(local[0] / "gpt2")
    assert model == GPT2 and same_tree(params, local[1]["gpt2"])
    with pytest.raises(ImportError, match=r"org/tiny-gpt2 is not a local directory; .*pip install 'lt\[hf\]'"):
        hf.from_hf("org/tiny-gpt2")
    assert cli.main(["generate", "--hf", "gpt2"]) == 2
    assert "pip install 'lt[hf]'" in capsys.readouterr().err


def test_a_missing_path_that_cannot_be_a_hub_name_stays_a_path_and_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)     # never consulted for these
    for bad in (tmp_path / "no-such-model", "./a/b/c", "a--b"):
        assert hf.resolve(bad) == pathlib.Path(bad)
        with pytest.raises(FileNotFoundError, match=r"has no config\.json; expected a Hugging Face model directory"):
            hf.from_hf(bad)
        with pytest.raises(FileNotFoundError, match="no tokenizer at"):
            hf.load_tokenizer(bad)


@pytest.mark.parametrize("name,ok", [("gpt2", True), ("openai-community/gpt2", True), ("Qwen/Qwen2.5-0.5B", True),
                                     ("HuggingFaceTB/SmolLM2-135M", True), ("a/b/c", False), ("/abs/path", False),
                                     ("../up", False), ("a..b", False), ("org--x", False), ("", False),
                                     ("-lead", False), ("x" * 97, False)])
def test_hub_names_are_recognised_as_the_hub_spells_them(name, ok):
    assert hub.is_hub_name(name) is ok


def test_a_shard_index_in_the_cache_still_cannot_reach_outside_its_repository(offline_cache, tmp_path):
    snapshot = offline_cache / "models--org--tiny-llama-sharded" / "snapshots" / REVISION
    outside = tmp_path / "outside.safetensors"
    safetensors_io.save(outside, {"x": np.zeros(2, np.float32)}, {"format": "pt"})
    index = json.loads((snapshot / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: "../../../../outside.safetensors" for k in index["weight_map"]}
    (snapshot / "model.safetensors.index.json").unlink()                     # replace the link, not its blob
    (snapshot / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(hf.HFCheckpointError, match="outside the model directory"):
        hf.from_hf("org/tiny-llama-sharded")
