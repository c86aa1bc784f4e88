"""Training: one state value, a pure step, evaluation, and a loop that logs and checkpoints.

``train_step(state, batch, rng) -> (state, metrics)`` never changes its inputs. The loop
gives step ``s`` the key ``fold_in(run_rng, s)`` and the batch drawn from
``fold_in(data_rng, s)``, so a run resumed from the checkpoint of step ``k`` makes exactly
the same steps as one that never stopped.

With ``comm`` (an mpi4py communicator, see :mod:`lt.distributed`) the same loop runs data-
parallel: every rank draws the same global batch, computes gradients on its own rows, and
the gradients are averaged over ranks before the update, so the params stay identical on
every rank. Only rank 0 prints, evaluates and writes checkpoints; a checkpoint is the same
file whatever the number of ranks, and resumes with any number.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np

from . import checkpoint, data, distributed, optim, random, tree
from .autodiff import value_and_grad
from .nn import GPT
from .progress import Progress

__all__ = ["TrainState", "NonFiniteError", "make_train_step", "evaluate", "train", "format_record"]


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: int

    @classmethod
    def create(cls, params, optimizer: optim.GradientTransformation) -> "TrainState":
        return cls(params, optimizer.init(params), 0)


class NonFiniteError(FloatingPointError):
    """The loss or the gradient stopped being finite; training stops before the update."""


def _count(targets, ignore_index: int) -> int:
    return int(np.count_nonzero(np.asarray(targets) != ignore_index))


def make_train_step(model: GPT, optimizer: optim.GradientTransformation, *, ignore_index: int = -100,
                    comm=None) -> Callable:
    """``train_step(state, batch, rng) -> (state, metrics)`` for ``model`` and ``optimizer``.

    ``batch`` is ``(inputs, targets)`` of shape (B, T), or (k, B, T) for k micro-batches whose
    gradients are accumulated, each weighted by its number of counted target tokens (so the
    result is the gradient of the mean loss over all of them). ``rng`` drives dropout.

    With ``comm`` of several ranks, ``batch`` is the global batch: each rank takes its rows
    (:func:`lt.distributed.shard`) and the ranks' gradients become that of the global mean loss
    (:func:`lt.distributed.mean_gradients`); loss and tokens in the metrics are global too.
    """
    parallel = distributed.of(comm).size > 1
    loss_and_grad = value_and_grad(model.loss)

    def grads_of(params, inputs, targets, rng):
        if np.ndim(inputs) == 2:
            loss, grads = loss_and_grad(params, inputs, targets, rng, ignore_index=ignore_index)
            return float(loss), grads, _count(targets, ignore_index)
        counts = [_count(t, ignore_index) for t in targets]
        total = max(sum(counts), 1)
        loss, grads = 0.0, None
        for i, (x, y, n) in enumerate(zip(inputs, targets, counts)):
            micro_rng = None if rng is None else random.fold_in(rng, i)
            l_i, g_i = loss_and_grad(params, x, y, micro_rng, ignore_index=ignore_index)
            w = n / total
            loss += float(l_i) * w
            grads = (tree.map(lambda g: g * g.dtype.type(w), g_i) if grads is None
                     else tree.map(lambda a, g: a + g * g.dtype.type(w), grads, g_i))
        return loss, grads, sum(counts)

    def train_step(state: TrainState, batch, rng=None):
        inputs, targets = batch
        if parallel:
            (inputs, targets), rng = distributed.shard(batch, comm), distributed.rank_rng(rng, comm)
        loss, grads, tokens = grads_of(state.params, inputs, targets, rng)
        if parallel:                                   # global values: every rank decides alike below
            loss, grads, tokens = distributed.mean_gradients(comm, loss, grads, tokens)
        grad_norm = optim.global_norm(grads)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise NonFiniteError(f"step {state.step}: loss {loss}, gradient norm {grad_norm}; "
                                 "training stopped before this update")
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optim.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": optim.learning_rate(opt_state), "tokens": tokens}
        return TrainState(params, opt_state, state.step + 1), metrics
    return train_step


def evaluate(model: GPT, params, batches: Iterable, *, ignore_index: int = -100) -> dict:
    """Mean loss over all counted target tokens of ``batches`` (no dropout), and perplexity."""
    total, tokens = 0.0, 0
    for inputs, targets in batches:
        n = _count(targets, ignore_index)
        total += float(model.loss(params, inputs, targets, ignore_index=ignore_index)) * n
        tokens += n
    if tokens == 0:
        raise ValueError("evaluate: the batches hold no counted target tokens")
    loss = total / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": tokens}


def train(model: GPT, optimizer: optim.GradientTransformation, state: TrainState, train_tokens, *,
          steps: int, batch_size: int, seq_len: int, rng: random.Key, val_tokens=None,
          eval_every: int = 0, eval_batches: int = 8, log_every: int = 10, accumulate: int = 1,
          checkpoint_path=None, checkpoint_every: int = 0, checkpoint_metadata: dict | None = None,
          progress: bool | None = None, on_log: Callable[[dict], None] | None = None,
          verbose: bool = True, comm=None) -> tuple[TrainState, list]:
    """Train from ``state`` until ``state.step == steps``; returns the final state and the log.

    Every ``log_every`` steps a record (step, loss, lr, tokens/s, and eval loss when one was
    taken) is printed (unless ``verbose=False``) and passed to ``on_log``. A progress bar
    runs on stderr when it is a terminal (``progress`` forces it on or off). With ``checkpoint_path``, a checkpoint is
    written every ``checkpoint_every`` steps and at the end. A non-finite loss or gradient
    raises :class:`NonFiniteError` naming the step; the last checkpoint written stays intact.

    With ``comm`` (e.g. ``lt.distributed.world().comm``) every rank of the communicator calls
    this with the same arguments; rank 0 alone logs, evaluates (the eval loss is broadcast, so
    every rank returns the same log) and writes checkpoints, after checking that all ranks hold
    identical params and optimizer state. When a checkpoint write returns on any rank, the
    file is on disk.
    """
    if steps < state.step:
        raise ValueError(f"steps ({steps}) is before the state's step ({state.step})")
    root = distributed.of(comm).is_root
    train_step = make_train_step(model, optimizer, comm=comm)
    data_rng, log = random.fold_in(rng, "data"), []
    bar = Progress(steps, start=state.step, enabled=progress if root else False)

    def emit(record):
        if root and verbose:
            bar.write(format_record(record))
        if root and on_log:
            on_log(record)

    def save():                                       # collective: every rank calls it at the same steps
        distributed.check_in_sync(comm, (state.params, state.opt_state), "params and optimizer state")
        if root:
            checkpoint.save(checkpoint_path, model, state.params, state.opt_state, state.step, checkpoint_metadata)
        distributed.barrier(comm)

    def batch_for(step: int):
        draws = [data.random_windows(random.fold_in(random.fold_in(data_rng, step), i), train_tokens, batch_size, seq_len)
                 for i in range(accumulate)]
        if accumulate == 1:
            return draws[0]
        return np.stack([d.inputs for d in draws]), np.stack([d.targets for d in draws])

    window_start, window_tokens, losses = time.perf_counter(), 0, []
    try:
        while state.step < steps:
            state, metrics = train_step(state, batch_for(state.step), random.fold_in(rng, state.step))
            window_tokens += metrics["tokens"]
            losses.append(metrics["loss"])
            bar.update(state.step, loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
            record = None
            if state.step % max(log_every, 1) == 0 or state.step == steps:
                elapsed = time.perf_counter() - window_start
                record = {"step": state.step, "loss": float(np.mean(losses)), "lr": metrics["lr"],
                          "tokens_per_s": window_tokens / max(elapsed, 1e-9)}
            if val_tokens is not None and eval_every and (state.step % eval_every == 0 or state.step == steps):
                ev = evaluate(model, state.params, data.sequential_windows(val_tokens, batch_size, seq_len,
                                                                           eval_batches)) if root else None
                record = record or {"step": state.step, "loss": float(np.mean(losses)), "lr": metrics["lr"]}
                record["eval_loss"] = distributed.broadcast(comm, ev and ev["loss"])
            if record is not None:
                log.append(record)
                emit(record)
                window_start, window_tokens, losses = time.perf_counter(), 0, []
            if checkpoint_path and checkpoint_every and state.step % checkpoint_every == 0:
                save()
        if checkpoint_path and not (checkpoint_every and state.step % checkpoint_every == 0):
            save()                                        # the end, unless just written
    finally:
        bar.close()
    return state, log


def format_record(record: dict) -> str:
    """One log line: ``step 100 | loss 2.1234 | lr 1.00e-03 | 15000 tok/s | eval 2.2345``."""
    parts = [f"step {record['step']}", f"loss {record['loss']:.4f}"]
    if record.get("lr") is not None:
        parts.append(f"lr {record['lr']:.2e}")
    if "tokens_per_s" in record:
        parts.append(f"{record['tokens_per_s']:.0f} tok/s")
    if "eval_loss" in record:
        parts.append(f"eval {record['eval_loss']:.4f}")
    return " | ".join(parts)
