"""Training: pure steps, real learning, accumulation, evaluation, bit-identical resume, NaN stops."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, strategies as st

import lt
from lt import data, optim, random, training, tree
from lt.parallel import DataParallel

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXT = "It was the best of times, it was the worst of times, it was the age of wisdom. " * 40
CHARS = sorted(set(TEXT))
TOKENS = np.array([CHARS.index(c) for c in TEXT])
MODEL = lt.GPT.preset("tiny", vocab_size=len(CHARS), max_seq_len=32)


def fresh_state(opt, dtype=np.float32):
    return lt.TrainState.create(MODEL.init(random.key(0), dtype), opt)


def run(opt, steps, state=None, **kwargs):
    state = state or fresh_state(opt)
    return lt.train(MODEL, opt, state, TOKENS, steps=steps, batch_size=4, seq_len=32,
                    rng=random.key(7), progress=False, verbose=False, **kwargs)


def same_tree(a, b) -> bool:
    return tree.structure(a) == tree.structure(b) and all(
        x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(tree.leaves(a), tree.leaves(b)))


def test_a_step_never_changes_its_inputs():
    opt = optim.adamw(1e-2)
    state = fresh_state(opt)
    batch = data.random_windows(random.key(1), TOKENS, 4, 32)
    before = [np.array(x) for x in tree.leaves((state, batch))]
    step = lt.make_train_step(lt.GPT.preset("tiny", vocab_size=len(CHARS), max_seq_len=32, dropout=0.1), opt)
    new, metrics = step(state, batch, random.key(2))
    assert all(np.array_equal(a, b) for a, b in zip(before, tree.leaves((state, batch))))
    assert new.step == 1 and state.step == 0
    assert not same_tree(new.params, state.params)
    assert set(metrics) >= {"loss", "grad_norm", "lr", "tokens"} and metrics["tokens"] == 4 * 32


def test_training_tiny_on_repeated_text_drives_the_loss_down():
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(optim.warmup_cosine(1e-2, 10, 150), weight_decay=0.0))
    state, log = run(opt, 150, log_every=10)
    first, last = log[0]["loss"], log[-1]["loss"]
    assert first > 2.5 and last < 0.35 * first
    ev = lt.evaluate(MODEL, state.params, data.sequential_windows(TOKENS, 4, 32, 4))
    assert ev["loss"] < 0.35 * first and ev["perplexity"] == pytest.approx(np.exp(ev["loss"]))


def test_accumulated_micro_batches_give_the_gradient_of_the_whole():
    """k micro-batches, weighted by token count, equal one batch holding all of them."""
    params = MODEL.init(random.key(0), np.float64)
    b = data.random_windows(random.key(3), TOKENS, 6, 16)
    targets = b.targets.copy()
    targets[0, :10] = -100                              # micro-batches with different counts
    targets[4, :3] = -100
    opt = optim.sgd(1.0)
    state = lt.TrainState.create(params, opt)
    step = lt.make_train_step(MODEL, opt)
    whole, m1 = step(state, (b.inputs, targets), None)
    parts, m2 = step(state, (b.inputs.reshape(3, 2, 16), targets.reshape(3, 2, 16)), None)
    assert m1["tokens"] == m2["tokens"] == 6 * 16 - 13
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-12)
    assert all(np.allclose(x, y, rtol=1e-10, atol=1e-14) for x, y in zip(tree.leaves(whole.params), tree.leaves(parts.params)))


def test_evaluate_weights_batches_by_token_count():
    params = MODEL.init(random.key(0))
    b1 = data.random_windows(random.key(1), TOKENS, 2, 8)
    b2 = data.random_windows(random.key(2), TOKENS, 1, 8)
    ev = lt.evaluate(MODEL, params, [b1, b2])
    l1, l2 = float(MODEL.loss(params, *b1)), float(MODEL.loss(params, *b2))
    assert ev["tokens"] == 24 and ev["loss"] == pytest.approx((16 * l1 + 8 * l2) / 24, rel=1e-5)


def test_resuming_from_step_k_is_bit_identical_to_never_stopping(tmp_path):
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(optim.warmup_cosine(5e-3, 3, 12)))
    model = lt.GPT.preset("tiny", vocab_size=len(CHARS), max_seq_len=32, dropout=0.1)
    kw = dict(batch_size=4, seq_len=32, rng=random.key(7), progress=False, verbose=False)
    straight, _ = lt.train(model, opt, lt.TrainState.create(model.init(random.key(0)), opt), TOKENS, steps=12, **kw)
    path = tmp_path / "ckpt.safetensors"
    lt.train(model, opt, lt.TrainState.create(model.init(random.key(0)), opt), TOKENS, steps=5,
             checkpoint_path=path, **kw)
    ck = lt.checkpoint.load(path, model, opt.init(model.init(random.key(0))))
    assert ck.step == 5
    resumed, _ = lt.train(model, opt, lt.TrainState(ck.params, ck.opt_state, ck.step), TOKENS, steps=12, **kw)
    assert same_tree(resumed.params, straight.params) and same_tree(resumed.opt_state, straight.opt_state)


SCRIPT = textwrap.dedent("""
    import sys, numpy as np, lt
    from lt import optim, random
    text = "It was the best of times, it was the worst of times, it was the age of wisdom. " * 40
    chars = sorted(set(text)); tokens = np.array([chars.index(c) for c in text])
    model = lt.GPT.preset("tiny", vocab_size=len(chars), max_seq_len=32, dropout=0.1)
    opt = optim.adamw(optim.warmup_cosine(5e-3, 3, 20))
    path, steps, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume"
    state = lt.TrainState.create(model.init(random.key(0)), opt)
    if resume:
        ck = lt.checkpoint.load(path, model, state.opt_state)
        state = lt.TrainState(ck.params, ck.opt_state, ck.step)
    state, _ = lt.train(model, opt, state, tokens, steps=steps, batch_size=4, seq_len=32, rng=random.key(7),
                        checkpoint_path=path, checkpoint_every=5, log_every=1, progress=False,
                        on_log=lambda r: print("step", r["step"], flush=True))
    np.save(sys.argv[4], np.concatenate([x.ravel() for x in lt.tree.leaves(state.params)]))
""")


def test_resume_after_sigkill_between_checkpoints_is_bit_identical(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ref = tmp_path / "ref.npy"
    subprocess.run([sys.executable, script, tmp_path / "a.safetensors", "20", "new", ref], env=env, check=True,
                   capture_output=True)
    ckpt = tmp_path / "b.safetensors"
    proc = subprocess.Popen([sys.executable, script, ckpt, "20", "new", tmp_path / "unused.npy"], env=env,
                            stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:                             # killed after step 12: checkpoint 10 on disk
        if line.strip() == "step 12":
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert lt.checkpoint.read_metadata(ckpt)["step"] == "10"
    out = tmp_path / "resumed.npy"
    subprocess.run([sys.executable, script, ckpt, "20", "resume", out], env=env, check=True, capture_output=True)
    assert np.array_equal(np.load(out), np.load(ref))
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]     # no temporary file left


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning")
def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    boom = optim.sgd(lambda step: 1e-3 if step < 4 else 1e30)      # step 4's update overflows
    with pytest.raises(lt.NonFiniteError, match="step 5"):
        run(boom, 10, checkpoint_path=path, checkpoint_every=2)
    ck = lt.checkpoint.load(path, MODEL)
    assert ck.step == 4 and all(np.isfinite(x).all() for x in tree.leaves(ck.params))


def test_random_windows_are_reproducible_shifted_windows():
    b = data.random_windows(random.key(5), TOKENS, 8, 16)
    assert np.array_equal(b.inputs, data.random_windows(random.key(5), TOKENS, 8, 16).inputs)
    assert not np.array_equal(b.inputs, data.random_windows(random.key(6), TOKENS, 8, 16).inputs)
    assert np.array_equal(b.inputs[:, 1:], b.targets[:, :-1])
    text = "".join(CHARS[i] for i in b.inputs[0]) + CHARS[b.targets[0, -1]]
    assert text in TEXT


def test_train_val_split_and_sequential_windows_cover_disjoint_parts():
    train, val = data.train_val_split(TOKENS, 0.1)
    assert len(train) + len(val) == len(TOKENS) and np.array_equal(np.concatenate([train, val]), TOKENS)
    assert len(val) == round(0.1 * len(TOKENS))
    windows = list(data.sequential_windows(val, 3, 10))
    flat = np.concatenate([w.inputs.ravel() for w in windows])
    assert np.array_equal(flat, val[:len(flat)]) and len(flat) == (len(val) - 1) // 10 * 10
    with pytest.raises(ValueError, match="seq_len"):
        data.random_windows(random.key(0), TOKENS[:5], 2, 10)


# ------------------------------------------------------------------ the loop's pieces, each alone

@given(st.integers(0, 12), st.integers(1, 40))
def test_due_is_every_multiple_and_the_last_step_and_never_for_zero(every, last):
    steps = {s for s in range(1, last + 1) if training.due(s, every, last)}
    expected = set() if every == 0 else {s for s in range(every, last + 1, every)} | {last}
    assert steps == expected
    assert not any(training.due(s, every) for s in range(1, last + 1) if every == 0 or s % every)


def test_batch_sampler_draws_each_step_from_its_own_key_in_any_order():
    data_rng = random.fold_in(random.key(7), "data")
    batch_for = training.batch_sampler(TOKENS, data_rng, 4, 16)
    later_first = batch_for(5)
    batch_for(2)
    again = batch_for(5)
    direct = data.random_windows(random.fold_in(random.fold_in(data_rng, 5), 0), TOKENS, 4, 16)
    assert all(np.array_equal(a, b) for a, b in zip(later_first, direct))
    assert all(np.array_equal(a, b) for a, b in zip(again, direct))
    inputs, targets = training.batch_sampler(TOKENS, data_rng, 4, 16, accumulate=3)(5)
    assert inputs.shape == targets.shape == (3, 4, 16)
    for i in range(3):                                   # micro-batch i: fold_in(step key, i); 0 is the plain batch
        micro = data.random_windows(random.fold_in(random.fold_in(data_rng, 5), i), TOKENS, 4, 16)
        assert np.array_equal(inputs[i], micro.inputs) and np.array_equal(targets[i], micro.targets)


def test_log_window_is_a_value_with_the_mean_loss_and_the_token_rate():
    empty = training.LogWindow(10.0)
    window = empty.add({"loss": 1.0, "tokens": 100}).add({"loss": 2.5, "tokens": 300})
    assert empty == training.LogWindow(10.0, 0, ())                 # adding made a new window
    assert window.record(4, 0.01, clock=12.0) == {"step": 4, "loss": 1.75, "lr": 0.01, "tokens_per_s": 200.0}
    assert window.record(4, 0.01) == {"step": 4, "loss": 1.75, "lr": 0.01}


def test_evaluator_is_the_mean_loss_over_the_first_sequential_windows():
    params = MODEL.init(random.key(0))
    eval_loss = training.make_evaluator(MODEL, TOKENS, 3, 16, 2)
    expected = lt.evaluate(MODEL, params, data.sequential_windows(TOKENS, 3, 16, 2))["loss"]
    assert eval_loss(params) == expected
    assert eval_loss(params) != lt.evaluate(MODEL, params, data.sequential_windows(TOKENS, 3, 16, 3))["loss"]


class TwoRanks:
    """Rank ``rank`` of two whose other rank holds ``other`` as its fingerprint ("same": ours)."""
    def __init__(self, rank, other="same"):
        self.rank, self.other, self.barriers = rank, other, 0

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return 2

    def allgather(self, mine):
        theirs = mine if self.other == "same" else self.other
        return [mine, theirs] if self.rank == 0 else [theirs, mine]

    def Barrier(self):
        self.barriers += 1


def test_checkpointer_writes_on_rank_0_only_after_the_ranks_agree(tmp_path):
    opt = optim.adamw(1e-2)
    state = fresh_state(opt)._replace(step=3)
    path = tmp_path / "ckpt.safetensors"
    rank1 = TwoRanks(1)
    training.make_checkpointer(path, MODEL, {"note": "x"}, strategy=DataParallel(rank1))(state)
    assert not path.exists() and rank1.barriers == 1               # rank 1 never writes, but waits
    rank0 = TwoRanks(0)
    training.make_checkpointer(path, MODEL, {"note": "x"}, strategy=DataParallel(rank0))(state)
    ck = lt.checkpoint.load(path, MODEL, state.opt_state)
    assert ck.step == 3 and same_tree(ck.params, state.params) and ck.metadata["note"] == "x"
    assert rank0.barriers == 1
    before = path.read_bytes()
    with pytest.raises(lt.parallel.OutOfSyncError, match=r"rank\(s\) \[1\]"):
        diverged = DataParallel(TwoRanks(0, other="diverged"))
        training.make_checkpointer(path, MODEL, strategy=diverged)(state._replace(step=4))
    assert path.read_bytes() == before                              # nothing written


def test_train_is_the_loop_of_its_pieces_logging_evaluating_and_saving_when_due(tmp_path, monkeypatch):
    """7 steps, log every 3, eval every 2, save every 4: records at 2 (eval), 3 (log), 4 (eval),
    6 (both), 7 (the last: both); each record's loss is the mean over the steps since the one
    before; checkpoints at 4 and at the end."""
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(optim.warmup_cosine(1e-2, 2, 7)))
    rng, start = random.key(7), fresh_state(opt)
    saved = []
    real_save = lt.checkpoint.save
    monkeypatch.setattr(lt.checkpoint, "save", lambda path, model, params, opt_state, step, meta: (
        saved.append(step), real_save(path, model, params, opt_state, step, meta)))
    state, log = lt.train(MODEL, opt, start, TOKENS[:2000], steps=7, batch_size=4, seq_len=32, rng=rng,
                          val_tokens=TOKENS[2000:], eval_every=2, eval_batches=2, log_every=3,
                          checkpoint_path=tmp_path / "c.safetensors", checkpoint_every=4,
                          progress=False, verbose=False)
    assert [r["step"] for r in log] == [2, 3, 4, 6, 7] and saved == [4, 7]
    assert [("tokens_per_s" in r, "eval_loss" in r) for r in log] == \
        [(False, True), (True, False), (False, True), (True, True), (True, True)]
    step_fn = lt.make_train_step(MODEL, opt)
    batch_for = training.batch_sampler(TOKENS[:2000], random.fold_in(rng, "data"), 4, 32)
    eval_loss = training.make_evaluator(MODEL, TOKENS[2000:], 4, 32, 2)
    by_hand, losses = start, []
    for s in range(7):
        by_hand, metrics = step_fn(by_hand, batch_for(s), random.fold_in(rng, s))
        losses.append(metrics["loss"])
        record = next((r for r in log if r["step"] == s + 1), None)
        if record is not None and "eval_loss" in record:
            assert record["eval_loss"] == eval_loss(by_hand.params) and record["lr"] == metrics["lr"]
    windows = [[1, 2], [3], [4], [5, 6], [7]]
    assert [r["loss"] for r in log] == [float(np.mean([losses[s - 1] for s in w])) for w in windows]
    assert same_tree(state.params, by_hand.params) and same_tree(state.opt_state, by_hand.opt_state)


@pytest.mark.parametrize("bad,message", [
    (dict(batch_size=0), "batch_size must be an integer >= 1"), (dict(accumulate=0), "accumulate"),
    (dict(log_every=-1), "log_every must be an integer >= 0"), (dict(steps=2.5), "steps must be an integer"),
    (dict(checkpoint_every=True), "checkpoint_every"), (dict(eval_batches=0), "eval_batches"),
])
def test_train_refuses_bad_counts_naming_them(bad, message):
    opt = optim.sgd(0.1)
    kwargs = dict(steps=2, batch_size=2, seq_len=8, rng=random.key(0), progress=False, verbose=False) | bad
    with pytest.raises(ValueError, match=message):
        lt.train(MODEL, opt, fresh_state(opt), TOKENS, **kwargs)


def test_progress_bar_draws_the_step_and_fields_only_when_enabled():
    import io
    from lt.progress import Progress
    stream = io.StringIO()
    bar = Progress(10, stream=stream, enabled=True)
    bar.update(3, force=True, loss="2.0000")
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\r 3/10 [#######.................] loss 2.0000 ") and text.endswith("\n")
    quiet = io.StringIO()
    off = Progress(10, stream=quiet, enabled=False)
    off.update(3, force=True, loss="2.0000")
    off.close()
    assert quiet.getvalue() == ""


def test_an_update_that_makes_params_non_finite_never_replaces_the_last_good_checkpoint(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    boom = optim.sgd(lambda step: 1e-3 if step < 4 else float("inf"))   # step 4's update: inf params
    with pytest.raises(lt.checkpoint.NonFiniteCheckpointError, match=r"^step 5: params leaf blocks\.0\.attn\.proj\.b .*non-finite"):
        run(boom, 10, checkpoint_path=path, checkpoint_every=1)
    ck = lt.checkpoint.load(path, MODEL)
    assert ck.step == 4 and all(np.isfinite(x).all() for x in tree.leaves(ck.params))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]     # no temporary file left
