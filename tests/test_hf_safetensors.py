"""lt's own safetensors reader and writer (lt.safetensors_io): the bytes, not just round trips.

Files are also built here byte by byte, so the reader is checked against the format
itself and not only against lt's writer; where the ``safetensors`` package is installed
the two implementations read each other's files.
"""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lt import safetensors_io as sio
from lt.safetensors_io import SafetensorsError


def raw_file(path, header: dict, data: bytes, pad: int = 0):
    """A safetensors file written by hand: length, JSON header (+ ``pad`` spaces), data."""
    text = json.dumps(header).encode() + b" " * pad
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


def test_float16_and_bfloat16_bit_patterns_read_as_their_values(tmp_path):
    f16 = np.array([0x3C00, 0xC100, 0x7BFF, 0x0001], "<u2")       # 1, -2.5, 65504, 2**-24
    bf16 = np.array([0x3F80, 0xC020, 0x7F80, 0x0001, 0x4049], "<u2")  # 1, -2.5, inf, 2**-133, 3.140625
    header = {"h": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]},
              "b": {"dtype": "BF16", "shape": [5], "data_offsets": [8, 18]}}
    st_ = sio.SafeTensors(raw_file(tmp_path / "x.safetensors", header, f16.tobytes() + bf16.tobytes(), pad=3))
    assert st_.dtype("b") == "BF16" and st_.shape("b") == (5,)
    h, b = st_["h"], st_["b"]
    assert h.dtype == np.float16 and h.shape == (2, 2)
    np.testing.assert_array_equal(h, np.array([[1.0, -2.5], [65504.0, 2.0**-24]], np.float16))
    assert b.dtype == np.float32
    np.testing.assert_array_equal(b, np.array([1.0, -2.5, np.inf, 2.0**-133, 3.140625], np.float32))


def test_float32_float64_and_integers_read_little_endian(tmp_path):
    f32 = np.array([1.5, -0.25], "<f4").tobytes()
    f64 = np.array([np.pi], "<f8").tobytes()
    i64 = np.array([-3, 2**40], "<i8").tobytes()
    header = {"d": {"dtype": "F64", "shape": [], "data_offsets": [0, 8]},
              "i": {"dtype": "I64", "shape": [2], "data_offsets": [8, 24]},
              "f": {"dtype": "F32", "shape": [1, 2], "data_offsets": [24, 32]},
              "__metadata__": {"format": "pt"}}
    loaded = sio.load(raw_file(tmp_path / "x.safetensors", header, f64 + i64 + f32))
    assert loaded["d"].shape == () and loaded["d"] == np.pi
    np.testing.assert_array_equal(loaded["i"], [-3, 2**40])
    np.testing.assert_array_equal(loaded["f"], [[1.5, -0.25]])
    assert sio.SafeTensors(tmp_path / "x.safetensors").metadata == {"format": "pt"}


arrays = st.dictionaries(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
    .filter(lambda s: s != "__metadata__"),
    hnp.arrays(st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int32, np.int64,
                                np.uint8, np.uint16, np.bool_, np.dtype(">f4"), np.dtype(">i8")]),
               hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)),
    max_size=6)


@settings(max_examples=60, deadline=None)
@given(tensors=arrays)
def test_save_then_load_returns_every_tensor_exactly(tmp_path_factory, tensors):
    path = tmp_path_factory.mktemp("st") / "t.safetensors"
    sio.save(path, tensors, {"format": "pt", "note": "ünïcode"})
    loaded = sio.load(path)
    assert loaded.keys() == tensors.keys()
    for name, a in tensors.items():
        assert loaded[name].dtype == a.dtype.newbyteorder("=") and loaded[name].shape == a.shape
        np.testing.assert_array_equal(loaded[name], a)
    assert sio.SafeTensors(path).metadata == {"format": "pt", "note": "ünïcode"}


def test_saved_layout_aligns_every_tensor(tmp_path):
    tensors = {"a": np.ones(3, np.int8), "b": np.ones(2, np.float64), "c": np.ones(5, np.float16),
               "d": np.ones((2, 2), np.float32)}
    sio.save(tmp_path / "x.safetensors", tensors)
    blob = (tmp_path / "x.safetensors").read_bytes()
    n = int.from_bytes(blob[:8], "little")
    assert n % 8 == 0                                  # the data starts 8-byte aligned
    header = json.loads(blob[8:8 + n])
    for name, a in tensors.items():
        begin, end = header[name]["data_offsets"]
        assert begin % a.itemsize == 0 and end - begin == a.nbytes
        np.testing.assert_array_equal(np.frombuffer(blob[8 + n + begin:8 + n + end], a.dtype), a.ravel())
    assert 8 + n + max(e["data_offsets"][1] for e in header.values()) == len(blob)


def corrupt_cases():
    good = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    data = np.zeros(2, "<f4").tobytes()
    two = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
           "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}
    return {
        "too short for a header length": (b"\x10\x00\x00", "truncated"),
        "header length past the end": ((500).to_bytes(8, "little") + b"{}", "truncated"),
        "header not JSON": ((4).to_bytes(8, "little") + b"{{{{", "not valid JSON"),
        "header a list": ((2).to_bytes(8, "little") + b"[]", "expected an object"),
        "unknown dtype": (({"w": {**good["w"], "dtype": "F8_E4M3"}}, data), "'F8_E4M3'"),
        "shape does not fit offsets": (({"w": {**good["w"], "shape": [3]}}, data), "span 8 bytes"),
        "negative shape": (({"w": {**good["w"], "shape": [-2]}}, data), "non-negative"),
        "data cut short": ((good, data[:5]), "truncated"),
        "gap between tensors": ((two, bytes(12)), "gap or an overlap"),
        "bytes after the last tensor": ((good, data + b"\x00"), "cover 8 bytes"),
    }


@pytest.mark.parametrize("case", list(corrupt_cases()))
def test_corrupt_or_truncated_files_raise_saying_what_is_wrong(case, tmp_path):
    content, message = corrupt_cases()[case]
    path = tmp_path / "bad.safetensors"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        raw_file(path, *content)
    with pytest.raises(SafetensorsError, match=message) as info:
        sio.load(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_every_truncation_of_a_real_file_is_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    sio.save(path, {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(3, np.float64)})
    blob = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    for size in range(len(blob)):
        cut.write_bytes(blob[:size])
        with pytest.raises(SafetensorsError):
            sio.load(cut)


def test_a_failed_save_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "x.safetensors"
    sio.save(path, {"w": np.ones(2, np.float32)})
    before = path.read_bytes()
    with pytest.raises(TypeError, match="'bad'.*complex128"):
        sio.save(path, {"ok": np.zeros(3), "bad": np.zeros(2, complex)})
    with pytest.raises(ValueError, match="__metadata__"):
        sio.save(path, {"__metadata__": np.zeros(1)})
    assert path.read_bytes() == before
    sio.save(path, {"w": np.zeros(4, np.float16)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]
    assert sio.load(path)["w"].dtype == np.float16


def test_reads_and_is_read_by_the_safetensors_package(tmp_path):
    sn = pytest.importorskip("safetensors.numpy", reason="cross-check needs the safetensors package")
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "h": np.array([0.5, -1], np.float16),
               "s": np.array(7, np.int64), "e": np.zeros((0, 3), np.float64)}
    sn.save_file(tensors, tmp_path / "theirs.safetensors", metadata={"format": "np"})
    sio.save(tmp_path / "ours.safetensors", tensors, {"format": "np"})
    for ours in (sio.load(tmp_path / "theirs.safetensors"), sn.load_file(tmp_path / "ours.safetensors")):
        for name, a in tensors.items():
            assert ours[name].dtype == a.dtype and ours[name].shape == a.shape
            np.testing.assert_array_equal(ours[name], a)


def test_reads_torch_bfloat16_written_by_the_safetensors_package(tmp_path):
    torch = pytest.importorskip("torch", reason="bfloat16 cross-check needs torch")
    stt = pytest.importorskip("safetensors.torch", reason="cross-check needs the safetensors package")
    values = torch.randn(4, 5, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    stt.save_file({"w": values}, str(tmp_path / "bf16.safetensors"))
    loaded = sio.load(tmp_path / "bf16.safetensors")["w"]
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, values.float().numpy())
