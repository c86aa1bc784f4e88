"""The parameter layout declared once: every leaf's role and split come from its component's
``spec()``, and what derives from them (decay masks, the quantization plan, tensor-parallel
shards, optimizer-state walks, Hugging Face transposes) agrees with the facts it replaces."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lt
from lt import nn, optim, quant, random, tree
from lt.parallel import Group, ShardedGPT, shards

PRESETS = ["tiny", "small", "llama-tiny", "gpt2", "smollm-135m"]


@pytest.mark.parametrize("name", PRESETS)
def test_every_leaf_declares_a_role_and_the_roles_say_what_the_leaf_is(name):
    model = lt.GPT.preset(name)
    decls = dict(tree.items(model.spec()))
    assert all(p.role in nn.ROLES for p in decls.values())
    for path, p in decls.items():
        if path.endswith(("scale",)):
            assert p.role == "scale" and len(p.shape) == 1 and p.split is None
        if p.role == "bias":
            assert len(p.shape) == 1
        if p.role == "weight":
            assert len(p.shape) == 2
    assert decls["wte.w"].role == "table" and decls["wte.w"].split.axis == 0
    if "wpe.w" in decls:
        assert decls["wpe.w"].role == "positions" and decls["wpe.w"].split is None


@pytest.mark.parametrize("name", PRESETS)
def test_the_declared_decay_mask_equals_the_matrices_rule_for_every_preset(name):
    model = lt.GPT.preset(name, tie_embeddings=name != "small")
    spec = model.spec()
    assert tree.leaves(nn.decay_mask(model)) == tree.leaves(optim.decay_mask(spec_shapes(spec)))


def spec_shapes(spec):
    return tree.map(lambda p: np.broadcast_to(np.float32(0), p.shape), spec)


@pytest.mark.parametrize("name", ["tiny", "llama-tiny"])
def test_the_quantization_plan_comes_from_the_roles_not_the_names(name):
    model = lt.GPT.preset(name, tie_embeddings=False)
    for path, p in tree.items(model.spec()):
        axis = quant.plan(p)
        if path == "wte.w":
            assert axis == 1          # a table: grouped along its rows
        elif path == "wpe.w" or len(p.shape) == 1:
            assert axis is None       # positions, norms, biases stay float
        else:
            assert axis == 0          # a Linear weight (in, out), the untied head included
    params = model.init(random.key(0))
    q = lt.quantize(params, 8, model=model)
    for path, x in tree.items(q):
        assert quant.is_quantized(x) == (quant.plan(tree.get(model.spec(), path)) is not None)


def test_quantize_refuses_params_of_another_model_naming_where():
    params = lt.GPT.preset("tiny").init(random.key(0))
    with pytest.raises(ValueError, match="do not fit the model's spec"):
        lt.quantize(params, 8, model=lt.GPT.preset("tiny", num_layers=3))


def test_map_params_reaches_every_params_shaped_subtree_of_an_optimizer_state_and_nothing_else():
    model = lt.GPT.preset("tiny")
    params = model.init(random.key(0))
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(1e-3))
    state = opt.init(params)
    seen = []
    out = tree.map_params(lambda x, p: seen.append(p.shape) or np.full(np.shape(x), len(p.shape)), state, model.spec())
    assert len(seen) == 2 * len(tree.leaves(params))          # mu and nu, leaf by leaf
    assert np.all(out[1].mu["wte"]["w"] == 2) and np.all(out[1].nu["ln_f"]["scale"] == 1)
    assert int(out[1].schedule.count) == 0                   # the step count is left alone


def test_a_part_handed_in_replaces_the_built_one_and_config_leaves_it_out():
    model = lt.GPT.preset("tiny")
    doubled = nn.Linear(32, 128, split=nn.Split(1, (128,)))
    ffn = lt.nn.FeedForward(32, 128, parts=nn.Parts.of(fc=doubled))
    assert ffn.fc is doubled and ffn.proj == lt.nn.FeedForward(32, 128).proj
    assert ffn != lt.nn.FeedForward(32, 128)                       # the part is part of its identity
    assert nn.config(model) == {k: v for k, v in nn.config(model).items() if k != "parts"}
    assert "parts" not in nn.config(model) and lt.GPT(**nn.config(model)) == model


def test_gated_feed_forward_has_the_dropout_its_config_asks_for():
    ffn = nn.GatedFeedForward(16, 24, dropout=0.5)
    params = ffn.init(random.key(0))
    x = random.normal(random.key(1), (2, 3, 16))
    plain = ffn.apply(params, x)
    dropped = ffn.apply(params, x, rng=random.key(2))
    zeros = np.isclose(dropped, 0.0)
    assert zeros.mean() > 0.3 and np.allclose(dropped[~zeros], 2 * plain[~zeros], rtol=1e-5)
    assert np.array_equal(nn.GatedFeedForward(16, 24).apply(params, x, rng=random.key(2)), plain)


def test_the_model_says_its_head_size_and_cache_layout():
    model = lt.GPT.preset("llama-tiny")
    assert model.head_dim == model.hidden_dim // model.num_heads
    assert model.cache_shape == (model.num_layers, model.kv_heads, model.head_dim)
    local = ShardedGPT(lt.GPT.preset("llama-tiny"), Group(None, 1, 4)).local
    assert local.cache_shape == (model.num_layers, 1, model.head_dim)   # 2 kv heads copied to 2 ranks each


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 3), st.booleans())
def test_causal_flag_and_the_explicit_causal_mask_give_the_same_attention(T, extra, seed, blockwise):
    S = T + extra
    q = random.normal(random.key(seed), (2, 3, T, 8))
    k, v = (random.normal(random.fold_in(random.key(seed), i), (2, 3, S, 8)) for i in (1, 2))
    mask = np.arange(S)[None, :] <= np.arange(T)[:, None] + (S - T)        # j <= i + S - T
    kernel = "blockwise" if blockwise else "full"
    a = nn.scaled_dot_product_attention(q, k, v, causal=True, kernel=kernel)
    b = nn.scaled_dot_product_attention(q, k, v, mask, kernel=kernel)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("P", [2, 3, 4])
def test_each_ranks_declared_ranges_tile_every_split_axis_once(P):
    model = lt.GPT.preset("llama-tiny", vocab_size=19, num_heads=4, num_kv_heads=4, ffn_dim=50)
    for p in tree.leaves(model.spec()):
        if p.split is None or (p.split.units[0] == 4 and 4 % P):
            continue
        covered = np.zeros(p.shape[p.split.axis], int)
        for r in range(P):
            for lo, hi in shards.ranges(p, r, P)[1]:
                covered[lo:hi] += 1
        assert np.all(covered == 1)


def test_hugging_face_transposes_exactly_the_declared_linear_weights():
    from lt.hf import llama

    model = lt.GPT.preset("llama-tiny", tie_embeddings=False)
    source = llama.sources(model)
    for path, p in tree.items(model.spec()):
        assert source(path).transpose == (p.role in ("weight", "head")), path


# ------------------------------------------------------------------ values the step hands the optimizer


def test_clipping_uses_the_norm_it_is_handed_and_computes_it_only_without_one():
    grads = tree.freeze({"w": np.full((3, 4), 2.0), "b": np.ones(3)})
    real = optim.global_norm(grads)
    clip = optim.clip_by_global_norm(1.0)
    own, _ = clip.update(grads, clip.init(grads))
    handed, _ = clip.update(grads, clip.init(grads), grad_norm=4 * real)
    assert np.isclose(optim.global_norm(own), 1.0)
    assert np.isclose(optim.global_norm(handed), 0.25)              # scaled by 1 / (4 real)


def test_chain_hands_the_norm_on_only_while_the_updates_are_still_the_gradient():
    grads = tree.freeze({"w": np.full((2, 2), 3.0)})
    real = optim.global_norm(grads)
    double = optim.GradientTransformation(
        lambda p: optim.EmptyState(), lambda g, s, p=None, **extra: (tree.map(lambda x: 2 * x, g), s)
    )
    first = optim.chain(optim.clip_by_global_norm(1.0), double)
    after = optim.chain(double, optim.clip_by_global_norm(1.0))
    out_first, _ = first.update(grads, first.init(grads), grad_norm=2 * real)
    out_after, _ = after.update(grads, after.init(grads), grad_norm=2 * real)
    assert np.isclose(optim.global_norm(out_first), 1.0)            # 2 x (clipped by the handed norm: 0.5)
    assert np.isclose(optim.global_norm(out_after), 1.0)            # its own norm of the doubled updates


def test_a_hand_written_transform_without_extra_arguments_still_runs_in_the_step():
    seen = []

    def update(grads, state, params=None):
        seen.append(True)
        return tree.map(lambda g: -0.1 * g, grads), state

    opt = optim.GradientTransformation(lambda p: (), update)
    model = lt.GPT.preset("tiny", vocab_size=20, max_seq_len=8)
    state = lt.TrainState.create(model.init(random.key(0)), opt)
    step = lt.make_train_step(model, opt)
    ids = random.randint(random.key(1), (2, 8), 0, 20)
    new, metrics = step(state, (ids, ids), None)
    assert seen and new.step == 1 and metrics["grad_norm"] > 0


def test_a_sharded_model_keeps_the_models_contract_and_says_which_call_it_does_not_offer():
    model = lt.GPT.preset("llama-tiny", tie_embeddings=False)
    sharded = ShardedGPT(model, Group(None, 1, 2))
    params = sharded.init(random.key(0))
    sharded.check_params(params)
    assert sharded.num_params() == tree.size(params) < model.num_params()
    local = sharded.local
    assert isinstance(local.wte, lt.parallel.VocabParallelEmbedding)
    assert isinstance(local.block.attn.qkv, lt.parallel.ColumnParallelLinear)
    assert isinstance(local.block.ffn.down, lt.parallel.RowParallelLinear)
    assert not hasattr(model.block.attn, "tp") and model.block.attn.parts == nn.Parts()
    with pytest.raises(NotImplementedError, match="does not generate"):
        sharded.generate(params, np.arange(3), max_new_tokens=2)
