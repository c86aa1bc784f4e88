"""GGUF in and out: a model trained in lt runs in llama.cpp, Ollama and LM Studio, and their files load in lt.

GGUF is llama.cpp's one-file format: hyperparameters and tokenizer as typed metadata, then the
tensors, each in a ggml type (F32, F16, or blocks of quantized weights)::

    lt.gguf.save("model.gguf", model, params, tokenizer=tok, type="q8_0")  # needs lt[gguf]
    model, params, tokenizer = lt.gguf.load("model.gguf")                  # NumPy alone

- :func:`save` writes GGUF v3 with the ``gguf`` package (the ggml project's own writer) for
  llama.cpp's ``gpt2``, ``llama`` (Mistral too), ``qwen2`` or ``qwen3`` architecture, with the tokenizer in
  the metadata; ``type`` ``f32``, ``f16``, ``q8_0`` or ``q4_0`` (ggml's own quantizer's bits).
- :func:`load` reads F32, F16, BF16, Q8_0 and Q4_0 files with NumPy alone (Q8_0 and Q4_0 become
  lt quantized leaves with exactly the file's values, never a float copy) and dequantizes other
  block types with the ``gguf`` package, saying so. The file is input: every size, count and
  offset is checked before use (:mod:`lt.gguf.reader`).

Parts: :mod:`~lt.gguf.reader` (the format), :mod:`~lt.gguf.blocks` (ggml types, Q8_0 / Q4_0),
:mod:`~lt.gguf.names` (tensor names and layout), :mod:`~lt.gguf.metadata` (hyperparameters),
:mod:`~lt.gguf.tokenizer`, :mod:`~lt.gguf.writer`, :mod:`~lt.gguf.loader`. Importing lt never
imports the ``gguf`` package; :func:`save` does, when called.
"""

from __future__ import annotations

from .loader import load, load_tokenizer
from .reader import GGUFError, GGUFFile
from .writer import TYPES, GGUFWarning, save, written_by_lt

__all__ = ["load", "load_tokenizer", "save", "GGUFError", "GGUFWarning", "GGUFFile", "TYPES", "written_by_lt"]
