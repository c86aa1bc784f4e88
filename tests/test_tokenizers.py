"""Character-level tokenizer, and the JSON files every lt tokenizer is saved in."""

import os

import numpy as np
import pytest
from hypothesis import given, strategies as st

import lt.tokenizers as tokenizers
from lt.tokenizers import BPETokenizer, CharTokenizer, TokenizerFileError, UnknownCharacterError


# --- character-level ----------------------------------------------------------------------

@given(st.text())
def test_char_round_trip_and_ids_index_the_vocabulary(s):
    tok = CharTokenizer.fit(s)
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    assert [tok.chars[i] for i in ids.tolist()] == list(s)
    assert list(tok.chars) == sorted(set(s))


def test_char_unknown_character_names_it_and_its_position():
    tok = CharTokenizer.fit("abc")
    with pytest.raises(UnknownCharacterError, match=r"'X' \(U\+0058\) at position 2"):
        tok.encode("abXcé")
    with pytest.raises(UnknownCharacterError, match="position 0"):
        CharTokenizer.fit("").encode("a")


def test_char_decode_rejects_ids_out_of_range_naming_the_first():
    tok = CharTokenizer.fit("abc")
    with pytest.raises(ValueError, match=r"token ids: 3 at position 1 .* \[0, 3\) \(2 values out of range\)"):
        tok.decode([0, 3, -1])
    with pytest.raises(ValueError, match="token ids: -1 at position 0"):
        tok.decode(np.array([-1]))
    with pytest.raises(TypeError, match="integer"):
        tok.decode([0.5])


def test_char_vocabulary_must_be_distinct_single_characters():
    with pytest.raises(ValueError, match="more than once"):
        CharTokenizer(["a", "b", "a"])
    with pytest.raises(ValueError, match=r"chars\[1\] must be a single character"):
        CharTokenizer(["a", "bc"])


def test_save_replaces_atomically_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "tok.json"
    CharTokenizer.fit("abc").save(path)
    before = path.read_bytes()

    def crash(*args):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        CharTokenizer.fit("xyz").save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["tok.json"]


@pytest.mark.parametrize("content, message", [
    ("{not json", r"not valid JSON \(.* line 1, column 2\)"),
    ('{"format": "other"}', "not an lt tokenizer file"),
    ('{"format": "lt-tokenizer", "version": 9, "type": "char"}', "unsupported lt tokenizer version 9"),
    ('{"format": "lt-tokenizer", "version": 1, "type": "word"}', "unknown tokenizer type 'word'"),
    ('{"format": "lt-tokenizer", "version": 1, "type": "char"}', "missing field 'chars'"),
    ('{"format": "lt-tokenizer", "version": 1, "type": "char", "chars": "ab"}',
     "field 'chars' should be a list, got str"),
    ('{"format": "lt-tokenizer", "version": 1, "type": "char", "chars": ["a", "a"]}', "more than once"),
    ('{"format": "lt-tokenizer", "version": 1, "type": "bpe", "pattern": "x", "special_tokens": [],'
     ' "tokens": ["a"], "merges": []}', "lacks the single byte"),
])
def test_malformed_files_raise_naming_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=message) as info:
        tokenizers.load(path)
    assert str(path) in str(info.value)


def test_loading_with_the_wrong_class_says_which_type_the_file_holds(tmp_path):
    CharTokenizer.fit("abc").save(tmp_path / "c.json")
    with pytest.raises(TokenizerFileError, match="holds a 'char' tokenizer, not 'bpe'"):
        BPETokenizer.load(tmp_path / "c.json")
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        tokenizers.load(tmp_path / "missing.json")
