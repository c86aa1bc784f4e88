"""lt's tokenizers as Hugging Face files: ``tokenizer.json`` + ``tokenizer_config.json``.

What :func:`lt.hf.to_hf` writes beside the weights when given a tokenizer, so that
``transformers.AutoTokenizer.from_pretrained(path)`` encodes every text to lt's ids:

- :class:`~lt.tokenizers.BPETokenizer` (trained by lt, or GPT-2's own files): a ``BPE`` model
  with the same vocabulary (tokens spelled as GPT-2's files spell bytes) and merges in the same
  priority order, GPT-2's ``ByteLevel`` pre-tokenizer (its regular expression is lt's
  :data:`~lt.tokenizers.GPT2_PATTERN`) and decoder, the special tokens as added tokens matched
  whole before the split, as lt matches them.
- :class:`~lt.tokenizers.CharTokenizer`: a ``WordLevel`` model over single characters after a
  split into every character (``[\\s\\S]``), decoded by concatenation. Its unknown token is a
  string of several characters, so never in the vocabulary: a character lt would refuse is
  refused by ``tokenizers`` too ("Missing [UNK] token"), never dropped or given a made-up id. A
  lone surrogate cannot be written (tokenizer.json is UTF-8) and is refused.
- :class:`~lt.hf.HFTokenizer` (a run fine-tuned with ``--init-hf``): its own tokenizer.json.

Written without the ``tokenizers`` package: the files are plain JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..files import atomic_write_text
from ..tokenizers import GPT2_PATTERN, BPETokenizer, CharTokenizer
from ..tokenizers.gpt2 import token_to_text
from .tokenizer import HFTokenizer

__all__ = ["tokenizer_files", "write_tokenizer"]

_UNKNOWN = "<unk>"  # several characters: never one of a CharTokenizer's
_BYTE_LEVEL = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def _added(content: str, i: int) -> dict:
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}  # fmt: skip


def _document(added: list, pre_tokenizer: dict, decoder: dict, model: dict, post=None) -> dict:
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": pre_tokenizer, "post_processor": post, "decoder": decoder, "model": model}  # fmt: skip


def _bpe_json(tok: BPETokenizer) -> dict:
    if tok.pattern != GPT2_PATTERN:  # lt knows no other pattern today; refuse one it may learn
        raise ValueError("to_hf writes byte-level BPE with GPT-2's pre-tokenisation pattern only")
    vocab = {token_to_text(t): i for i, t in enumerate(tok.tokens)}
    for s, i in tok.special_ids.items():  # matched whole, spelled as the text holds them
        vocab.pop(token_to_text(tok.tokens[i]))
        vocab[s] = i
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
             "vocab": vocab, "merges": [f"{token_to_text(a)} {token_to_text(b)}" for a, b in tok.merges]}  # fmt: skip
    level = {"type": "ByteLevel", **_BYTE_LEVEL}
    added = [_added(s, i) for s, i in sorted(tok.special_ids.items(), key=lambda kv: kv[1])]
    return _document(added, level, level, model, post={**level, "trim_offsets": False})


def _char_json(tok: CharTokenizer) -> dict:
    for c in tok.chars:
        if 0xD800 <= ord(c) <= 0xDFFF:
            raise ValueError(
                f"the CharTokenizer holds U+{ord(c):04X}, a lone surrogate: tokenizer.json is UTF-8 text, "
                "which cannot hold it; fit the tokenizer on text without lone surrogates"
            )
    split = {"type": "Split", "pattern": {"Regex": r"[\s\S]"}, "behavior": "Isolated", "invert": False}
    model = {"type": "WordLevel", "vocab": {c: i for i, c in enumerate(tok.chars)}, "unk_token": _UNKNOWN}
    return _document([], split, {"type": "Fuse"}, model)


def tokenizer_files(tokenizer, max_len: int) -> dict[str, str]:
    """``{"tokenizer.json": text, "tokenizer_config.json": text}`` for ``tokenizer`` (see the
    module's docstring); ``max_len`` is the model's context (``model_max_length``)."""
    config: dict = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": int(max_len),
                    "clean_up_tokenization_spaces": False}  # fmt: skip
    if isinstance(tokenizer, BPETokenizer):
        document = json.dumps(_bpe_json(tokenizer), ensure_ascii=False)
        if "<|endoftext|>" in tokenizer.special_tokens:  # GPT-2's end of text
            config.update(bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    elif isinstance(tokenizer, CharTokenizer):
        document = json.dumps(_char_json(tokenizer), ensure_ascii=False)
    elif isinstance(tokenizer, HFTokenizer):
        document = tokenizer.to_json()
    else:
        raise TypeError(
            f"to_hf writes an lt.CharTokenizer, lt.BPETokenizer or lt.hf.HFTokenizer, got tokenizer of type "
            f"{type(tokenizer).__name__}"
        )
    return {"tokenizer.json": document, "tokenizer_config.json": json.dumps(config, indent=2) + "\n"}


def write_tokenizer(files: dict[str, str], path) -> None:
    """Write :func:`tokenizer_files`' files into the folder ``path``, each atomically."""
    for name, text in files.items():
        atomic_write_text(Path(path) / name, text)
