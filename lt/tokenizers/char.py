"""Character-level tokenizer: one id per distinct character of the text it was fitted on."""

from __future__ import annotations

import attrs
import numpy as np

from .._checks import as_tuple
from ._files import TokenizerFileError, atomic_write_text, check_header, get_field, header, read_json, to_json
from ._ids import decodable_ids

__all__ = ["CharTokenizer", "UnknownCharacterError"]


class UnknownCharacterError(ValueError):
    """Text holds a character the tokenizer's vocabulary lacks."""


def _check_chars(instance, attribute, chars) -> None:
    for i, c in enumerate(chars):
        if not isinstance(c, str) or len(c) != 1:
            raise ValueError(f"CharTokenizer.chars[{i}] must be a single character, got {c!r}")
    seen: set[str] = set()
    for c in chars:
        if c in seen:
            raise ValueError(f"CharTokenizer.chars holds {c!r} more than once; each character needs one id")
        seen.add(c)


def _codes(text: str) -> np.ndarray:
    """The code points of ``text`` as a uint32 array (lone surrogates included)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def _describe(c: str) -> str:
    return f"{c!r} (U+{ord(c):04X})"


@attrs.frozen
class CharTokenizer:
    """Maps each character to its index in ``chars``; :meth:`fit` makes ``chars`` the sorted
    distinct characters of a text, so the same text always gives the same ids."""

    chars: tuple[str, ...] = attrs.field(converter=as_tuple, validator=_check_chars)
    _sorted_codes: np.ndarray = attrs.field(init=False, eq=False, repr=False)
    _order: np.ndarray = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        order = np.argsort(codes, kind="stable").astype(np.int32)
        object.__setattr__(self, "_sorted_codes", codes[order])
        object.__setattr__(self, "_order", order)

    @classmethod
    def fit(cls, text: str) -> CharTokenizer:
        """The tokenizer whose vocabulary is the sorted distinct characters of ``text``."""
        if not isinstance(text, str):
            raise TypeError(f"CharTokenizer.fit expects a str, got {type(text).__name__}")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """The ids of ``text``'s characters, (len(text),) int32; an unknown character raises
        :class:`UnknownCharacterError` naming it and its position."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        codes = _codes(text)
        if not self.chars:
            if text:
                raise UnknownCharacterError(
                    f"character {_describe(text[0])} at position 0 is not in "
                    f"the vocabulary: this tokenizer has no characters"
                )
            return np.zeros(0, dtype=np.int32)
        pos = np.searchsorted(self._sorted_codes, codes)
        pos = np.minimum(pos, len(self._sorted_codes) - 1)
        unknown = np.flatnonzero(self._sorted_codes[pos] != codes)
        if unknown.size:
            i = int(unknown[0])
            missing = sorted({text[j] for j in unknown[:1000].tolist()})
            more = f"; unknown characters include {', '.join(map(_describe, missing[:10]))}" if len(missing) > 1 else ""
            raise UnknownCharacterError(
                f"character {_describe(text[i])} at position {i} is not in the vocabulary of "
                f"{self.vocab_size} characters{more}; fit the tokenizer on text that contains it"
            )
        return self._order[pos]

    def decode(self, ids) -> str:
        """The text of ``ids`` (each in ``[0, vocab_size)``, else ValueError naming the first bad one)."""
        ids = decodable_ids(ids, self.vocab_size)
        return "".join([self.chars[i] for i in ids.tolist()])

    def to_dict(self) -> dict:
        """The tokenizer as a JSON-ready dict (what :meth:`save` writes)."""
        return {**header("char"), "chars": list(self.chars)}

    @classmethod
    def from_dict(cls, data: dict, where: str = "tokenizer") -> CharTokenizer:
        """The tokenizer a :meth:`to_dict` dict describes; ``where`` names it in errors."""
        check_header(data, where, "char")
        chars = get_field(data, "chars", list, where)
        try:
            return cls(chars)
        except ValueError as e:
            raise TokenizerFileError(f"{where}: {e}") from None

    def save(self, path) -> None:
        """Write the tokenizer as JSON to ``path`` (atomically: temp file, fsync, rename)."""
        atomic_write_text(path, to_json(self.to_dict()))

    @classmethod
    def load(cls, path) -> CharTokenizer:
        """The tokenizer :meth:`save` wrote to ``path``."""
        return cls.from_dict(read_json(path), str(path))
