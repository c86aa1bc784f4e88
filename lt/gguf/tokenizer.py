"""lt's tokenizers as GGUF metadata (``tokenizer.ggml.*``), and back.

llama.cpp's byte-level BPE (``tokenizer.ggml.model = "gpt2"``) holds what lt's tokenizers need:

- ``tokens``: each id's text as GPT-2's files spell bytes (a space is ``Ġ``); ``token_type``:
  1 normal, 3 control (a special token, matched whole in the text, spelled as itself),
  5 unused (the ``[PAD<i>]`` entries that fill a model's table past the tokenizer's ids);
- ``merges``: ``"left right"`` in priority order; ``pre = "gpt-2"``: GPT-2's split pattern, lt's
  :data:`~lt.tokenizers.GPT2_PATTERN`; ``bos_token_id`` / ``eos_token_id``: ``<|endoftext|>``.

A :class:`~lt.tokenizers.BPETokenizer` is written as it is. A
:class:`~lt.tokenizers.CharTokenizer` becomes a BPE with no byte tokens: each character is a
token, and the merges join the UTF-8 bytes of every multi-byte character (merges join texts, so
the bytes between need no ids); a text splits between characters only, so every character comes
out as its own id and nothing else. lt adds no BOS token (``add_bos_token = false``). Where there
are no merges, one that never applies stands in (llama.cpp requires the list).

Reading gives back a BPETokenizer where all 256 byte tokens are present, a CharTokenizer where
every token is one character, and None (with the reason) for what lt cannot run: SentencePiece
(``llama``) files, and byte-level BPE with another split pattern (``pre`` ``llama-bpe``,
``qwen2``, ``smollm``, ...).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..hf import HFTokenizer
from ..tokenizers import GPT2_PATTERN, BPETokenizer, CharTokenizer
from ..tokenizers.gpt2 import text_to_token, token_to_text
from .reader import GGUFError

__all__ = ["tokenizer_metadata", "tokenizer_from_metadata"]

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
_EOT = "<|endoftext|>"
# llama.cpp requires a merges list and the gguf writer refuses an empty array: where there are no
# merges (an ASCII CharTokenizer, a BPE of 256 bytes) this one stands in. Its left part is two
# newlines, a symbol only a merge could make, and none does: it never applies.
_NEVER = "ĊĊ Ċ"


def _char_merges(chars) -> list[str]:
    """The merges that join each multi-byte character's bytes, left to right, each once."""
    merges: dict[str, None] = {}
    for c in chars:
        texts = [token_to_text(bytes([b])) for b in c.encode("utf-8")]
        for k in range(1, len(texts)):
            merges["".join(texts[:k]) + " " + texts[k]] = None
    return list(merges)


def tokenizer_metadata(tokenizer, vocab_size: int) -> dict[str, Any]:
    """``tokenizer.ggml.*`` keys for ``tokenizer`` (see the module's docstring), its token list
    padded to ``vocab_size``; a tokenizer GGUF cannot hold is refused (ValueError / TypeError)."""
    special: dict[int, str] = {}
    if isinstance(tokenizer, BPETokenizer):
        if tokenizer.pattern != GPT2_PATTERN:
            raise ValueError("GGUF export writes byte-level BPE with GPT-2's split pattern only")
        special = {i: s for s, i in tokenizer.special_ids.items()}
        tokens = [special.get(i) or token_to_text(t) for i, t in enumerate(tokenizer.tokens)]
        merges = [f"{token_to_text(a)} {token_to_text(b)}" for a, b in tokenizer.merges]
    elif isinstance(tokenizer, CharTokenizer):
        for c in tokenizer.chars:
            if 0xD800 <= ord(c) <= 0xDFFF:
                raise ValueError(
                    f"the CharTokenizer holds U+{ord(c):04X}, a lone surrogate, which has no UTF-8 bytes and so "
                    "cannot be a GGUF token; fit the tokenizer on text without lone surrogates"
                )
        tokens = [token_to_text(c.encode("utf-8")) for c in tokenizer.chars]
        merges = _char_merges(tokenizer.chars)
    elif isinstance(tokenizer, HFTokenizer):
        raise ValueError(
            f"{tokenizer.where}: a Hugging Face tokenizer.json is not written to GGUF by lt (llama.cpp names its split "
            "pattern, which lt cannot tell from the file); convert the original model with llama.cpp's "
            "convert_hf_to_gguf.py, or export without a tokenizer"
        )
    else:
        raise TypeError(f"GGUF export writes an lt.CharTokenizer or lt.BPETokenizer, got a {type(tokenizer).__name__}")
    if len(tokens) > vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokens)} tokens but the model's vocab_size {vocab_size}: ids past the "
            "embedding table; give the tokenizer the model was trained with"
        )
    types = [CONTROL if i in special else NORMAL for i in range(len(tokens))]
    pad = range(len(tokens), vocab_size)
    out: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": tokens + [f"[PAD{i}]" for i in pad],
        "tokenizer.ggml.token_type": types + [UNUSED] * len(pad),
        "tokenizer.ggml.merges": merges or [_NEVER],
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_eos_token": False,
    }
    if _EOT in getattr(tokenizer, "special_tokens", ()):
        out["tokenizer.ggml.bos_token_id"] = out["tokenizer.ggml.eos_token_id"] = tokenizer.special_ids[_EOT]
    return out


def _strings(meta: dict, key: str, where: str) -> list[str]:
    value = meta.get(key, [])
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise GGUFError(f"{where}: metadata key {key} must be an array of strings")
    return value


def tokenizer_from_metadata(meta: dict, where: str):
    """``(tokenizer, None)``, or ``(None, why)`` for a tokenizer lt cannot run (or none in the file);
    a malformed one raises :class:`GGUFError` naming the key."""
    model = meta.get("tokenizer.ggml.model")
    if model is None:
        return None, "the file has no tokenizer (no tokenizer.ggml.model)"
    pre = meta.get("tokenizer.ggml.pre", "default")
    if model != "gpt2" or pre != "gpt-2":
        return None, (
            f"its tokenizer (tokenizer.ggml.model {model!r}, pre {pre!r}) is not one lt runs: lt runs byte-level "
            "BPE with GPT-2's split pattern (model 'gpt2', pre 'gpt-2') and character tokenizers"
        )
    tokens = _strings(meta, "tokenizer.ggml.tokens", where)
    kinds = np.asarray(meta.get("tokenizer.ggml.token_type", np.full(len(tokens), NORMAL)))
    if kinds.shape != (len(tokens),) or kinds.dtype.kind not in "iu":
        raise GGUFError(f"{where}: tokenizer.ggml.token_type must be {len(tokens)} integers, one per token")
    n = len(tokens)
    while n and kinds[n - 1] == UNUSED:  # the table's padding past the tokenizer's ids
        n -= 1
    special = [i for i in range(n) if kinds[i] in (CONTROL, USER_DEFINED)]
    try:
        data = [tokens[i].encode("utf-8") if i in special else text_to_token(tokens[i], f"{where}: token {i}")
                for i in range(n)]  # fmt: skip
        present = set(data)
        if all(bytes([b]) in present for b in range(256)):
            merges = []
            lines = _strings(meta, "tokenizer.ggml.merges", where)
            for r, line in enumerate([] if lines == [_NEVER] else lines):
                parts = line.split(" ")
                if len(parts) != 2:
                    raise GGUFError(f"{where}: tokenizer.ggml.merges[{r}] is {line!r}; expected 'left right'")
                merges.append(tuple(text_to_token(p, f"{where}: tokenizer.ggml.merges[{r}]") for p in parts))
            return BPETokenizer(data, merges, [tokens[i] for i in special]), None
        chars = [t.decode("utf-8", errors="replace") for t in data]
        if not special and all(len(c) == 1 and c != "\ufffd" for c in chars):
            return CharTokenizer(chars), None
    except ValueError as e:  # TokenizerFileError is one
        raise GGUFError(f"{where}: its tokenizer is malformed: {e}") from None
    return None, "its byte-level vocabulary lacks some of the 256 byte tokens and is not one of characters"
