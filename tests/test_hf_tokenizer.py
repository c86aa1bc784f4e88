"""lt.hf.load_tokenizer: a tokenizer.json through Hugging Face's `tokenizers`, GPT-2's files through lt's BPE."""

import json
import os
import sys

import numpy as np
import pytest

from lt import hf, tokenizers as lt_tokenizers
from lt.hf import HFCheckpointError, HFTokenizer, load_tokenizer
from lt.tokenizers import BPETokenizer, TokenizerFileError

TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness — naïve café, 東京, emoji 🙂.\n") * 3


@pytest.fixture(scope="module")
def hf_tokenizers():
    return pytest.importorskip("tokenizers", reason="needs the tokenizers package (pip install 'lt[hf]')")


def llama_like(tk):
    """A small byte-level BPE in the shape of Llama's tokenizer.json: <s> added by the post-processor."""
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer)
    tok.post_processor = tk.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def test_tokenizer_json_gives_the_tokenizers_packages_ids_with_lts_interface(hf_tokenizers, tmp_path):
    reference = llama_like(hf_tokenizers)
    reference.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, HFTokenizer)
    assert tok.vocab_size == reference.get_vocab_size() == 300
    ids = tok.encode(TEXT)
    assert ids.dtype == np.int32 and ids.ndim == 1 and len(ids) < len(TEXT.encode())
    np.testing.assert_array_equal(ids, reference.encode(TEXT, add_special_tokens=False).ids)
    assert tok.decode(ids) == TEXT
    with_bos = tok.encode("best of times", add_special_tokens=True)
    assert with_bos[0] == 1 and np.array_equal(with_bos[1:], tok.encode("best of times"))
    assert tok.special_ids == {"<unk>": 0, "<s>": 1, "</s>": 2}
    assert tok.decode(with_bos, skip_special_tokens=True) == "best of times"
    assert tok.decode(np.array([], np.int64)) == ""
    with pytest.raises(ValueError, match="300"):
        tok.decode([5, 300])
    with pytest.raises(TypeError, match="str"):
        tok.encode(b"bytes")
    assert np.array_equal(load_tokenizer(tmp_path / "tokenizer.json").encode(TEXT), ids)


def test_gpt2_files_load_as_lts_own_bpe(tmp_path):
    pytest.importorskip("regex", reason="lt's BPE needs regex (pip install 'lt[text]')")
    bpe = BPETokenizer.train(TEXT, 280, special_tokens=["<|endoftext|>"])
    openai = tmp_path / "openai"
    openai.mkdir()
    bpe.save_gpt2_files(openai / "encoder.json", openai / "vocab.bpe")
    (openai / "tokenizer.json").write_text("not read")
    hub = tmp_path / "hub"
    hub.mkdir()
    bpe.save_gpt2_files(hub / "vocab.json", hub / "merges.txt")
    (hub / "tokenizer.json").write_text("not read")
    (hub / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    for path in (openai, hub):
        tok = load_tokenizer(path)
        assert isinstance(tok, BPETokenizer)
        np.testing.assert_array_equal(tok.encode(TEXT), bpe.encode(TEXT))


def test_missing_tokenizers_package_names_the_extra(hf_tokenizers, tmp_path, monkeypatch):
    llama_like(hf_tokenizers).save(str(tmp_path / "tokenizer.json"))
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match=r"pip install 'lt\[hf\]'"):
        load_tokenizer(tmp_path)


def test_bad_tokenizer_files_are_named(hf_tokenizers, tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "Nonsense"}}))
    with pytest.raises(TokenizerFileError, match=r"tokenizer\.json: not a tokenizer\.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_bytes(b"\xff\xfe")
    with pytest.raises(TokenizerFileError, match="not a UTF-8 text file"):
        load_tokenizer(tmp_path)
    if hasattr(os, "mkfifo"):
        (tmp_path / "tokenizer.json").unlink()
        os.mkfifo(tmp_path / "tokenizer.json")
        with pytest.raises(HFCheckpointError, match="is not a regular file"):
            load_tokenizer(tmp_path)


def test_a_directory_without_tokenizer_files_says_what_it_holds(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json.*\['config\.json'\]"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="no tokenizer at"):
        load_tokenizer(tmp_path / "nowhere")


def test_public_names():
    assert hf.load_tokenizer is load_tokenizer and hf.HFTokenizer is HFTokenizer
    assert lt_tokenizers.TokenizerFileError is TokenizerFileError
