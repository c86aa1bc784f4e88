"""Training-step throughput with each library alone in its own process.

bench_llm.py alternates lt and PyTorch in one process. For gpt2 that hurts both, lt most:
each lt step allocates fresh arrays of up to 154 MB, which page-fault in again once torch's
allocations have taken their place. Here each library runs its steps (forward + backward +
AdamW) in a fresh process; the figure is the best step after two warm-ups.

    python benchmarks/bench_train_separate.py                 # gpt2, batch 2 x 128
    python benchmarks/bench_train_separate.py --preset large --batch 4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run_steps(library: str, preset: str, batch: int, seq: int, steps: int) -> float:
    """Best seconds per step of ``library`` ("lt" or "torch") in this process."""
    import numpy as np
    import lt
    lt.tune_malloc()          # lt.train's allocator setting; both children have it (torch's uses lt for its config)
    model = lt.GPT.preset(preset)
    params = lt.tree.map(lambda s: np.random.default_rng(0).standard_normal(s.shape, dtype=np.float32) * 0.02,
                         model.spec())
    ids = lt.random.randint(lt.random.key(1), (batch, seq), 0, model.vocab_size)
    if library == "lt":
        loss_and_grad, opt = lt.value_and_grad(model.loss), lt.optim.adamw(3e-4, weight_decay=0.1)
        state = [params, opt.init(params)]

        def step():
            _, grads = loss_and_grad(state[0], ids, ids)
            updates, state[1] = opt.update(grads, state[1], state[0])
            state[0] = lt.optim.apply_updates(state[0], updates)
    else:
        import torch
        torch.set_num_threads(2)
        sys.path.insert(0, HERE)
        from torch_gpt import TorchGPT
        net = TorchGPT(model)
        topt = torch.optim.AdamW(net.parameters(), lr=3e-4, weight_decay=0.1)
        tids = torch.as_tensor(ids)

        def step():
            topt.zero_grad(set_to_none=True)
            net(tids, tids).backward()
            topt.step()
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--child", choices=["lt", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(run_steps(args.child, args.preset, args.batch, args.seq, args.steps))
        return
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2"}
    tokens = args.batch * args.seq
    best = {}
    for library in ("lt", "torch"):
        out = subprocess.run([sys.executable, __file__, "--child", library, "--preset", args.preset,
                              "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps)],
                             capture_output=True, text=True, env=env, check=True)
        best[library] = float(out.stdout.strip().splitlines()[-1])
        print(f"{args.preset} {args.batch}x{args.seq} {library:5} {tokens / best[library]:8.1f} tokens/s "
              f"({best[library]:.2f} s/step)", flush=True)
    print(f"lt/torch {best['torch'] / best['lt']:.2f}")


if __name__ == "__main__":
    main()
