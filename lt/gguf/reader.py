"""Reading a GGUF file with NumPy alone, every count and offset checked before it is used.

A GGUF file (versions 2 and 3; little-endian) is::

    "GGUF"  version (u32)  n_tensors (u64)  n_kv (u64)
    n_kv      key (string) type (u32) value           metadata: numbers, bools, strings, arrays
    n_tensors name (string) n_dims (u32) ne[0..n_dims) (u64, innermost first) type (u32) offset (u64)
    padding to ``general.alignment`` (default 32), then the tensor data; tensor i is bytes
    [offset, offset + size) of it, its rows of ne[0] stored in ggml's type (lt.gguf.blocks)

A string is a u64 length and that many UTF-8 bytes; an array a u32 item type, a u64 count
and the items. The file is input: the header (metadata and tensor table) is read at most
:data:`MAX_HEADER` bytes far, each count is checked against the bytes left before anything is
allocated, and each tensor must be a known type, lie inside the file, and overlap no other,
so reading every tensor allocates at most the file's size. Each refusal is a
:class:`GGUFError` naming the file and the field. The file is opened once (lt.guards: a
regular file) and every tensor is read from that descriptor.
"""

from __future__ import annotations

import os
import struct
from typing import Any, NamedTuple

import numpy as np

from .. import guards
from . import blocks

__all__ = ["GGUFError", "GGUFFile", "TensorInfo", "MAX_HEADER", "MAX_TENSORS", "MAX_KV"]

MAGIC = b"GGUF"
MAX_HEADER = 256 * 2**20  # metadata + tensor table; the largest vocabularies take ~10 MiB
MAX_TENSORS = 100_000  # as lt.safetensors_io: far above any model's
MAX_KV = 65_536  # released files hold tens of keys
MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
MAX_NAME = 1024  # ggml allows 64 bytes; a little slack for other writers
MAX_DEPTH = 3  # arrays of arrays of arrays, and no deeper
_CHUNK = 1 << 20
_SCALARS = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "<u1",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
_STRING, _ARRAY, _BOOL = 8, 9, 7
TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32", 7: "bool",
              8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}  # fmt: skip


class GGUFError(ValueError):
    """A file that is not a GGUF file lt can read: truncated, corrupt, out of bounds, or of an unknown type."""


class TensorInfo(NamedTuple):
    """One tensor of the table: ggml ``kind``, NumPy ``shape`` (outermost first), ``offset`` in the
    data section and ``nbytes``."""

    kind: int
    shape: tuple[int, ...]
    offset: int
    nbytes: int


class _Header:
    """Sequential reads of the header through a buffer, never past :data:`MAX_HEADER` or the file's end."""

    def __init__(self, file, size: int, where: str):
        self.file, self.size, self.where = file, size, where
        self.buf, self.start, self.pos = b"", 0, 0  # buf holds file bytes [start, start + len(buf))

    def left(self) -> int:
        return min(self.size, MAX_HEADER) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.left():
            if self.pos + n > self.size:
                raise GGUFError(f"{self.where} is truncated: {what} needs {n} bytes at byte {self.pos}, past its end")
            raise GGUFError(f"{self.where}: {what} reaches past the {MAX_HEADER} bytes lt reads for a GGUF header")
        end = self.pos + n
        if end > self.start + len(self.buf):
            self.file.seek(self.pos)
            self.buf, self.start = self.file.read(max(n, _CHUNK)), self.pos
        out = self.buf[self.pos - self.start : end - self.start]
        if len(out) != n:
            raise GGUFError(f"{self.where} is truncated: {what} ends past the file")
        self.pos = end
        return out

    def scalar(self, code: str, what: str):
        return struct.unpack(code, self.take(struct.calcsize(code), what))[0]

    def count(self, what: str, each: int, limit: int | None = None) -> int:
        """A u64 count of items of at least ``each`` bytes, checked against what the header has left."""
        n = self.scalar("<Q", what)
        if (limit is not None and n > limit) or n * each > self.left():
            bound = f"the {limit} lt reads" if limit is not None and n > limit else "what the header's bytes can hold"
            raise GGUFError(f"{self.where}: {what} is {n}, more than {bound} (corrupt or not a model file?)")
        return n

    def string(self, what: str) -> str:
        raw = self.take(self.count(f"{what} (a string's length)", 1), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GGUFError(f"{self.where}: {what} is not UTF-8 ({e.reason} at byte {e.start})") from None

    def value(self, kind: int, what: str, depth: int = 0) -> Any:
        if kind == _STRING:
            return self.string(what)
        if kind == _ARRAY:
            return self.array(what, depth + 1)
        if kind not in _SCALARS:
            raise GGUFError(f"{self.where}: {what} has value type {kind}; GGUF's are 0..12")
        v = np.frombuffer(self.take(np.dtype(_SCALARS[kind]).itemsize, what), _SCALARS[kind])[0]
        if kind == _BOOL:
            if v > 1:
                raise GGUFError(f"{self.where}: {what} is a bool stored as {v}; expected 0 or 1")
            return bool(v)
        if kind == 6:  # a float32: the shortest decimal that is it (the writer's 1e-05, not 9.99999974e-06)
            return float(np.format_float_positional(v, unique=True, trim="0"))
        return v.item()

    def array(self, what: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise GGUFError(f"{self.where}: {what} nests arrays deeper than the {MAX_DEPTH} levels lt reads")
        kind = self.scalar("<I", f"{what} (its item type)")
        if kind in _SCALARS:
            dtype = np.dtype(_SCALARS[kind])
            n = self.count(f"{what} (its length)", dtype.itemsize)
            items = np.frombuffer(self.take(n * dtype.itemsize, what), dtype).astype(dtype.newbyteorder("="))
            if kind == _BOOL:
                if (items > 1).any():
                    raise GGUFError(f"{self.where}: {what} holds a bool stored as {items.max()}; expected 0 or 1")
                items = items.astype(bool)
            items.flags.writeable = False
            return items
        each = 8 if kind == _STRING else 12  # the least a string or an array can take
        n = self.count(f"{what} (its length)", each)
        return [self.value(kind, f"{what}[{i}]", depth) for i in range(n)]


class GGUFFile:
    """A GGUF file opened for reading: ``metadata`` (key -> value: int, float, bool, str, a
    read-only NumPy array of numbers, or a list), ``tensors`` (name -> :class:`TensorInfo`),
    ``version``; ``read(name)`` gives one tensor's bytes. Checked as the module says."""

    def __init__(self, path):
        self.path = path
        self.where = os.fspath(path)
        self._file = guards.open_regular(path, "a GGUF file", error=GGUFError)
        try:
            self._parse(os.fstat(self._file.fileno()).st_size)
        except BaseException:
            self.close()
            raise

    def _parse(self, size: int) -> None:
        h, where = _Header(self._file, size, self.where), self.where
        if size < 24 or h.take(4, "the magic") != MAGIC:
            raise GGUFError(f"{where} is not a GGUF file (it does not start with the bytes 'GGUF')")
        self.version = h.scalar("<I", "the version")
        if self.version not in (2, 3):
            hint = " (a big-endian file? lt reads little-endian GGUF)" if self.version > 0xFFFF else ""
            raise GGUFError(f"{where}: GGUF version {self.version}{hint}; lt reads versions 2 and 3")
        n_tensors = h.count("the tensor count", 24, MAX_TENSORS)
        n_kv = h.count("the metadata key count", 12, MAX_KV)
        self.metadata: dict[str, Any] = {}
        for i in range(n_kv):
            key = h.string(f"metadata key {i}")
            if key in self.metadata:
                raise GGUFError(f"{where}: metadata key {key!r} appears twice")
            self.metadata[key] = h.value(h.scalar("<I", f"the type of {key}"), key)
        align = self.metadata.get("general.alignment", 32)
        if type(align) is not int or align < 1 or align & (align - 1) or align > 1 << 20:
            raise GGUFError(f"{where}: general.alignment is {align!r}; expected a power of two up to 2**20")
        self.alignment = align
        table = []
        for i in range(n_tensors):
            name = h.string(f"tensor {i}'s name")
            if len(name) > MAX_NAME:
                raise GGUFError(f"{where}: tensor {i}'s name is {len(name)} characters, more than {MAX_NAME}")
            n_dims = h.scalar("<I", f"tensor {name!r}'s dimension count")
            if not 1 <= n_dims <= MAX_DIMS:
                raise GGUFError(
                    f"{where}: tensor {name!r} has {n_dims} dimensions; ggml's tensors have 1 to {MAX_DIMS}"
                )
            ne = [h.scalar("<Q", f"tensor {name!r}'s shape") for _ in range(n_dims)]
            kind = h.scalar("<I", f"tensor {name!r}'s type")
            offset = h.scalar("<Q", f"tensor {name!r}'s offset")
            table.append((name, tuple(reversed(ne)), kind, offset))
        self.data_start = -(-h.pos // align) * align
        self.tensors = self._check_table(table, size - self.data_start)

    def _check_table(self, table: list, data_size: int) -> dict[str, TensorInfo]:
        where, out = self.where, {}
        for name, shape, kind, offset in table:
            if name in out:
                raise GGUFError(f"{where}: tensor {name!r} appears twice in the tensor table")
            if kind not in blocks.TYPES:
                raise GGUFError(f"{where}: tensor {name!r} has ggml type {kind}, which lt does not know")
            try:
                n = blocks.nbytes(kind, shape)
            except ValueError as e:
                raise GGUFError(f"{where}: tensor {name!r} {shape}: {e}") from None
            if offset % self.alignment or offset + n > data_size:
                why = "is not aligned" if offset % self.alignment else f"ends past the file's {data_size} data bytes"
                what = f"{blocks.type_name(kind)} {shape}, {n} bytes at data offset {offset}"
                raise GGUFError(f"{where}: tensor {name!r} ({what}) {why}")
            out[name] = TensorInfo(kind, shape, offset, n)
        end, last = 0, None
        for name, info in sorted(out.items(), key=lambda kv: kv[1].offset):
            if info.nbytes and info.offset < end:
                raise GGUFError(f"{where}: tensors {last!r} and {name!r} overlap in the data section")
            if info.nbytes:
                end, last = info.offset + info.nbytes, name
        return out

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name``'s bytes, a fresh uint8 array (``tensors[name].nbytes`` long)."""
        info = self.tensors[name]
        out = np.empty(info.nbytes, np.uint8)
        view, got = out.data.cast("B"), 0
        self._file.seek(self.data_start + info.offset)
        while got < info.nbytes:
            n = self._file.readinto(view[got:])
            if not n:
                raise GGUFError(f"{self.where} is truncated: tensor {name!r} has {got} of its {info.nbytes} bytes")
            got += n
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
