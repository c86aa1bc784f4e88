"""The safetensors file format, read and written with NumPy alone.

A safetensors file is three parts, all little-endian::

    8 bytes    N, the header length (unsigned 64-bit)
    N bytes    a JSON object: {name: {"dtype": "F32", "shape": [...], "data_offsets": [b, e]},
               ..., "__metadata__": {str: str}}; padded with spaces
    the rest   the data buffer; tensor ``name`` is bytes [b, e) of it, C order

Every weight tool reads it, and it needs no code execution (unlike a pickle). This
module is lt's dependency-free path for it (Hugging Face weights in and out), so that
loading GPT-2 needs neither torch nor the ``safetensors`` package. NumPy has no
bfloat16, so BF16 tensors are widened to float32 when read (exactly: a bfloat16 is the
top half of a float32); writing BF16 is not supported.

Reading is lazy: :class:`SafeTensors` opens the file once, parses and checks the header
(a truncated or corrupt file fails here, naming what is wrong; headers over 100 MiB or
100,000 tensors, and paths that are not regular files, are refused before parsing) and
reads a tensor only when asked, always through that one descriptor: a file renamed over
the path meanwhile is never mixed in, so one load is always of exactly one file.
Writing goes to a temporary file in the target folder, is fsynced and renamed, so a
crash never leaves a half-written file at the final path.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import guards
from .files import atomic_write

__all__ = ["SafeTensors", "SafetensorsError", "load", "save"]

# safetensors dtype name -> little-endian NumPy dtype it is stored as (BF16 as raw uint16).
_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}
_NAMES = {np.dtype(v).newbyteorder("<"): k for k, v in _DTYPES.items() if k != "BF16"}
_MAX_HEADER = 100 * 2**20  # the reference implementation's limit; more means corrupt
MAX_TENSORS = 100_000  # far above any model's (GPT-2 XL: ~600); more means corrupt


class SafetensorsError(ValueError):
    """A file that is not valid safetensors: truncated, corrupt, or inconsistent."""


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32: they are a float32's upper 16 bits."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _check_entry(where: str, name: str, entry, buffer_size: int) -> tuple:
    """(dtype, shape, begin, end) of one header entry, or a SafetensorsError saying what is off."""
    if not isinstance(entry, Mapping) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise SafetensorsError(f"{where}: header entry {name!r} must have dtype, shape and data_offsets, got {entry!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in _DTYPES:
        raise SafetensorsError(f"{where}: tensor {name!r} has dtype {dtype!r}; supported: {sorted(_DTYPES)}")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise SafetensorsError(
            f"{where}: tensor {name!r} has shape {shape!r}, expected a list of non-negative integers"
        )
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(n, int) for n in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise SafetensorsError(
            f"{where}: tensor {name!r} has data_offsets {offsets!r}, expected [begin, end] with 0 <= begin <= end"
        )
    begin, end = offsets
    nbytes = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize
    if end - begin != nbytes:
        raise SafetensorsError(
            f"{where}: tensor {name!r} is {dtype} of shape {tuple(shape)} "
            f"({nbytes} bytes) but its data_offsets span {end - begin} bytes"
        )
    if end > buffer_size:
        raise SafetensorsError(
            f"{where} is truncated: tensor {name!r} ends at byte {end} of the "
            f"data but the file holds only {buffer_size} bytes of data"
        )
    return dtype, tuple(shape), begin, end


class SafeTensors(Mapping):
    """A safetensors file opened for reading: a read-only mapping from name to array.

    The header is read and checked at construction; ``st[name]`` reads that tensor
    (a fresh, native-byte-order array; BF16 becomes float32). ``shape(name)`` and
    ``dtype(name)`` answer from the header without reading data.
    """

    def __init__(self, path):
        self.path = Path(path)
        where = str(self.path)
        # One descriptor for the whole life of this object: every tensor comes from the file
        # whose header was read, even if another file is renamed over ``path`` meanwhile.
        # The shared guard opens it without blocking (a FIFO) and refuses anything not a regular file.
        self._file = guards.open_regular(self.path, "a safetensors file", error=SafetensorsError)
        self._lock = threading.Lock()
        try:
            st = os.fstat(self._file.fileno())
            self._parse(where, st.st_size)
        except BaseException:
            self.close()
            raise

    def _parse(self, where: str, size: int) -> None:
        head = self._read(0, 8)
        if len(head) < 8:
            raise SafetensorsError(
                f"{where} is truncated: {size} bytes, fewer than the "
                "8-byte header length that starts a safetensors file"
            )
        n = int.from_bytes(head, "little")
        if n > _MAX_HEADER:
            raise SafetensorsError(
                f"{where} is corrupt or not safetensors: its header length says "
                f"{n} bytes, more than the {_MAX_HEADER} bytes allowed"
            )
        if n > size - 8:
            raise SafetensorsError(
                f"{where} is truncated or not safetensors: its header "
                f"length says {n} bytes, but {size - 8} bytes follow"
            )
        text = self._read(8, n)
        count = text.count(b'"data_offsets"')  # a cheap bound before parsing anything
        if count > MAX_TENSORS:
            raise SafetensorsError(
                f"{where}: its header lists about {count} tensors, more than the "
                f"{MAX_TENSORS} lt reads (corrupt or not a model file?)"
            )
        try:
            header = json.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{where} is corrupt: its header is not valid JSON ({e})") from None
        except RecursionError:
            raise SafetensorsError(
                f"{where} is corrupt: its header JSON is nested too deeply to be a safetensors header"
            ) from None
        if not isinstance(header, dict):
            raise SafetensorsError(
                f"{where} is corrupt: its header is a JSON {type(header).__name__}, expected an object"
            )
        if len(header) > MAX_TENSORS + 1:
            raise SafetensorsError(
                f"{where}: its header lists {len(header) - 1} tensors, more than "
                f"the {MAX_TENSORS} lt reads (corrupt or not a model file?)"
            )
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise SafetensorsError(f"{where}: __metadata__ must map strings to strings, got {metadata!r}")
        self.metadata: dict[str, str] = metadata
        self._data_start = 8 + n
        buffer_size = size - self._data_start
        self._entries = {name: _check_entry(where, name, e, buffer_size) for name, e in header.items()}
        covered = 0  # tensors must tile the buffer: no gaps, no overlaps
        for name, (_, _, begin, end) in sorted(self._entries.items(), key=lambda kv: kv[1][2:]):
            if begin != covered:
                raise SafetensorsError(
                    f"{where} is corrupt: tensor {name!r} starts at byte {begin} "
                    f"of the data, expected {covered} (a gap or an overlap)"
                )
            covered = end
        if covered != buffer_size:
            raise SafetensorsError(
                f"{where} is corrupt: its tensors cover {covered} bytes of data "
                f"but {buffer_size} bytes follow the header"
            )

    def _read(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` of the open file (fewer only at its end)."""
        if self._file.closed:
            raise ValueError(f"{self.path} has been closed")
        with self._lock:  # seek + read is one step for all threads
            self._file.seek(offset)
            chunks, left = [], n
            while left:
                chunk = self._file.read(left)
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        """Close the file; reading a tensor afterwards is an error."""
        self._file.close()

    def __enter__(self) -> SafeTensors:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getitem__(self, name: str) -> np.ndarray:
        dtype, shape, begin, end = self._entries[name]
        stored = np.dtype(_DTYPES[dtype])
        count = (end - begin) // stored.itemsize
        flat = np.empty(count, stored)  # one array that owns its memory, filled from the open
        got, size = 0, end - begin  # file (so a caller may seal it without a copy)
        if count:
            with self._lock:
                if self._file.closed:
                    raise ValueError(f"{self.path} has been closed")
                self._file.seek(self._data_start + begin)
                view = flat.data.cast("B")
                while got < size:
                    n = self._file.readinto(view[got:])
                    if not n:
                        break
                    got += n
        if got != size:  # the file shrank after the header was read
            raise SafetensorsError(
                f"{self.path} is truncated: tensor {name!r} has {got // stored.itemsize} of its {count} values"
            )
        if dtype == "BF16":
            flat = _bf16_to_f32(flat)
        return flat.astype(flat.dtype.newbyteorder("="), copy=False).reshape(shape)

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> str:
        """The stored safetensors dtype name, e.g. ``"BF16"``."""
        return self._entries[name][0]

    def numpy_dtype(self, name: str) -> np.dtype:
        """The NumPy dtype ``st[name]`` has (BF16 reads as float32), from the header alone."""
        dtype = self._entries[name][0]
        return np.dtype(np.float32) if dtype == "BF16" else np.dtype(_DTYPES[dtype]).newbyteorder("=")


def load(path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file, as a dict of fresh NumPy arrays."""
    with SafeTensors(path) as st:  # one open file: never a mix of two
        return {name: st[name] for name in st}


def save(path, tensors: Mapping, metadata: Mapping | None = None) -> None:
    """Write ``tensors`` (name -> array) to a safetensors file at ``path``, atomically.

    Arrays keep their dtype (float16/32/64, signed and unsigned integers, bool) and are
    stored little-endian in C order. Tensors are laid out largest item size first, then
    by name, after a header padded to 8 bytes, so every tensor is aligned in the file.
    """
    metadata = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError(f"safetensors metadata must map strings to strings, got {metadata!r}")
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"tensor names must be strings other than '__metadata__', got {name!r}")
        a = np.asarray(value)
        stored = a.dtype.newbyteorder("<")
        if stored not in _NAMES:
            raise TypeError(
                f"tensor {name!r} has dtype {a.dtype}, which safetensors cannot store "
                f"from NumPy; supported: {sorted(set(map(str, _NAMES)))}"
            )
        arrays[name] = np.asarray(a, dtype=stored, order="C")  # (ascontiguousarray makes 0-d 1-d)
    order = sorted(arrays, key=lambda k: (-arrays[k].dtype.itemsize, k))
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name in order:
        a = arrays[name]
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    atomic_write(
        path, [len(text).to_bytes(8, "little"), text, *(arrays[name].reshape(-1).view(np.uint8) for name in order)]
    )
