"""Training-step throughput, lt against PyTorch, in one process.

For each preset: forward + backward, and forward + backward + AdamW, batch 4 x 128 tokens,
float32, 2 threads; lt and torch alternate step by step, best of ``--repeats`` rounds.

    python benchmarks/bench_train_step.py                 # medium and large
    python benchmarks/bench_train_step.py --presets tiny small medium large
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # torch's idle threads must not spin on lt's cores

import numpy as np  # noqa: E402

import lt  # noqa: E402


def best_times(fns, repeats: int) -> list[float]:
    """Best wall time of each callable; they alternate round by round, so that a busy
    moment of the shared machine slows both sides rather than one."""
    for fn in fns:
        fn()                                          # warm up
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            fn()                                      # let the other library's threads go idle
            for _ in range(2):
                start = time.perf_counter()
                fn()
                best[i] = min(best[i], time.perf_counter() - start)
    return best


def lt_steps(model: lt.GPT, ids: np.ndarray, targets: np.ndarray):
    """(forward+backward, forward+backward+AdamW) callables for lt."""
    params = model.init(lt.random.key(0))
    loss_and_grad = lt.value_and_grad(model.loss)
    opt = lt.optim.adamw(3e-4, weight_decay=0.1) if hasattr(lt, "optim") else None
    state = {"params": params, "opt": opt.init(params) if opt else None}

    def fwd_bwd():
        return loss_and_grad(state["params"], ids, targets)

    def train_step():
        _, grads = loss_and_grad(state["params"], ids, targets)
        updates, state["opt"] = opt.update(grads, state["opt"], state["params"])
        state["params"] = lt.optim.apply_updates(state["params"], updates)
    return fwd_bwd, (train_step if opt else None)


def torch_steps(model: lt.GPT, ids: np.ndarray, targets: np.ndarray):
    import torch
    from torch_gpt import TorchGPT
    torch.manual_seed(0)
    net = TorchGPT(model)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4, weight_decay=0.1)
    tids, ttargets = torch.as_tensor(ids), torch.as_tensor(targets)

    def fwd_bwd():
        net.zero_grad(set_to_none=True)
        net(tids, ttargets).backward()

    def train_step():
        opt.zero_grad(set_to_none=True)
        net(tids, ttargets).backward()
        opt.step()
    return fwd_bwd, train_step


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["medium", "large"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    lt.tune_malloc()                                  # as lt.train does (process-wide: torch gets it too)

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import torch
        torch.set_num_threads(2)
        peer = f"torch {torch.__version__}"
    except ImportError:
        torch, peer = None, None
    tokens = args.batch * args.seq
    print(f"numpy {np.__version__}, {peer or 'no torch'}; batch {args.batch} x {args.seq} tokens, float32")
    print(f"{'preset':8} {'step':22} {'lt tok/s':>10} {'torch tok/s':>12} {'lt/torch':>9}")
    for name in args.presets:
        model = lt.GPT.preset(name)
        ids = lt.random.randint(lt.random.key(1), (args.batch, args.seq), 0, model.vocab_size)
        targets = lt.random.randint(lt.random.key(2), (args.batch, args.seq), 0, model.vocab_size)
        ours = lt_steps(model, ids, targets)
        theirs = torch_steps(model, ids, targets) if torch else (None, None)
        for label, mine, peer_fn in zip(("forward+backward", "forward+backward+AdamW"), ours, theirs):
            if mine is None:
                continue
            t_lt, t_torch = (best_times([mine, peer_fn], args.repeats) if peer_fn
                             else (best_times([mine], args.repeats)[0], None))
            row = f"{name:8} {label:22} {tokens / t_lt:10.0f}"
            if t_torch:
                row += f" {tokens / t_torch:12.0f} {t_torch / t_lt:9.2f}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
