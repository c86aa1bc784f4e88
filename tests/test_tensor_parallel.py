"""Tensor parallelism and ZeRO-1 in one process: shard shapes and round trips, the vocabulary-
parallel loss on one rank, ZeRO slices, and the sharded training path on one rank. The real MPI
jobs are in ``test_tensor_parallel_mpi.py`` (which takes its models and data from here).
"""

import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lt
from lt import optim, random, tree
from lt.parallel import Group, ShardedGPT, split_range, zero

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXT = "It was the best of times, it was the worst of times, it was the age of wisdom? " * 40
CHARS = sorted(set(TEXT))                  # 19: split 10 + 9 over 2 ranks, 5 + 5 + 5 + 4 over 4
TOKENS = np.array([CHARS.index(c) for c in TEXT])
MODELS = {"gpt": lt.GPT.preset("tiny", vocab_size=len(CHARS), max_seq_len=16, num_heads=4),
          "llama": lt.GPT.preset("llama-tiny", vocab_size=len(CHARS), max_seq_len=16, tie_embeddings=False)}


def make_opt():
    return optim.chain(optim.clip_by_global_norm(0.5), optim.adamw(optim.warmup_cosine(1e-2, 2, 20), weight_decay=0.1))


# ------------------------------------------------------------------ no MPI needed

@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("P", [2, 4])
def test_each_rank_holds_its_part_of_every_split_leaf_and_the_parts_join_to_the_whole(name, P):
    model = MODELS[name]
    full = model.init(random.key(0), np.float64)
    shards = [ShardedGPT(model, Group(None, r, P)) for r in range(P)]
    params = [s.init(random.key(0), np.float64) for s in shards]
    D, F, V, H = model.hidden_dim, model.ffn_dim, model.vocab_size, model.num_heads
    d, Hkv = D // H, model.kv_heads
    local_kv = max(Hkv // P, 1)                # llama-tiny on 4 ranks: its 2 kv heads copied to 2 ranks each
    for r, (s, p) in enumerate(zip(shards, params)):
        s.check_params(p)
        shapes = dict((k, v.shape) for k, v in tree.items(p))
        lo, hi = split_range(V, r, P)
        assert shapes["wte.w"] == (hi - lo, D)
        assert shapes["blocks.0.attn.qkv.w"] == (D, (H // P + 2 * local_kv) * d)
        assert shapes["blocks.0.attn.proj.w"] == (H * d // P, D)
        assert shapes["blocks.1.ln1.scale"] == (D,)
        ffn = ("fc", "proj") if name == "gpt" else ("up", "down")
        f_lo, f_hi = split_range(F, r, P)
        assert shapes[f"blocks.1.ffn.{ffn[0]}.w"] == (D, f_hi - f_lo)
        assert shapes[f"blocks.1.ffn.{ffn[1]}.w"] == (f_hi - f_lo, D)
        if name == "llama":
            assert shapes["head.w"] == (D, hi - lo)
        # the numbers are the whole model's: this rank's rows of the table, its heads' query columns
        assert np.array_equal(p["wte"]["w"], full["wte"]["w"][lo:hi])
        q = p["blocks"][0]["attn"]["qkv"]["w"][:, :H * d // P]
        assert np.array_equal(q, full["blocks"][0]["attn"]["qkv"]["w"][:, r * H * d // P:(r + 1) * H * d // P])
        assert np.array_equal(s.shard(full)["blocks"][1]["attn"]["qkv"]["w"], p["blocks"][1]["attn"]["qkv"]["w"])
    whole = shards[0].gather(params)
    assert tree.flatten(whole)[1] == tree.flatten(full)[1]
    assert all(np.array_equal(a, b) for a, b in zip(tree.leaves(whole), tree.leaves(full)))
    assert sum(tree.size(p) for p in params) < P * tree.size(full) / 1.5        # not P copies


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 3), st.integers(1, 6), st.integers(2, 9), st.integers(0, 2**31 - 1))
def test_the_vocabulary_parallel_loss_of_one_rank_is_the_cross_entropy_with_its_gradient(B, T, V, seed):
    """On one rank the parallel loss must be ``lt.ops.cross_entropy`` (the MPI jobs below check the
    split vocabulary against it too); ignored positions count for nothing."""
    x = random.normal(random.key(seed), (B, T, V), np.float64) * 4
    t = random.randint(random.fold_in(random.key(seed), 1), (B, T), -1, V)          # -1: ignored
    one = Group(None, 0, 1)
    got, g_got = lt.value_and_grad(lambda z: lt.parallel.parallel_cross_entropy(z, t, group=one, vocab_size=V,
                                                                                  ignore_index=-1))(x)
    want, g_want = lt.value_and_grad(lt.ops.cross_entropy)(x, t, -1)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(g_got, g_want, rtol=1e-12, atol=1e-14)
    assert not np.any(g_got[t == -1])
    with pytest.raises(ValueError, match="rank 0 of 1 holds vocabulary rows \\[0, 12\\) of 12"):
        lt.parallel.parallel_cross_entropy(x, t, group=one, vocab_size=12)


def test_heads_that_do_not_divide_are_refused_naming_the_sizes():
    with pytest.raises(ValueError, match=r"num_heads \(2\) must be divisible by 4"):
        ShardedGPT(lt.GPT.preset("tiny"), Group(None, 1, 4))
    gqa = lt.GPT.preset("llama-tiny", num_heads=6, hidden_dim=48, num_kv_heads=3)
    with pytest.raises(ValueError, match=r"num_kv_heads \(3\) must divide 2 .* or be divisible by it"):
        ShardedGPT(gqa, Group(None, 1, 2))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 6))
def test_zero_slices_cover_each_leaf_once_in_rank_order_and_keep_matrices_2d(n, P):
    x = np.arange(2 * n, dtype=np.float64).reshape(2, n)
    parts = [zero.slices({"w": x, "b": x[0]}, r, P) for r in range(P)]
    assert np.array_equal(np.concatenate([p["w"].ravel() for p in parts]), x.ravel())
    assert np.array_equal(np.concatenate([p["b"] for p in parts]), x[0])
    assert all(p["w"].ndim == 2 and p["b"].ndim == 1 for p in parts)


def test_zero_state_round_trips_through_the_whole_optimizer_state():
    model, opt = MODELS["gpt"], make_opt()
    params = model.init(random.key(0), np.float64)
    grads = tree.map(lambda p: p * 0.5 + 0.01, params)
    whole = opt.update(grads, opt.init(params), params)[1]           # a state with non-zero moments
    want = np.ravel(whole[1].mu["blocks"][0]["attn"]["qkv"]["w"])
    for P in (1, 3):
        parts = [zero.scatter_state(opt, whole, params, r, P) for r in range(P)]
        got = [part.inner[1].mu["blocks"][0]["attn"]["qkv"]["w"] for part in parts]
        assert all(g.ndim == 2 for g in got) and np.array_equal(np.concatenate([g.ravel() for g in got]), want)
        assert all(int(part.inner[1].schedule.count) == 1 for part in parts)
    back = zero.gather_state(opt, parts[0] if P == 1 else zero.scatter_state(opt, whole, params, 0, 1), params, None)
    assert tree.flatten(back)[1] == tree.flatten(whole)[1]
    assert all(np.array_equal(a, b) for a, b in zip(tree.leaves(back), tree.leaves(whole)))


def test_one_rank_with_zero_trains_like_the_plain_loop():
    """TensorParallel over one rank in one process runs the sharded path end to end (ZeRO over one
    rank, the clipping norm handed to the optimizer) and must give the plain loop's numbers."""
    model, opt = MODELS["llama"], make_opt()
    start = lt.TrainState.create(model.init(random.key(0), np.float64), opt)
    kw = dict(steps=5, batch_size=4, seq_len=16, rng=random.key(7), log_every=1, progress=False, verbose=False)
    a, la = lt.train(model, opt, start, TOKENS, **kw)
    b, lb = lt.train(model, opt, start, TOKENS, strategy=lt.parallel.TensorParallel(None, 1), **kw)
    assert tree.flatten(a.opt_state)[1] == tree.flatten(b.opt_state)[1] and a.step == b.step == 5
    for x, y in zip(tree.leaves((a.params, a.opt_state)), tree.leaves((b.params, b.opt_state))):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-12)
    np.testing.assert_allclose([r["loss"] for r in la], [r["loss"] for r in lb], rtol=1e-12)
    assert min(r["loss"] for r in la) < la[0]["loss"] - 0.1                # it trained
