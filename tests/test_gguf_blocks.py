"""Q8_0 and Q4_0 blocks: lt makes ggml's bytes bit for bit, and holds their values exactly as quantized leaves."""

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import lt
from lt import quant
from lt.gguf import blocks

gguf = pytest.importorskip("gguf", reason="the reference quantizer is the gguf package: pip install 'lt[gguf]'")
Q = {blocks.Q8_0: gguf.GGMLQuantizationType.Q8_0, blocks.Q4_0: gguf.GGMLQuantizationType.Q4_0}
MAKE = {blocks.Q8_0: blocks.quantize_q8_0, blocks.Q4_0: blocks.quantize_q4_0}

# Rows of whole blocks, with the awkward values: zeros (all-zero blocks), ties at .5 after scaling
# (small integers and quarters), a block's extreme of either sign, and a wide range of magnitudes.
_VALUES = st.one_of(
    st.floats(-1e4, 1e4, width=32, allow_subnormal=False),
    st.sampled_from([0.0, 0.5, -0.5, 1.0, -1.0, 2.5, -2.5, 127.0, -127.0, 8.0, -8.0, 0.25]),
)
ROWS = st.integers(1, 4).flatmap(
    lambda r: st.integers(1, 3).flatmap(lambda nb: arrays(np.float32, (r, 32 * nb), elements=_VALUES))
)


@settings(max_examples=150, deadline=None)
@given(ROWS, st.sampled_from([blocks.Q8_0, blocks.Q4_0]))
def test_lt_makes_the_blocks_ggml_makes_bit_for_bit(w, kind):
    mine = MAKE[kind](w)
    assert mine.dtype == np.uint8
    assert np.array_equal(mine, gguf.quants.quantize(w, Q[kind]))


@settings(max_examples=100, deadline=None)
@given(ROWS, st.sampled_from([blocks.Q8_0, blocks.Q4_0]), st.sampled_from([0, 1]))
def test_a_block_tensor_loads_as_a_leaf_with_exactly_its_values_and_writes_back_unchanged(w, kind, axis):
    data = gguf.quants.quantize(w, Q[kind])
    R, K = w.shape
    leaf = blocks.to_leaf(data.reshape(-1), kind, R, K, axis=axis, dtype=np.float32)
    assert leaf.bits == (8 if kind == blocks.Q8_0 else 4) and leaf.group_size == 32 and leaf.axis == axis
    assert leaf.shape == ((K, R) if axis == 0 else (R, K))
    values = gguf.quants.dequantize(data, Q[kind])  # (R, K): the package's own reading
    got = quant.dequantize_array(leaf)
    assert np.array_equal(got.T if axis == 0 else got, values)
    assert np.array_equal(blocks.leaf_blocks(leaf, kind), data)  # re-exported without requantizing


def test_q4_0_uses_code_minus_8_and_negative_scales_which_the_leaf_keeps():
    w = np.linspace(-1, 3, 64, dtype=np.float32).reshape(1, 64)  # largest weight positive: d = 3 / -8 < 0
    data = blocks.quantize_q4_0(w)
    leaf = blocks.to_leaf(data.reshape(-1), blocks.Q4_0, 1, 64, axis=1, dtype=np.float32)
    assert leaf.signed_scales and (leaf.scales < 0).any()
    assert quant.integer_codes(leaf).min() == -8  # the block's extreme weight
    assert np.array_equal(quant.dequantize_array(leaf), gguf.quants.dequantize(data, Q[blocks.Q4_0]))
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    ref = x @ quant.dequantize_array(leaf).T
    np.testing.assert_allclose(lt.ops.quantized.matmul_t(x, leaf), ref, rtol=1e-5, atol=1e-5)


def test_leaf_blocks_refuses_what_the_format_cannot_hold_exactly():
    w = np.random.default_rng(1).standard_normal((4, 64))
    assert blocks.leaf_blocks(quant.quantize_array(w, 8, 32, axis=1), blocks.Q8_0) is None  # float32 scales
    assert blocks.leaf_blocks(quant.quantize_array(w, 8, 64, axis=1), blocks.Q8_0) is None  # groups of 64
    assert blocks.leaf_blocks(quant.quantize_array(w, 4, 32, axis=1), blocks.Q8_0) is None  # int4
    with pytest.raises(ValueError, match="whole blocks of 32"):
        blocks.quantize_q8_0(np.ones((2, 40), np.float32))


@given(st.integers(1, 3), st.integers(1, 3), st.sampled_from([8, 4]), st.data())
def test_from_codes_and_integer_codes_are_inverses(R, g, bits, data):
    low, high = (-128, 127) if bits == 8 else (-8, 7)
    codes = data.draw(arrays(np.int8, (R, 32 * g), elements=st.integers(low, high)))
    scales = data.draw(arrays(np.float32, (R, g), elements=st.floats(-2, 2, width=32)))
    leaf = quant.from_codes(codes, scales, bits=bits, group_size=32, axis=1, shape=(R, 32 * g), signed_scales=True)
    assert np.array_equal(quant.integer_codes(leaf), codes)
    expected = (codes.reshape(R, g, 32) * scales[:, :, None]).reshape(R, -1)
    assert np.array_equal(quant.dequantize_array(leaf), expected)


def test_from_codes_names_a_code_out_of_range_and_scales_stay_non_negative_unless_signed():
    with pytest.raises(ValueError, match=r"\[-8, 7\], got 8"):
        quant.from_codes(np.full((1, 32), 8), np.ones((1, 1), np.float32), bits=4, group_size=32, axis=1, shape=(1, 32))
    with pytest.raises(ValueError, match="non-negative"):
        quant.from_codes(
            np.ones((1, 32), np.int8), -np.ones((1, 1), np.float32), bits=8, group_size=32, axis=1, shape=(1, 32)
        )


def test_a_signed_leaf_survives_pickling_slicing_and_a_checkpoint(tmp_path):
    model = lt.GPT.preset("llama-tiny", vocab_size=64)
    params = model.init(lt.random.key(0))
    w = np.asarray(params["wte"]["w"], np.float32)  # (V, D): rows of 32
    leaf = blocks.to_leaf(blocks.quantize_q4_0(w).reshape(-1), blocks.Q4_0, *w.shape, axis=1, dtype=np.float32)
    assert leaf.signed_scales
    again = pickle.loads(pickle.dumps(leaf))
    assert again.signed_scales and np.array_equal(again.codes, leaf.codes) and np.array_equal(again.scales, leaf.scales)
    assert leaf[2:5].signed_scales
    qparams = lt.tree.set(params, "wte.w", leaf)
    lt.checkpoint.save(tmp_path / "c.safetensors", model, qparams, step=3)
    _, loaded = lt.checkpoint.load_model(tmp_path / "c.safetensors")
    back = lt.tree.get(loaded, "wte.w")
    assert back.signed_scales and np.array_equal(quant.dequantize_array(back), quant.dequantize_array(leaf))
