"""Loading a GGUF file as ``(model, params, tokenizer)``: NumPy alone for F32, F16, BF16, F64, Q8_0, Q4_0.

The metadata gives the model (:mod:`lt.gguf.metadata`), :mod:`lt.gguf.names` where each leaf's
tensors are; every tensor the model needs must be there with the shape it implies, and no other
(a tensor lt would ignore is an error, as in lt.hf). Matrices stored as Q8_0 or Q4_0 become lt
quantized leaves of group size 32 holding exactly the file's values (:mod:`lt.gguf.blocks`),
never a float copy; other block types (Q4_K, Q6_K, ...) are dequantized by the ``gguf`` package
(``lt[gguf]``) into float leaves, with a :class:`~lt.gguf.writer.GGUFWarning` naming them, as
is a joined leaf whose parts mix types (q, k, v stored in two formats). Float tensors are
checked finite. A GPT-2 file whose ``output.weight`` repeats ``token_embd.weight`` byte for
byte loads as a tied model.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from .. import guards, quant, tree
from . import blocks, metadata, names
from .reader import GGUFError, GGUFFile
from .tokenizer import tokenizer_from_metadata
from .writer import GGUFWarning

__all__ = ["load", "load_tokenizer"]

_NATIVE = (blocks.F32, blocks.F16, blocks.BF16, blocks.F64)


def _expected_shape(place: names.Placement, part: names.Part, model) -> tuple[int, ...]:
    """The NumPy shape of ``part``'s GGUF tensor: a weight's rows (out, in), else the leaf's own."""
    shape = place.shape
    if len(place.parts) > 1:
        return (part.width, *shape[:-1]) if place.role in names.LINEAR else (part.width,)
    return shape[::-1] if place.role in names.LINEAR else shape


def _dequantized(f: GGUFFile, name: str, dtype) -> np.ndarray:
    info = f.tensors[name]
    try:
        import gguf
    except ImportError:
        raise GGUFError(
            f"{f.where}: tensor {name!r} is {blocks.type_name(info.kind)}, which lt reads through the `gguf` "
            "package: pip install 'lt[gguf]' (lt itself reads F32, F16, BF16, Q8_0 and Q4_0)"
        ) from None
    try:
        out = gguf.quants.dequantize(f.read(name), gguf.GGMLQuantizationType(info.kind))
    except (NotImplementedError, ValueError) as e:
        raise GGUFError(
            f"{f.where}: tensor {name!r} ({blocks.type_name(info.kind)}) cannot be dequantized: {e}"
        ) from None
    return np.asarray(out, dtype).reshape(info.shape)


def _piece(f: GGUFFile, name: str, place: names.Placement, dtype, notes: list[str]):
    """One GGUF tensor in ggml's layout: a float array, or a quantized leaf whose stored rows are its rows."""
    info = f.tensors[name]
    if info.kind in _NATIVE:
        rows = blocks.floats(f.read(name), info.kind, info.shape, dtype)
        guards.finite(rows, f"{f.where}: tensor {name!r}:", error=GGUFError)
        return rows
    if info.kind in (blocks.Q8_0, blocks.Q4_0) and len(info.shape) == 2:
        try:
            leaf = blocks.to_leaf(f.read(name), info.kind, *info.shape, axis=place.axis or 0, dtype=dtype)
        except ValueError as e:
            raise GGUFError(f"{f.where}: tensor {name!r}: {e}") from None
        if place.axis is not None:
            return leaf
        notes.append(f"{name} ({blocks.type_name(info.kind)}) dequantized: lt keeps {place.path} in floats")
        return quant.dequantize_array(leaf).T
    notes.append(f"{name} ({blocks.type_name(info.kind)}) dequantized to {np.dtype(dtype).name}")
    rows = _dequantized(f, name, dtype)
    guards.finite(rows, f"{f.where}: tensor {name!r}:", error=GGUFError)
    return rows


def _uniform(pieces: list, place: names.Placement, notes: list[str]) -> list:
    """``pieces`` as all float, unless all are quantized leaves of one scheme (to be joined as they are)."""
    kinds = {(p.bits, p.group_size) if quant.is_quantized(p) else None for p in pieces}
    if len(kinds) == 1:
        return pieces
    notes.append(f"{place.path}: its parts are stored in different formats; dequantized to join them")
    return [quant.dequantize_array(p).T if quant.is_quantized(p) and p.axis == 0 else
            quant.dequantize_array(p) if quant.is_quantized(p) else p for p in pieces]  # fmt: skip


def _tied_copy(f: GGUFFile) -> bool:
    """Whether a GPT-2 file's ``output.weight`` is ``token_embd.weight`` again, byte for byte."""
    a, b = f.tensors.get("output.weight"), f.tensors.get("token_embd.weight")
    if a is None or b is None or (a.kind, a.shape) != (b.kind, b.shape):
        return False
    return bool(np.array_equal(f.read("output.weight"), f.read("token_embd.weight")))


def load(path, *, dtype=np.float32):
    """``(model, params, tokenizer)`` from the GGUF file ``path`` (see the module's docstring).

    ``dtype`` (float32 or float64): the float leaves' dtype and the quantized leaves' scales'.
    ``tokenizer`` is None, with a :class:`~lt.gguf.writer.GGUFWarning` saying why, where the
    file's tokenizer is not one lt runs (:mod:`lt.gguf.tokenizer`). A file that is not a GGUF
    lt can read, or whose tensors do not fit its metadata, raises :class:`GGUFError` naming the
    field or tensor.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"lt.gguf.load: dtype must be float32 or float64, got {dtype}")
    notes: list[str] = []
    with GGUFFile(path) as f:
        where = f.where
        table = dict(f.tensors)
        if f.metadata.get("general.architecture") == "gpt2" and _tied_copy(f):
            del table["output.weight"]
        model = metadata.model_from_metadata(f.metadata, table, where)
        arch = f.metadata["general.architecture"]
        places = names.placements(model, arch)
        wanted = {part.name: (place, part) for place in places for part in place.parts}
        extra = sorted(set(table) - set(wanted))
        if extra:
            raise GGUFError(
                f"{where}: tensors {extra[:5]} are not part of a {arch} model of this shape (lt would ignore them)"
            )
        for name, (place, part) in wanted.items():
            if name not in table:
                raise GGUFError(f"{where}: tensor {name!r} ({place.path}) is missing")
            want = _expected_shape(place, part, model)
            if table[name].shape != want:
                raise GGUFError(f"{where}: tensor {name!r} has shape {table[name].shape}; the metadata implies {want}")
        leaves = []
        for place in places:
            pieces = _uniform([_piece(f, part.name, place, dtype, notes) for part in place.parts], place, notes)
            leaves.append(names.from_rows(pieces, place))
        tokenizer, why = tokenizer_from_metadata(f.metadata, where)
    params = tree.freeze(tree.unflatten(tree.structure(model.spec()), leaves))
    model.check_params(params)
    if why is not None:
        notes.append(f"{os.fspath(path)}: no tokenizer loaded: {why}")
    for note in notes:
        warnings.warn(note, GGUFWarning, stacklevel=2)
    return model, params, tokenizer


def load_tokenizer(path):
    """The tokenizer of the GGUF file ``path`` alone, or None where lt cannot run it (a warning says why)."""
    with GGUFFile(path) as f:
        tokenizer, why = tokenizer_from_metadata(f.metadata, f.where)
    if why is not None:
        warnings.warn(f"{os.fspath(path)}: no tokenizer loaded: {why}", GGUFWarning, stacklevel=2)
    return tokenizer
