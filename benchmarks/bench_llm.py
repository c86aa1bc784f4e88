"""lt side by side with PyTorch: micro-benchmarks, and every preset's forward, training
step, MFU, KV-cache decoding and peak memory, in one process.

    python benchmarks/bench_llm.py                        # full: every preset up to gpt2 (~5 min on 2 cores)
    QUICK=1 python benchmarks/bench_llm.py                # quick: no gpt2, fewer rounds (~1 min)
    python benchmarks/bench_llm.py --json out.json        # also write every number to a file
    python benchmarks/bench_llm.py --presets small --no-memory --profile small
    python benchmarks/bench_llm.py --busy 1 --compare quiet.json   # contention: 1 busy process beside it

What is measured (float32; torch on ``OMP_NUM_THREADS`` threads, 2 by default; lt on the
threads ``lt.threads`` decides per call, or on ``OPENBLAS_NUM_THREADS`` when that is set, which
lt then respects -- leave it unset for ``--busy`` to show lt adapting):

- ``matmul peak``: a float32 2048 x 2048 x 2048 matmul, NumPy and torch, best of N,
  in GFLOP/s. NumPy's figure is the peak that MFU is measured against.
- The seed's list at batch 4 x 128 with the named preset's dims: ``sdpa`` (causal
  scaled dot-product attention, small), ``mha`` (causal self-attention with its qkv and
  output projections, small), ``block`` (a pre-norm transformer block, small and
  medium), forward only; ``generate N`` (N = 10, 20 new tokens, greedy, batch 1, an
  8-token prompt, small preset), new tokens/s over the whole call. The seed's "GPT
  forward (tiny, small)" is the ``forward`` row of those presets.
- For each preset (gpt2 in full mode only): ``forward`` (logits for 4 x 128 tokens;
  tiny 4 x 64), ``train step`` (forward + backward + AdamW, same shapes; gpt2 2 x 128),
  ``train MFU`` and ``KV decode`` (batch 1, a 16-token prompt, 64 new tokens, greedy,
  prefill included), and ``train peak memory`` (see ``peak_memory.py``: each library's
  training step in its own forked process; the growth of its resident set, in MiB).
- ``matmul floor`` of each forward and train step (``matmul_floor.py``: the same GEMMs, same
  shapes, float32, timed alone with NumPy in the same rounds), in tokens/s, and ``floor
  fraction``: floor seconds over lt's (lt column) and over torch's (torch column).

The PyTorch twins (``torch_gpt.py``, ``peers.py``) run the same function on lt's own
weights; before timing, the ``check`` column says how far their outputs are from lt's
(largest absolute difference, first-step loss difference, or greedy tokens that agree).
lt and torch alternate round by round, each figure the best of its rounds, so that a
busy moment of a shared machine slows both. Ratios are lt / torch of the figure in the
row: above 1 lt is faster, except for memory, where below 1 lt uses less.

MFU (model FLOPs utilisation) of a training step at T tokens per sequence:
``tokens/s x (6 N + 12 L T D) / peak``, with N = L (4 D^2 + 2 D F) + V D the weights of
every matmul (qkv, output projection, both FFN layers, and the tied LM head; no
embedding gathers, biases or norms), and 12 L T D the attention scores and weighted
sums over the full T x T square (PaLM's convention). Both libraries are measured
against the same NumPy peak. ``main`` calls ``lt.tune_malloc()`` first, as ``lt.train`` does; it
is process-wide, so torch's allocations in this process get it too.

``--busy N`` runs N busy processes beside the whole run (``busy.py``); ``--compare QUIET.json``
then prints, per row, busy over quiet of lt/torch and of lt's own speed, and flags the rows
that break issue 15's rules. ``--profile PRESET`` prints the training step's shares
(matmuls, elementwise primitives, optimizer, Python overhead; ``step_profile.py``) and a cProfile.

``--json FILE`` writes ``{"schema": "lt-bench-llm/1", "mode": "quick"|"full", "busy": N, "machine":
{cpu, cpu_count, memory, numpy, numpy_blas, torch, torch_blas, threads, load averages,
sharing: {cores_used_by_others, cores_stolen} during the run, ...}, "settings": {..., "peak_gflops"},
"presets": {name: {config, num_params, matmul_params, forward_flops_per_token, train_flops_per_token,
forward_shape, train_shape, floor_gemms}}, "rows": [...],
"targets": {"forward small": {"value", "target", "met", "ratio"}, ...}, "wall_s"}``, with
``compare`` and ``profile`` where asked for. A row is ``{measurement, preset, shape, unit, lt,
torch, ratio, check}``; timed rows add ``work`` (units per call), ``lt_s``/``torch_s`` (best
seconds per call), ``lt_median_s``/``torch_median_s``, ``rounds``, ``wall_s`` (and
``floor_s``); floor rows add ``of`` ("forward" or "train step"). Without torch, ``torch``,
``ratio`` and ``check`` are null.

Numbers from a busy machine mislead: lt's two-thread BLAS calls slow down far more than
torch's when another process holds a core, so run it on a quiet machine. The run counts
the CPU time other processes used meanwhile (``/proc/stat`` less its own) and warns
when they held more than a tenth of a core on average.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

TORCH_THREADS = int(os.environ.get("OMP_NUM_THREADS", "2"))  # not set for NumPy: lt decides its own
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # torch's idle threads must not spin on lt's cores

import numpy as np

import lt

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import busy  # noqa: E402
import matmul_floor  # noqa: E402
import step_profile  # noqa: E402
from llm_report import HEADER, cpu_sample, describe, format_row, format_targets, machine, others, summary, targets  # noqa: E402

QUICK_PRESETS = ("tiny", "small", "mini", "medium", "large")
FULL_PRESETS = QUICK_PRESETS + ("gpt2",)
PROMPT, NEW = 16, 64                       # KV decode
GEN_PROMPT, GEN_NEW = 8, (10, 20)          # the seed's generation rows
SCHEMA = "lt-bench-llm/1"


# ----------------------------------------------------------------- timing

def best_times(fns, budget: float, min_rounds: int, max_rounds: int) -> tuple[list[list[float]], int]:
    """Every timed wall time of each callable (best first) and the number of rounds. The
    callables alternate round by round after two warm-up calls each; a round runs each once
    (short ones: an untimed call that lets the other library's threads go idle, then two
    timed calls). The rounds fit
    ``budget`` seconds, estimated from the warm-up, within [min_rounds, max_rounds]."""
    warm = []
    for fn in fns:
        fn()                      # first call: faults in the working set (gpt2's 2 GB need a second)
        start = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - start)
    short = [w < 0.05 for w in warm]
    per_round = sum(w * (3 if s else 1) for w, s in zip(warm, short))
    rounds = max(min_rounds, min(max_rounds, int(budget / max(per_round, 1e-9))))
    times = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            if short[i]:
                fn()
            for _ in range(2 if short[i] else 1):
                start = time.perf_counter()
                fn()
                times[i].append(time.perf_counter() - start)
    return [sorted(t) for t in times], rounds


# ----------------------------------------------------------------- model arithmetic

def matmul_params(model: lt.GPT) -> int:
    """N: weights of every matmul per token (blocks and the LM head): L (D (H + 2 Hkv) d + D^2 + k D F)
    + V D, k = 3 for SwiGLU (gate, up, down) else 2; 4 D^2 + 2 D F per layer for GPT-2's blocks."""
    D, F, L, V, H = model.hidden_dim, model.ffn_dim, model.num_layers, model.vocab_size, model.num_heads
    qkv = D * (H + 2 * (model.num_kv_heads or H)) * (D // H)
    return L * (qkv + D * D + (3 if model.activation == "swiglu" else 2) * D * F) + V * D


def forward_flops_per_token(model: lt.GPT, seq: int) -> int:
    """2 N + 4 L T D: the forward's matmuls plus attention over the full T x T."""
    return 2 * matmul_params(model) + 4 * model.num_layers * seq * model.hidden_dim


def train_flops_per_token(model: lt.GPT, seq: int) -> int:
    """6 N + 12 L T D: forward and backward matmuls plus attention over the full T x T."""
    return 6 * matmul_params(model) + 12 * model.num_layers * seq * model.hidden_dim


def shapes(name: str) -> dict:
    """(batch, seq) of the forward pass and of the training step."""
    return {"forward": (4, 64) if name == "tiny" else (4, 128),
            "train": (4, 64) if name == "tiny" else (2, 128) if name == "gpt2" else (4, 128)}


# ----------------------------------------------------------------- the run

class Bench:
    """Collects rows; ``torch`` is the module, or None to run lt alone."""

    def __init__(self, torch, budget: float, min_rounds: int, max_rounds: int):
        self.torch, self.rows = torch, []
        self.budget, self.min_rounds, self.max_rounds = budget, min_rounds, max_rounds

    def time(self, measurement, preset, shape, unit, work, lt_fn, torch_fn, check=None, floors=None, **extra):
        """Time lt_fn against torch_fn (None: lt alone); a row of ``work`` units per call per second.
        ``floors``: {name: call} of the matmul floor, timed in the same rounds; the row's ``floor_s``
        is the best of them, ``floor_threads_s`` each one's best."""
        fns = [lt_fn] + ([torch_fn] if torch_fn is not None and self.torch else [])
        floors = floors or {}
        start = time.perf_counter()
        times, rounds = best_times(fns + list(floors.values()), self.budget, self.min_rounds, self.max_rounds)
        extra["wall_s"] = time.perf_counter() - start
        if floors:
            extra["floor_threads_s"] = {name: t[0] for name, t in zip(floors, times[len(fns):])}
            extra["floor_s"] = min(extra["floor_threads_s"].values())
            del times[len(fns):]
        best = [t[0] for t in times] + [None]                   # seconds per call: best, and the median
        median = [t[len(t) // 2] for t in times] + [None]
        return self.add(measurement, preset, shape, unit, work / best[0], best[1] and work / best[1],
                        check=check, lt_s=best[0], torch_s=best[1], lt_median_s=median[0],
                        torch_median_s=median[1], work=work, rounds=rounds, **extra)

    def add(self, measurement, preset, shape, unit, lt_value, torch_value, check=None, **extra):
        row = {"measurement": measurement, "preset": preset, "shape": shape, "unit": unit,
               "lt": lt_value, "torch": torch_value,
               "ratio": lt_value / torch_value if lt_value is not None and torch_value else None,
               "check": check, **extra}
        self.rows.append(row)
        print(format_row(row), flush=True)
        return row

    def inference(self, fn):
        """fn run under torch.inference_mode (the fair twin of lt's tape-free forward)."""
        torch = self.torch

        def run():
            with torch.inference_mode():
                return fn()
        return run


def max_diff(a, b) -> str:
    return f"max|d| {float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))):.1e}"


def agreeing(ours: np.ndarray, theirs: np.ndarray, start: int) -> int:
    """Generated tokens equal before the first difference (near-ties may part later)."""
    return int(np.argmax(np.append(ours[start:] != theirs[start:], True)))


def _component(bench: Bench, kind: str, m: lt.GPT, B: int, T: int):
    """(lt's call, torch's call or None) for one of the seed's components at m's dims."""
    torch, D, H = bench.torch, m.hidden_dim, m.num_heads
    rng = lt.random.key(7)
    if kind == "sdpa":
        q, k, v = (lt.random.normal(lt.random.fold_in(rng, i), (B, H, T, D // H)) for i in range(3))
        ours = lambda: lt.nn.scaled_dot_product_attention(q, k, v, causal=True)            # noqa: E731
        if not torch:
            return ours, None
        tq, tk, tv = (torch.as_tensor(a) for a in (q, k, v))
        F = torch.nn.functional
        return ours, bench.inference(lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=True))
    x = lt.random.normal(rng, (B, T, D))
    if kind == "mha":
        comp = lt.nn.MultiHeadAttention(D, H)
        p = comp.init(lt.random.key(0))
        ours = lambda: comp.apply(p, x, x, x, causal=True)                                 # noqa: E731
    else:
        comp = lt.nn.TransformerBlock(D, H, m.ffn_dim)
        p = comp.init(lt.random.key(0))
        ours = lambda: comp.apply(p, x, causal=True)                                       # noqa: E731
    if not torch:
        return ours, None
    import peers
    twin, tx = (peers.load_mha if kind == "mha" else peers.load_block)(comp, p), torch.as_tensor(x)
    return ours, bench.inference(lambda: twin(tx))


def micro(bench: Bench) -> None:
    """The seed's list: sdpa, mha, block (forward), generation of 10 and 20 tokens."""
    B, T = 4, 128
    for kind, name in (("sdpa", "small"), ("mha", "small"), ("block", "small"), ("block", "medium")):
        ours, theirs = _component(bench, kind, lt.GPT.preset(name), B, T)
        check = max_diff(ours(), theirs().numpy()) if theirs else None
        bench.time(kind, name, f"{B}x{T}", "tokens/s", B * T, ours, theirs, check)
    model = lt.GPT.preset("small")
    params = model.init(lt.random.key(0))
    prompt = lt.random.randint(lt.random.key(1), (GEN_PROMPT,), 0, model.vocab_size)
    twin = _decoder(bench, model, params)
    for n in GEN_NEW:
        ours = functools.partial(model.generate, params, prompt, max_new_tokens=n, temperature=0)
        theirs = functools.partial(twin, prompt, n) if twin else None
        check = f"agree {agreeing(ours(), theirs(), GEN_PROMPT)}/{n}" if twin else None
        bench.time(f"generate {n}", "small", f"1x{GEN_PROMPT}+{n}", "tokens/s", n, ours, theirs, check)


def _decoder(bench: Bench, model, params):
    if not bench.torch:
        return None
    import peers
    return peers.torch_kv_decoder(model, params)


def preset_rows(bench: Bench, name: str) -> dict:
    """forward, KV decode and train step of one preset; its facts for the JSON."""
    torch = bench.torch
    model = lt.GPT.preset(name)
    params = model.init(lt.random.key(0))
    net = None
    if torch:
        import peers
        net = peers.load_gpt(model, params)
    # forward
    (B, T), (Bt, Tt) = shapes(name)["forward"], shapes(name)["train"]
    ids = lt.random.randint(lt.random.key(1), (B, T), 0, model.vocab_size)
    ours = lambda: model.apply(params, ids)                                               # noqa: E731
    theirs = bench.inference(lambda: net(torch.as_tensor(ids))) if torch else None
    check = max_diff(ours(), theirs().numpy()) if torch else None
    floor = matmul_floor.gemms(model, B, T)
    row = bench.time("forward", name, f"{B}x{T}", "tokens/s", B * T, ours, theirs, check,
                     floors=matmul_floor.floor_callables(floor))
    matmul_floor.floor_rows(bench, row, "forward", matmul_floor.total_flops(floor))
    # KV decode
    prompt = lt.random.randint(lt.random.key(2), (PROMPT,), 0, model.vocab_size)
    twin = _decoder(bench, model, params)
    ours = lambda: model.generate(params, prompt, max_new_tokens=NEW, temperature=0)      # noqa: E731
    theirs = (lambda: twin(prompt, NEW)) if twin else None
    check = f"agree {agreeing(ours(), theirs(), PROMPT)}/{NEW}" if twin else None
    bench.time("KV decode", name, f"1x{PROMPT}+{NEW}", "tokens/s", NEW, ours, theirs, check)
    twin = None                               # torch's decoder: freed before the training step
    # training step
    ids = lt.random.randint(lt.random.key(3), (Bt, Tt), 0, model.vocab_size)
    targets = lt.random.randint(lt.random.key(4), (Bt, Tt), 0, model.vocab_size)
    loss_and_grad = lt.value_and_grad(model.loss)
    opt = lt.optim.adamw(3e-4, weight_decay=0.1)
    state = [params, opt.init(params)]

    def ours():
        _, grads = loss_and_grad(state[0], ids, targets)
        updates, state[1] = opt.update(grads, state[1], state[0])
        state[0] = lt.optim.apply_updates(state[0], updates)
    theirs, check = None, None
    if torch:
        net.train()
        topt = torch.optim.AdamW(net.parameters(), lr=3e-4, weight_decay=0.1)
        tids, ttargets = torch.as_tensor(ids), torch.as_tensor(targets)

        def theirs():
            topt.zero_grad(set_to_none=True)
            net(tids, ttargets).backward()
            topt.step()
        with torch.no_grad():
            check = f"loss d {abs(float(model.loss(params, ids, targets)) - float(net(tids, ttargets))):.1e}"
    params = None                             # the training step's state holds its own
    train_floor = matmul_floor.gemms(model, Bt, Tt, train=True)
    row = bench.time("train step", name, f"{Bt}x{Tt}", "tokens/s", Bt * Tt, ours, theirs, check,
                     floors=matmul_floor.floor_callables(train_floor))
    matmul_floor.floor_rows(bench, row, "train step", matmul_floor.total_flops(train_floor))
    return {"config": {f: getattr(model, f) for f in ("vocab_size", "max_seq_len", "num_layers", "num_heads",
                                                      "hidden_dim", "ffn_dim")},
            "num_params": int(model.num_params()), "matmul_params": matmul_params(model),
            "forward_flops_per_token": forward_flops_per_token(model, T),
            "train_flops_per_token": train_flops_per_token(model, Tt), "forward_shape": [B, T], "train_shape": [Bt, Tt],
            "floor_gemms": {"forward": len(floor), "train step": len(train_floor)}}


def matmul_peak(bench: Bench, n: int = 2048) -> list:
    """GFLOP/s of a float32 (n, n) @ (n, n): [NumPy, torch or None], best of the rounds."""
    torch = bench.torch
    a, b = (lt.random.normal(lt.random.key(i), (n, n)) for i in (5, 6))
    c = np.empty((n, n), np.float32)
    fns = [lambda: np.matmul(a, b, out=c)]
    if torch:
        ta, tb, tc = torch.as_tensor(a), torch.as_tensor(b), torch.empty(n, n)
        fns.append(lambda: torch.mm(ta, tb, out=tc))
    times, _ = best_times(fns, bench.budget / 2, bench.min_rounds, bench.max_rounds)
    return [2 * n ** 3 / t[0] / 1e9 for t in times] + [None] * (2 - len(times))


def mfu_rows(bench: Bench, facts: dict, peak_gflops: float) -> None:
    """Training MFU of each preset against the NumPy matmul peak of this run."""
    for row in [r for r in bench.rows if r["measurement"] == "train step"]:
        flops = facts[row["preset"]]["train_flops_per_token"]
        mfu = [None if r is None else 100 * r * flops / (peak_gflops * 1e9) for r in (row["lt"], row["torch"])]
        bench.add("train MFU", row["preset"], row["shape"], "% of peak", *mfu)


def memory_rows(bench: Bench, names) -> None:
    """Peak memory of a training step, each library in its own process (peak_memory.py)."""
    from peak_memory import measure
    configs = {}
    for name in names:
        m, (B, T) = lt.GPT.preset(name), shapes(name)["train"]
        configs[name] = dict(vocab_size=m.vocab_size, max_seq_len=m.max_seq_len, num_layers=m.num_layers,
                             num_heads=m.num_heads, hidden_dim=m.hidden_dim, ffn_dim=m.ffn_dim, batch=B, seq=T)
    results = measure(configs, ("lt", "torch") if bench.torch else ("lt",))
    for name in names:
        bench.add("train peak memory", name, "x".join(map(str, shapes(name)["train"])), "MiB",
                  results.get((name, "lt")), results.get((name, "torch")))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", default=os.environ.get("QUICK", "0") not in ("", "0"),
                    help="no gpt2, a smaller time budget (also QUICK=1)")
    ap.add_argument("--presets", nargs="+", choices=FULL_PRESETS, help="default: all (quick: all but gpt2)")
    ap.add_argument("--budget", type=float,
                    help="seconds per timed row (default: 1.5 quick, 8 full; at least 2 rounds, 3 in full mode)")
    ap.add_argument("--no-torch", action="store_true", help="lt alone, even when torch is installed")
    ap.add_argument("--no-micro", action="store_true", help="skip sdpa, mha, block and generate rows")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--profile", metavar="PRESET", choices=FULL_PRESETS,
                    help="afterwards, the training step's shares (matmuls, elementwise, optimizer, overhead), "
                         "the top primitives, and a cProfile of lt's forward and training step")
    ap.add_argument("--busy", type=int, default=0, metavar="N",
                    help="run N busy processes beside the whole benchmark (issue 15's contention mode)")
    ap.add_argument("--busy-kind", choices=sorted(busy.LOOPS), default="python",
                    help="the busy processes' work: a pure-Python loop or NumPy elementwise (default python)")
    ap.add_argument("--compare", metavar="QUIET.json",
                    help="with --busy: per row, busy over quiet of lt/torch and of lt's own speed (a quiet run's JSON)")
    ap.add_argument("--json", metavar="FILE", help="write every number and the machine to FILE")
    args = ap.parse_args(argv)
    if args.busy < 0:
        ap.error(f"--busy needs a number of processes >= 0, got {args.busy}")
    quiet = busy.load_quiet(args.compare, SCHEMA) if args.compare else None      # a bad file fails now, not after
    lt.tune_malloc()                              # lt.train's allocator setting: warm pages across steps
    started, cpu_start = time.perf_counter(), cpu_sample()
    torch = None
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(TORCH_THREADS)
        except ImportError:
            print("torch is not installed: lt alone (pip install torch for the twin columns)")
    presets = args.presets or (QUICK_PRESETS if args.quick else FULL_PRESETS)
    budget = args.budget if args.budget is not None else 1.5 if args.quick else 8.0
    bench = Bench(torch, budget, min_rounds=2 if args.quick else 3, max_rounds=30 if args.quick else 100)
    info, mode = machine(torch), "quick" if args.quick else "full"
    plural = "es" if args.busy > 1 else ""
    busy_note = f"; {args.busy} busy {args.busy_kind} process{plural} beside it" if args.busy else ""
    print(f"{describe(info)}; {mode} mode{busy_note}\n{HEADER}")
    result = {"schema": SCHEMA, "mode": mode, "busy": args.busy, "machine": info}
    with busy.busy(args.busy, args.busy_kind):    # started before any timing, stopped however the run ends
        first = matmul_peak(bench)                # the peak, before and after: the better of the two
        if not args.no_micro:
            micro(bench)
        facts = {name: preset_rows(bench, name) for name in presets}
        last = matmul_peak(bench)
        best = [None if x is None else max(x, y) for x, y in zip(first, last)]
        bench.add("matmul peak", "-", "2048^3", "GFLOP/s", *best,
                  check=f"lt {first[0]:.0f} then {last[0]:.0f}", first=first, last=last)
        peak = best[0]
        mfu_rows(bench, facts, peak)
        if not args.no_memory:
            memory_rows(bench, presets)
        info["load_average_after"] = list(os.getloadavg())
        info["sharing"] = others(cpu_start, cpu_sample())
        wall = time.perf_counter() - started
        met = targets(bench.rows)
        print(summary(info, f"{mode} mode{busy_note}", wall, bench.rows, args.busy))
        if met:
            print(format_targets(met))
        result.update(settings={"dtype": "float32", "budget_s": budget, "min_rounds": bench.min_rounds,
                                "max_rounds": bench.max_rounds, "matmul_n": 2048, "peak_gflops": peak,
                                "busy_kind": args.busy_kind if args.busy else None,
                                "kv_decode": {"prompt": PROMPT, "new": NEW},
                                "generate": {"prompt": GEN_PROMPT, "new": list(GEN_NEW), "preset": "small"}},
                      presets=facts, rows=bench.rows, targets=met, wall_s=wall)
        if quiet is not None:
            compared = busy.compare(quiet["rows"], bench.rows)
            print(busy.format_compare(compared, args.busy, args.compare))
            result["compare"] = {"quiet": args.compare, "quiet_busy": quiet.get("busy", 0), "rows": compared}
        if args.profile:
            result["profile"] = step_profile.profile(args.profile, *shapes(args.profile)["train"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
