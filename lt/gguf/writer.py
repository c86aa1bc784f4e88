"""Writing a model as a GGUF v3 file with the ``gguf`` package's own writer (``lt[gguf]``).

Tensor types, as llama.cpp's ``convert_hf_to_gguf.py`` chooses them: vectors (norms, biases)
and the learned position table stay F32; the matrices lt.quant would quantize (Linear weights,
the token table, an untied head) take ``type``: F32, F16, or Q8_0 / Q4_0 blocks of 32, made as
ggml's reference quantizer makes them (:mod:`lt.gguf.blocks`, bit for bit). A matrix whose rows
are not whole blocks falls back to F16, with a note. A quantized lt leaf already in the
requested block format (loaded from GGUF, say) is written as it is, without requantizing; any
other is dequantized first, with a note. Notes are :class:`GGUFWarning` warnings.

The file is written beside ``path`` under a temporary name, fsynced and renamed
(:func:`lt.files.atomic_path`): a crash never leaves half a file there. Everything that can be
refused (the model, the tokenizer, a non-finite weight) is refused before the first byte.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .. import guards, quant, tree
from .._version import __version__
from ..files import atomic_path
from ..nn.gpt import GPT
from . import blocks, metadata, names
from .tokenizer import tokenizer_metadata

__all__ = ["save", "GGUFWarning", "TYPES", "written_by_lt"]

TYPES = {"f32": blocks.F32, "f16": blocks.F16, "q8_0": blocks.Q8_0, "q4_0": blocks.Q4_0}
_FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}  # general.file_type: llama.cpp's LLAMA_FTYPE_*
_F16_MAX = 65504.0


class GGUFWarning(UserWarning):
    """Something a GGUF export or load did that the user may want to know (a fallback, a dequantization)."""


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError(
            "writing GGUF needs the ggml project's `gguf` package: pip install 'lt[gguf]' (or pip install gguf)"
        ) from None
    return gguf


def _encode(rows, kind: int, name: str, notes: list[str]) -> tuple[np.ndarray, int]:
    """One GGUF tensor's data and ggml type: ``rows`` (float array or quantized leaf) as ``kind``."""
    if quant.is_quantized(rows):
        if kind in (blocks.Q8_0, blocks.Q4_0) and (data := blocks.leaf_blocks(rows, kind)) is not None:
            return data, kind
        notes.append(f"{name}: an int{rows.bits} leaf (groups of {rows.group_size}) dequantized to write it")
        matrix = quant.dequantize_array(rows)  # the logical matrix; its stored rows are the GGUF rows
        rows = matrix.T if rows.axis == 0 else matrix
    rows = np.asarray(rows)
    if kind in (blocks.Q8_0, blocks.Q4_0) and rows.shape[-1] % blocks.BLOCK:
        notes.append(f"{name}: rows of {rows.shape[-1]} are not whole blocks of 32; written as F16")
        kind = blocks.F16
    if kind == blocks.F16 and np.abs(rows).max(initial=0) > _F16_MAX:
        raise ValueError(f"{name}: holds values beyond float16's range (|w| > {_F16_MAX}); export it as f32 or q8_0")
    if kind == blocks.Q8_0:
        return blocks.quantize_q8_0(rows), kind
    if kind == blocks.Q4_0:
        return blocks.quantize_q4_0(rows), kind
    return np.ascontiguousarray(rows, np.float16 if kind == blocks.F16 else np.float32), kind


def _tensors(model: GPT, params, arch: str, kind: int, notes: list[str]) -> list[tuple[str, np.ndarray, int]]:
    """``(name, data, ggml type)`` of every GGUF tensor of ``params``, in the params' order."""
    out = []
    leaves = dict(tree.items(params))
    for place in names.placements(model, arch):
        leaf = leaves[place.path]
        if not quant.is_quantized(leaf):
            guards.finite(leaf, f"{place.path}:", hint="refusing to export it")
        for part, rows in zip(place.parts, names.to_rows(leaf, place)):
            want = kind if place.axis is not None else blocks.F32
            data, got = _encode(rows, want, part.name, notes)
            out.append((part.name, data, got))
    if arch == "gpt2" and model.tie_embeddings:  # llama.cpp's gpt2 reads its head from output.weight
        _, data, got = next(t for t in out if t[0] == "token_embd.weight")
        out.append(("output.weight", data, got))
    freqs = metadata.rope_freqs(model)
    if freqs is not None:
        out.append(("rope_freqs.weight", freqs, blocks.F32))
    return out


def _add(writer, gguf, key: str, value: Any) -> None:
    """One metadata value, typed as llama.cpp reads it: uint32 counts and ids, float32 reals."""
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, (int, np.integer)):
        writer.add_uint32(key, int(value))
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif key == "tokenizer.ggml.token_type":
        writer.add_key_value(key, list(value), gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.INT32)
    else:
        writer.add_key_value(key, list(value), gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.STRING)


def save(path, model: GPT, params, *, tokenizer=None, type: str = "f32", name: str | None = None):
    """Write ``model`` and ``params`` as the GGUF v3 file ``path`` (atomically); returns ``path``.

    ``type``: ``"f32"``, ``"f16"``, ``"q8_0"`` or ``"q4_0"`` for the matrices (see the module's
    docstring). ``tokenizer``: an lt ``BPETokenizer`` or ``CharTokenizer`` written into the
    metadata (:mod:`lt.gguf.tokenizer`), so llama.cpp and Ollama encode text to lt's ids; without
    one the file holds no tokenizer (llama.cpp then cannot run it). ``name``: ``general.name``.
    The architecture is llama.cpp's ``gpt2``, ``llama`` (Mistral too), ``qwen2`` or ``qwen3``, whichever
    computes what ``model`` does; a model none can express is refused, naming the field.
    """
    if type not in TYPES:
        raise ValueError(f"type must be one of {', '.join(TYPES)}, got {type!r}")
    arch = names.architecture(model)
    model.check_params(params)
    tok = None if tokenizer is None else tokenizer_metadata(tokenizer, model.vocab_size)
    gguf = _gguf()
    notes: list[str] = []
    tensors = _tensors(model, params, arch, TYPES[type], notes)
    meta: dict[str, Any] = {
        "general.name": name or f"lt {arch}",
        "general.file_type": _FILE_TYPE[type],
        "lt.version": __version__,  # what written_by_lt looks for
        **metadata.model_metadata(model, arch),
        **(tok or {}),
    }
    if type in ("q8_0", "q4_0"):
        meta["general.quantization_version"] = 2  # ggml's GGML_QNT_VERSION
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        try:
            for key, value in meta.items():
                _add(writer, gguf, key, value)
            for tensor_name, data, kind in tensors:
                raw = None if kind in (blocks.F32, blocks.F16) else gguf.GGMLQuantizationType(kind)
                writer.add_tensor(tensor_name, data, raw_dtype=raw)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    for note in notes:
        warnings.warn(note, GGUFWarning, stacklevel=2)
    return path


def written_by_lt(path) -> bool:
    """Whether ``path`` is a GGUF file lt wrote (it holds the metadata key ``lt.version``)."""
    from .reader import GGUFFile

    try:
        with GGUFFile(path) as f:
            return "lt.version" in f.metadata
    except (ValueError, OSError):
        return False
