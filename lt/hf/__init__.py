"""Hugging Face checkpoints in and out: ``from_hf(path)``, ``to_hf(model, params, path, tokenizer=)``, tokenizers.

A Hugging Face model directory holds ``config.json`` and ``model.safetensors`` (or shards
named by ``model.safetensors.index.json``). Both are read with NumPy alone, through
:mod:`lt.safetensors_io`: no torch, no transformers. ``config.json``'s ``model_type``
picks the family, each one setting of :class:`lt.GPT`:

- ``gpt2`` (:mod:`lt.hf.gpt2`): learned positions, LayerNorm, GELU, biases everywhere;
- ``llama``, ``qwen2``, ``qwen3``, ``mistral`` (:mod:`lt.hf.llama`): RoPE, RMSNorm, SwiGLU,
  grouped-query attention; Qwen2's q/k/v biases; Qwen3's q/k norms; Mistral's sliding window.

Files are input: :mod:`lt.hf.files` bounds the JSON it reads, keeps shards inside the
directory, checks the layer count against the blocks present before building anything,
and every tensor's name, shape and dtype against the config before reading any
(:class:`HFCheckpointError`). Config options whose maths lt does not implement are
refused with the field named. :func:`load_tokenizer` reads the directory's tokenizer.

Where a path is expected, a Hugging Face hub name (``"gpt2"``, ``"Qwen/Qwen2.5-0.5B"``) that
is not a local path is fetched into the hub's cache by :func:`resolve` (:mod:`lt.hf.hub`,
``huggingface_hub`` from the ``hf`` extra; ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` honoured).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import safetensors_io
from ..files import atomic_write_text
from ..nn.gpt import GPT
from . import gpt2, llama
from . import tokenizer_export as _tokenizer_export
from .files import HFCheckpointError, count_blocks, open_weights, read_config, read_params
from .gpt2 import hf_name
from .hub import resolve
from .tokenizer import HFTokenizer
from .tokenizer import load_tokenizer as _load_tokenizer

__all__ = [
    "from_hf",
    "to_hf",
    "gpt_from_config",
    "config_from_gpt",
    "hf_name",
    "HFCheckpointError",
    "MODEL_TYPES",
    "load_tokenizer",
    "HFTokenizer",
    "resolve",
]

_FAMILIES = {t: module for module in (gpt2, llama) for t in module.MODEL_TYPES}
MODEL_TYPES = tuple(_FAMILIES)


def _family(config: dict, where: str):
    model_type = config.get("model_type", "gpt2")
    if not isinstance(model_type, str):
        raise HFCheckpointError(f"{where}: model_type must be a JSON string, got {json.dumps(model_type)[:80]}")
    if model_type not in _FAMILIES:
        raise ValueError(
            f"{where}: model_type is {model_type!r}; lt reads {', '.join(map(repr, MODEL_TYPES))} checkpoints"
        )
    return _FAMILIES[model_type]


def gpt_from_config(config: dict, *, dropout: float | None = None, where: str = "config") -> GPT:
    """The lt GPT a Hugging Face ``config.json`` dict describes (``model_type`` defaults to
    ``gpt2``); refuses options lt cannot compute, naming the field. ``dropout`` overrides
    the config's rate (GPT-2: its pdrop fields, which must agree; Llama family: 0.0)."""
    return _family(config, where).gpt_from_config(config, dropout=dropout, where=where)


def _writer(model: GPT):
    """The family module that writes ``model``: Llama-family for rotary positions, else GPT-2."""
    if not isinstance(model, GPT):
        raise TypeError(f"to_hf needs an lt.GPT, got {type(model).__name__}")
    return llama if model.positional == "rope" else gpt2


def config_from_gpt(model: GPT, dtype=np.float32) -> dict:
    """The ``config.json`` dict of ``model``: a GPT2Config, or a Llama/Qwen2/Qwen3/Mistral config for
    rotary models; refuses settings the family cannot express, naming the field."""
    return _writer(model).config_from_gpt(model, dtype)


def from_hf(path, *, dtype=np.float32, dropout: float | None = None) -> tuple[GPT, object]:
    """``(model, params)`` from a Hugging Face model directory (config.json + safetensors), or
    from a hub name such as ``"gpt2"`` (:func:`resolve`: downloaded once into the hub cache).

    ``model_type`` ``gpt2``, ``llama``, ``qwen2``, ``qwen3`` or ``mistral``. Weights stored as F16,
    BF16, F32 or F64 are converted to ``dtype`` (float32 or float64). Every tensor's
    presence, shape and dtype is checked against the config: a missing, wrong-shaped or
    unexpected tensor raises a ValueError naming it. ``dropout``: see :func:`gpt_from_config`.
    """
    path = resolve(path)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"from_hf: dtype must be float32 or float64, got {dtype}")
    config = read_config(path)
    where = str(path / "config.json")
    fam = _family(config, where)
    model = fam.gpt_from_config(config, dropout=dropout, where=where)
    stored = open_weights(path, fam.PREFIX)
    files = {id(st): st for st, _ in stored.values()}.values()
    try:
        # The spec grows with the layer count: compare it to the blocks present before building it.
        blocks = count_blocks(stored, fam.BLOCKS)
        if model.num_layers > blocks:
            raise HFCheckpointError(
                f"{where}: {fam.LAYERS_FIELD}={model.num_layers}, but the weights hold "
                f"{blocks} blocks ({fam.BLOCKS}.0 ... {fam.BLOCKS}.{blocks - 1})"
            )
        params = read_params(path, model, stored, dtype, fam.sources(model), fam.skip(model), fam.KIND)
    finally:
        for st in files:
            st.close()
    return model, params


def load_tokenizer(path):
    """The tokenizer of a Hugging Face model directory, a ``tokenizer.json`` file, or a hub name
    (:func:`resolve`); see :func:`lt.hf.tokenizer.load_tokenizer`."""
    return _load_tokenizer(resolve(path))


def to_hf(model: GPT, params, path, *, tokenizer=None) -> Path:
    """Write ``model`` and ``params`` as a Hugging Face model directory at ``path``.

    ``config.json`` (GPT-2 for learned positions; Llama, Qwen2, Qwen3 or Mistral for rotary ones,
    whichever computes what ``model`` does) and ``model.safetensors`` (tensors named as
    the family's ``save_pretrained`` names them, in the params' dtype, ``lm_head.weight``
    only for an untied head) are each written atomically; transformers'
    ``AutoModelForCausalLM.from_pretrained(path)`` loads them. Nothing is written for a
    model the family cannot express. Returns ``path``.

    ``tokenizer`` (an lt ``CharTokenizer`` or ``BPETokenizer``, GPT-2's included, or an
    :class:`HFTokenizer`): also ``tokenizer.json`` + ``tokenizer_config.json``, with which
    ``transformers.AutoTokenizer.from_pretrained(path)`` (and :func:`load_tokenizer`) encode
    every text to the same ids (:mod:`lt.hf.tokenizer_export`); one that cannot be written
    faithfully, or with more tokens than the model's vocabulary, is refused before anything is
    written. Without it the directory has no tokenizer: write one there yourself (e.g. GPT-2's
    ``vocab.json`` + ``merges.txt`` with ``BPETokenizer.save_gpt2_files``).
    """
    fam = _writer(model)
    fam.config_from_gpt(model)  # refuse what the family cannot express, first
    model.check_params(params)
    tokenizer_files = None
    if tokenizer is not None:
        tokenizer_files = _tokenizer_export.tokenizer_files(tokenizer, model.max_seq_len)
        if tokenizer.vocab_size > model.vocab_size:
            raise ValueError(
                f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size {model.vocab_size}: "
                "ids past the embedding table; give the tokenizer the model was trained with"
            )
    config = fam.config_from_gpt(model, model.compute_dtype(params))
    tensors = fam.tensors(model, params)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    safetensors_io.save(path / "model.safetensors", tensors, {"format": "pt"})
    atomic_write_text(path / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer_files is not None:
        _tokenizer_export.write_tokenizer(tokenizer_files, path)
    return path
