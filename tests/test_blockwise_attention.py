"""Blockwise attention: the same numbers as the full kernel (outputs and every gradient), its
VJP against finite differences, dropout independent of the tiling, the policy, and memory
that does not grow with T²."""

import importlib
import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lt
import lt.cli
from lt import nn, ops, random
from lt.ops.attention import dropout_keep
from lt.testing import check_grads

BLOCKWISE = importlib.import_module("lt.ops.blockwise")     # the module (lt.ops.blockwise_attention is the primitive)

SETTINGS = settings(deadline=None, max_examples=30)

TOL = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=1e-6, atol=1e-6)}


def normal(shape, seed, dtype=np.float64, scale=1.0):
    return random.normal(random.key(seed), shape, dtype) * dtype(scale)


def make_mask(kind, B, T, S, seed):
    """None, or a bool mask broadcastable to (B, 1, T, S) of the given kind."""
    if kind == "none" or kind == "causal":
        return None
    if kind == "left_padding":                            # row b's first b keys are padding
        pad = np.minimum(np.arange(B), S)
        real = np.arange(S)[None, :] >= pad[:, None]      # (B, S)
        return np.tri(T, S, S - T, dtype=bool) & real[:, None, None, :]
    mask = random.bernoulli(random.key(seed), 0.5, (B, 1, T, S))
    if kind == "dead_rows":                               # some rows see no key at all
        mask[:, :, ::2] = False
    return mask


def both(q, k, v, mask, causal, rate, rng, block, w):
    """Output and the gradients of sum(out * w) under each kernel: {kernel: (out, dq, dk, dv)}."""
    res = {}
    for kernel in ("full", "blockwise"):
        def f(q, k, v):
            return ops.dot_product_attention(q, k, v, mask, rate, rng, causal=causal, kernel=kernel, block=block)
        out = f(q, k, v)
        grads = lt.grad(lambda q, k, v: ops.sum(f(q, k, v) * w), argnums=(0, 1, 2))(q, k, v)
        res[kernel] = (out, *grads)
    return res


@SETTINGS
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 19), st.integers(1, 19), st.integers(1, 5),
       st.sampled_from(["none", "causal", "left_padding", "random", "dead_rows"]),
       st.integers(1, 7), st.integers(1, 7), st.sampled_from([np.float64, np.float32]),
       st.sampled_from([1.0, 40.0]), st.integers(0, 2**20))
def test_blockwise_equals_full_outputs_and_gradients(B, H, T, S, d, kind, bq, bk, dtype, scale, seed):
    if kind == "left_padding":
        S = T                                             # a decoder's padded prompt
    q, k, v = normal((B, H, T, d), seed, dtype, scale), normal((B, H, S, d), seed + 1, dtype), \
        normal((B, H, S, d + 1), seed + 2, dtype)
    w = normal((B, H, T, d + 1), seed + 3, dtype)
    res = both(q, k, v, make_mask(kind, B, T, S, seed), kind == "causal", 0.0, None, (bq, bk), w)
    # The outputs: within 1e-6 in float32 for scores of ordinary size. A float32 score of size
    # |s| carries an absolute rounding error of |s| * 6e-8, which exp turns into a relative
    # error of that size in either kernel, so the bound grows with the largest score.
    largest_score = float(np.abs(q @ np.swapaxes(k, -1, -2)).max()) / np.sqrt(d)
    out_tol = {k_: t * max(1.0, largest_score / 10) for k_, t in TOL[dtype].items()}
    np.testing.assert_allclose(res["blockwise"][0], res["full"][0], **out_tol)
    for full, blockwise in zip(res["full"], res["blockwise"]):
        assert blockwise.dtype == dtype and np.all(np.isfinite(blockwise))
        # gradients: the blockwise backward forms Σ_j dp·p as g·out (FlashAttention's D), so a
        # gradient that cancels to 0 keeps the rounding of the terms it cancels, |g| |v| |k|
        terms = float(np.abs(w).max() * np.abs(v).max() * max(np.abs(k).max(), np.abs(q).max()))
        tol = TOL[dtype]["atol"] * 10 * max(1.0, float(np.abs(full).max()), terms)
        np.testing.assert_allclose(blockwise, full, rtol=10 * TOL[dtype]["rtol"], atol=tol)


@SETTINGS
@given(st.integers(1, 12), st.integers(1, 12), st.sampled_from(["none", "causal", "dead_rows"]),
       st.integers(1, 5), st.integers(1, 5), st.integers(0, 2**20))
def test_dropout_is_drawn_by_position_so_both_kernels_and_any_tiling_agree(T, S, kind, bq, bk, seed):
    q, k, v = normal((2, 2, T, 3), seed), normal((2, 2, S, 3), seed + 1), normal((2, 2, S, 2), seed + 2)
    w = normal((2, 2, T, 2), seed + 3)
    rng = random.key(seed)
    res = both(q, k, v, make_mask(kind, 2, T, S, seed), kind == "causal", 0.4, rng, (bq, bk), w)
    for full, blockwise in zip(res["full"], res["blockwise"]):
        np.testing.assert_allclose(blockwise, full, rtol=1e-12, atol=1e-12)
    other = ops.dot_product_attention(q, k, v, make_mask(kind, 2, T, S, seed), 0.4, rng,
                                      causal=kind == "causal", kernel="blockwise", block=(bq + 1, bk + 2))
    np.testing.assert_allclose(other, res["blockwise"][0], rtol=1e-12, atol=1e-12)
    no_drop = ops.dot_product_attention(q, k, v, make_mask(kind, 2, T, S, seed), causal=kind == "causal")
    assert T * S < 4 or not np.allclose(no_drop, res["full"][0])     # dropout did drop something


def test_dropout_keeps_each_weight_with_probability_one_minus_rate():
    keep = dropout_keep(random.key(3), 0.25, (2, 3), 64, 64, slice(0, 64), slice(0, 64))
    assert keep.shape == (2, 3, 64, 64) and abs(keep.mean() - 0.75) < 0.01
    part = dropout_keep(random.key(3), 0.25, (2, 3), 64, 64, slice(5, 9), slice(17, 40))
    assert np.array_equal(part, keep[..., 5:9, 17:40])    # a tile draws exactly the whole matrix's bits


@SETTINGS
@given(st.integers(1, 9), st.integers(1, 9), st.sampled_from(["none", "causal", "random", "dead_rows"]),
       st.sampled_from([0.0, 0.3]), st.integers(0, 2**20))
def test_blockwise_vjp_matches_finite_differences(T, S, kind, rate, seed):
    q, k, v = normal((2, 2, T, 3), seed), normal((2, 2, S, 3), seed + 1), normal((2, 2, S, 2), seed + 2)
    mask, rng = make_mask(kind, 2, T, S, seed), (random.key(seed) if rate else None)
    check_grads(lambda q, k, v: ops.blockwise_attention(q, k, v, mask, rate, rng, causal=kind == "causal",
                                                        block=(2, 3)),
                [q, k, v], argnums=(0, 1, 2))


def test_single_position_and_broadcast_batch_axes():
    q, k, v = normal((3, 1, 4), 0), normal((2, 3, 5, 4), 1), normal((1, 3, 5, 2), 2)     # q, v broadcast over B
    for causal in (False, True):
        full = ops.dot_product_attention(q, k, v, causal=causal, kernel="full")
        block = ops.dot_product_attention(q, k, v, causal=causal, kernel="blockwise", block=(1, 2))
        np.testing.assert_allclose(block, full, rtol=1e-12, atol=1e-12)
    check_grads(lambda q, k, v: ops.blockwise_attention(q, k, v, block=(1, 2)), [q, k, v], argnums=(0, 1, 2))


def test_fully_masked_rows_are_uniform_over_all_keys():
    q, k, v = normal((1, 1, 4, 3), 0), normal((1, 1, 6, 3), 1), normal((1, 1, 6, 2), 2)
    mask = np.ones((4, 6), bool)
    mask[1] = False
    out = ops.blockwise_attention(q, k, v, mask, block=(2, 2))
    np.testing.assert_allclose(out[0, 0, 1], v[0, 0].mean(0), rtol=1e-12)


def test_policy_picks_full_for_short_and_blockwise_for_long_and_obeys_the_keyword():
    assert ops.attention_kernel(8, 8) == "full" and ops.attention_kernel(64, 64) == "full"
    assert ops.attention_kernel(1, 10_000) == "full"               # a decode step: one query row
    assert ops.attention_kernel(4096, 4096) == "blockwise"
    assert ops.attention_kernel(4096, 4096, kernel="full") == "full"
    assert ops.attention_kernel(8, 8, kernel="blockwise") == "blockwise"
    assert ops.attention_kernel(4096, 4096, return_weights=True) == "full"
    with pytest.raises(ValueError, match="kernel"):
        ops.attention_kernel(8, 8, kernel="flash")
    with pytest.raises(ValueError, match="return_weights"):
        ops.attention_kernel(8, 8, return_weights=True, kernel="blockwise")


def test_sdpa_and_multi_head_attention_give_the_same_numbers_with_either_kernel():
    q, k, v = normal((2, 3, 40, 8), 0), normal((2, 3, 40, 8), 1), normal((2, 3, 40, 8), 2)
    x = normal((2, 40, 24), 3)
    for causal in (dict(mask=nn.causal_mask(40)), dict(causal=True)):   # the explicit mask, and the flag
        full = nn.scaled_dot_product_attention(q, k, v, kernel="full", **causal)
        np.testing.assert_allclose(nn.scaled_dot_product_attention(q, k, v, kernel="blockwise", **causal), full,
                                   rtol=1e-12, atol=1e-12)
        for mha in (nn.MultiHeadAttention(24, 3), nn.MultiHeadAttention(24, 6, num_kv_heads=2)):   # GQA too
            p = lt.tree.map(lambda a: a.astype(np.float64), mha.init(random.key(0)))
            def loss(p, kernel, mha=mha, causal=causal):
                return ops.sum(mha.apply(p, x, x, x, kernel=kernel, **causal) * x)
            results = [lt.value_and_grad(loss)(p, kernel) for kernel in ("full", "blockwise")]
            np.testing.assert_allclose(float(results[1][0]), float(results[0][0]), rtol=1e-12)
            for a, b in zip(lt.tree.leaves(results[0][1]), lt.tree.leaves(results[1][1])):
                np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


def test_model_loss_and_gradients_agree_whichever_kernel_the_policy_picks(monkeypatch):
    model = lt.GPT.preset("tiny")
    params = model.init(random.key(0))
    ids = random.randint(random.key(1), (2, 64), 0, model.vocab_size)
    seen = []
    results = {}
    for kernel in ("full", "blockwise"):
        def policy(T, S, *, return_weights=False, kernel="auto", forced=kernel):
            seen.append(forced)
            return forced
        monkeypatch.setattr(BLOCKWISE, "attention_kernel", policy)
        results[kernel] = lt.value_and_grad(model.loss)(params, ids)
    assert set(seen) == {"full", "blockwise"}
    (lf, gf), (lb, gb) = results["full"], results["blockwise"]
    assert abs(float(lf) - float(lb)) < 1e-6
    for a, b in zip(lt.tree.leaves(gf), lt.tree.leaves(gb)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_long_causal_attention_memory_does_not_grow_with_t_squared():
    # B = 1, H = 12, T = 4096, d = 64, float32: the score matrix alone would be 805 MB
    T = 4096
    q, k, v = (random.normal(random.key(i), (1, 12, T, 64)) for i in range(3))
    tracemalloc.start()
    try:
        loss, grads = lt.value_and_grad(lambda q, k, v: ops.sum(nn.scaled_dot_product_attention(q, k, v, causal=True)),
                                        argnums=(0, 1, 2))(q, k, v)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 300 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert np.isfinite(float(loss)) and all(np.all(np.isfinite(g)) for g in grads)
    # spot-check the gradient of a few rows against the full kernel on a short prefix
    t = 256
    sub = [a[:, :, :t] for a in (q, k, v)]
    ref = lt.grad(lambda q, k, v: ops.sum(nn.scaled_dot_product_attention(q, k, v, nn.causal_mask(t),
                                                                          kernel="full")),
                  argnums=(0, 1, 2))(*sub)
    np.testing.assert_allclose(grads[0][:, :, :t], ref[0], rtol=1e-4, atol=1e-5)   # causal: a prefix is its own problem


def test_cli_trains_past_the_presets_context(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text("to be or not to be, that is the question. " * 200)
    out = tmp_path / "run"
    argv = ["train", "--recipe", "nanogpt", "--preset", "tiny", "--batch-size", "1", "--seq-len", "300", "--steps", "1",
            "--sample-tokens", "0", "--data", str(data), "--out", str(out)]
    assert lt.cli.main(argv) == 0                          # tiny's context is 128
    assert json.loads((out / "run.json").read_text())["model"]["max_seq_len"] == 300


def test_prefill_of_a_long_prompt_runs_blockwise_and_matches_apply(monkeypatch):
    import lt.generate as gen
    model = lt.GPT.preset("tiny")
    params = model.init(random.key(0))
    prompt = random.randint(random.key(2), (2, 128), 0, model.vocab_size)
    picked = []
    real = BLOCKWISE.attention_kernel

    def recording(T, S, **kw):
        picked.append(((T, S), real(T, S, **kw)))
        return picked[-1][1]
    monkeypatch.setattr(BLOCKWISE, "attention_kernel", recording)
    logits, _ = gen.prefill(model, params, prompt)
    assert picked and all(kernel == "blockwise" for _, kernel in picked)
    monkeypatch.setattr(BLOCKWISE, "attention_kernel", lambda T, S, **kw: "full")
    np.testing.assert_allclose(logits, model.apply(params, prompt)[:, -1], rtol=1e-5, atol=1e-5)
