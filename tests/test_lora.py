"""lt.lora: adapters as their own params tree over a float or quantized base.

Facts: zero-initialised adapters leave the logits bit-identical; the adapters' gradient is the
merged model's weight gradient by the chain rule (dA = s G Bᵀ, dB = s Aᵀ G in each block's
columns) and matches finite differences (float64); merging equals base plus adapters; the
quantized base stays the same object with the same bytes through training; dropout acts on the
adapter's input only; swapping adapters is swapping trees; only adapters get optimizer state.
"""

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lt
from lt import lora, tree
from lt.testing import check_grads

SMALL = dict(vocab_size=40, max_seq_len=16, num_layers=2, num_heads=4, hidden_dim=16, ffn_dim=24)
FAMILIES = {
    "gpt2": {},
    "llama-gqa": dict(norm="rms", positional="rope", activation="swiglu", bias=False, num_kv_heads=2),
    "qwen2-mqa": dict(norm="rms", positional="rope", activation="swiglu", bias=False, qkv_bias=True,
                      num_kv_heads=1, tie_embeddings=False),
}
TARGET_SETS = ["attn.q,attn.v", "attn.k", "attn.qkv", "attention", "all-linear", "attn.proj,ffn"]
IDS = np.random.default_rng(0).integers(0, 40, size=(2, 9))


def model_of(family, dtype=np.float32):
    model = lt.GPT(**SMALL, **FAMILIES[family])
    return model, model.init(lt.random.key(1), dtype)


def drawn(adapted, dtype=np.float32, seed=2):
    """Adapters with B drawn too (as after training)."""
    ad = adapted.init(lt.random.key(seed), dtype)
    return tree.map(lambda x: np.random.default_rng(seed + x.size).normal(0, 0.2, x.shape).astype(dtype), ad)


@settings(max_examples=20, deadline=None)
@given(family=st.sampled_from(list(FAMILIES)), targets=st.sampled_from(TARGET_SETS),
       rank=st.integers(1, 5), alpha=st.floats(0.5, 64), bits=st.sampled_from([None, 8, 4]))
def test_zero_initialised_adapters_leave_logits_bit_identical(family, targets, rank, alpha, bits):
    model, params = model_of(family)
    if bits is not None:
        params = lt.quantize(params, bits, model=model)
    adapted = lora.adapt(model, rank=rank, alpha=alpha, targets=targets)
    adapters = adapted.init(lt.random.key(3))
    assert all(not np.any(x) for p, x in tree.items(adapters) if p.endswith(".b"))
    assert all(np.any(x) for p, x in tree.items(adapters) if p.endswith(".a"))
    assert np.array_equal(adapted.apply(params, adapters, IDS), model.apply(params, IDS))


def test_fused_qkv_gets_one_adapter_per_column_block_sized_for_gqa():
    model, _ = model_of("llama-gqa")  # H = 4 heads of d = 4, Hkv = 2
    spec = lora.adapt(model, rank=3, targets="attention").spec()
    shapes = {p: x.shape for p, x in tree.items(spec) if p.startswith("blocks.0.")}
    assert shapes == {
        "blocks.0.attn.qkv.lora.q.a": (16, 3), "blocks.0.attn.qkv.lora.q.b": (3, 16),
        "blocks.0.attn.qkv.lora.k.a": (16, 3), "blocks.0.attn.qkv.lora.k.b": (3, 8),
        "blocks.0.attn.qkv.lora.v.a": (16, 3), "blocks.0.attn.qkv.lora.v.b": (3, 8),
        "blocks.0.attn.proj.lora.a": (16, 3), "blocks.0.attn.proj.lora.b": (3, 16),
    }


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("targets", ["attn.q,attn.v", "attn.k", "all-linear", "attn.qkv"])
def test_adapter_gradients_are_the_merged_gradient_by_the_chain_rule(family, targets):
    model, params = model_of(family, np.float64)
    adapted = lora.adapt(model, rank=3, alpha=5.0, targets=targets)
    adapters = drawn(adapted, np.float64)
    grads = lt.grad(adapted.loss, argnums=1)(params, adapters, IDS)
    merged_grads = lt.grad(model.loss)(adapted.merge(params, adapters), IDS)  # G = dL/dW at W + s A B
    s = adapted.lora.scale
    for path, layer in lora.adapted_linears(adapted.gpt).items():
        G = np.asarray(tree.get(merged_grads, f"{path}.w"))
        for name, lo, hi in layer.blocks:
            at = f"{path}.lora" + (f".{name}" if name else "")
            A, B = np.asarray(tree.get(adapters, f"{at}.a")), np.asarray(tree.get(adapters, f"{at}.b"))
            np.testing.assert_allclose(tree.get(grads, f"{at}.a"), s * G[:, lo:hi] @ B.T, rtol=1e-8, atol=1e-12)
            np.testing.assert_allclose(tree.get(grads, f"{at}.b"), s * A.T @ G[:, lo:hi], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_adapter_gradients_match_finite_differences(family):
    model, params = model_of(family, np.float64)
    adapted = lora.adapt(model, rank=2, alpha=3.0, targets="all-linear")
    check_grads(lambda ad: adapted.loss(params, ad, IDS), [drawn(adapted, np.float64)], rtol=1e-6)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_merge_folds_scale_a_b_into_each_block_and_computes_the_same(family):
    model, params = model_of(family, np.float64)
    adapted = lora.adapt(model, rank=2, alpha=6.0, targets="attn.k,attn.v,ffn")
    adapters = drawn(adapted, np.float64)
    merged = adapted.merge(params, adapters)
    k = tree.get(adapters, "blocks.1.attn.qkv.lora.k")
    nq, nk, _ = model.block.attn.widths
    w, w2 = np.asarray(tree.get(params, "blocks.1.attn.qkv.w")), np.asarray(tree.get(merged, "blocks.1.attn.qkv.w"))
    np.testing.assert_allclose(w2[:, nq:nq + nk], w[:, nq:nq + nk] + 3.0 * k["a"] @ k["b"], rtol=1e-13)
    assert np.array_equal(w2[:, :nq], w[:, :nq])  # the query columns: no adapter, no change
    assert tree.get(merged, "wte.w") is tree.get(params, "wte.w")  # the rest shared, not copied
    np.testing.assert_allclose(model.apply(merged, IDS), adapted.apply(params, adapters, IDS), atol=1e-12)


def _digest(params) -> str:
    h = hashlib.sha256()
    for x in tree.leaves(params):
        for arr in ((x.codes, x.scales) if lt.quant.is_quantized(x) else (x,)):
            h.update(np.ascontiguousarray(arr).data)
    return h.hexdigest()


@pytest.mark.parametrize("bits", [8, 4])
def test_training_over_a_quantized_base_leaves_it_the_same_object_and_bytes(bits):
    model, params = model_of("llama-gqa")
    base = lt.quantize(params, bits, model=model)
    before, leaves = _digest(base), tree.leaves(base)
    adapted = lora.adapt(model, rank=4, targets="all-linear")
    bound = adapted.bind(base)
    opt = lt.optim.adam(1e-2)
    state = lt.training.TrainState.create(adapted.init(lt.random.key(0)), opt)
    step = lt.training.make_train_step(bound, opt)
    first = None
    for _ in range(8):
        state, metrics = step(state, (IDS[:, :-1], IDS[:, 1:]), None)
        first = metrics["loss"] if first is None else first
    assert metrics["loss"] < first  # the adapters learn
    assert bound.base is base and _digest(base) == before
    assert all(a is b for a, b in zip(tree.leaves(base), leaves))
    assert all(lt.quant.is_quantized(x) for p, x in tree.items(base) if p.endswith((".qkv.w", ".down.w")))
    # gradients and optimizer state exist for the adapters alone
    assert tree.structure(state.params) == tree.structure(adapted.spec())
    assert tree.size(state.opt_state) <= 2 * tree.size(state.params) + 8


def test_dropout_acts_on_the_adapter_input_only_with_a_key_per_block():
    layer = lora.LoraLinear(lt.nn.Linear(6, 9), rank=2, scale=1.5, dropout=0.5, blocks=(("q", 0, 3), ("v", 6, 9)))
    params = tree.map(lambda x: np.random.default_rng(x.size).normal(size=x.shape), layer.init(lt.random.key(0)))
    x = np.random.default_rng(1).normal(size=(4, 6))
    rng = lt.random.key(5)
    y = layer.apply(params, x, rng=rng)
    base = x @ params["w"] + params["b"]
    for name, lo, hi in layer.blocks:
        ab = params["lora"][name]
        h = lt.ops.dropout(x, 0.5, lt.random.fold_in(rng, name))
        np.testing.assert_allclose(y[:, lo:hi], base[:, lo:hi] + 1.5 * (h @ ab["a"]) @ ab["b"], rtol=1e-12)
    np.testing.assert_array_equal(y[:, 3:6], base[:, 3:6])
    assert not np.allclose(y, layer.apply(params, x))  # no key: no dropout
    np.testing.assert_array_equal(y, layer.apply(params, x, rng=rng))


def test_swapping_adapters_is_swapping_trees():
    model, params = model_of("gpt2")
    adapted = lora.adapt(model, rank=2, targets="attn.qkv")
    one, two = drawn(adapted, seed=1), drawn(adapted, seed=9)
    a, b = adapted.apply(params, one, IDS), adapted.apply(params, two, IDS)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(adapted.apply(params, one, IDS), a)


@pytest.mark.parametrize("fields, error, message", [
    (dict(targets="attn.z"), ValueError, "unknown target 'attn.z'"),
    (dict(targets=()), ValueError, "at least one matrix"),
    (dict(targets="c_attn,q_proj"), ValueError, "give one or the other"),
    (dict(rank=0), ValueError, "LoRA.rank must be a positive integer"),
    (dict(dropout=1.0), ValueError, r"LoRA.dropout must be in \[0, 1\)"),
])
def test_bad_settings_are_refused_naming_the_field(fields, error, message):
    with pytest.raises(error, match=message):
        lora.LoRA(**fields)


def test_aliases_expand_to_lt_targets():
    assert lora.LoRA(targets="c_proj").targets == ("attn.proj", "ffn.proj")
    assert lora.LoRA(targets=["q_proj", "v_proj"]).targets == lora.DEFAULT_TARGETS
    with pytest.raises(ValueError, match=r"feed-forward has ffn\.fc, ffn\.proj"):
        lora.adapt(model_of("gpt2")[0], targets="gate_proj")


def test_adapters_of_the_wrong_shape_are_refused_naming_the_path():
    model, params = model_of("gpt2")
    adapted = lora.adapt(model, rank=2)
    bad = tree.set(adapted.init(lt.random.key(0)), "blocks.1.attn.qkv.lora.v.b", np.zeros((3, 16), np.float32))
    with pytest.raises(ValueError, match=r"blocks\.1\.attn\.qkv\.lora\.v\.b has shape \(3, 16\), expected \(2, 16\)"):
        adapted.apply(params, bad, IDS)


def test_the_model_hands_each_adapted_layer_a_dropout_key():
    model, params = model_of("llama-gqa")
    adapted = lora.adapt(model, rank=2, targets="all-linear", dropout=0.3)
    rng = lt.random.key(4)
    zero = adapted.init(lt.random.key(0))
    assert adapted.loss(params, zero, IDS, rng=rng) == model.loss(params, IDS)  # B = 0: dropout changes nothing
    trained = drawn(adapted)
    with_key = adapted.loss(params, trained, IDS, rng=rng)
    assert with_key != adapted.loss(params, trained, IDS)
    assert with_key == adapted.loss(params, trained, IDS, rng=rng)
