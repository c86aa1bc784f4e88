"""JAX-style transforms at work: ensembles, per-example gradients, remat and Hessian-vector products.

    python benchmarks/bench_transforms.py                        # full size (gpt2 remat: several minutes)
    python benchmarks/bench_transforms.py --quick                # a fast try: remat on small, fewer rounds
    python benchmarks/bench_transforms.py --only ensemble,hvp    # some sections (ensemble, per-example, remat, hvp)
    python benchmarks/bench_transforms.py --json out.json        # also write every figure to a file

Each section (and each remat mode) runs in a child process of its own and first checks that the
transformed computation gives the numbers of the plain one; then it is timed, the compared calls
alternating round by round after a warm-up call each, each figure the median of its rounds.
Float32 throughout; lt picks its own thread count per call (``lt.threads``), torch runs on
``OMP_NUM_THREADS`` (default: every core). Targets (the issue's) are in the table's last column.

- ``ensemble``: 8 members of preset ``tiny`` and of ``small`` (seeds 0..7, AdamW), batch 8 x 64
  tokens per member a step: one ``lt.ensemble.make_ensemble_step`` step for all (``lt.vmap`` of
  one member's step) against 8 ``lt.make_train_step`` steps one after another. Tokens/s of the
  ensemble over the sequential runs' [≥ 3x tiny, ≥ 1.5x small]. Check: every member's loss
  equals its lone run's (rtol 1e-4 after one step, 1e-2 after all of them).
- ``per-example``: per-example gradients of ``small`` at 32 x 64, ``lt.vmap(lt.grad(model.loss),
  in_axes=(None, 0, 0))``, against a Python loop of 32 ``lt.grad`` calls and against
  ``torch.func.vmap(torch.func.grad(...))`` over ``torch.func.functional_call`` of the
  nanoGPT-style twin (``torch_gpt.py``) holding lt's weights [speed ≥ 1.0x torch.func]. Check:
  vmap equals the loop (rtol 1e-4), torch's per-example gradient norms equal lt's (rtol 1e-3).
- ``remat``: a training step (``lt.value_and_grad`` + AdamW) of ``gpt2`` at 4 x 1024 tokens
  (``--quick``: ``small`` at 4 x 256), ``remat=False`` and ``remat=True`` (each block recomputed
  in the backward pass). Memory, on the first step: the growth of the resident set's high-water
  mark (``VmHWM``, reset through ``/proc/self/clear_refs``) from the moment params and AdamW's
  state exist to the end of the gradient (activations + gradients + temporaries), glibc's mmap
  threshold fixed (``MALLOC_MMAP_THRESHOLD_``) so that freed pages do not hide the peak;
  "activations" subtracts the gradients' size (= the params'). Then ``lt.tune_malloc()`` as
  ``lt.train`` does, 1 warm-up and 2 timed steps (``--remat-steps``) [activations ≤ 40% of
  without; step ≤ 1.35x without]. Check: the same loss and gradient norm in both modes. gpt2 takes ~30 s a step
  on 2 cores: this section is most of the run's time.
- ``hvp``: ``lt.hvp(loss, params, v)`` of ``small``'s loss at 8 x 64, v random, against two
  ``lt.grad(loss)(params)`` calls [≤ 3x]. Check: Hv against a central difference of gradients.

Numbers from a busy machine mislead: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import attrs
import numpy as np

import lt

os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")  # read by glibc when a child starts
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch's idle threads must not spin on lt's cores
TORCH_THREADS = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))

HERE = os.path.dirname(os.path.abspath(__file__))
SECTIONS = ("ensemble", "per-example", "remat", "hvp")
MEMBERS, ENS_BATCH, ENS_SEQ = 8, 8, 64


def tokens(vocab: int, shape: tuple, seed: int):
    """Random (inputs, targets) of ``shape`` (..., T): next-token pairs of one id stream."""
    ids = np.random.default_rng(seed).integers(0, vocab, size=shape[:-1] + (shape[-1] + 1,))
    return ids[..., :-1], ids[..., 1:]


def timed(fns: dict, rounds: int) -> dict:
    """{name: median seconds} of the callables, alternating round by round after a warm-up call each."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def close(a, b, rtol: float, atol: float, what: str) -> None:
    for (path, x), (_, y) in zip(lt.tree.items(a), lt.tree.items(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=f"{what}: {path}")


# ----------------------------------------------------------------- sections (each in a child)


def ensemble(args) -> dict:
    return {preset: ensemble_preset(preset, args.rounds) for preset in ("tiny", "small")}


def ensemble_preset(preset: str, rounds: int) -> dict:
    """Tokens/s of 8 members trained by one batched step, and one after another, from the same
    states on the same batches (the batch of step k is batches[k])."""
    model, opt = lt.GPT.preset(preset), lt.optim.adamw(1e-3, weight_decay=0.1)
    lone = [lt.TrainState.create(model.init(lt.random.key(s)), opt) for s in range(MEMBERS)]
    stacked = [lt.ensemble.stack_states(lone)]
    ens_step, lone_step = lt.ensemble.make_ensemble_step(model, opt), lt.make_train_step(model, opt)
    batches = [tokens(model.vocab_size, (MEMBERS, ENS_BATCH, ENS_SEQ), k) for k in range(rounds + 2)]
    losses = {}

    def run_ensemble():
        stacked[0], metrics = ens_step(stacked[0], batches[stacked[0].step])
        losses["ensemble"] = metrics["loss"]

    def run_sequential():
        x, y = batches[lone[0].step]
        results = [lone_step(s, (x[i], y[i]), None) for i, s in enumerate(lone)]
        lone[:] = [r[0] for r in results]
        losses["sequential"] = np.array([r[1]["loss"] for r in results])

    run_ensemble()  # the first step, checked
    run_sequential()
    np.testing.assert_allclose(losses["ensemble"], losses["sequential"], rtol=1e-4, err_msg="first step's losses")
    t = timed({"ensemble": run_ensemble, "sequential": run_sequential}, rounds)
    np.testing.assert_allclose(losses["ensemble"], losses["sequential"], rtol=1e-2, err_msg="last step's losses")
    work = MEMBERS * ENS_BATCH * ENS_SEQ
    return {"ensemble_tok_s": work / t["ensemble"], "sequential_tok_s": work / t["sequential"]}


def per_example(args) -> dict:
    model = lt.GPT.preset("small")
    params = model.init(lt.random.key(0))
    x, y = tokens(model.vocab_size, (args.pe_batch, 64), 1)
    grad = lt.grad(model.loss)
    batched = lt.vmap(grad, in_axes=(None, 0, 0))
    fns = {"vmap": lambda: batched(params, x, y), "loop": lambda: [grad(params, x[i], y[i]) for i in range(len(x))]}
    ours = fns["vmap"]()
    close(ours, lt.tree.stack(fns["loop"]()), 1e-4, 1e-6, "vmap(grad) vs a loop of grads")
    norms = np.sqrt(sum(np.square(g.reshape(len(x), -1)).sum(1) for g in lt.tree.leaves(ours)))
    out = {}
    try:
        import torch
    except ImportError:
        out["torch"] = None
    else:
        sys.path.insert(0, HERE)
        import peers

        torch.set_num_threads(TORCH_THREADS)
        net = peers.load_gpt(model, params)
        weights = {k: v.detach() for k, v in net.named_parameters()}

        def loss(p, xi, yi):
            return torch.func.functional_call(net, p, (xi[None], yi[None]))

        theirs = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))
        tx, ty = torch.as_tensor(x), torch.as_tensor(y)
        fns["torch"] = lambda: theirs(weights, tx, ty)
        tnorms = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in fns["torch"]().values())).numpy()
        np.testing.assert_allclose(tnorms, norms, rtol=1e-3, err_msg="torch.func's per-example gradient norms")
    t = timed(fns, args.rounds)
    return out | {name + "_s": s for name, s in t.items()}


def remat(args, on: bool) -> dict:
    preset, batch, seq = ("small", 4, 256) if args.quick else ("gpt2", 4, 1024)
    toy = attrs.evolve(lt.GPT.preset("tiny"), remat=on)  # one-time setup is not the step's memory
    lt.value_and_grad(toy.loss)(toy.init(lt.random.key(0)), *tokens(toy.vocab_size, (1, 8), 0))
    model = attrs.evolve(lt.GPT.preset(preset), remat=on)
    params = model.init(lt.random.key(0))
    opt = lt.optim.adamw(3e-4, weight_decay=0.1)
    opt_state = opt.init(params)
    loss_and_grad = lt.value_and_grad(model.loss)
    x, y = tokens(model.vocab_size, (batch, seq), 1)
    times, losses = [], []
    for i in range(2 + args.remat_steps):  # memory, warm-up, timed steps
        if i == 0:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # the high-water mark starts again at the resident set
            start = status_kib("VmRSS")
        elif i == 1:
            lt.tune_malloc()  # the timed steps run as lt.train runs them
        t = time.perf_counter()
        loss, grads = loss_and_grad(params, x, y)
        if i == 0:
            peak = max(status_kib("VmHWM"), status_kib("VmRSS")) - start
            norm = float(np.sqrt(sum(np.vdot(g, g) for g in lt.tree.leaves(grads))))
        updates, opt_state = opt.update(grads, opt_state, params)
        params = lt.optim.apply_updates(params, updates)
        del grads, updates
        times.append(time.perf_counter() - t)
        losses.append(float(loss))
    return {
        "shape": f"{preset} {batch}x{seq}",
        "step_s": float(np.median(times[2:])),
        "peak_bytes": peak * 1024,
        "grad_bytes": lt.tree.nbytes(params),
        "loss": losses[0],
        "grad_norm": norm,
    }


def hvp(args) -> dict:
    model = lt.GPT.preset("small")
    params = model.init(lt.random.key(0))
    x, y = tokens(model.vocab_size, (8, 64), 1)
    keys = iter(lt.random.split(lt.random.key(1), len(lt.tree.leaves(params))))
    v = lt.tree.map(lambda p: lt.random.normal(next(keys), p.shape), params)

    def loss(p):
        return model.loss(p, x, y)

    grad = lt.grad(loss)
    hv = lt.hvp(loss, params, v)
    eps = 1e-5  # Hv against (g(p + eps v) - g(p - eps v)) / 2 eps, in float64
    shifted = [grad(lt.tree.map(lambda p, d, s=s: p.astype(np.float64) + s * eps * d, params, v)) for s in (1, -1)]
    fd = lt.tree.map(lambda a, b: (a - b) / (2 * eps), *shifted)
    err = np.sqrt(
        sum(np.sum((np.asarray(a, np.float64) - b) ** 2) for a, b in zip(lt.tree.leaves(hv), lt.tree.leaves(fd)))
    )
    rel = err / np.sqrt(sum(np.sum(b**2) for b in lt.tree.leaves(fd)))
    assert rel < 1e-4, f"hvp vs central differences: relative error {rel:.2e}"
    t = timed({"hvp": lambda: lt.hvp(loss, params, v), "two_grads": lambda: (grad(params), grad(params))}, args.rounds)
    return {"hvp_s": t["hvp"], "two_grads_s": t["two_grads"], "fd_rel_err": float(rel)}


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


# ----------------------------------------------------------------- the report


def child(name: str, argv: list[str]) -> dict | None:
    res = subprocess.run([sys.executable, __file__, "--child", name, *argv], capture_output=True, text=True)
    if res.returncode:
        print(f"{name}: failed\n{res.stderr[-3000:]}", file=sys.stderr)
        return None
    out = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"{name}: {out}", flush=True)
    return out


COLUMNS = ("what", "shape", "measured", "reference", "unit", "ratio", "target", "sign", "met")


def rows(r: dict) -> list[dict]:
    """Table rows: the measured figure, its reference, their ratio and the target it must meet."""
    out = []

    def row(what, shape, unit, measured, reference, ratio, target=None, sign="≥"):
        met = None if target is None else bool(ratio <= target if sign == "≤" else ratio >= target)
        out.append(dict(zip(COLUMNS, (what, shape, unit and measured, reference, unit, ratio, target, sign, met))))

    for preset, e in (r.get("ensemble") or {}).items():
        ens, seq = e["ensemble_tok_s"], e["sequential_tok_s"]
        shape = f"{preset}, {MEMBERS} x {ENS_BATCH}x{ENS_SEQ}"
        row("ensemble vs sequential", shape, "tok/s", ens, seq, ens / seq, 3.0 if preset == "tiny" else 1.5)
    if p := r.get("per-example"):
        shape = f"small {r['pe_batch']}x64"
        if "torch_s" in p:
            row(
                "per-example vmap(grad) vs torch.func",
                shape,
                "s",
                p["vmap_s"],
                p["torch_s"],
                p["torch_s"] / p["vmap_s"],
                1.0,
            )
        else:
            row("per-example vs torch.func: torch missing", shape, None, None, None, None)
        row("per-example vmap(grad) vs loop", shape, "s", p["vmap_s"], p["loop_s"], p["loop_s"] / p["vmap_s"])
    on, off = r.get("remat-on"), r.get("remat-off")
    if on and off:
        for key in ("loss", "grad_norm"):
            assert abs(on[key] - off[key]) <= 1e-5 * abs(off[key]), f"remat changed the {key}: {on} {off}"
        peak_on, peak_off = on["peak_bytes"] / 2**20, off["peak_bytes"] / 2**20
        act_on, act_off = peak_on - on["grad_bytes"] / 2**20, peak_off - off["grad_bytes"] / 2**20
        row("remat activations vs without", on["shape"], "MiB", act_on, act_off, act_on / act_off, 0.40, "≤")
        row("remat peak (acts+grads) vs without", on["shape"], "MiB", peak_on, peak_off, peak_on / peak_off)
        step_on, step_off = on["step_s"], off["step_s"]
        row("remat step time vs without", on["shape"], "s", step_on, step_off, step_on / step_off, 1.35, "≤")
    if h := r.get("hvp"):
        row(
            "hvp vs two grads", "small 8x64", "s", h["hvp_s"], h["two_grads_s"], h["hvp_s"] / h["two_grads_s"], 3.0, "≤"
        )
    return out


def table(rows_: list[dict]) -> str:
    lines = ["| measurement | shape | measured | reference | ratio | target | met |", "|---|---|---|---|---|---|---|"]
    for x in rows_:
        if x["unit"] is None:
            lines.append(f"| {x['what']} | {x['shape']} | | | | | |")
            continue
        target = "" if x["target"] is None else f"{x['sign']} {x['target']:g}x"
        met = {True: "yes", False: "**no**", None: ""}[x["met"]]
        lines.append(
            f"| {x['what']} | {x['shape']} | {x['measured']:,.3f} {x['unit']} | {x['reference']:,.3f} {x['unit']} "
            f"| {x['ratio']:.2f}x | {target} | {met} |"
        )
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="remat on small at 4x256, fewer rounds")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections: " + ",".join(SECTIONS))
    p.add_argument("--rounds", type=int, help="timed rounds per figure (default 5, quick 3)")
    p.add_argument("--remat-steps", type=int, help="timed remat steps after a warm-up (default 2, quick 5)")
    p.add_argument("--pe-batch", type=int, default=32, help="per-example gradients' batch")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.remat_steps = args.remat_steps or (5 if args.quick else 2)
    if args.child:
        if not args.child.startswith("remat"):
            lt.tune_malloc()  # as lt.train does; the memory children keep MALLOC_MMAP_THRESHOLD_
        fn = {"ensemble": ensemble, "per-example": per_example, "hvp": hvp}.get(args.child)
        out = fn(args) if fn else remat(args, args.child == "remat-on")
        print(json.dumps(out))
        return
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := set(only) - set(SECTIONS):
        p.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    argv = [a for a in sys.argv[1:] if not a.startswith("--json")]
    if args.json and args.json in argv:
        argv.remove(args.json)
    start = time.perf_counter()
    results = {"pe_batch": args.pe_batch}
    for section in SECTIONS:
        if section in only:
            for name in ("remat-off", "remat-on") if section == "remat" else (section,):
                results[name] = child(name, argv)
    table_rows = rows(results)
    threads = os.environ.get("OPENBLAS_NUM_THREADS") or f"adaptive, up to {os.cpu_count()}"
    print(f"\nCPU: {cpu_model()}, {os.cpu_count()} cores; lt threads: {threads}; torch threads: {TORCH_THREADS}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}; wall {time.perf_counter() - start:.0f} s\n")
    print(table(table_rows))
    if args.json:
        with open(args.json, "w") as f:
            info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": TORCH_THREADS, "quick": args.quick}
            json.dump(info | {"results": results, "rows": table_rows}, f, indent=1)


if __name__ == "__main__":
    main()
