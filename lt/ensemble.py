"""Ensembles: N models of one architecture trained at once, one batched step for all (``lt.vmap``).

Member i is the run ``lt.train(model, optimizer, states[i], tokens, rng=rngs[i], ...)``: its
own initial params and optimizer state, its own batches (drawn from ``rngs[i]`` as
``lt.train`` draws them). The step is ``lt.vmap`` of one member's step, so every matrix
product runs once over the whole ensemble (a batched matmul), which is what makes N small
models train faster together than one after another.

Each member equals its run alone up to float rounding, not bit for bit: under the batch a
layer norm whose scale differs per member is computed as the normalisation times the scale
(two primitives instead of one fused pass), and the gradient's global norm is summed in
another order, which moves the last bits of float32 results; in float64 the members agree
with their lone runs to about 1e-12 (tested).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from . import data, optim, random, tree
from ._allocator import tune_malloc
from .autodiff import value_and_grad, vmap
from .nn import GPT
from .training import NonFiniteError, TrainState, batch_sampler, due

__all__ = [
    "init_ensemble",
    "stack_states",
    "make_ensemble_step",
    "member_states",
    "evaluate_ensemble",
    "train_ensemble",
]


def init_ensemble(model: GPT, optimizer: optim.GradientTransformation, keys: Sequence[random.Key]) -> TrainState:
    """The stacked initial state of one member per key: ``model.init(key)`` and its optimizer state."""
    states = [TrainState.create(model.init(k), optimizer) for k in keys]
    return stack_states(states)


def stack_states(states: Sequence[TrainState]) -> TrainState:
    """Member states (one step for all) as one state whose leaves have a leading member axis."""
    steps = {s.step for s in states}
    if len(steps) != 1:
        raise ValueError(f"the members' states are at different steps: {sorted(steps)}")
    return TrainState(tree.stack([s.params for s in states]), tree.stack([s.opt_state for s in states]), steps.pop())


def member_states(state: TrainState) -> list[TrainState]:
    """The stacked ensemble state as one :class:`TrainState` per member."""
    params, opt_states = tree.unstack(state.params), tree.unstack(state.opt_state)
    return [TrainState(p, o, state.step) for p, o in zip(params, opt_states)]


def make_ensemble_step(model: GPT, optimizer: optim.GradientTransformation, *, ignore_index: int = -100) -> Callable:
    """``step(state, batch, rngs=None) -> (state, metrics)`` for a stacked ensemble ``state``:
    ``batch`` is ``(inputs, targets)`` of shape (N, B, T), member i's batch at [i]; ``rngs``
    drive dropout, member i's at [i] (``lt.random.stack``; as ``lt.train`` gives a lone step
    ``fold_in(rng, step)``). ``metrics`` holds ``loss`` and ``grad_norm`` of shape (N,), ``lr``
    and ``tokens``. A member whose loss or gradient is not finite raises
    :class:`lt.NonFiniteError` naming it, before the update."""
    loss_and_grad = value_and_grad(model.loss)

    def member_step(params, opt_state, inputs, targets, rng):
        loss, grads = loss_and_grad(params, inputs, targets, rng=rng, ignore_index=ignore_index)
        norm = optim.traced_global_norm(grads)
        updates, opt_state = optimizer.update_with(grads, opt_state, params, grad_norm=norm)
        return optim.apply_updates(params, updates), opt_state, loss, norm

    with_keys, without_keys = vmap(member_step), vmap(member_step, in_axes=(0, 0, 0, 0, None))

    def step(state: TrainState, batch, rngs=None):
        inputs, targets = batch
        batched = without_keys if rngs is None else with_keys
        params, opt_state, loss, norm = batched(state.params, state.opt_state, inputs, targets, rngs)
        bad = [i for i, (l_i, n_i) in enumerate(zip(loss, norm)) if not (math.isfinite(l_i) and math.isfinite(n_i))]
        if bad:
            raise NonFiniteError(
                f"step {state.step}: member {bad[0]} has loss {loss[bad[0]]}, gradient norm {norm[bad[0]]}; "
                "training stopped before this update"
            )
        tokens = int(np.count_nonzero(np.asarray(targets) != ignore_index))
        lr = optim.current_learning_rate(tree.map(lambda x: x[0], opt_state))
        metrics = {"loss": np.asarray(loss), "grad_norm": np.asarray(norm), "lr": lr, "tokens": tokens}
        return TrainState(tree.freeze(params), tree.freeze(opt_state), state.step + 1), metrics

    return step


def evaluate_ensemble(model: GPT, params, batches) -> np.ndarray:
    """Each member's mean loss (N,) over all counted target tokens of ``batches`` (shared)."""
    member_loss = vmap(lambda p, x, y: model.loss(p, x, y), in_axes=(0, None, None))
    total: np.ndarray | float = 0.0
    tokens = 0
    for inputs, targets in batches:
        n = int(np.count_nonzero(np.asarray(targets) != -100))
        total = total + np.asarray(member_loss(params, inputs, targets), np.float64) * n
        tokens += n
    if tokens == 0:
        raise ValueError("evaluate_ensemble: the batches hold no counted target tokens")
    return np.asarray(total) / tokens


def train_ensemble(
    model: GPT,
    optimizer: optim.GradientTransformation,
    state: TrainState,
    train_tokens,
    *,
    rngs: Sequence[random.Key],
    steps: int,
    batch_size: int,
    seq_len: int,
    val_tokens=None,
    eval_batches: int = 8,
    log_every: int = 10,
    on_log: Callable[[dict], None] | None = None,
    verbose: bool = True,
) -> tuple[TrainState, list]:
    """Train the stacked ensemble ``state`` (:func:`init_ensemble`) to ``steps``; member i draws
    its batches from ``rngs[i]`` as ``lt.train`` does. Log records hold each member's ``losses``
    and their mean ``loss``; the last also ``eval_losses`` (each member's, over ``eval_batches``
    validation windows) with their mean and standard deviation. Returns the state and the log."""
    rngs = list(rngs)
    n = len(tree.leaves(state.params)[0])
    if len(rngs) != n:
        raise ValueError(f"train_ensemble: {len(rngs)} keys for {n} members")
    tune_malloc()  # glibc keeps a step's freed pages for the next step (as lt.train)
    samplers = [batch_sampler(train_tokens, random.fold_in(r, "data"), batch_size, seq_len) for r in rngs]
    step = make_ensemble_step(model, optimizer)
    log, losses, start = [], [], time.perf_counter()
    while state.step < steps:
        draws = [sample(state.step) for sample in samplers]
        batch = np.stack([d[0] for d in draws]), np.stack([d[1] for d in draws])
        keys = random.stack([random.fold_in(r, state.step) for r in rngs]) if model.dropout else None
        state, metrics = step(state, batch, keys)
        losses.append(metrics["loss"])
        if due(state.step, max(log_every, 1), steps):
            mean = np.mean(losses, axis=0)
            record = {"step": state.step, "loss": float(mean.mean()), "losses": [float(x) for x in mean]}
            record["lr"] = metrics["lr"]
            record["tokens_per_s"] = metrics["tokens"] * len(losses) / max(time.perf_counter() - start, 1e-9)
            if state.step == steps and val_tokens is not None:
                windows = data.sequential_windows(val_tokens, batch_size, seq_len, eval_batches)
                evals = evaluate_ensemble(model, state.params, windows)
                record.update(eval_loss=float(evals.mean()), eval_loss_std=float(evals.std()))
                record["eval_losses"] = [float(x) for x in evals]
            log.append(record)
            if verbose:
                print(_format_record(record), flush=True)
            if on_log:
                on_log(record)
            losses, start = [], time.perf_counter()
    return state, log


def _format_record(record: dict) -> str:
    """One log line: step, mean loss and its spread over members, lr, rate; eval when present."""
    spread = max(record["losses"]) - min(record["losses"])
    line = f"step {record['step']:>6}  loss {record['loss']:.4f} (members ±{spread / 2:.4f})  lr {record['lr']:.2e}"
    if "tokens_per_s" in record:
        line += f"  {record['tokens_per_s']:,.0f} tok/s"
    if "eval_loss" in record:
        line += f"  eval {record['eval_loss']:.4f} ± {record['eval_loss_std']:.4f} (std over members)"
    return line
