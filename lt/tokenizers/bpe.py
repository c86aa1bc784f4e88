"""Byte-level BPE tokenizer (GPT-2's scheme): pre-tokenise with a regex, merge bytes by rank.

Every string round-trips: text is split into pieces by :data:`~lt.tokenizers.gpt2.GPT2_PATTERN`,
each piece's UTF-8 bytes start as single-byte tokens (all 256 are in every vocabulary),
and adjacent tokens are merged in the order the merges were learned, exactly as GPT-2's
``encoder.py`` does. Special tokens (``<|endoftext|>``) are vocabulary entries matched
whole in the text before the split. Ids of a trained tokenizer: 0..255 the bytes, then
one per merge in order, then the special tokens.
"""

from __future__ import annotations

import heapq
import itertools
import re
from collections import Counter
from typing import Any

import attrs
import numpy as np

from .. import _checks
from ._files import TokenizerFileError, atomic_write_text, check_header, get_field, header, read_json, to_json
from ._ids import decodable_ids
from .bpe_train import learn_merges
from .gpt2 import GPT2_PATTERN, compile_pattern, read_gpt2_files, text_to_token, token_to_text, write_gpt2_files

__all__ = ["BPETokenizer"]

_CACHE_LIMIT = 1 << 17  # pieces remembered per tokenizer before the cache is cleared


def _validate(tok: BPETokenizer) -> None:
    ids: dict[bytes, int] = {}
    for i, t in enumerate(tok.tokens):
        if not isinstance(t, bytes) or not t:
            raise ValueError(f"BPETokenizer.tokens[{i}] must be a non-empty bytes string, got {t!r}")
        if t in ids:
            raise ValueError(f"BPETokenizer.tokens[{i}] = {t!r} repeats tokens[{ids[t]}]; each token needs one id")
        ids[t] = i
    missing = [b for b in range(256) if bytes([b]) not in ids]
    if missing:
        raise ValueError(
            f"BPETokenizer.tokens lacks the single byte(s) {', '.join(f'0x{b:02x}' for b in missing[:8])}"
            f"{' ...' if len(missing) > 8 else ''}; a byte-level vocabulary needs all 256"
        )
    for r, (a, b) in enumerate(tok.merges):
        for part in (a, b, a + b):
            if part not in ids:
                raise ValueError(f"BPETokenizer.merges[{r}] = ({a!r}, {b!r}): {part!r} is not in the vocabulary")
    for s in tok.special_tokens:
        if not isinstance(s, str) or s.encode("utf-8") not in ids:
            raise ValueError(f"special token {s!r} is not in the vocabulary")
    object.__setattr__(tok, "_ids", ids)


@attrs.frozen
class BPETokenizer:
    """A byte-level BPE tokenizer: ``tokens[i]`` is the bytes of id ``i``, ``merges`` the learned
    byte pairs in priority order, ``special_tokens`` the vocabulary entries matched whole."""

    tokens: tuple[bytes, ...] = attrs.field(converter=_checks.as_tuple)
    merges: tuple[tuple[bytes, bytes], ...] = attrs.field(converter=lambda m: tuple(tuple(p) for p in m))
    special_tokens: tuple[str, ...] = attrs.field(default=(), converter=_checks.as_tuple)
    pattern: str = attrs.field(default=GPT2_PATTERN)
    _ids: dict = attrs.field(init=False, eq=False, repr=False)
    _ranks: dict = attrs.field(init=False, eq=False, repr=False)
    _split: Any = attrs.field(init=False, eq=False, repr=False)  # a compiled `regex` pattern
    _special_split: re.Pattern[str] | None = attrs.field(init=False, eq=False, repr=False)
    _cache: dict = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        _validate(self)
        ids = self._ids
        ranks = {(ids[a], ids[b]): (r, ids[a + b]) for r, (a, b) in reversed(list(enumerate(self.merges)))}
        split = compile_pattern(self.pattern)
        specials = sorted(self.special_tokens, key=len, reverse=True)  # longest match first
        special_split = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        for name, value in [("_ranks", ranks), ("_split", split), ("_special_split", special_split), ("_cache", {})]:
            object.__setattr__(self, name, value)

    # --- building ---------------------------------------------------------------------------

    @classmethod
    def train(
        cls, text: str, vocab_size: int, *, special_tokens=(), min_frequency: int = 2, pattern: str = GPT2_PATTERN
    ) -> BPETokenizer:
        """Learn merges on ``text`` until the vocabulary (256 bytes + merges + special tokens)
        has ``vocab_size`` tokens, or no pair of tokens occurs ``min_frequency`` times."""
        if not isinstance(text, str):
            raise TypeError(f"BPETokenizer.train expects a str, got {type(text).__name__}")
        special_tokens = tuple(special_tokens)
        for s in special_tokens:
            if not isinstance(s, str) or len(s.encode("utf-8")) < 2 or special_tokens.count(s) > 1:
                raise ValueError(
                    f"special_tokens must be distinct strings of two or more bytes (a single "
                    f"byte is already a token), got {special_tokens!r}"
                )
        floor = 256 + len(special_tokens)
        _checks.integer(
            vocab_size, "vocab_size", floor, hint=f" (256 byte tokens + {len(special_tokens)} special tokens)"
        )
        _checks.integer(min_frequency, "min_frequency", 1)
        split = compile_pattern(pattern)
        chunks = re.split("|".join(map(re.escape, special_tokens)), text) if special_tokens else [text]
        counts = Counter(piece for chunk in chunks for piece in split.findall(chunk))
        word_counts = {w.encode("utf-8"): c for w, c in counts.items()}
        merges = learn_merges(word_counts, int(vocab_size) - floor, min_frequency)
        tokens = [bytes([b]) for b in range(256)] + [a + b for a, b in merges]
        tokens += [s.encode("utf-8") for s in special_tokens]
        return cls(tokens, merges, special_tokens, pattern)

    @classmethod
    def from_gpt2_files(cls, vocab_path, merges_path, special_tokens=None) -> BPETokenizer:
        """GPT-2's tokenizer from ``encoder.json`` + ``vocab.bpe`` (Hugging Face: ``vocab.json`` +
        ``merges.txt``). ``special_tokens`` defaults to ``<|endoftext|>`` when the vocabulary has it."""
        tokens, merges = read_gpt2_files(vocab_path, merges_path)
        if special_tokens is None:
            special_tokens = ("<|endoftext|>",) if b"<|endoftext|>" in tokens else ()
        try:
            return cls(tokens, merges, special_tokens)
        except ValueError as e:
            raise TokenizerFileError(f"{vocab_path} + {merges_path}: {e}") from None

    def save_gpt2_files(self, vocab_path, merges_path) -> None:
        """Write ``encoder.json``/``vocab.json`` + ``vocab.bpe``/``merges.txt`` (GPT-2's formats)."""
        if self.pattern != GPT2_PATTERN:
            raise ValueError(
                "GPT-2's file format implies GPT-2's pre-tokenisation pattern; this tokenizer uses another"
            )
        write_gpt2_files(self.tokens, self.merges, vocab_path, merges_path)

    # --- using ------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def special_ids(self) -> dict[str, int]:
        """Each special token's id (``{"<|endoftext|>": 50256}`` for GPT-2)."""
        return {s: self._ids[s.encode("utf-8")] for s in self.special_tokens}

    def _piece_ids(self, piece: str) -> tuple[int, ...]:
        """The ids of one pre-tokenised piece: its bytes, merged lowest rank first (cached)."""
        ids = self._cache.get(piece)
        if ids is None:
            ids = self._merge(piece.encode("utf-8"))
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[piece] = ids
        return ids

    def _merge(self, data: bytes) -> tuple[int, ...]:
        """GPT-2's merge loop in O(n log n): a heap of (rank, position) over a linked list.

        Pops pairs lowest rank first, equal ranks left to right, which is GPT-2's "merge the
        best pair everywhere, then repeat" whenever a merge ranks after the merges that make
        its parts (true of every trained merge list).
        """
        ids, ranks = self._ids, self._ranks
        sym = [ids[bytes([b])] for b in data]
        n = len(sym)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        heap = [(ranks[p][0], i) for i, p in enumerate(itertools.pairwise(sym)) if p in ranks]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = nxt[i] if sym[i] is not None else n
            if j >= n or ranks.get((sym[i], sym[j]), (None,))[0] != rank:
                continue  # stale: a neighbour was merged since
            sym[i], sym[j] = ranks[sym[i], sym[j]][1], None
            nxt[i] = nxt[j]
            if nxt[i] < n:
                prv[nxt[i]] = i
            for left, right in ((prv[i], i), (i, nxt[i])):
                if left >= 0 and right < n and (sym[left], sym[right]) in ranks:
                    heapq.heappush(heap, (ranks[sym[left], sym[right]][0], left))
        return tuple(s for s in sym if s is not None)

    def encode(self, text: str, allow_special: bool = True) -> np.ndarray:
        """The token ids of ``text``, int32. Special tokens in the text become their ids unless
        ``allow_special=False``, which encodes them as ordinary text."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        chunks = self._special_split.split(text) if allow_special and self._special_split else [text]
        out: list[int] = []
        for k, chunk in enumerate(chunks):
            if k % 2:  # odd chunks are the special tokens matched
                out.append(self._ids[chunk.encode("utf-8")])
                continue
            try:
                for piece in self._split.findall(chunk):
                    out.extend(self._piece_ids(piece))
            except UnicodeEncodeError as e:
                raise ValueError(
                    f"text holds a lone surrogate {e.object[e.start]!r} that has no UTF-8 "
                    f"encoding, so it cannot be tokenized"
                ) from None
        return np.array(out, dtype=np.int32)

    def decode(self, ids) -> str:
        """The text of ``ids``; byte sequences that are not valid UTF-8 (possible for arbitrary
        ids, never for the output of :meth:`encode`) decode to U+FFFD, as in GPT-2."""
        ids = decodable_ids(ids, self.vocab_size)
        tokens = self.tokens
        return b"".join([tokens[i] for i in ids.tolist()]).decode("utf-8", errors="replace")

    # --- saving -----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """The tokenizer as a JSON-ready dict (tokens and merges written as GPT-2's files write them)."""
        return {
            **header("bpe"),
            "pattern": self.pattern,
            "special_tokens": list(self.special_tokens),
            "tokens": [token_to_text(t) for t in self.tokens],
            "merges": [[token_to_text(a), token_to_text(b)] for a, b in self.merges],
        }

    @classmethod
    def from_dict(cls, data: dict, where: str = "tokenizer") -> BPETokenizer:
        """The tokenizer a :meth:`to_dict` dict describes; ``where`` names it in errors."""
        check_header(data, where, "bpe")
        tokens = [
            text_to_token(_text(t, f"{where}: tokens[{i}]"), f"{where}: tokens[{i}]")
            for i, t in enumerate(get_field(data, "tokens", list, where))
        ]
        merges = []
        for r, m in enumerate(get_field(data, "merges", list, where)):
            if not isinstance(m, list) or len(m) != 2:
                raise TokenizerFileError(f"{where}: merges[{r}] should be a pair [left, right], got {m!r}")
            merges.append(tuple(text_to_token(_text(t, f"{where}: merges[{r}]"), f"{where}: merges[{r}]") for t in m))
        special = get_field(data, "special_tokens", list, where)
        try:
            return cls(
                tokens,
                merges,
                [_text(s, f"{where}: special_tokens") for s in special],
                get_field(data, "pattern", str, where),
            )
        except ValueError as e:
            raise TokenizerFileError(f"{where}: {e}") from None

    def save(self, path) -> None:
        """Write the tokenizer as JSON to ``path`` (atomically: temp file, fsync, rename)."""
        atomic_write_text(path, to_json(self.to_dict()))

    @classmethod
    def load(cls, path) -> BPETokenizer:
        """The tokenizer :meth:`save` wrote to ``path``."""
        return cls.from_dict(read_json(path), str(path))


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise TokenizerFileError(f"{where}: expected a string, got {type(value).__name__}")
    return value
