"""lt.optim: the same steps as torch.optim, clipping, schedules, immutable states."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lt
from lt import optim, random, tree


def make_params(seed=0, dtype=np.float64):
    return tree.freeze({"w": random.normal(random.key(seed), (4, 3), dtype),
                        "block": {"b": random.normal(random.key(seed + 1), (3,), dtype),
                                  "emb": random.normal(random.key(seed + 2), (5, 2), dtype)}})


def grads_at(step, dtype=np.float64):
    return tree.map(lambda p: random.normal(random.fold_in(random.key(100 + step), p.size), p.shape, dtype),
                    make_params(dtype=dtype))


def run_lt(opt, steps=6, dtype=np.float64):
    params = make_params(dtype=dtype)
    state = opt.init(params)
    for s in range(steps):
        updates, state = opt.update(grads_at(s, dtype), state, params)
        params = optim.apply_updates(params, updates)
    return params, state


TORCH_CASES = {
    "sgd": (lambda: optim.sgd(0.1), lambda t, g: t.optim.SGD(g, lr=0.1)),
    "sgd-momentum": (lambda: optim.sgd(0.05, momentum=0.9), lambda t, g: t.optim.SGD(g, lr=0.05, momentum=0.9)),
    "sgd-nesterov": (lambda: optim.sgd(0.05, 0.9, nesterov=True),
                     lambda t, g: t.optim.SGD(g, lr=0.05, momentum=0.9, nesterov=True)),
    "adam": (lambda: optim.adam(0.01, b1=0.8, b2=0.99, eps=1e-6),
             lambda t, g: t.optim.Adam(g, lr=0.01, betas=(0.8, 0.99), eps=1e-6)),
    # AdamW's default mask decays only the 2-D leaves: torch needs two param groups for that
    "adamw": (lambda: optim.adamw(0.01, weight_decay=0.3),
              lambda t, g: t.optim.AdamW(g, lr=0.01, weight_decay=0.3)),
}


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_optimizers_match_torch_optim_step_for_step(case):
    torch = pytest.importorskip("torch", reason="the torch.optim cross-check needs torch")
    make_lt, make_torch = TORCH_CASES[case]
    ours, _ = run_lt(make_lt())
    start = make_params()
    tparams = {p: torch.tensor(np.array(x), requires_grad=True) for p, x in tree.items(start)}
    matrices = [t for p, t in tparams.items() if t.dim() >= 2]
    vectors = [t for p, t in tparams.items() if t.dim() < 2]
    groups = [{"params": matrices}, {"params": vectors, "weight_decay": 0.0}] if case == "adamw" else list(tparams.values())
    topt = make_torch(torch, groups)
    for s in range(6):
        for (p, t), g in zip(tparams.items(), tree.leaves(grads_at(s))):
            t.grad = torch.tensor(np.array(g))
        topt.step()
    for p, leaf in tree.items(ours):
        theirs = tparams[p].detach().numpy()
        assert np.max(np.abs(leaf - theirs)) <= 1e-6 * np.max(np.abs(theirs)), p
        assert not np.allclose(leaf, tree.get(start, p))       # every leaf really moved


def test_adamw_mask_decides_what_decays():
    params = make_params()
    zero = tree.map(np.zeros_like, params)
    default = optim.adamw(0.1, weight_decay=0.5)
    updates, _ = default.update(zero, default.init(params), params)
    assert np.allclose(updates["w"], -0.1 * 0.5 * params["w"])     # matrix: decayed
    assert np.all(updates["block"]["b"] == 0)                        # vector: not
    only_b = optim.adamw(0.1, weight_decay=0.5, mask={"w": False, "block": {"b": True, "emb": False}})
    updates, _ = only_b.update(zero, only_b.init(params), params)
    assert np.all(updates["w"] == 0) and np.allclose(updates["block"]["b"], -0.05 * params["block"]["b"])
    assert tree.leaves(optim.decay_mask(params)) == [False, True, True]   # block.b, block.emb, w


@settings(deadline=None)
@given(st.floats(0.01, 10.0), st.integers(0, 1000))
def test_after_clipping_to_c_the_global_norm_is_c(c, seed):
    grads = tree.map(lambda p: 10 * random.normal(random.fold_in(random.key(seed), p.size), p.shape, p.dtype), make_params())
    clip = optim.clip_by_global_norm(c)
    clipped, _ = clip.update(grads, clip.init(grads))
    norm = optim.global_norm(grads)
    assert math.isclose(optim.global_norm(clipped), min(c, norm), rel_tol=1e-9)
    if norm <= c:
        assert clipped is grads


def test_chain_applies_in_order_and_exposes_the_learning_rate():
    schedule = optim.warmup_cosine(1.0, warmup=2, total=10)
    opt = optim.chain(optim.clip_by_global_norm(1e-3), optim.sgd(schedule))
    params = make_params()
    state = opt.init(params)
    assert optim.current_learning_rate(state) == schedule(0)
    updates, state = opt.update(grads_at(0), state, params)
    assert math.isclose(optim.global_norm(updates), schedule(0) * 1e-3)
    for s in range(1, 5):
        _, state = opt.update(grads_at(s), state, params)
        assert optim.current_learning_rate(state) == schedule(s)


def test_warmup_cosine_convention_total_includes_warmup():
    s = optim.warmup_cosine(2.0, warmup=10, total=110, end=0.1)
    assert s(0) == pytest.approx(0.2) and s(9) == pytest.approx(2.0) and s(10) == pytest.approx(2.0)
    assert s(60) == pytest.approx(0.1 + 1.9 * 0.5)                   # half way through the cosine
    assert s(110) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)
    decay = [s(i) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    with pytest.raises(ValueError, match="total"):
        optim.warmup_cosine(1.0, warmup=10, total=10)


def test_other_schedules():
    assert optim.constant(0.3)(12345) == 0.3
    w = optim.linear_warmup(1.0, 4)
    assert [w(i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    c = optim.cosine_decay(1.0, 100)
    assert c(0) == 1.0 and c(50) == pytest.approx(0.5) and c(100) == pytest.approx(0.0)


def test_an_update_never_changes_its_inputs_and_states_are_frozen():
    params = make_params()
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(0.1, weight_decay=0.1))
    state = opt.init(params)
    grads = grads_at(0)
    snapshot = [x.copy() for x in tree.leaves((params, state, grads))]
    updates, new_state = opt.update(grads, state, params)
    optim.apply_updates(params, updates)
    assert all(np.array_equal(a, b) for a, b in zip(snapshot, tree.leaves((params, state, grads))))
    assert all(not x.flags.writeable for x in tree.leaves(new_state))
    assert int(new_state[1].schedule.count) == 1 and int(state[1].schedule.count) == 0


def test_apply_updates_keeps_each_parameter_dtype():
    params = make_params(dtype=np.float32)
    updates = tree.map(lambda p: np.full(p.shape, 0.5, np.float64), params)
    new = optim.apply_updates(params, updates)
    assert all(x.dtype == np.float32 for x in tree.leaves(new))
    assert np.allclose(new["w"], params["w"] + 0.5)


def test_float32_training_state_stays_float32():
    params, state = run_lt(optim.adamw(1e-3), dtype=np.float32)
    assert all(x.dtype == np.float32 for x in tree.leaves(params))
    assert all(x.dtype == np.float32 for x in tree.leaves((state.mu, state.nu)))


@pytest.mark.parametrize("make,message", [
    (lambda: optim.adamw(1e-3, weight_decay=-0.1), "weight_decay must be a finite number >= 0"),
    (lambda: optim.adamw(1e-3, weight_decay=float("nan")), "weight_decay"),
    (lambda: optim.adam(1e-3, b2=1.0), r"b2 must be a finite number in \[0, 1\)"),
    (lambda: optim.sgd(0.1, momentum=True), "momentum"),
    (lambda: optim.clip_by_global_norm(0), "max_norm must be a finite number > 0"),
    (lambda: optim.constant(-1.0), "value must be a finite number >= 0"),
    (lambda: optim.linear_warmup(1.0, 2.5), "warmup must be an integer >= 0"),
    (lambda: optim.cosine_decay(1.0, 0), "total must be an integer >= 1"),
    (lambda: optim.warmup_cosine(1.0, 10, np.int64(10)), r"total must be an integer >= 11 \(it counts the 10 warmup"),
])
def test_bad_hyperparameters_are_refused_naming_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_numpy_integers_are_step_counts_too():
    assert optim.warmup_cosine(1.0, np.int64(2), np.int64(10))(10) == pytest.approx(0.0, abs=1e-12)
