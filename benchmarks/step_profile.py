"""Where a training step's time goes (``bench_llm.py --profile PRESET``): matmuls, elementwise
primitives, the optimizer, and Python/autodiff overhead.

- matmuls: the step's matmul floor (``matmul_floor``: its GEMMs alone), timed in the same run;
- elementwise primitives: time inside lt's primitives (every forward and VJP of
  ``lt.ops.primitive._registry``, wrapped with a timer for the profile only) less that floor;
- optimizer: ``opt.update`` and ``lt.optim.apply_updates``, timed directly;
- Python/autodiff overhead: the rest of the step (tracing, the tape walk, tree handling, calls).

The four add up to the step's time. Where the floor exceeds the time inside primitives (a floor
measured on a quieter moment, or primitives that beat their GEMMs' plain ``np.matmul``), the
matmul share is clamped to the primitive time and the elementwise share to 0, and the output says so.
"""

from __future__ import annotations

import contextlib
import cProfile
import pstats
import time

import matmul_floor

import lt
from lt.ops.primitive import _registry

PARTS = ("matmuls", "elementwise", "optimizer", "overhead")
LABELS = {"matmuls": "matmuls (the floor)", "elementwise": "elementwise primitives",
          "optimizer": "optimizer (update + apply)", "overhead": "Python/autodiff overhead"}


class PrimitiveTimer:
    """Seconds and calls inside each primitive's forward and VJP, while ``on``.

    A primitive called from inside another one (a VJP built on other primitives) counts in the
    outer one's time only, so the total is wall time inside primitives, counted once."""

    def __init__(self):
        self.on, self._depth = False, 0
        self.seconds: dict[tuple[str, str], float] = {}
        self.calls: dict[tuple[str, str], int] = {}

    def reset(self) -> None:
        self.seconds, self.calls = {}, {}

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def wrap(self, fn, name: str, kind: str):
        def timed(*args, **kwargs):
            if not self.on or self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                key = (name, kind)
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start
                self.calls[key] = self.calls.get(key, 0) + 1
                self._depth -= 1
        return timed


@contextlib.contextmanager
def timed_primitives():
    """Every registered primitive's ``forward`` and ``vjp`` wrapped with one PrimitiveTimer
    (off until its ``on`` is set); the originals are put back when the block ends."""
    timer, saved = PrimitiveTimer(), []
    try:
        for name, prim in list(_registry.items()):
            short = name.removeprefix("lt.ops.")
            saved.append((prim, prim.forward, prim.vjp))
            prim.forward = timer.wrap(prim.forward, short, "forward")
            if prim.vjp is not None:
                prim.vjp = timer.wrap(prim.vjp, short, "vjp")
        yield timer
    finally:
        for prim, forward, vjp in saved:
            prim.forward, prim.vjp = forward, vjp


def shares(step_s: float, primitive_s: float, floor_s: float, optimizer_s: float) -> dict:
    """Seconds and shares of the four parts of a step (see the module's docstring).

    Every share is >= 0 and they sum to 1: matmuls are clamped to the primitive time
    (``clamped``), and the overhead to 0 should primitives and optimizer exceed the step."""
    matmuls = min(floor_s, primitive_s)
    seconds = {"matmuls": matmuls, "elementwise": primitive_s - matmuls, "optimizer": optimizer_s,
               "overhead": max(0.0, step_s - primitive_s - optimizer_s)}
    total = sum(seconds.values())
    return {"seconds": seconds, "shares": {k: v / total if total > 0 else 0.0 for k, v in seconds.items()},
            "step_s": step_s, "primitive_s": primitive_s, "floor_s": floor_s, "clamped": floor_s > primitive_s}


def profile_step(model: lt.GPT, batch: int, seq: int, rounds: int = 5, top: int = 8) -> dict:
    """Profile lt's training step of ``model`` on (batch, seq) tokens (AdamW, as bench_llm's row):
    the best of ``rounds`` steps, each after a timing of the step's matmul floor."""
    params = model.init(lt.random.key(0))
    ids = lt.random.randint(lt.random.key(3), (batch, seq), 0, model.vocab_size)
    targets = lt.random.randint(lt.random.key(4), (batch, seq), 0, model.vocab_size)
    loss_and_grad, opt = lt.value_and_grad(model.loss), lt.optim.adamw(3e-4, weight_decay=0.1)
    state = opt.init(params)
    floor_calls = matmul_floor.floor_callables(matmul_floor.gemms(model, batch, seq, train=True)).values()
    floors, steps = [], []
    with timed_primitives() as timer:
        for r in range(rounds + 1):                      # round 0 warms up (pages, caches, thread pools)
            for floor in floor_calls:                    # the best of its ways (matmul_floor.floor_callables)
                start = time.perf_counter()
                floor()
                floors.append(time.perf_counter() - start)
            timer.reset()
            timer.on = True
            t0 = time.perf_counter()
            _, grads = loss_and_grad(params, ids, targets)
            t1 = time.perf_counter()
            timer.on = False
            updates, _ = opt.update(grads, state, params)
            lt.optim.apply_updates(params, updates)
            t2 = time.perf_counter()
            if r:
                steps.append((t2 - t0, timer.total, t2 - t1, dict(timer.seconds), dict(timer.calls)))
    step_s, primitive_s, optimizer_s, seconds, calls = min(steps, key=lambda s: s[0])
    result = shares(step_s, primitive_s, min(floors[len(floor_calls):]), optimizer_s)
    result.update(shape=[batch, seq], rounds=rounds)
    for kind in ("forward", "vjp"):
        ranked = sorted(((s, name) for (name, k), s in seconds.items() if k == kind), reverse=True)[:top]
        result[f"top_{kind}"] = [{"primitive": name, "seconds": s, "calls": calls[name, kind]} for s, name in ranked]
    return result


def cprofile(model: lt.GPT, name: str, batch: int, seq: int, top: int = 15) -> None:
    """cProfile lt's forward and training step (without its optimizer's apply): the top functions by own time."""
    params = model.init(lt.random.key(0))
    ids = lt.random.randint(lt.random.key(3), (batch, seq), 0, model.vocab_size)
    loss_and_grad, opt = lt.value_and_grad(model.loss), lt.optim.adamw(3e-4, weight_decay=0.1)
    state = opt.init(params)

    def step():
        _, grads = loss_and_grad(params, ids, ids)
        opt.update(grads, state, params)
    for label, fn in (("forward", lambda: model.apply(params, ids)), ("train step", step)):
        fn()
        prof = cProfile.Profile()
        prof.runcall(fn)
        print(f"\nprofile: lt {label}, {name}, {batch}x{seq} (own time, top {top})")
        pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def profile(name: str, batch: int, seq: int) -> dict:
    """``--profile PRESET``: the training step's shares and top primitives, then the cProfile; the shares."""
    model = lt.GPT.preset(name)
    result = profile_step(model, batch, seq)
    print(format_profile(result, name))
    cprofile(model, name, batch, seq)
    return result


def format_profile(p: dict, name: str) -> str:
    """The shares as a small table, then the top primitives by time (forward and VJP)."""
    ms, step = 1e3, p["step_s"]
    B, T = p["shape"]
    lines = [f"\nprofile: lt train step, {name}, {B}x{T}: {step * ms:.1f} ms per step (best of {p['rounds']})",
             f"  {'part':28} {'ms':>8} {'share':>7}"]
    for part in PARTS:
        lines.append(f"  {LABELS[part]:28} {p['seconds'][part] * ms:8.2f} {100 * p['shares'][part]:6.1f}%")
    lines.append(f"  (inside primitives {p['primitive_s'] * ms:.2f} ms; "
                 f"the step's GEMMs alone {p['floor_s'] * ms:.2f} ms)")
    if p["clamped"]:
        lines.append("  note: the matmul floor exceeds the time inside primitives: matmuls are shown as the "
                     "primitive time and elementwise as 0")
    for kind in ("forward", "vjp"):
        lines.append(f"  top primitives by time ({'forward' if kind == 'forward' else 'VJP'}):")
        for e in p[f"top_{kind}"]:
            lines.append(f"    {e['primitive']:32} {e['seconds'] * ms:8.2f} ms {100 * e['seconds'] / step:5.1f}%"
                         f"  {e['calls']:4d} calls")
    return "\n".join(lines)
