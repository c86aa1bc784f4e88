"""Issue 31, readers: every reader shares one set of guards (lt.guards), and each hostile file
built here gets one clear error naming the file and what was expected.

Hub caches are laid out here as huggingface_hub lays them out (models--org--name/blobs,
snapshots/<rev>, refs/main), with HF_HUB_OFFLINE=1: nothing touches the network."""

import json
import os
import re

import numpy as np
import pytest

import lt
from lt import checkpoint, hf, random, safetensors_io
from lt.checkpoint import NonFiniteCheckpointError
from lt.cli import runlog
from lt.hf import HFCheckpointError
from lt.safetensors_io import SafetensorsError

GPT2 = lt.GPT(vocab_size=16, max_seq_len=8, num_layers=2, num_heads=2, hidden_dim=8, ffn_dim=16, tie_embeddings=False)
LLAMA = lt.GPT.preset("llama-tiny", vocab_size=16, max_seq_len=8)
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")


def guards():
    """lt.guards, imported when a test runs (so each test here fails on its own before the module exists)."""
    from lt import guards

    return guards


def hf_dir(path, model=GPT2, seed=0):
    hf.to_hf(model, model.init(random.key(seed)), path)
    return path


def edit_config(path, **fields):
    config = json.loads((path / "config.json").read_text())
    config.update(fields)
    (path / "config.json").write_text(json.dumps(config))


# ------------------------------------------------------------------ 0. the shared guards


@needs_fifo
def test_read_bytes_refuses_a_fifo_a_directory_and_a_file_over_its_bound(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(
        ValueError,
        match=re.escape(f"{tmp_path / 'pipe'}: is not a regular file (a FIFO, device or socket?); expected a thing"),
    ):
        guards().read_bytes(tmp_path / "pipe", "a thing", 100)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path}: is a directory; expected a thing")):
        guards().read_bytes(tmp_path, "a thing", 100)
    (tmp_path / "big").write_bytes(b"x" * 101)
    with pytest.raises(
        ValueError, match=re.escape(f"{tmp_path / 'big'}: is 101 bytes, more than the 100 lt reads for a thing")
    ):
        guards().read_bytes(tmp_path / "big", "a thing", 100)
    (tmp_path / "ok").write_bytes(b"x" * 100)
    assert guards().read_bytes(tmp_path / "ok", "a thing", 100) == b"x" * 100
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'gone'}: not found; expected a thing")):
        guards().read_bytes(tmp_path / "gone", "a thing", 100)


def test_guards_raise_the_callers_error_class(tmp_path):
    with pytest.raises(SafetensorsError, match="is a directory"):
        guards().open_regular(tmp_path, "a safetensors file", error=SafetensorsError)


def test_inside_allows_its_root_and_the_extra_places_and_nothing_else(tmp_path):
    root, blobs, elsewhere = tmp_path / "root", tmp_path / "blobs", tmp_path / "elsewhere"
    for d in (root, blobs, elsewhere):
        d.mkdir()
    (blobs / "b").write_text("")
    (elsewhere / "e").write_text("")
    (root / "to_blob").symlink_to(blobs / "b")
    (root / "out").symlink_to(elsewhere / "e")
    assert guards().inside(root / "to_blob", root, "the link", also=[blobs]) == (blobs / "b").resolve()
    with pytest.raises(
        ValueError, match=re.escape(f"the link is outside {root} (it resolves to {(elsewhere / 'e').resolve()})")
    ):
        guards().inside(root / "out", root, "the link", also=[blobs])
    with pytest.raises(ValueError, match=re.escape("the link is outside the folder (it resolves to ")):
        guards().inside(root / "to_blob", root, "the link", place="the folder")


@pytest.mark.parametrize(
    "name, message",
    [
        ("a\x00b", "the shard 'a\\x00b' holds a NUL byte; expected a relative file name inside the folder"),
        ("", "the shard '' is empty; expected a relative file name inside the folder"),
        (
            "/etc/passwd",
            "the shard '/etc/passwd' is outside the folder (an absolute path); expected a relative file name inside it",
        ),
        (
            "x/../../y",
            "the shard 'x/../../y' is outside the folder (it holds '..'); expected a relative file name inside it",
        ),
    ],
)
def test_check_name_refuses_names_that_leave_their_folder(name, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        guards().check_name(name, "the shard", place="the folder")
    assert guards().check_name("sub/x.safetensors", "the shard") == "sub/x.safetensors"


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.complex64])
def test_finite_names_the_array_and_counts_each_kind(dtype):
    x = np.zeros(6, dtype)
    guards().finite(x, "w")  # finite: no error
    guards().finite(np.array([1, 2]), "ints")  # integers are always finite
    x[1], x[4] = np.nan, np.inf
    with pytest.raises(ValueError, match=re.escape("w 2 of its 6 values are non-finite (NaN and inf); stop")):
        guards().finite(x, "w", hint="stop")


# ------------------------------------------------------------------ 1. a ref out of the hub cache


def hub_cache(tmp_path, monkeypatch, ref: str):
    """An offline hub cache whose org/name repository's refs/main holds ``ref``."""
    pytest.importorskip("huggingface_hub", reason="hub names need huggingface_hub: pip install 'lt[hf]'")
    cache = tmp_path / "cache"
    repo = cache / "models--org--name"
    for d in ("blobs", "refs", "snapshots"):
        (repo / d).mkdir(parents=True)
    (repo / "refs" / "main").write_text(ref)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return repo


@pytest.mark.parametrize("absolute", [False, True])
def test_a_ref_naming_a_folder_outside_the_hub_cache_is_refused(tmp_path, monkeypatch, absolute):
    elsewhere = hf_dir(tmp_path / "elsewhere")  # any model directory on the machine
    ref = str(elsewhere) if absolute else "../../../elsewhere"
    repo = hub_cache(tmp_path, monkeypatch, ref)
    with pytest.raises(
        HFCheckpointError,
        match=re.escape(
            f"{repo / 'refs' / 'main'}: the snapshot its revision {ref!r} names is outside the hub cache's "
            f"snapshots folder {repo / 'snapshots'} (it resolves to {elsewhere.resolve()})"
        ),
    ):
        hf.from_hf("org/name")


@needs_fifo
def test_a_ref_that_is_a_fifo_is_refused_not_waited_on(tmp_path, monkeypatch):
    repo = hub_cache(tmp_path, monkeypatch, "")
    (repo / "refs" / "main").unlink()
    os.mkfifo(repo / "refs" / "main")
    with pytest.raises(
        HFCheckpointError,
        match=re.escape(
            f"{repo / 'refs' / 'main'}: is not a regular file (a FIFO, device or socket?); expected a hub ref"
        ),
    ):
        hf.from_hf("org/name")


# ------------------------------------------------------------------ 2. one link policy for every file


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_model_files_linked_out_of_the_model_directory_are_refused(tmp_path, name):
    path = hf_dir(tmp_path / "hf")
    target = tmp_path / f"outside-{name}"
    (path / name).rename(target)
    (path / name).symlink_to(target)
    with pytest.raises(
        HFCheckpointError,
        match=re.escape(f"{path / name} is outside the model directory {path} (it resolves to {target})"),
    ):
        hf.from_hf(path)


def test_a_shard_index_linked_out_of_the_model_directory_is_refused(tmp_path):
    path = hf_dir(tmp_path / "hf")
    names = list(safetensors_io.load(path / "model.safetensors"))
    (path / "model.safetensors").rename(path / "shard.safetensors")
    target = tmp_path / "index.json"
    target.write_text(json.dumps({"weight_map": {n: "shard.safetensors" for n in names}}))
    (path / "model.safetensors.index.json").symlink_to(target)
    with pytest.raises(
        HFCheckpointError,
        match=re.escape(f"{path / 'model.safetensors.index.json'} is outside the model directory {path}"),
    ):
        hf.from_hf(path)


def tokenizer_dir(path, name):
    """A model directory whose tokenizer loads: a tokenizer.json (Hugging Face's ``tokenizers``),
    or GPT-2's vocab.json + merges.txt (lt's own BPE)."""
    path.mkdir()
    if name == "tokenizer.json":
        tk = pytest.importorskip("tokenizers", reason="needs the tokenizers package (pip install 'lt[hf]')")
        tk.Tokenizer(tk.models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(path / name))
    else:
        pytest.importorskip("regex", reason="lt's BPE needs regex (pip install 'lt[text]')")
        lt.tokenizers.BPETokenizer.train("hello world " * 20, 260).save_gpt2_files(
            path / "vocab.json", path / "merges.txt"
        )
    return path


@pytest.mark.parametrize("name", ["tokenizer.json", "vocab.json", "merges.txt"])
def test_tokenizer_files_linked_out_of_the_model_directory_are_refused(tmp_path, name):
    path = tokenizer_dir(tmp_path / "hf", "tokenizer.json" if name == "tokenizer.json" else "gpt2")
    hf.load_tokenizer(path)  # loads while its files lie inside
    target = tmp_path / f"outside-{name}"
    (path / name).rename(target)
    (path / name).symlink_to(target)
    with pytest.raises(
        HFCheckpointError,
        match=re.escape(f"{path / name} is outside the model directory {path} (it resolves to {target})"),
    ):
        hf.load_tokenizer(path)


def test_links_inside_the_model_directory_still_load(tmp_path):
    path = hf_dir(tmp_path / "hf")
    (path / "real").mkdir()
    (path / "model.safetensors").rename(path / "real" / "weights")
    (path / "model.safetensors").symlink_to(os.path.join("real", "weights"))
    model, params = hf.from_hf(path)
    assert model == GPT2 and lt.tree.paths(params) == lt.tree.paths(GPT2.spec())


# ------------------------------------------------------------------ 3, 4. config field types


@pytest.mark.parametrize("value", ["false", "no", "0", [], 0, None])
@pytest.mark.parametrize("model", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_tie_word_embeddings_must_be_a_json_boolean(tmp_path, model, value):
    path = hf_dir(tmp_path / "hf", model)
    edit_config(path, tie_word_embeddings=value)
    with pytest.raises(
        HFCheckpointError,
        match=re.escape(
            f"{path / 'config.json'}: tie_word_embeddings must be a JSON boolean (true or false), "
            f"got {json.dumps(value)}"
        ),
    ):
        hf.from_hf(path)


@pytest.mark.parametrize(
    "model, field, value, kind",
    [
        (GPT2, "n_layer", "2", "a JSON integer"),
        (GPT2, "n_layer", 2.0, "a JSON integer"),
        (GPT2, "n_embd", True, "a JSON integer"),
        (GPT2, "n_inner", "16", "a JSON integer or null"),
        (GPT2, "layer_norm_epsilon", "1e-5", "a finite JSON number"),
        (GPT2, "resid_pdrop", False, "a finite JSON number"),
        (GPT2, "activation_function", ["gelu_new"], "a JSON string"),
        (GPT2, "scale_attn_weights", 1, "a JSON boolean (true or false)"),
        (LLAMA, "num_hidden_layers", "2", "a JSON integer"),
        (LLAMA, "rms_norm_eps", "1e-6", "a finite JSON number"),
        (LLAMA, "rope_theta", [10000], "a finite JSON number"),
        (LLAMA, "hidden_act", {"silu": 1}, "a JSON string"),
        (LLAMA, "attention_bias", "false", "a JSON boolean (true or false)"),
        (LLAMA, "mlp_bias", 0, "a JSON boolean (true or false)"),
        (LLAMA, "head_dim", "4", "a JSON integer or null"),
        (LLAMA, "max_position_embeddings", 8.5, "a JSON integer"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_every_config_field_read_has_its_json_type(tmp_path, model, field, value, kind):
    path = hf_dir(tmp_path / "hf", model)
    edit_config(path, **{field: value})
    with pytest.raises(
        HFCheckpointError, match=re.escape(f"{path / 'config.json'}: {field} must be {kind}, got {json.dumps(value)}")
    ):
        hf.from_hf(path)


def test_fields_inside_rope_scaling_have_their_json_types_too(tmp_path):
    path = hf_dir(tmp_path / "hf", LLAMA)
    edit_config(path, rope_scaling={"rope_type": "linear", "factor": "2"})
    with pytest.raises(
        HFCheckpointError,
        match=re.escape(f'{path / "config.json"}: rope_scaling.factor must be a finite JSON number, got "2"'),
    ):
        hf.from_hf(path)


@pytest.mark.parametrize("value", [["llama"], {"llama": 1}, 2])
def test_a_model_type_that_is_no_string_is_named(tmp_path, value):
    path = hf_dir(tmp_path / "hf", LLAMA)
    edit_config(path, model_type=value)
    with pytest.raises(
        HFCheckpointError,
        match=re.escape(f"{path / 'config.json'}: model_type must be a JSON string, got {json.dumps(value)}"),
    ):
        hf.from_hf(path)


def test_null_stays_allowed_where_the_field_may_be_unset(tmp_path):
    path = hf_dir(tmp_path / "hf", LLAMA)
    edit_config(path, head_dim=None, rope_scaling=None)
    assert hf.from_hf(path)[0] == LLAMA


# ------------------------------------------------------------------ 5. non-finite Hugging Face weights


def write_safetensors(path, tensors: dict, dtypes: dict):
    """A safetensors file of raw little-endian arrays under the given dtype names (BF16 as uint16)."""
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtypes[name], "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def as_stored(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (x.astype("<f4").view("<u4") >> 16).astype("<u2")
    return x.astype({"F32": "<f4", "F16": "<f2"}[dtype])


@pytest.mark.parametrize("bad, kind", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_non_finite_hf_weights_are_refused_naming_the_tensor(tmp_path, dtype, bad, kind):
    path = hf_dir(tmp_path / "hf")
    tensors = safetensors_io.load(path / "model.safetensors")
    name = "transformer.h.1.mlp.c_fc.weight"
    poisoned = tensors[name].copy()
    poisoned[2, 5] = bad
    tensors[name] = poisoned
    write_safetensors(
        path / "model.safetensors", {k: as_stored(v, dtype) for k, v in tensors.items()}, dict.fromkeys(tensors, dtype)
    )
    with pytest.raises(
        HFCheckpointError,
        match=re.escape(
            f"{path / 'model.safetensors'}: tensor {name} 1 of its {poisoned.size} values are non-finite "
            f"({kind}); refusing to load it"
        ),
    ):
        hf.from_hf(path)


def test_f64_weights_beyond_float32_are_refused_when_read_as_float32(tmp_path):
    path = hf_dir(tmp_path / "hf")
    tensors = {k: v.astype(np.float64) for k, v in safetensors_io.load(path / "model.safetensors").items()}
    tensors["transformer.ln_f.weight"][0] = 1e300
    safetensors_io.save(path / "model.safetensors", tensors, {"format": "pt"})
    assert hf.from_hf(path, dtype=np.float64)[1]["ln_f"]["scale"][0] == 1e300
    with pytest.raises(
        HFCheckpointError,
        match=re.escape(
            f"{path / 'model.safetensors'}: tensor transformer.ln_f.weight as float32 1 of its 8 values are "
            "non-finite (inf); refusing to load it (a value beyond float32's range: load with dtype=np.float64)"
        ),
    ):
        hf.from_hf(path)


def test_lt_checkpoints_still_refuse_non_finite_params(tmp_path):
    params = GPT2.init(random.key(0))
    w = np.array(params["ln_f"]["scale"])
    w[3] = np.inf
    with pytest.raises(
        NonFiniteCheckpointError,
        match=re.escape(
            "step 2: params leaf ln_f.scale 1 of its 8 values are non-finite (inf); checkpoint not written"
        ),
    ):
        checkpoint.save(tmp_path / "c.safetensors", GPT2, lt.tree.set(params, "ln_f.scale", w), step=2)


# ------------------------------------------------------------------ 6. a tokenizer that panics


def test_a_tokenizer_whose_pattern_backtracks_too_far_is_a_value_error_naming_the_file(tmp_path):
    tk = pytest.importorskip("tokenizers", reason="needs the tokenizers package (pip install 'lt[hf]')")
    tok = tk.Tokenizer(tk.models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = tk.pre_tokenizers.Split(tk.Regex(r"(a+)+$"), "isolated")
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = hf.load_tokenizer(tmp_path)
    assert loaded.encode("ba").tolist() == [1, 0]
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"{tmp_path / 'tokenizer.json'}: the tokenizers package failed on this text (Onig: Regex search "
            "error: retry-limit-in-match over); the file's patterns may backtrack too far"
        ),
    ):
        loaded.encode("a" * 60 + "b")


def test_a_panic_in_decode_is_a_value_error_too(tmp_path):
    class PanicException(BaseException):  # as pyo3_runtime's: a BaseException, not an Exception
        pass

    class Panics:
        def get_vocab_size(self, with_added_tokens=True):
            return 4

        def decode(self, ids, skip_special_tokens=False):
            raise PanicException("boom\nmore lines")

    with pytest.raises(
        ValueError,
        match=re.escape(
            "x/tokenizer.json: the tokenizers package failed on these ids (boom); the file's patterns may "
            "backtrack too far"
        ),
    ):
        hf.HFTokenizer(Panics(), "x/tokenizer.json").decode([1, 2])

    class Interrupted:
        def encode(self, text, add_special_tokens=False):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # other BaseExceptions pass through
        hf.HFTokenizer(Interrupted(), "x").encode("a")


# ------------------------------------------------------------------ 7. a NUL byte in a shard name


def test_a_shard_name_with_a_nul_byte_names_the_index_and_the_shard(tmp_path):
    path = hf_dir(tmp_path / "hf")
    names = list(safetensors_io.load(path / "model.safetensors"))
    index = path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {n: "model\x00.safetensors" for n in names}}))
    (path / "model.safetensors").rename(path / "model-00001-of-00001.safetensors")
    with pytest.raises(
        HFCheckpointError,
        match=re.escape(
            f"{index}: shard 'model\\x00.safetensors' holds a NUL byte; expected a relative file name inside "
            f"the model directory {path}"
        ),
    ):
        hf.from_hf(path)


# ------------------------------------------------------------------ 8. run logs


def a_run(tmp_path):
    """A run directory holding its settings (no training): what lt plot and lt info read first."""
    from lt import runs

    files = runs.RunFiles(tmp_path / "run")
    files.root.mkdir()
    runs.save_settings(
        files,
        runs.RunSettings(
            model=lt.nn.config(GPT2),
            data="corpus:x",
            tokenizer="char",
            seq_len=8,
            batch_size=2,
            steps=10,
            lr=1e-3,
            min_lr=0.0,
            warmup=0,
            weight_decay=0.0,
            grad_clip=1.0,
            beta2=0.99,
            seed=0,
            eval_every=5,
            eval_batches=1,
            checkpoint_every=5,
        ),
    )
    return files


@needs_fifo
def test_a_fifo_log_is_refused_not_waited_on(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason='lt plot needs matplotlib: pip install "lt[examples]"')
    files = a_run(tmp_path)
    os.mkfifo(files.log)
    message = f"{files.log}: is not a regular file (a FIFO, device or socket?); expected a run log (log.jsonl)"
    with pytest.raises(ValueError, match=re.escape(message)):
        runlog.read_log(files.log)
    assert lt.cli.main(["plot", "--run", str(files.root)]) == 2
    assert capsys.readouterr().err.strip() == f"lt: error: {message}"


def test_a_log_over_the_bound_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(runlog, "MAX_LOG", 100)
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n' * 5)
    with pytest.raises(
        ValueError, match=re.escape(f"{log}: is 125 bytes, more than the 100 lt reads for a run log (log.jsonl)")
    ):
        runlog.read_log(log)


def test_the_log_bound_is_stated_and_far_above_any_run():
    assert runlog.MAX_LOG == 1 << 30


def test_a_log_line_that_is_not_utf8_names_the_file_and_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_bytes(b'{"step": 1, "loss": 2.0}\n{"step": 2, "loss": "\xff"}\n')
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"{log}, line 2: not UTF-8 text (invalid start byte at byte 21 of the line); expected a log record"
        ),
    ):
        runlog.read_log(log)


def test_a_deeply_nested_log_line_names_the_file_and_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n' + "[" * 100_000 + "\n")
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"{log}, line 2: not a log record (a JSON object with an integer 'step' and a number 'loss'): {'[' * 80!r}"
        ),
    ):
        runlog.read_log(log)


def test_a_missing_log_still_says_the_run_has_logged_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="the run has logged nothing yet"):
        runlog.read_log(tmp_path / "log.jsonl")


def test_a_gpt2_merges_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    from lt.tokenizers._files import TokenizerFileError
    from lt.tokenizers.gpt2 import _read_merges

    fifo = tmp_path / "merges.txt"
    os.mkfifo(fifo)
    with pytest.raises(TokenizerFileError, match=r"merges.txt: is not a regular file .*expected GPT-2 merges"):
        _read_merges(fifo)


def test_a_run_json_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    from lt import runs

    os.mkfifo(tmp_path / "run.json")
    with pytest.raises(ValueError, match=r"run.json: is not a regular file .*expected run settings"):
        runs.load_settings(runs.RunFiles(tmp_path))
