"""Hostile GGUF files: every malformed header, count, type and offset is one GGUFError naming the field.

Files are built byte by byte here (the format is small), so these tests need no gguf package and
can write what no writer would.
"""

import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lt
from lt.gguf import GGUFError, GGUFFile

U32, I32, F32, BOOL, STR, ARR, U64 = 4, 5, 6, 7, 8, 9, 10


def s(text) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key, kind, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", kind) + payload


def info(name, ne, kind=0, offset=0) -> bytes:
    return (
        s(name)
        + struct.pack("<I", len(ne))
        + b"".join(struct.pack("<Q", n) for n in ne)
        + struct.pack("<IQ", kind, offset)
    )


def gguf_bytes(kvs=(), tensors=(), data=b"", version=3, n_tensors=None, n_kv=None, align=32) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)  # fmt: skip
    body = head + b"".join(kvs) + b"".join(tensors)
    return body + b"\0" * (-len(body) % align) + data


GOOD_KVS = [kv("general.architecture", STR, s("llama")), kv("llama.block_count", U32, struct.pack("<I", 2)),
            kv("names", ARR, struct.pack("<IQ", STR, 2) + s("a") + s("é"))]  # fmt: skip
DATA = np.arange(8, dtype="<f4").tobytes() + np.ones(3, "<f4").tobytes()  # w (2, 4) at 0, v (3,) at 32
GOOD = gguf_bytes(GOOD_KVS, [info("w", [4, 2]), info("v", [3], offset=32)], DATA)


def write(tmp_path, data: bytes):
    path = tmp_path / "f.gguf"
    path.write_bytes(data)
    return path


def test_a_well_formed_file_reads_back_its_metadata_and_tensors(tmp_path):
    with GGUFFile(write(tmp_path, GOOD)) as f:
        assert f.version == 3 and f.metadata["llama.block_count"] == 2 and f.metadata["names"] == ["a", "é"]
        assert f.tensors["w"].shape == (2, 4) and f.tensors["v"].offset == 32
        assert np.array_equal(f.read("w").view("<f4"), np.arange(8))


@pytest.mark.parametrize(
    "data, named",
    [
        (b"GGML" + GOOD[4:], "does not start with the bytes 'GGUF'"),
        (gguf_bytes(GOOD_KVS, version=1), "version 1"),
        (GOOD[:4] + struct.pack(">I", 3) + GOOD[8:], "big-endian"),
        (gguf_bytes(n_tensors=2**40), "tensor count is 1099511627776"),
        (gguf_bytes(n_kv=10**9), "metadata key count is 1000000000"),
        (gguf_bytes([struct.pack("<Q", 2**40) + b"k"]), "metadata key 0 \\(a string's length\\) is 1099511627776"),
        (gguf_bytes([kv("k", ARR, struct.pack("<IQ", U32, 2**50))]), "k \\(its length\\)"),
        (gguf_bytes([kv("k", ARR, struct.pack("<IQ", STR, 10**12))]), "k \\(its length\\)"),
        (gguf_bytes([kv("k", 13, b"")]), "k has value type 13"),
        (gguf_bytes([kv("k", BOOL, b"\x02")]), "k is a bool stored as 2"),
        (gguf_bytes([kv("k", STR, s(b"\xff\xfe"))]), "k is not UTF-8"),
        (gguf_bytes([kv("k", U32, b"\0\0\0\0"), kv("k", U32, b"\0\0\0\0")]), "'k' appears twice"),
        (gguf_bytes([kv("k", ARR, struct.pack("<IQ", ARR, 1) * 5 + struct.pack("<IQ", U32, 0))]), "deeper than"),
        (gguf_bytes([kv("general.alignment", U32, struct.pack("<I", 24))]), "general.alignment is 24"),
        (gguf_bytes([], [info("w", [])]), "'w' has 0 dimensions"),
        (gguf_bytes([], [info("w", [1] * 5)]), "'w' has 5 dimensions"),
        (gguf_bytes([], [info("w", [4], kind=99)], b"\0" * 32), "'w' has ggml type 99"),
        (gguf_bytes([], [info("w", [40], kind=8)], b"\0" * 64), "whole blocks of 32"),
        (gguf_bytes([], [info("w", [4], offset=8)], b"\0" * 64), "is not aligned"),
        (gguf_bytes([], [info("w", [2**40, 2**20])], b"\0" * 32), "ends past the file"),
        (gguf_bytes([], [info("w", [8]), info("v", [8], offset=0)], b"\0" * 32), "overlap"),
        (gguf_bytes([], [info("w", [1]), info("w", [1], offset=32)], b"\0" * 64), "'w' appears twice"),
    ],
)
def test_each_malformed_field_is_refused_naming_it(tmp_path, data, named):
    with pytest.raises(GGUFError, match=named):
        GGUFFile(write(tmp_path, data))


def test_every_truncation_of_a_file_is_refused_as_truncated(tmp_path):
    path = tmp_path / "f.gguf"
    header_end = len(GOOD) - 44
    for n in range(header_end):
        path.write_bytes(GOOD[:n])
        with pytest.raises(GGUFError):
            GGUFFile(path)
    path.write_bytes(GOOD[:-4])  # the last tensor's data cut short: its extent is past the end
    with pytest.raises(GGUFError, match=r"'v'.*ends past the file"):
        GGUFFile(path)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(GOOD) - 45), st.integers(0, 255))
def test_any_corrupted_header_byte_gives_a_ggufferror_or_a_checked_file(tmp_path_factory, at, value):
    data = bytearray(GOOD)
    data[at] = value
    path = tmp_path_factory.mktemp("flip") / "f.gguf"
    path.write_bytes(bytes(data))
    try:
        with GGUFFile(path) as f:  # still readable: then every tensor lies inside the file, apart
            for name, t in f.tensors.items():
                assert f.data_start + t.offset + t.nbytes <= len(data)
                assert f.read(name).nbytes == t.nbytes
    except GGUFError:
        pass


def test_a_path_that_is_not_a_regular_file_is_refused(tmp_path):
    with pytest.raises(GGUFError, match="is a directory"):
        GGUFFile(tmp_path)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
        with pytest.raises(GGUFError, match="not a regular file"):
            GGUFFile(tmp_path / "fifo")  # never blocks waiting for a writer
    with pytest.raises(FileNotFoundError, match="expected a GGUF file"):
        GGUFFile(tmp_path / "missing.gguf")


@pytest.fixture(scope="module")
def good_model(tmp_path_factory):
    """A small llama file, written by lt (needs the gguf package)."""
    pytest.importorskip("gguf", reason="writing GGUF needs the gguf package: pip install 'lt[gguf]'")
    model = lt.GPT.preset("llama-tiny", vocab_size=64)
    path = tmp_path_factory.mktemp("m") / "m.gguf"
    lt.gguf.save(path, model, model.init(lt.random.key(0)))
    return path


def _rewritten(src, dst, change):
    """A copy of the file ``src`` with its tensor table, metadata and data passed through ``change``."""
    import gguf

    r = gguf.GGUFReader(src)
    meta = {
        k: (f.contents(), f.types)
        for k, f in r.fields.items()
        if not k.startswith("GGUF.") and k != "general.architecture"
    }
    tensors = {t.name: (np.array(t.data), t.tensor_type) for t in r.tensors}
    change(meta, tensors)
    w = gguf.GGUFWriter(dst, r.fields["general.architecture"].contents())
    for k, (v, types) in meta.items():
        w.add_key_value(k, v, types[0], sub_type=types[-1] if len(types) > 1 else None)
    for name, (data, kind) in tensors.items():
        w.add_tensor(name, data, raw_dtype=None if kind in (0, 1) else kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.mark.filterwarnings("ignore:.*no tokenizer loaded")
@pytest.mark.parametrize(
    "change, named",
    [
        (lambda m, t: t.pop("blk.1.attn_k.weight"), "tensor 'blk.1.attn_k.weight' .* is missing"),
        (lambda m, t: t.update(extra=(np.zeros(4, np.float32), 0)), r"tensors \['extra'\] are not part"),
        (lambda m, t: t.update({"output_norm.weight": (np.zeros(7, np.float32), 0)}), "has shape \\(7,\\)"),
        (lambda m, t: t["blk.0.attn_norm.weight"][0].__setitem__(0, np.nan), "attn_norm.weight.*non-finite"),
        (lambda m, t: m.pop("llama.block_count"), "llama.block_count is missing"),
        (lambda m, t: m.update({"llama.attention.head_count": ("4", m["general.name"][1])}), "head_count is '4'"),
        (lambda m, t: m.update({"llama.rope.dimension_count": (4, m["llama.block_count"][1])}), "dimension_count is 4"),
    ],
)
def test_a_file_whose_tensors_do_not_fit_its_metadata_is_refused_naming_them(good_model, tmp_path, change, named):
    path = _rewritten(good_model, tmp_path / "bad.gguf", change)
    with pytest.raises(GGUFError, match=named):
        lt.gguf.load(path)


def test_an_unsupported_architecture_is_named(tmp_path):
    with pytest.raises(GGUFError, match=r"general\.architecture is 'falcon'"):
        lt.gguf.load(write(tmp_path, gguf_bytes([kv("general.architecture", STR, s("falcon"))])))


def test_importing_lt_never_imports_the_gguf_package():
    import subprocess
    import sys

    code = "import sys, lt; lt.gguf.GGUFFile; assert 'gguf' not in sys.modules, 'gguf imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.filterwarnings("ignore:.*no tokenizer loaded")
def test_bf16_and_f16_matrices_load_exactly_and_other_block_types_are_dequantized_with_a_note(good_model, tmp_path):
    import gguf

    def narrow(meta, tensors):
        for name, (data, _) in list(tensors.items()):
            if data.ndim == 2 and "ffn" in name:  # BF16: a float32's top half, stored as raw uint16
                tensors[name] = ((data.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16), 30)
            elif data.ndim == 2 and "attn_q" in name:
                tensors[name] = (data.astype(np.float16), 1)
            elif data.ndim == 2 and "attn_output" in name:  # Q5_0: no lt leaf holds it
                tensors[name] = (gguf.quants.quantize(data.astype(np.float32), 6), 6)

    path = _rewritten(good_model, tmp_path / "mixed.gguf", narrow)
    with pytest.warns(lt.gguf.GGUFWarning, match=r"blk\.0\.attn_output\.weight \(Q5_0\) dequantized"):
        params = lt.gguf.load(path)[1]
    _, original, _ = lt.gguf.load(good_model)
    up, up0 = lt.tree.get(params, "blocks.0.ffn.up.w"), lt.tree.get(original, "blocks.0.ffn.up.w")
    assert np.array_equal(up, (up0.view(np.uint32) & 0xFFFF0000).view(np.float32))  # truncated to bf16, exactly
    assert not any(lt.quant.is_quantized(x) for x in lt.tree.leaves(params))
    q5 = next(t for t in gguf.GGUFReader(path).tensors if t.name == "blk.0.attn_output.weight")
    want = gguf.quants.dequantize(np.asarray(q5.data), q5.tensor_type)
    assert np.array_equal(lt.tree.get(params, "blocks.0.attn.proj.w"), want.T)
