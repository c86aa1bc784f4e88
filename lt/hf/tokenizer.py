"""The tokenizer of a Hugging Face model directory, with lt's tokenizer interface.

``load_tokenizer(path)`` gives an object with ``encode(text) -> ids``, ``decode(ids) -> text``
and ``vocab_size``, as :class:`lt.tokenizers.CharTokenizer` and ``BPETokenizer`` have:

- GPT-2's own files (``encoder.json`` + ``vocab.bpe``; or ``vocab.json`` + ``merges.txt`` in
  a ``gpt2`` directory, or where there is no ``tokenizer.json``) load as lt's byte-level
  :class:`~lt.tokenizers.BPETokenizer`: no dependency beyond lt's ``text`` extra.
- Any other ``tokenizer.json`` (Llama, Qwen2, Mistral, ...) loads as :class:`HFTokenizer`,
  a thin wrapper of Hugging Face's ``tokenizers`` package (``pip install 'lt[hf]'``), which
  implements the many normalisers, pre-tokenisers and models those files describe.

``encode`` returns the ids of the text itself, as lt's tokenizers do; the special tokens
a model's post-processor adds (Llama's ``<s>``) come with ``add_special_tokens=True``.

The files are input: each must lie inside the model directory (links followed, as for the
weights: :func:`lt.hf.files.model_file`), and a Rust panic inside ``tokenizers`` (a split
pattern that backtracks past the regex engine's limit panics on some texts; pyo3 raises it as
``PanicException``, a BaseException that ``except Exception`` misses) becomes a
:class:`~lt.tokenizers.TokenizerFileError` (a ValueError) naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import atomic_write_text
from ..tokenizers import BPETokenizer, TokenizerFileError, decodable_ids
from .chat_template import load_chat_template
from .files import model_file, read_bounded, read_json

__all__ = ["HFTokenizer", "load_tokenizer"]

_MAX_TOKENIZER = 256 * 2**20  # released tokenizer.json files are under 40 MB
_GPT2_FILES = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))


def _tokenizers_package():
    try:
        import tokenizers
    except ImportError:
        raise ImportError(
            "reading a tokenizer.json needs Hugging Face's `tokenizers` package: "
            "pip install 'lt[hf]' (or pip install tokenizers)"
        ) from None
    return tokenizers


def _is_panic(e: BaseException) -> bool:
    """Whether ``e`` is pyo3's ``PanicException``: a Rust panic, raised as a BaseException."""
    return type(e).__name__ == "PanicException"


def _panic_error(where: str, on: str, e: BaseException) -> TokenizerFileError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return TokenizerFileError(
        f"{where}: the tokenizers package failed on {on} ({first}); the file's patterns may backtrack too far"
    )


class HFTokenizer:
    """lt's tokenizer interface over a ``tokenizers.Tokenizer`` (see :func:`load_tokenizer`)."""

    def __init__(self, tokenizer, where: str = "tokenizer", chat_template=None):
        self._tok = tokenizer
        self.where = where
        self.chat_template = chat_template  # a ChatTemplate (lt.hf.chat_template) or None

    @classmethod
    def from_file(cls, path) -> HFTokenizer:
        """The tokenizer in a ``tokenizer.json`` (a regular file of bounded size)."""
        package = _tokenizers_package()
        data = read_bounded(Path(path), "the tokenizer (tokenizer.json)", _MAX_TOKENIZER)
        try:
            text = data.decode("utf-8")
            return cls(package.Tokenizer.from_str(text), str(path))
        except UnicodeDecodeError as e:
            raise TokenizerFileError(
                f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}); expected a Hugging Face tokenizer.json"
            ) from None
        except BaseException as e:  # the Rust parser raises a plain Exception, or panics
            if not isinstance(e, Exception) and not _is_panic(e):
                raise
            raise TokenizerFileError(f"{path}: not a tokenizer.json the `tokenizers` package can read ({e})") from None

    @property
    def vocab_size(self) -> int:
        """Ids are ``0 .. vocab_size - 1`` (added tokens included)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> dict[str, int]:
        """Each special token's id (``{"<s>": 1, "</s>": 2, ...}``)."""
        return {t.content: i for i, t in sorted(self._tok.get_added_tokens_decoder().items()) if t.special}

    def encode(self, text: str, add_special_tokens: bool = False) -> np.ndarray:
        """The token ids of ``text``, int32; ``add_special_tokens`` adds the post-processor's
        (e.g. a leading bos)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        try:
            ids = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        except BaseException as e:
            if not _is_panic(e):
                raise
            raise _panic_error(self.where, "this text", e) from None
        return np.array(ids, dtype=np.int32)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """The text of ``ids`` (each in ``[0, vocab_size)``, else ValueError naming the first bad one)."""
        ids = decodable_ids(ids, self.vocab_size)
        try:
            return self._tok.decode(ids.tolist(), skip_special_tokens=skip_special_tokens)
        except BaseException as e:
            if not _is_panic(e):
                raise
            raise _panic_error(self.where, "these ids", e) from None

    def apply_chat_template(self, messages, *, add_generation_prompt: bool = True, tokenize: bool = True, **extra):
        """``messages`` rendered by the model's chat template (see :mod:`lt.hf.chat_template`):
        the prompt's ids (int32), or its text with ``tokenize=False``."""
        if self.chat_template is None:
            raise ValueError(
                f"{self.where}: this tokenizer has no chat template (tokenizer_config.json has no "
                "chat_template); give one, e.g. lt chat --chat-template FILE"
            )
        text = self.chat_template.render(messages, add_generation_prompt=add_generation_prompt, **extra)
        return self.encode(text) if tokenize else text

    def to_json(self) -> str:
        """The tokenizer.json text (Hugging Face's format)."""
        return self._tok.to_str()

    def save(self, path) -> None:
        """Write the tokenizer.json (Hugging Face's format) to ``path``, atomically."""
        atomic_write_text(path, self.to_json())

    def __repr__(self) -> str:
        return f"HFTokenizer({self.where!r}, vocab_size={self.vocab_size})"


def _model_type(path: Path) -> str | None:
    if not (path / "config.json").exists():
        return None
    data = read_json(model_file(path, "config.json"), "the model config (config.json)")
    return data.get("model_type") if isinstance(data, dict) else None


def load_tokenizer(path):
    """The tokenizer of a Hugging Face model directory (or of one ``tokenizer.json`` file).

    GPT-2's ``encoder.json`` + ``vocab.bpe`` (or ``vocab.json`` + ``merges.txt`` where
    config.json says ``gpt2`` or there is no tokenizer.json) give lt's
    :class:`~lt.tokenizers.BPETokenizer`; otherwise ``tokenizer.json`` gives an
    :class:`HFTokenizer` (needs ``pip install 'lt[hf]'``).
    """
    path = Path(path)
    if path.is_file():
        return HFTokenizer.from_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no tokenizer at {path}: expected a model directory or a tokenizer.json")
    has_json = (path / "tokenizer.json").exists()
    for vocab, merges in _GPT2_FILES:
        if (
            (path / vocab).exists()
            and (path / merges).exists()
            and (vocab == "encoder.json" or not has_json or _model_type(path) == "gpt2")
        ):
            return BPETokenizer.from_gpt2_files(model_file(path, vocab), model_file(path, merges))
    if has_json:
        tokenizer = HFTokenizer.from_file(model_file(path, "tokenizer.json"))
        tokenizer.chat_template = load_chat_template(path)
        return tokenizer
    found = sorted(p.name for p in path.iterdir())
    raise FileNotFoundError(
        f"{path} has no tokenizer.json, encoder.json + vocab.bpe, or vocab.json + merges.txt (found {found})"
    )
