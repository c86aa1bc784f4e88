"""What ``lt.tune_malloc()`` buys: a training step with and without it, each in a fresh process.

    python benchmarks/bench_malloc.py                         # mini and medium, batch 4 x 128
    python benchmarks/bench_malloc.py --presets large --steps 5

Each child builds the preset, takes two warm-up steps (forward + backward + AdamW, float32),
then times ``--steps`` more and counts the minor page faults of each (``getrusage``). One
child calls ``lt.tune_malloc()`` first, as ``lt.train`` does; the other leaves glibc's
allocator as it is. They alternate for ``--rounds`` rounds; the figures are the best step
time and the median faults per step. The setting is process-wide, hence one process each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")


def child(preset: str, tuned: bool, steps: int, batch: int, seq: int) -> dict:
    """Seconds and minor page faults of each timed step, in this process."""
    import lt
    if tuned:
        lt.tune_malloc()
    model, opt = lt.GPT.preset(preset), lt.optim.adamw(3e-4, weight_decay=0.1)
    step = lt.make_train_step(model, opt)
    state = lt.TrainState.create(model.init(lt.random.key(0)), opt)
    ids = lt.random.randint(lt.random.key(1), (batch, seq + 1), 0, model.vocab_size)
    inputs, targets = ids[:, :-1], ids[:, 1:]                            # (B, T) x 2
    times, faults = [], []
    for i in range(steps + 2):
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        state, _ = step(state, (inputs, targets))
        if i >= 2:                                                       # after two warm-ups
            times.append(time.perf_counter() - t0)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return {"times": times, "faults": faults}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["mini", "medium"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--child", choices=["plain", "tuned"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.presets[0], args.child == "tuned", args.steps, args.batch, args.seq)))
        return
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    print(f"batch {args.batch} x {args.seq}, float32, AdamW, {os.environ['OPENBLAS_NUM_THREADS']} threads; "
          f"best of {args.rounds} x {args.steps} steps")
    for preset in args.presets:
        runs = {"plain": [], "tuned": []}
        for _ in range(args.rounds):
            for mode in runs:
                out = subprocess.run([sys.executable, __file__, "--child", mode, "--presets", preset,
                                      "--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq)],
                                     env=env, capture_output=True, text=True, check=True)
                runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
        best = {m: min(t for r in rs for t in r["times"]) for m, rs in runs.items()}
        faults = {m: sorted(f for r in rs for f in r["faults"])[len(rs) * args.steps // 2] for m, rs in runs.items()}
        print(f"{preset:8} without {best['plain'] * 1e3:7.1f} ms/step {faults['plain']:6d} faults | "
              f"tune_malloc {best['tuned'] * 1e3:7.1f} ms/step {faults['tuned']:6d} faults | "
              f"{best['plain'] / best['tuned']:.3f}x", flush=True)


if __name__ == "__main__":
    main()
