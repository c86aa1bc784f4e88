"""Byte-level BPE: round trips, learned merges against a recounting trainer, GPT-2's merge loop, files."""

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lt.tokenizers as tokenizers
from lt.tokenizers import BPETokenizer, CharTokenizer, GPT2_PATTERN, TokenizerFileError
from lt.tokenizers.bpe_train import learn_merges

regex = pytest.importorskip("regex", reason='byte-level BPE needs the regex package: pip install "lt[text]"')

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "It's 1599; we'll say 'tis café, naïve — 日本語 😀!\t\tdone   \n") * 8


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(TEXT, 330, special_tokens=["<|endoftext|>"])


# --- BPE ------------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bpe_round_trip_on_arbitrary_unicode(bpe, s):
    ids = bpe.encode(s)
    assert ids.dtype == np.int32
    assert bpe.decode(ids) == s
    assert bpe.decode(bpe.encode(s, allow_special=False)) == s


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1))
def test_bpe_trained_on_the_string_itself_round_trips(s):
    tok = BPETokenizer.train(s * 3, 300, min_frequency=1)
    assert tok.decode(tok.encode(s)) == s


def _naive_merges(word_counts, num_merges, min_frequency):
    """Reference trainer: recount every pair after every merge; ties to the smallest bytes."""
    words = {tuple(bytes([b]) for b in w): c for w, c in word_counts.items()}
    merges = []
    while len(merges) < num_merges:
        pairs = Counter()
        for w, c in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < min_frequency:
            break
        merges.append(best)
        new_words = Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if w[i:i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] += c
        words = new_words
    return merges


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="aab  é\n'", max_size=80), st.integers(1, 3))
def test_incremental_training_equals_recounting_every_pair(text, min_frequency):
    counts = Counter(w.encode() for w in regex.findall(GPT2_PATTERN, text))
    assert learn_merges(counts, 40, min_frequency) == _naive_merges(counts, 40, min_frequency)


def _gpt2_reference_encode(tok, text):
    """GPT-2's encoder.py loop: merge the lowest-ranked adjacent pair until none is ranked."""
    rank = {m: r for r, m in enumerate(tok.merges)}
    index = {t: i for i, t in enumerate(tok.tokens)}
    ids = []
    for piece in regex.findall(GPT2_PATTERN, text):
        word = [bytes([b]) for b in piece.encode()]
        while len(word) > 1:
            best = min(zip(word, word[1:]), key=lambda p: rank.get(p, float("inf")))
            if best not in rank:
                break
            out, i = [], 0
            while i < len(word):
                if tuple(word[i:i + 2]) == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = out
        ids += [index[t] for t in word]
    return ids


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(set(TEXT)) + ["\r", "\u3000", "x"]), max_size=120))
def test_bpe_encode_equals_gpt2_merge_loop(bpe, s):
    assert bpe.encode(s, allow_special=False).tolist() == _gpt2_reference_encode(bpe, s)


def test_bpe_merges_overlapping_runs_left_to_right():
    # merge 1 is a+a; left to right "aaa" becomes [aa, a], which merge 2 (aa+a) joins.
    tok = BPETokenizer.train("aaa " * 20, 258)
    assert tok.merges == ((b"a", b"a"), (b"aa", b"a"))
    assert tok.encode("aaa").tolist() == [257]
    assert tok.encode("aaaaa").tolist() == [256, 257] == _gpt2_reference_encode(tok, "aaaaa")  # aa aa a -> aa aaa


def test_bpe_learns_the_most_frequent_pair_first():
    # pieces "ab", " ab", " ab", " cd": a+b occurs 3 times, then " "+"ab" twice
    tok = BPETokenizer.train("ab ab ab cd", 258)
    assert tok.merges == ((b"a", b"b"), (b" ", b"ab"))
    assert tok.encode(" ab").tolist() == [257]
    assert tok.tokens[:256] == tuple(bytes([b]) for b in range(256))


def test_bpe_reaches_the_vocab_size_and_puts_special_tokens_last(bpe):
    assert bpe.vocab_size == 330 and len(bpe.merges) == 330 - 257
    assert bpe.special_ids == {"<|endoftext|>": 329}
    ids = bpe.encode("a<|endoftext|>b").tolist()
    assert ids.count(329) == 1 and ids[0] == ord("a") and ids[-1] == ord("b")
    assert 329 not in bpe.encode("a<|endoftext|>b", allow_special=False).tolist()


def test_bpe_training_is_deterministic():
    assert BPETokenizer.train(TEXT, 350) == BPETokenizer.train(TEXT, 350)


def test_bpe_stops_when_no_pair_is_frequent_enough():
    tok = BPETokenizer.train("abcd", 1000)           # every pair occurs once
    assert tok.vocab_size == 256 and tok.merges == ()


@pytest.mark.parametrize("bad", [255, 0, 300.0, True, "512"])
def test_bpe_bad_vocab_size_says_the_minimum(bad):
    with pytest.raises(ValueError, match=r"vocab_size must be an integer >= 256"):
        BPETokenizer.train(TEXT, bad)
    with pytest.raises(ValueError, match=r">= 257 \(256 byte tokens \+ 1 special"):
        BPETokenizer.train(TEXT, 256, special_tokens=["<|endoftext|>"])


def test_bpe_decode_rejects_ids_out_of_range(bpe):
    with pytest.raises(ValueError, match=r"token ids: 330 at position 2 .* \[0, 330\)"):
        bpe.decode([1, 2, 330])


def test_bpe_lone_surrogate_raises_clearly(bpe):
    with pytest.raises(ValueError, match="lone surrogate"):
        bpe.encode("ab\ud800")


def test_bpe_constructor_checks_merges_and_bytes():
    byte_tokens = [bytes([b]) for b in range(256)]
    with pytest.raises(ValueError, match=r"merges\[0\] .* b'ab' is not in the vocabulary"):
        BPETokenizer(byte_tokens, [(b"a", b"b")])
    with pytest.raises(ValueError, match="lacks the single byte"):
        BPETokenizer(byte_tokens[1:], [])


# --- files ----------------------------------------------------------------------------------

def test_save_load_round_trip_both_types(tmp_path, bpe):
    for tok in (CharTokenizer.fit(TEXT), bpe):
        path = tmp_path / "tok.json"
        tok.save(path)
        for loaded in (type(tok).load(path), tokenizers.load(path)):
            assert loaded == tok and type(loaded) is type(tok)
            assert loaded.encode(TEXT).tolist() == tok.encode(TEXT).tolist()
        expected_type = {CharTokenizer: "char", BPETokenizer: "bpe"}[type(tok)]
        assert json.loads(path.read_text(encoding="utf-8"))["type"] == expected_type


def test_gpt2_file_format_round_trip(tmp_path, bpe):
    bpe.save_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert (tmp_path / "merges.txt").read_text().startswith("#version")
    loaded = BPETokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert loaded == bpe


def test_malformed_gpt2_files_name_the_line_or_token(tmp_path):
    vocab = {c: i for i, c in enumerate(tokenizers.bytes_to_unicode())}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n", encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=r"merges.txt, line 2: expected a merge 'left right'"):
        BPETokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n", encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=r"merges\[0\] .* b'ab' is not in the vocabulary"):
        BPETokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    vocab["ab"] = 300
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=r"token 'ab' has id 300; ids must be the integers 0\.\.256"):
        BPETokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
