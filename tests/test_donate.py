"""Donated train steps (``make_train_step(..., donate=True)``, JAX's ``donate_argnums``): the
same bits as the immutable step, the old state's memory reused, a donated state refused with a
clear error wherever lt is handed it again, and every state not donated untouched."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import lt
from lt import donation
from lt.ops import kernels

MODEL = lt.GPT(vocab_size=48, max_seq_len=16, num_layers=2, num_heads=2, hidden_dim=16, ffn_dim=32)
OPTIMIZERS = {
    "adamw+clip": lambda: lt.optim.chain(lt.optim.clip_by_global_norm(0.05), lt.optim.adamw(1e-2, weight_decay=0.1)),
    "adam": lambda: lt.optim.adam(lt.optim.warmup_cosine(1e-2, warmup=2, total=8)),
    "sgd": lambda: lt.optim.sgd(0.1, momentum=0.9),
}
KERNELS = ["numba", "numpy"] if kernels.available() else ["numpy"]


def _batch(step: int):
    ids = (np.arange(2 * 16).reshape(2, 16) * (step + 3)) % 48
    return ids, np.roll(ids, -1, axis=1)


def _fresh_state(opt):
    """A state with memory of its own (so donating it gives up nothing anyone else holds)."""
    return lt.TrainState.create(lt.tree.map(np.copy, MODEL.init(lt.random.key(0))), opt)


def _arrays(state):
    return [np.array(a) for a in lt.tree.leaves((state.params, state.opt_state))]


@pytest.mark.parametrize("choice", KERNELS)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_donated_step_gives_the_same_bits_in_the_same_memory(choice, name):
    opt = OPTIMIZERS[name]()
    rng = lt.random.key(1)
    with kernels.use(choice):
        keep, give = lt.make_train_step(MODEL, opt), lt.make_train_step(MODEL, opt, donate=True)
        a, b = _fresh_state(opt), _fresh_state(opt)
        for step in range(4):
            a, metrics_a = keep(a, _batch(step), lt.random.fold_in(rng, step))
            before = lt.tree.leaves(b.params)
            b, metrics_b = give(b, _batch(step), lt.random.fold_in(rng, step))
            assert metrics_a == metrics_b
            after = lt.tree.leaves(b.params)
            assert all(np.shares_memory(x, y) and x is not y for x, y in zip(before, after))  # written over
            assert not any(x.flags.writeable for x in after)
        for x, y in zip(_arrays(a), _arrays(b)):
            np.testing.assert_array_equal(x, y)
        assert a.step == b.step == 4


@pytest.mark.parametrize("choice", KERNELS)
def test_a_state_not_donated_is_untouched(choice):
    opt = OPTIMIZERS["adamw+clip"]()
    with kernels.use(choice):
        state = _fresh_state(opt)
        state, _ = lt.make_train_step(MODEL, opt)(state, _batch(0))  # moments not all zero
        snapshot = _arrays(state)
        lt.make_train_step(MODEL, opt)(state, _batch(1))
        other = lt.TrainState(lt.tree.map(np.copy, state.params), lt.tree.map(np.copy, state.opt_state), 1)
        lt.make_train_step(MODEL, opt, donate=True)(other, _batch(1))  # donating a copy leaves the original
        for x, y in zip(snapshot, _arrays(state)):
            np.testing.assert_array_equal(x, y)
        lt.make_train_step(MODEL, opt)(state, _batch(2))  # and it is still usable


def test_a_donated_state_is_refused_wherever_it_is_handed_in(tmp_path):
    opt = OPTIMIZERS["adamw+clip"]()
    step = lt.make_train_step(MODEL, opt, donate=True)
    state, _ = step(_fresh_state(opt), _batch(0))
    old_params = state.params
    new, _ = step(state, _batch(1))
    message = "this TrainState was donated to train_step at step 1; use the state it returned"
    with pytest.raises(lt.optim.DonatedError, match=f"train_step: {message}"):
        step(state, _batch(2))
    with pytest.raises(lt.optim.DonatedError, match=message):
        lt.make_train_step(MODEL, opt)(lt.TrainState(old_params, new.opt_state, 2), _batch(2))
    with pytest.raises(lt.optim.DonatedError, match=f"the optimizer's update: {message}"):
        opt.update(new.params, state.opt_state, new.params)
    with pytest.raises(lt.optim.DonatedError, match=f"apply_updates: {message}"):
        lt.optim.apply_updates(old_params, new.params)
    with pytest.raises(lt.optim.DonatedError, match=f"checkpoint save: {message}"):
        lt.training.make_checkpointer(tmp_path / "ckpt.safetensors", MODEL)(state)
    assert not (tmp_path / "ckpt.safetensors").exists()
    new, _ = step(new, _batch(2))  # the state returned goes on
    assert new.step == 3


def test_the_record_of_donated_arrays_dies_with_them():
    opt = OPTIMIZERS["adam"]()
    step = lt.make_train_step(MODEL, opt, donate=True)
    state = _fresh_state(opt)
    for i in range(3):
        state, _ = step(state, _batch(i))
    gc.collect()
    assert not donation._retired  # only weak references: nothing kept alive, nothing left to check


def test_a_step_that_stops_before_its_update_donates_nothing():
    opt = OPTIMIZERS["adam"]()
    state = _fresh_state(opt)
    bad = lt.tree.set(state.params, "wte.w", lt.tree.seal(np.full_like(state.params["wte"]["w"], np.nan)))
    state = state._replace(params=bad)
    snapshot = _arrays(state)
    with pytest.raises(lt.NonFiniteError):
        lt.make_train_step(MODEL, opt, donate=True)(state, _batch(0))
    donation.check((state.params, state.opt_state), "test")  # not donated
    for x, y in zip(snapshot, _arrays(state)):
        np.testing.assert_array_equal(x, y)


def test_memory_that_is_not_numpys_own_is_never_written():
    """Parameters over a read-only buffer (as read from a file) get new memory; the step's
    numbers are the same."""
    opt = OPTIMIZERS["adamw+clip"]()
    state = _fresh_state(opt)
    on_bytes = lt.tree.map(lambda p: np.frombuffer(p.tobytes(), p.dtype).reshape(p.shape), state.params)
    kept, _ = lt.make_train_step(MODEL, opt)(state, _batch(0))
    donated, _ = lt.make_train_step(MODEL, opt, donate=True)(state._replace(params=on_bytes), _batch(0))
    for x, y, z in zip(lt.tree.leaves(donated.params), lt.tree.leaves(kept.params), lt.tree.leaves(on_bytes)):
        np.testing.assert_array_equal(x, y)
        assert not np.shares_memory(x, z)


def test_train_donates_its_own_states_and_the_callers_only_when_asked():
    opt = OPTIMIZERS["adamw+clip"]()
    tokens = (np.arange(400) * 7) % 48
    run = dict(steps=3, batch_size=2, seq_len=8, rng=lt.random.key(2), log_every=1, verbose=False, progress=False)
    start = _fresh_state(opt)
    snapshot = _arrays(start)
    kept, log = lt.train(MODEL, opt, start, tokens, **run)
    for x, y in zip(snapshot, _arrays(start)):  # the caller's state: as it was, and usable
        np.testing.assert_array_equal(x, y)
    given, log_given = lt.train(MODEL, opt, start, tokens, donate=True, **run)
    with pytest.raises(lt.optim.DonatedError, match="at step 0"):
        lt.make_train_step(MODEL, opt)(start, _batch(0))
    assert [r["loss"] for r in log] == [r["loss"] for r in log_given]
    for x, y in zip(_arrays(kept), _arrays(given)):
        np.testing.assert_array_equal(x, y)


def test_only_whole_unshared_numpy_memory_can_be_written():
    own = lt.tree.seal(np.zeros((3, 4), np.float32))  # a sealed leaf: a read-only view of its owner
    base = np.zeros(8, np.float32)
    halves = base[:4], base[4:]  # two leaves over one buffer
    part = np.zeros(10, np.float32)[:5]  # part of a buffer (its owner may hold more)
    on_bytes = np.frombuffer(bytes(16), np.float32)  # memory NumPy does not own
    fortran = np.asfortranarray(np.zeros((3, 4)))
    given = donation.Donation(own, halves, part, on_bytes, fortran.T)  # fortran.T: C order over F memory
    assert own in given and len(given) == 1
    alias = given.buffer(own)
    alias[0, 0] = 5.0
    assert own[0, 0] == 5.0 and not own.flags.writeable and not own.base.flags.writeable
    assert given.buffer(own, np.float64) is None and given.buffer(part) is None


def test_a_donated_tree_is_refused_by_apply_and_checkpoint_save(tmp_path):
    """Past the step: a model's forward and a checkpoint write also refuse the donated params."""
    model = lt.GPT.preset("tiny")
    opt = lt.optim.adamw(1e-3)
    state = lt.TrainState.create(model.init(lt.random.key(0)), opt)
    step = lt.make_train_step(model, opt, donate=True)
    ids = np.arange(16).reshape(2, 8) % model.vocab_size
    new, _ = step(state, (ids, ids))
    with pytest.raises(lt.optim.DonatedError, match="donated"):
        model.apply(state.params, ids)
    with pytest.raises(lt.optim.DonatedError, match=r"checkpoint\.save"):
        lt.checkpoint.save(tmp_path / "c.safetensors", model, state.params)
    assert not (tmp_path / "c.safetensors").exists()
    model.apply(new.params, ids)  # the state the step returned works
