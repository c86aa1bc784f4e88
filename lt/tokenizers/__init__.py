"""Tokenizers: text to token ids and back.

- :class:`CharTokenizer` — one id per character, fitted on a text.
- :class:`BPETokenizer` — byte-level BPE with GPT-2's pre-tokenisation: trains to a
  vocabulary size, and loads GPT-2's ``encoder.json`` + ``vocab.bpe``.

Both round-trip every string (``decode(encode(s)) == s``), and save to / load from one
JSON file whose ``type`` field says which tokenizer it holds (:func:`load` reads either).
"""

from __future__ import annotations

from ._files import TokenizerFileError, check_header, read_json
from ._ids import decodable_ids
from .bpe import BPETokenizer
from .char import CharTokenizer, UnknownCharacterError
from .gpt2 import GPT2_PATTERN, bytes_to_unicode

__all__ = [
    "CharTokenizer",
    "BPETokenizer",
    "UnknownCharacterError",
    "TokenizerFileError",
    "GPT2_PATTERN",
    "bytes_to_unicode",
    "load",
    "from_dict",
    "decodable_ids",
]

_TYPES: dict[str, type[CharTokenizer] | type[BPETokenizer]] = {"char": CharTokenizer, "bpe": BPETokenizer}


def from_dict(data: dict, where: str = "tokenizer"):
    """The tokenizer a ``to_dict()`` dict describes, of whichever type it names."""
    type_ = check_header(data, where)
    if type_ not in _TYPES:
        raise TokenizerFileError(
            f"{where}: unknown tokenizer type {type_!r}; expected one of {', '.join(map(repr, _TYPES))}"
        )
    return _TYPES[type_].from_dict(data, where)


def load(path):
    """The tokenizer saved at ``path`` (a :class:`CharTokenizer` or a :class:`BPETokenizer`)."""
    return from_dict(read_json(path), str(path))
