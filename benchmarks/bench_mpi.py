"""Data-parallel speedup on one machine: 2 MPI ranks against 1 process, and the allreduce cost.

The same training step (``lt.make_train_step``, AdamW, clipping) on the same global batch
(default ``medium`` preset, 8 x 128 tokens, float32), timed in three configurations, each a
fresh process so that the BLAS thread count can be set before NumPy loads:

- 1 process, 2 BLAS threads (what a single run on a 2-core machine would use),
- 1 process, 1 BLAS thread (the per-rank budget of the MPI run: the pure scaling reference),
- 2 ranks under ``mpiexec -n 2 python -m mpi4py``, 1 BLAS thread each, 4 rows per rank.

The configurations alternate for ``--rounds`` rounds and each keeps its best round (the
median step of that round), so a busy moment of a shared machine hurts all of them alike.
In the MPI run the gradient allreduce is timed inside the step: first the wait for the
slower rank (a barrier), then the allreduce itself (``lt.distributed.mean_gradients``).

    python benchmarks/bench_mpi.py                      # needs mpi4py and an mpiexec
    python benchmarks/bench_mpi.py --preset small --steps 10 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def worker(args) -> None:
    """One configuration: time ``args.steps`` steps after one warm-up; rank 0 prints a JSON line."""
    import numpy as np
    import lt
    from lt import distributed, optim, random

    lt.tune_malloc()                                      # as lt.train does
    w = distributed.world()
    model = lt.GPT.preset(args.preset)
    tokens = random.randint(random.key(1), (200_000,), 0, model.vocab_size)
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(3e-4, weight_decay=0.1))
    state = lt.TrainState.create(model.init(random.key(0), np.float32), opt)
    step = lt.make_train_step(model, opt, comm=w.comm)
    data_rng = random.fold_in(random.key(7), "data")

    waits, reduces, real = [], [], distributed.mean_gradients
    def timed_mean_gradients(comm, loss, grads, n):       # the allreduce, split from the wait before it
        t0 = time.perf_counter()
        comm.Barrier()
        t1 = time.perf_counter()
        out = real(comm, loss, grads, n)
        waits.append(t1 - t0)
        reduces.append(time.perf_counter() - t1)
        return out
    distributed.mean_gradients = timed_mean_gradients

    times = []
    for s in range(args.steps + 1):
        batch = lt.data.random_windows(random.fold_in(data_rng, s), tokens, args.batch, args.seq_len)
        start = time.perf_counter()
        state, _ = step(state, batch)
        times.append(time.perf_counter() - start)
    distributed.check_in_sync(w.comm, state.params)           # the ranks really did the same steps
    if w.is_root:
        print(json.dumps({"step_s": statistics.median(times[1:]),
                          "wait_s": statistics.median(waits[1:]) if waits else 0.0,
                          "allreduce_s": statistics.median(reduces[1:]) if reduces else 0.0,
                          "params": model.num_params(), "ranks": w.size}), flush=True)


def run(args, ranks: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "MPIEXEC_TIMEOUT": "600"}
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--preset", args.preset, "--steps", str(args.steps),
           "--batch", str(args.batch), "--seq-len", str(args.seq_len)]
    if ranks > 1:
        cmd = [args.mpiexec, "-n", str(ranks), sys.executable, "-m", "mpi4py"] + cmd[1:]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=900).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="medium")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    args.mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if args.mpiexec is None:
        sys.exit("no mpiexec next to this Python or on PATH: pip install mpi4py mpich")
    configs = {"1 process, 2 threads": (1, 2), "1 process, 1 thread": (1, 1), "2 ranks, 1 thread each": (2, 1)}
    best: dict[str, dict] = {}
    load = os.getloadavg()                   # others' work on a shared machine shows here
    for _ in range(args.rounds):
        for name, (ranks, threads) in configs.items():
            r = run(args, ranks, threads)
            if name not in best or r["step_s"] < best[name]["step_s"]:
                best[name] = r
    tokens = args.batch * args.seq_len
    print(f"{args.preset} ({best['1 process, 1 thread']['params'] / 1e6:.2f}M params), batch {args.batch} x "
          f"{args.seq_len}, float32, AdamW; best of {args.rounds} rounds, median of {args.steps} steps; "
          f"{os.cpu_count()} CPUs, load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    for name, r in best.items():
        print(f"  {name:<24} {r['step_s'] * 1e3:8.1f} ms/step  {tokens / r['step_s']:8.0f} tok/s")
    mpi = best["2 ranks, 1 thread each"]
    for name in ("1 process, 2 threads", "1 process, 1 thread"):
        print(f"  speedup of 2 ranks over {name}: {best[name]['step_s'] / mpi['step_s']:.2f}x")
    print(f"  allreduce per step: {mpi['allreduce_s'] * 1e3:.1f} ms "
          f"({mpi['params'] * 4 / 1e6:.1f} MB of float32 gradients), waiting for the slower rank before it: "
          f"{mpi['wait_s'] * 1e3:.1f} ms, the rest of the step (own rows' forward/backward, update): "
          f"{(mpi['step_s'] - mpi['allreduce_s'] - mpi['wait_s']) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
