"""Causal self-attention, lt (both kernels) against torch, side by side in one run.

    python benchmarks/bench_attention.py                   # T in 128 ... 8192 (~6 min on 2 cores)
    python benchmarks/bench_attention.py --seq 128 512     # chosen lengths only
    python benchmarks/bench_attention.py --gpt2-memory     # also the gpt2 training step at T = 1024, 4096

Shapes: batch 1, GPT-2 small's heads (H = 12, d = 64), float32, T = S. lt runs its compiled
kernels where numba is installed (``LT_KERNELS=numpy`` for the NumPy reference); the first run
after an install compiles them (minutes, cached on disk), before the timings. ``*`` marks the
kernel ``lt.ops.attention_kernel`` picks at that T. For each T, the forward
(``lt.nn.scaled_dot_product_attention(q, k, v, causal=True)`` with the kernel forced, and
``torch.nn.functional.scaled_dot_product_attention(..., is_causal=True)`` under ``no_grad``)
and the forward + backward of the sum of the output (``lt.value_and_grad``; torch's
``.backward()``). lt is pinned (``lt.threads.pin``) to torch's thread count, ``OMP_NUM_THREADS``:
left adaptive, it takes fewer threads beside a busy process. Columns: tokens/s (T / best wall
time; lt and torch alternate call by call, best of the rounds), and peak memory in MiB: the
growth of the resident set's high-water mark (``VmHWM``) over one call in a fresh process
whose inputs already exist (glibc's mmap threshold fixed at 128 KiB, so that freed pages do
not hide the growth), each library and kernel in its own child. Ratios are lt / torch: time
≥ 1 is lt faster, memory ≤ 1 is lt smaller. The full kernel is skipped where its (T, T)
matrices would not fit comfortably (T > 2048: 805 MB per copy at 4096).

``--gpt2-memory`` runs ``peak_memory.py``'s gpt2 training step (batch 1, forward + backward
+ AdamW) at T = 1024 and 4096 for lt and torch, and prints the growth ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

import lt

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
H, D_HEAD = 12, 64
FULL_UP_TO = 2048


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def calls(T: int, torch):
    """{name: (forward, forward+backward)} for lt's kernels and torch at length T."""
    rng = lt.random.key(0)
    q, k, v = (lt.random.normal(lt.random.fold_in(rng, i), (1, H, T, D_HEAD)) for i in range(3))
    out = {}
    for kernel in ("full", "blockwise"):
        if kernel == "full" and T > FULL_UP_TO:
            continue
        out[f"lt {kernel}"] = _lt_calls(q, k, v, kernel)
    if torch is not None:
        F = torch.nn.functional
        tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))

        def fwd():
            with torch.no_grad():
                return F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)

        def fwd_bwd():
            for t in (tq, tk, tv):
                t.grad = None
            F.scaled_dot_product_attention(tq, tk, tv, is_causal=True).sum().backward()

        out["torch"] = (fwd, fwd_bwd)
    return out


def _lt_calls(q, k, v, kernel: str):
    """(forward, forward + backward) of lt's causal attention with ``kernel`` forced."""

    def sdpa(q, k, v):
        return lt.nn.scaled_dot_product_attention(q, k, v, causal=True, kernel=kernel)

    grad = lt.value_and_grad(lambda q, k, v: lt.ops.sum(sdpa(q, k, v)), argnums=(0, 1, 2))

    def pinned(fn):  # torch's thread count: lt would take fewer beside a busy neighbour
        with lt.threads.pin(int(os.environ["OMP_NUM_THREADS"])):
            return fn(q, k, v)

    return (lambda: pinned(sdpa)), (lambda: pinned(grad))


def best_times(fns: dict, rounds: int) -> dict:
    """Best wall time of each callable; they alternate call by call after one warm-up each."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def memory_table(T_list, with_torch: bool) -> dict:
    """{(T, 0 forward | 1 fwd+bwd, name): peak MiB}, each figure from a fresh process (this file
    with ``--memory-child``): freed pages an earlier call left resident would hide the growth."""
    mem = {}
    # glibc's fixed mmap threshold: every large array is mapped fresh and counted, not carved from
    # pages an earlier free left resident (the dynamic threshold would hide most of the growth)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    names = ["lt full", "lt blockwise"] + (["torch"] if with_torch else [])
    for T in T_list:
        for name in names:
            if name == "lt full" and T > FULL_UP_TO:
                continue
            for idx in (0, 1):
                cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", name, str(idx), "--seq", str(T)]
                out = subprocess.run(cmd, capture_output=True, text=True, env=env).stdout.strip()
                mem[T, idx, name] = json.loads(out) if out else None
    return mem


def memory_child(name: str, idx: int, T: int) -> None:
    """Print the growth of the resident high-water mark over one call, after a small warm-up
    call has set up thread pools and kernels (not the call's memory)."""
    torch = None
    if name == "torch":
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    calls(8, torch)[name][idx]()
    fn = calls(T, torch)[name][idx]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    fn()
    print(json.dumps((max(_status_kib("VmHWM"), _status_kib("VmRSS")) - base) / 1024))


def check(T: int, fns: dict) -> str:
    """Largest difference of lt's blockwise output from the full kernel's and from torch's."""
    b = fns["lt blockwise"][0]()
    parts = []
    if "lt full" in fns:
        parts.append(f"full {np.abs(b - fns['lt full'][0]()).max():.1e}")
    if "torch" in fns:
        parts.append(f"torch {np.abs(b - fns['torch'][0]().numpy()).max():.1e}")
    return ", ".join(parts)


def table(T_list, torch, memory: bool) -> None:
    mem = memory_table(T_list, torch is not None) if memory else {}
    print(f"{'T':>5} {'pass':<8} {'library':<13} {'tokens/s':>10} {'vs torch':>8} {'peak MiB':>9} {'vs torch':>8}")
    for T in T_list:
        fns = calls(T, torch)
        rounds = 5 if T <= 1024 else 3 if T <= 2048 else 2
        for mode, idx in (("forward", 0), ("fwd+bwd", 1)):
            times = best_times({name: f[idx] for name, f in fns.items()}, rounds)
            picked = "lt " + lt.ops.attention_kernel(T, T)
            for name in fns:
                tps, ratio, m, mratio = T / times[name], "", mem.get((T, idx, name)), ""
                if "torch" in fns and name != "torch":
                    ratio = f"{times['torch'] / times[name]:8.2f}"
                    if m is not None and mem.get((T, idx, "torch")):
                        mratio = f"{m / mem[T, idx, 'torch']:8.2f}"
                m = "" if m is None else f"{m:9.1f}"
                label = name + (" *" if name == picked else "")
                print(f"{T:>5} {mode:<8} {label:<13} {tps:>10,.0f} {ratio:>8} {m:>9} {mratio:>8}", flush=True)
        print(f"{T:>5} check    max |blockwise - other|: {check(T, fns)}", flush=True)


def gpt2_memory() -> None:
    import peak_memory

    cfg = dict(vocab_size=50257, num_layers=12, num_heads=12, hidden_dim=768, ffn_dim=3072, batch=1)
    configs = {f"gpt2 T={T}": dict(cfg, max_seq_len=T, seq=T) for T in (1024, 4096)}
    res = peak_memory.measure(configs)
    for lib in ("lt", "torch"):
        a, b = res.get(("gpt2 T=1024", lib)), res.get(("gpt2 T=4096", lib))
        if a and b:
            print(
                f"gpt2 train step peak MiB, {lib:<5}: T=1024 {a:8.0f}  T=4096 {b:8.0f}  ratio {b / a:.2f}", flush=True
            )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, nargs="+", default=[128, 512, 1024, 2048, 4096, 8192])
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    ap.add_argument("--gpt2-memory", action="store_true", help="also gpt2's training step at T = 1024 and 4096")
    ap.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        return memory_child(args.memory_child[0], int(args.memory_child[1]), args.seq[0])
    lt.tune_malloc()
    torch = None
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        except ImportError:
            print("torch not installed: lt alone", file=sys.stderr)
    print(
        f"batch 1, H={H}, d={D_HEAD}, float32, causal; numpy {np.__version__}"
        + (f", torch {torch.__version__}" if torch else "")
        + f", {os.environ['OMP_NUM_THREADS']} threads; lt kernels: {lt.ops.kernels.active()}"
        + f"; load average {os.getloadavg()[0]:.2f}"
    )
    start = time.perf_counter()
    table(args.seq, torch, not args.no_memory)
    if args.gpt2_memory:
        gpt2_memory()
    print(f"wall {time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
