"""Reading and writing tokenizer files: JSON read with errors that say what is wrong (writes are atomic)."""

from __future__ import annotations

import json
import os
from typing import Any

from .. import guards
from ..files import atomic_write_text  # noqa: F401  (re-exported for the tokenizer modules)

FORMAT = "lt-tokenizer"
VERSION = 1
MAX_FILE = 256 * 2**20  # tokenizer files of the largest vocabularies are tens of MB; more means corrupt


class TokenizerFileError(ValueError):
    """A tokenizer file (or dict) is malformed: the message names the file, the field and the fix."""


def read_json(path, what: str = "tokenizer file"):
    """The parsed JSON at ``path``, read by the shared guards (a regular file of at most
    :data:`MAX_FILE` bytes: a FIFO would block); a missing file or invalid JSON raises naming the path."""
    path = os.fspath(path)
    try:
        data = guards.read_bytes(path, f"a JSON {what}", MAX_FILE, error=TokenizerFileError)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerFileError(
            f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}); expected a JSON {what}"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerFileError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); expected a JSON {what}"
        ) from None
    except RecursionError:
        raise TokenizerFileError(f"{path}: JSON nested too deeply to be a {what}") from None


def header(type_: str) -> dict:
    """The first fields of every lt tokenizer file: ``format``, ``version`` and ``type``."""
    return {"format": FORMAT, "version": VERSION, "type": type_}


def to_json(data: dict) -> str:
    """JSON text for a tokenizer dict (UTF-8 characters kept readable, one item a line)."""
    return json.dumps(data, ensure_ascii=False, indent=1) + "\n"


def check_header(data, where: str, expected_type: str | None = None) -> Any:
    """The ``type`` of an lt tokenizer dict, after checking ``format`` and ``version`` (any JSON
    value, maybe None, unless ``expected_type`` is given: the caller checks it)."""
    if not isinstance(data, dict):
        raise TokenizerFileError(f"{where}: expected a JSON object (an lt tokenizer), got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise TokenizerFileError(
            f'{where}: not an lt tokenizer file (expected "format": "{FORMAT}", '
            f"got {data.get('format')!r}); for GPT-2's encoder.json + vocab.bpe "
            f"use BPETokenizer.from_gpt2_files"
        )
    if data.get("version") != VERSION:
        raise TokenizerFileError(
            f"{where}: unsupported lt tokenizer version {data.get('version')!r} (this lt reads version {VERSION})"
        )
    type_ = data.get("type")
    if expected_type is not None and type_ != expected_type:
        raise TokenizerFileError(
            f"{where}: holds a {type_!r} tokenizer, not {expected_type!r}; lt.tokenizers.load(path) loads any type"
        )
    return type_


def get_field(data: dict, name: str, kind: type, where: str):
    """``data[name]``, checked to be a ``kind``; a missing or mistyped field raises naming it."""
    if name not in data:
        raise TokenizerFileError(f"{where}: missing field {name!r}")
    value = data[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise TokenizerFileError(f"{where}: field {name!r} should be a {kind.__name__}, got {type(value).__name__}")
    return value
