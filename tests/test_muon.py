"""lt.optim.muon: Newton–Schulz against the SVD, the whole update against a transcription of the
published algorithm, leaves chosen by the model's declarations; warmup–stable–decay; partition."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lt
from lt import optim, random, tree

A, B, C = optim.NS_COEFFICIENTS


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 20), n=st.integers(1, 20), steps=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_newton_schulz_maps_each_singular_value_by_the_quintic_and_keeps_the_vectors(m, n, steps, seed):
    """X = U S Vᵀ gives X Xᵀ X = U S³ Vᵀ: the iteration acts on singular values alone, as
    s -> a s + b s³ + c s⁵ from s / ‖X‖_F; the singular vectors stay."""
    g = random.normal(random.key(seed), (m, n), np.float64)
    u, s, vt = np.linalg.svd(g, full_matrices=False)
    t = s / np.linalg.norm(g)
    for _ in range(steps):
        t = A * t + B * t**3 + C * t**5
    np.testing.assert_allclose(optim.newton_schulz(g, steps), (u * t) @ vt, atol=1e-10)


def test_five_steps_bring_the_singular_values_of_a_wide_matrix_near_one():
    for shape in [(32, 96), (96, 32), (64, 256)]:
        g = random.normal(random.key(1), shape, np.float32)
        s = np.linalg.svd(optim.newton_schulz(g).astype(np.float64), compute_uv=False)
        assert 0.65 < s.min() and s.max() < 1.2, (shape, s.min(), s.max())


def test_newton_schulz_of_a_stack_is_the_stack_of_each():
    g = random.normal(random.key(2), (3, 8, 5), np.float64)
    np.testing.assert_allclose(optim.newton_schulz(g), np.stack([optim.newton_schulz(x) for x in g]), atol=1e-14)


def _model():
    return lt.GPT.preset("llama-tiny", vocab_size=61, hidden_dim=32, num_heads=4, ffn_dim=40)


def test_muon_takes_the_hidden_matrices_and_leaves_tables_norms_and_the_head_to_adamw():
    for model in (_model(), lt.GPT.preset("tiny", vocab_size=50, tie_embeddings=False)):
        labels = dict(tree.items(optim.muon_labels(model)))
        for path, label in labels.items():
            hidden = path.startswith("blocks.") and path.endswith(".w") and ".ln" not in path
            assert label == ("muon" if hidden else "adam"), path


def _ns_reference(g, steps=5, eps=1e-7):
    """Keller Jordan's zeropower_via_newtonschulz5, transcribed for a torch-layout (out, in) matrix."""
    x = g / max(np.linalg.norm(g), eps)
    if g.shape[0] > g.shape[1]:
        x = x.T
    for _ in range(steps):
        a = x @ x.T
        x = A * x + (B * a + C * a @ a) @ x
    return x.T if g.shape[0] > g.shape[1] else x


def _reference_run(model, params, grads_list, lr, adam_lr, wd, beta):
    """The published Muon step for the hidden matrices (torch layout (out, in): lt's leaves
    transposed; the fused q|k|v as three matrices), and torch's AdamW for the rest."""
    heads, kv, d = model.num_heads, model.num_kv_heads or model.num_heads, model.head_dim
    widths = (heads * d, kv * d, kv * d)
    labels = dict(tree.items(optim.muon_labels(model)))
    p = {k: np.array(v, np.float64) for k, v in tree.items(params)}
    state = {k: [np.zeros_like(v), np.zeros_like(v)] for k, v in p.items()}
    for t, grads in enumerate(grads_list, start=1):
        for k, g in tree.items(grads):
            g = np.asarray(g, np.float64)
            if labels[k] == "muon":
                pieces = np.split(np.arange(g.shape[1]), np.cumsum(widths)[:2]) if k.endswith("qkv.w") else [None]
                buf = state[k][0]
                buf[...] = beta * buf + (1 - beta) * g
                u = (1 - beta) * g + beta * buf
                p[k] *= 1 - lr * wd
                for cols in pieces:
                    sl = (slice(None), cols if cols is not None else slice(None))
                    w = u[sl].T  # (out, in)
                    scale = math.sqrt(max(1, w.shape[0] / w.shape[1]))
                    p[k][sl] -= lr * scale * _ns_reference(w).T
            else:
                m, v = state[k]
                m[...] = 0.9 * m + 0.1 * g
                v[...] = 0.95 * v + 0.05 * g * g
                denom = np.sqrt(v) / math.sqrt(1 - 0.95**t) + 1e-8
                p[k] -= adam_lr / (1 - 0.9**t) * m / denom
    return p


def test_the_whole_update_equals_a_transcription_of_the_published_algorithm():
    model = _model()
    params = model.init(random.key(0), dtype=np.float64)
    grads_list = [tree.map(lambda x, i=i: random.normal(random.fold_in(random.key(7), i), x.shape, np.float64), params)
                  for i in range(3)]
    opt = optim.muon(0.02, model=model, adam_learning_rate=3e-3, weight_decay=0.1)
    state, ours = opt.init(params), params
    for grads in grads_list:
        updates, state = opt.update(grads, state, ours)
        ours = optim.apply_updates(ours, updates)
    want = _reference_run(model, params, grads_list, 0.02, 3e-3, 0.1, 0.95)
    for k, v in tree.items(ours):
        np.testing.assert_allclose(v, want[k], rtol=1e-10, atol=1e-12, err_msg=k)
    assert optim.current_learning_rate(state) == 0.02


def test_muon_trains_a_model_and_its_state_checkpoints_like_any_tree(tmp_path):
    model = lt.GPT.preset("llama-tiny", vocab_size=32, hidden_dim=32, num_heads=4, ffn_dim=40, max_seq_len=16)
    params = model.init(random.key(0))
    ids = np.tile(np.arange(16) % 8, (4, 1))
    opt = optim.muon(0.02, model=model, adam_learning_rate=1e-2)
    state = opt.init(params)
    loss0 = None
    for _ in range(30):
        loss, grads = lt.value_and_grad(model.loss)(params, ids[:, :-1], ids[:, 1:])
        loss0 = loss0 if loss0 is not None else loss
        updates, state = opt.update(grads, state, params)
        params = optim.apply_updates(params, updates)
    assert loss < 0.5 * loss0
    ck = tmp_path / "muon.safetensors"
    lt.checkpoint.save(ck, model, params, opt_state=state, step=30)
    back = lt.checkpoint.load(ck, opt_state_template=opt.init(params))
    assert tree.structure(back.opt_state) == tree.structure(state)
    for a, b in zip(tree.leaves(back.opt_state), tree.leaves(state)):
        np.testing.assert_array_equal(a, b)


def test_muon_refuses_a_leaf_that_is_not_a_matrix():
    with pytest.raises(ValueError, match="leaf 0 has shape \\(3,\\); Muon updates 2-D matrices only"):
        optim.scale_by_muon().init((np.zeros(3),))


@settings(max_examples=50, deadline=None)
@given(warmup=st.integers(0, 20), stable=st.integers(0, 30), decay=st.integers(1, 30), more=st.integers(1, 40))
def test_wsd_rates_before_the_decay_do_not_depend_on_the_run_length(warmup, stable, decay, more):
    total = warmup + stable + decay
    short = optim.warmup_stable_decay(1.0, warmup, total, decay, end=0.1)
    long = optim.warmup_stable_decay(1.0, warmup, total + more, decay, end=0.1)
    assert [short(i) for i in range(warmup + stable)] == [long(i) for i in range(warmup + stable)]
    assert all(short(i) == 1.0 for i in range(warmup, warmup + stable + 1))
    tail = [short(i) for i in range(total - decay, total + 3)]
    assert all(a > b for a, b in zip(tail[:decay], tail[1 : decay + 1]))  # strictly down over the decay
    assert short(total) == short(total + 5) == pytest.approx(0.1)


def test_wsd_refuses_a_run_shorter_than_its_phases():
    with pytest.raises(ValueError, match="total must be an integer >= 30 \\(it counts the 10 warmup and 20 decay"):
        optim.warmup_stable_decay(1.0, 10, 29, 20)


def test_partition_checks_its_labels():
    params = tree.freeze({"a": np.ones((2, 2)), "b": np.ones(2)})
    opt = optim.partition({"x": optim.sgd(0.1), "y": optim.adam(0.1)}, {"a": "x", "b": "z"})
    with pytest.raises(ValueError, match="labels \\['z'\\] name no transform"):
        opt.init(params)
    opt = optim.partition({"x": optim.sgd(0.1)}, {"a": "x"})
    with pytest.raises(ValueError, match="labels must be shaped like the params"):
        opt.init(params)


def test_partition_gives_each_leaf_its_own_transforms_update():
    params = tree.freeze({"a": np.ones((2, 2)), "b": np.full(3, 2.0)})
    grads = tree.freeze({"a": np.full((2, 2), 0.5), "b": np.full(3, -1.0)})
    opt = optim.partition({"x": optim.sgd(0.1), "y": optim.adam(0.01)}, {"a": "x", "b": "y"})
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(updates["a"], -0.05)
    np.testing.assert_allclose(updates["b"], 0.01, rtol=1e-6)  # Adam's first step is lr * sign(g)


def test_an_ensemble_trains_with_muon_each_member_as_alone():
    """Under lt.vmap (lt.ensemble) Muon updates the stacked members at once: each member ends
    where its run alone ends (float64, to rounding; the weight decay and rates batched too)."""
    model = lt.GPT.preset("llama-tiny", vocab_size=30, max_seq_len=8)
    opt = optim.chain(
        optim.clip_by_global_norm(1.0),
        optim.muon(0.01, model=model, adam_learning_rate=2e-3, weight_decay=0.05, adam_weight_decay=0.1),
    )
    keys = [random.key(s) for s in (3, 4)]
    ids = random.randint(random.key(0), (400,), 0, 30)
    starts = [tree.map(lambda p: p.astype(np.float64), model.init(k)) for k in keys]
    state = lt.ensemble.stack_states([lt.TrainState.create(p, opt) for p in starts])
    trained, _ = lt.ensemble.train_ensemble(
        model, opt, state, ids, rngs=keys, steps=4, batch_size=2, seq_len=8, verbose=False
    )
    for member, start, k in zip(lt.ensemble.member_states(trained), starts, keys):
        alone, _ = lt.train(
            model, opt, lt.TrainState.create(start, opt), ids, steps=4, batch_size=2, seq_len=8, rng=k, verbose=False
        )
        for (path, a), (_, b) in zip(tree.items(member.params), tree.items(alone.params)):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=path)


def test_muon_under_another_transform_is_refused_by_name():
    """A gradient batched by lt.vmap beside a momentum that is not: a TypeError naming Muon's limit."""
    opt = optim.scale_by_muon()
    params = {"w": np.ones((4, 3))}
    state = opt.init(params)
    with pytest.raises(TypeError, match="scale_by_muon under lt.vmap needs every gradient"):
        lt.vmap(lambda g: opt.update({"w": g}, state)[0]["w"])(np.ones((2, 4, 3)))
