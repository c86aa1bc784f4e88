"""GPT-2's byte-level conventions and its tokenizer files.

GPT-2 splits text with a regular expression (:data:`GPT2_PATTERN`: contractions, letter
runs, digit runs, punctuation runs, whitespace), then runs BPE over each piece's UTF-8
bytes. Its files store byte strings as printable text through :func:`bytes_to_unicode`:
bytes that print (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for themselves, the rest
(space, control bytes, ...) are shifted to code points from U+0100 up, so a space reads
``Ġ``. ``encoder.json`` (Hugging Face: ``vocab.json``) maps each token's text to its id;
``vocab.bpe`` (``merges.txt``) lists the merges, one ``left right`` pair a line, in
priority order, after a ``#version`` line.
"""

from __future__ import annotations

import functools
import json
import os

from .. import _checks, guards
from ._files import MAX_FILE, TokenizerFileError, atomic_write_text, read_json

__all__ = [
    "GPT2_PATTERN",
    "KNOWN_PATTERNS",
    "compile_pattern",
    "bytes_to_unicode",
    "token_to_text",
    "text_to_token",
    "read_gpt2_files",
    "write_gpt2_files",
]

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The pre-tokenisation patterns lt runs. A pattern is code: one read from a file could
# backtrack for hours on a short text (ReDoS), so only these are ever compiled.
KNOWN_PATTERNS = {"gpt2": GPT2_PATTERN}


def compile_pattern(pattern: str):
    """``pattern`` compiled by the ``regex`` package (needed for ``\\p{L}``, which ``re`` lacks).

    Only the patterns in :data:`KNOWN_PATTERNS` are accepted (a ValueError names them): a
    tokenizer file's pattern is never trusted to be a safe regular expression."""
    if pattern not in KNOWN_PATTERNS.values():
        shown = pattern if not isinstance(pattern, str) or len(pattern) <= 80 else pattern[:80] + "..."
        raise ValueError(
            f"BPE pre-tokenisation pattern {shown!r} is not one lt knows; accepted: "
            f"{', '.join(KNOWN_PATTERNS)}'s (lt.tokenizers.GPT2_PATTERN)"
        )
    try:
        import regex
    except ImportError:
        raise ImportError(
            'byte-level BPE needs the "regex" package for its pre-tokenisation pattern: '
            'pip install "lt[text]"  (or: pip install regex)'
        ) from None
    try:
        return regex.compile(pattern)
    except regex.error as e:
        raise ValueError(f"BPE pre-tokenisation pattern is not a valid regular expression: {e}") from None


@functools.cache
def bytes_to_unicode() -> tuple[str, ...]:
    """The printable character that stands for each byte value 0..255 in GPT-2's files."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return tuple(chr(b) if b in printable else chr(next(shifted)) for b in range(256))


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in enumerate(bytes_to_unicode())}


def token_to_text(token: bytes) -> str:
    """A token's bytes as GPT-2's files write them (``b" the"`` -> ``"Ġthe"``)."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def text_to_token(text: str, where: str = "token") -> bytes:
    """The bytes a GPT-2 file's token text stands for (``"Ġthe"`` -> ``b" the"``)."""
    table = _unicode_to_byte()
    try:
        return bytes(table[c] for c in text)
    except KeyError as e:
        raise TokenizerFileError(
            f"{where}: {text!r} holds {e.args[0]!r} (U+{ord(e.args[0]):04X}), which is "
            f"not one of the 256 byte characters of GPT-2's byte-level files"
        ) from None


def read_gpt2_files(vocab_path, merges_path) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """``(tokens, merges)`` from ``encoder.json``/``vocab.json`` and ``vocab.bpe``/``merges.txt``:
    ``tokens[i]`` is the byte string of id ``i``; ``merges`` are byte pairs in priority order."""
    vocab = read_json(vocab_path, "GPT-2 vocabulary (encoder.json / vocab.json)")
    where = os.fspath(vocab_path)
    if not isinstance(vocab, dict):
        raise TokenizerFileError(
            f"{where}: expected a JSON object mapping token text to id, got {type(vocab).__name__}"
        )
    tokens: list = [None] * len(vocab)
    for text, i in vocab.items():
        if not _checks.is_int(i) or not 0 <= i < len(vocab):
            raise TokenizerFileError(
                f"{where}: token {text!r} has id {i!r}; ids must be the integers 0..{len(vocab) - 1}, one per token"
            )
        if tokens[i] is not None:
            raise TokenizerFileError(
                f"{where}: id {i} is given to two tokens; ids must be the integers 0..{len(vocab) - 1}, one per token"
            )
        tokens[i] = text_to_token(text, where)
    return tokens, _read_merges(merges_path)


def _read_merges(path) -> list[tuple[bytes, bytes]]:
    where = os.fspath(path)
    try:
        data = guards.read_bytes(where, "GPT-2 merges (vocab.bpe / merges.txt)", MAX_FILE, error=TokenizerFileError)
        lines = data.decode("utf-8").split("\n")  # (a regular file of bounded size: a FIFO would block)
    except FileNotFoundError:
        raise FileNotFoundError(f"GPT-2 merges file (vocab.bpe / merges.txt) not found: {where}") from None
    except UnicodeDecodeError as e:
        raise TokenizerFileError(
            f"{where}: not a UTF-8 text file ({e.reason} at byte {e.start}); "
            f"expected GPT-2 merges (vocab.bpe / merges.txt)"
        ) from None
    merges = []
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if not line or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise TokenizerFileError(
                f"{where}, line {number}: expected a merge 'left right' (two token "
                f"texts separated by one space), got {line!r}"
            )
        merges.append(
            (text_to_token(parts[0], f"{where}, line {number}"), text_to_token(parts[1], f"{where}, line {number}"))
        )
    return merges


def write_gpt2_files(tokens, merges, vocab_path, merges_path) -> None:
    """Write ``tokens`` (id -> bytes) and ``merges`` in GPT-2's file formats, atomically."""
    vocab = {token_to_text(t): i for i, t in enumerate(tokens)}
    atomic_write_text(vocab_path, json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{token_to_text(a)} {token_to_text(b)}" for a, b in merges]
    atomic_write_text(merges_path, "\n".join(lines) + "\n")
