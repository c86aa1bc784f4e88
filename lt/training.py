"""Training: one state value, a pure step, evaluation, and a plain loop over the step.

``train_step(state, batch, rng) -> (state, metrics)`` never changes its inputs unless they are
donated (``make_train_step(..., donate=True)``, JAX's ``donate_argnums``). The loop gives step
``s`` the key ``fold_in(run_rng, s)`` and the batch drawn from ``fold_in(data_rng, s)``, so a
run resumed from the checkpoint of step ``k`` makes exactly the same steps as one that never stopped.

:func:`train` is that loop and nothing else; what it does besides stepping is a small piece
each, usable (and tested) on its own: :func:`batch_sampler` (the batch of a step),
:class:`LogWindow` (the mean loss and tokens/s since the last record), :func:`make_evaluator`
(the held-out loss), :func:`make_checkpointer` (the sync check and the atomic write),
:func:`due` (when a periodic job runs), and the progress bar of :mod:`lt.progress`.

One step and one loop serve every mode: a *strategy* (:mod:`lt.parallel.strategy`) says how
this rank takes its rows of the batch, reduces the gradient, computes the global norm (once; the
optimizer is handed it) and updates, who evaluates, and how the whole state is gathered for a
checkpoint. ``DataParallel()`` (the default) is one process; ``DataParallel(comm)`` averages
the gradients of every rank's rows of the same global batch, so the params stay identical on
every rank; ``TensorParallel(comm, k)`` also splits the model over ``k`` ranks and the optimizer
state over the replicas (ZeRO-1). Only rank 0 prints, evaluates and writes checkpoints; a
checkpoint always holds the whole model and resumes with any strategy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np

from . import checkpoint, data, donation, optim, random
from ._allocator import tune_malloc
from ._checks import integer
from .batch_gradient import count_tokens, gradient_fn
from .nn import GPT
from .parallel import DataParallel
from .progress import Progress

__all__ = [
    "TrainState",
    "NonFiniteError",
    "make_train_step",
    "evaluate",
    "train",
    "format_record",
    "batch_sampler",
    "make_evaluator",
    "make_checkpointer",
    "LogWindow",
    "due",
]


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: int

    @classmethod
    def create(cls, params, optimizer: optim.GradientTransformation) -> TrainState:
        return cls(params, optimizer.init(params), 0)


class NonFiniteError(FloatingPointError):
    """The loss or the gradient stopped being finite; training stops before the update."""


def make_train_step(
    model: GPT,
    optimizer: optim.GradientTransformation,
    *,
    ignore_index: int = -100,
    strategy=None,
    donate=False,
    row_pieces: int | None = None,
) -> Callable:
    """``train_step(state, batch, rng) -> (state, metrics)`` for ``model`` and ``optimizer``.

    ``batch`` is ``(inputs, targets)`` of shape (B, T), or (k, B, T) for k micro-batches whose
    gradients are accumulated, each weighted by its number of counted target tokens (so the
    result is the gradient of the mean loss over all of them). ``rng`` drives dropout.

    ``strategy`` (default ``lt.parallel.DataParallel()``, one process) places the step: with
    several ranks, ``batch`` is the global batch, each rank takes its rows, and loss, gradient
    and tokens in the metrics are global; under ``TensorParallel`` ``state`` is this rank's
    share (``strategy.start``). The gradient's global norm is computed once, reported, and
    handed to the optimizer (``grad_norm``), whose clipping uses it.

    ``donate=True`` (JAX's ``donate_argnums``): the caller gives ``state`` up; the step writes the
    new params and optimizer state over its buffers (the update over the gradient's), so it holds
    one state, not two, with the same bits. ``state`` (any tree of its arrays) is then refused by
    the step, the optimizers, ``apply_updates`` and checkpoint writes (:class:`lt.optim.DonatedError`:
    "this TrainState was donated to train_step at step N; use the state it returned"). A step that
    raises before its update (:class:`NonFiniteError`) donates nothing. See :mod:`lt.donation`.

    ``row_pieces``: a batch's rows are cut into that many pieces that share the cores, their
    gradients added (:mod:`lt.batch_gradient`); None (the default) cuts a small model's batch
    without dropout in two, 1 keeps it whole (the gradient of ``lt.value_and_grad(model.loss)``
    to the bit; a cut one equals it up to float rounding).
    """
    strategy = DataParallel() if strategy is None else strategy
    local = strategy.model(model)
    grads_of = gradient_fn(local, ignore_index, row_pieces)

    def train_step(state: TrainState, batch, rng=None):
        donation.check((state.params, state.opt_state), "train_step")
        (inputs, targets), rng = strategy.local_batch(batch, rng)
        loss, grads, tokens = grads_of(state.params, inputs, targets, rng)
        loss, grads, tokens = strategy.reduce(loss, grads, tokens)  # global values: every rank decides alike
        grad_norm = strategy.global_norm(local, grads)
        check_finite(state.step, loss, grad_norm)
        if donate:
            why = f"this TrainState was donated to train_step at step {state.step}"
            update = lambda given: _update(strategy, optimizer, grads, state, grad_norm, given)  # noqa: E731
            params, opt_state = donation.give_up((state.params, state.opt_state), why, update, grads)
        else:
            params, opt_state = _update(strategy, optimizer, grads, state, grad_norm)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": optim.current_learning_rate(opt_state), "tokens": tokens}
        return TrainState(params, opt_state, state.step + 1), metrics

    return train_step


def _update(strategy, optimizer, grads, state: TrainState, grad_norm: float, given=None) -> tuple:
    """``(params, opt_state)`` after the update; over ``given``'s buffers under ``DataParallel``."""
    if given is None or type(strategy).update is not DataParallel.update:
        return strategy.update(optimizer, grads, state.opt_state, state.params, grad_norm=grad_norm)
    updates, opt_state = optimizer.update_with(grads, state.opt_state, state.params, grad_norm=grad_norm, donated=given)
    return optim.apply_updates(state.params, updates, donated=given), opt_state


def check_finite(step: int, loss: float, grad_norm: float) -> None:
    """Raise :class:`NonFiniteError` naming the step unless loss and gradient norm are finite."""
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise NonFiniteError(
            f"step {step}: loss {loss}, gradient norm {grad_norm}; training stopped before this update"
        )


def evaluate(model: GPT, params, batches: Iterable, *, ignore_index: int = -100) -> dict:
    """Mean loss over all counted target tokens of ``batches`` (no dropout), and perplexity."""
    total, tokens = 0.0, 0
    for inputs, targets in batches:
        n = count_tokens(targets, ignore_index)
        total += float(model.loss(params, inputs, targets, ignore_index=ignore_index)) * n
        tokens += n
    if tokens == 0:
        raise ValueError("evaluate: the batches hold no counted target tokens")
    loss = total / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": tokens}


# ----------------------------------------------------------------- the loop's pieces


def due(step: int, every: int, last: int | None = None) -> bool:
    """Whether a job that runs every ``every`` steps runs after ``step``: at multiples of
    ``every`` and at the ``last`` step; never when ``every`` is 0."""
    return bool(every) and (step % every == 0 or step == last)


def batch_sampler(
    tokens, data_rng: random.Key, batch_size: int, seq_len: int, accumulate: int = 1
) -> Callable[[int], tuple]:
    """``batch_for(step)``: the global batch of training step ``step``, a function of the step alone.

    Micro-batch ``i`` of step ``s`` is ``random_windows(fold_in(fold_in(data_rng, s), i), ...)``:
    (B, T) inputs and targets, or (k, B, T) stacks of them for ``accumulate = k > 1``.
    """

    def batch_for(step: int):
        step_rng = random.fold_in(data_rng, step)
        draws = [
            data.random_windows(random.fold_in(step_rng, i), tokens, batch_size, seq_len) for i in range(accumulate)
        ]
        if accumulate == 1:
            return draws[0]
        return np.stack([d.inputs for d in draws]), np.stack([d.targets for d in draws])  # (k, B, T) x 2

    return batch_for


class LogWindow(NamedTuple):
    """The steps since the last log record: when they started, their tokens and losses.

    A value: :meth:`add` returns a new window. Times are seconds of one clock
    (``time.perf_counter()`` in :func:`train`).
    """

    start: float
    tokens: int = 0
    losses: tuple = ()

    def add(self, metrics: dict) -> LogWindow:
        return LogWindow(self.start, self.tokens + metrics["tokens"], self.losses + (metrics["loss"],))

    def record(self, step: int, lr, clock: float | None = None) -> dict:
        """``{step, loss, lr}`` with the window's mean loss, plus ``tokens_per_s`` when ``clock``
        (now) is given."""
        record = {"step": step, "loss": float(np.mean(self.losses)), "lr": lr}
        if clock is not None:
            record["tokens_per_s"] = self.tokens / max(clock - self.start, 1e-9)
        return record


def make_evaluator(
    model: GPT, tokens, batch_size: int, seq_len: int, max_batches: int | None, strategy=None
) -> Callable[[Any], float]:
    """``eval_loss(params)``: the mean loss over the first ``max_batches`` sequential windows of
    ``tokens`` (the same text every time). Collective under a strategy of several ranks: the
    ranks the strategy names compute it and every rank returns it."""
    strategy = DataParallel() if strategy is None else strategy
    local = strategy.model(model)

    def eval_loss(params) -> float:
        windows = data.sequential_windows(tokens, batch_size, seq_len, max_batches)
        return strategy.evaluate(lambda: evaluate(local, params, windows)["loss"])

    return eval_loss


def make_checkpointer(
    path, model: GPT, metadata: dict | None = None, strategy=None, optimizer: optim.GradientTransformation | None = None
) -> Callable[[TrainState], None]:
    """``save(state)``: write ``state`` to ``path`` (atomically, :func:`lt.checkpoint.save`).

    Collective under a strategy of several ranks: every rank calls it at the same steps; it
    first checks that the ranks hold what they should (``strategy.check_in_sync``), gathers the
    whole state (``optimizer`` is needed for that under ``TensorParallel``), rank 0 writes, and
    no rank returns before the file is on disk."""
    strategy = DataParallel() if strategy is None else strategy

    def save(state: TrainState) -> None:
        donation.check((state.params, state.opt_state), "checkpoint save")
        strategy.check_in_sync(model, state)
        whole = strategy.gather(model, state, optimizer)
        if strategy.is_root and whole is not None:
            checkpoint.save(path, model, whole.params, whole.opt_state, whole.step, metadata)
        strategy.barrier()

    return save


def _check_counts(**counts) -> None:
    """Step counts and sizes are integers: sizes >= 1, periods >= 0 (0: never); ``eval_batches``
    may be None (every window)."""
    for name, value in counts.items():
        if not (name == "eval_batches" and value is None):
            integer(value, name, 1 if name in ("batch_size", "seq_len", "accumulate", "eval_batches") else 0)


def train(
    model: GPT,
    optimizer: optim.GradientTransformation,
    state: TrainState,
    train_tokens,
    *,
    steps: int,
    batch_size: int,
    seq_len: int,
    rng: random.Key,
    val_tokens=None,
    eval_every: int = 0,
    eval_batches: int = 8,
    log_every: int = 10,
    accumulate: int = 1,
    checkpoint_path=None,
    checkpoint_every: int = 0,
    checkpoint_metadata: dict | None = None,
    progress: bool | None = None,
    on_log: Callable[[dict], None] | None = None,
    verbose: bool = True,
    strategy=None,
    stop: Callable[[int], bool] | None = None,
    donate: bool = False,
    row_pieces: int | None = None,
) -> tuple[TrainState, list]:
    """Train from ``state`` until ``state.step == steps``; returns the final state and the log.

    Every ``log_every`` steps (and at the last) a record ``{step, loss, lr, tokens_per_s}`` is
    made: the mean loss and the token rate since the previous record. With ``val_tokens``,
    every ``eval_every`` steps (and at the last) the record gets ``eval_loss`` over
    ``eval_batches`` sequential windows (a record made for evaluation alone has no rate).
    Records are printed (unless ``verbose=False``), passed to ``on_log`` and returned. A
    progress bar runs on stderr when it is a terminal (``progress`` forces it on or off).
    With ``checkpoint_path``, a checkpoint is written every ``checkpoint_every`` steps and at
    the end. A non-finite loss or gradient raises :class:`NonFiniteError` naming the step;
    the last checkpoint written stays intact.

    ``strategy`` (:mod:`lt.parallel.strategy`; default one process): with
    ``lt.parallel.DataParallel(comm)`` or ``TensorParallel(comm, k)`` every rank of the
    communicator calls this with the same arguments; rank 0 alone logs and writes checkpoints,
    after checking that the ranks hold what they should; the eval loss is broadcast, so every
    rank returns the same log. ``state`` is the whole state on every rank, and so is the
    returned one; checkpoints hold the whole model. When a checkpoint write returns on any
    rank, the file is on disk.

    ``stop`` (e.g. a wall-clock budget, ``lt train --time``) is called after each step before
    ``steps`` with the step reached; True makes that step the last: it gets the last step's
    record, evaluation and checkpoint, and the returned state is at it. Under several ranks it
    must answer alike on every rank (decide on one and broadcast).

    Each state the loop makes is donated to the next step (nobody else holds it: one state in
    memory, not two); ``donate=True`` gives up the caller's ``state`` too, else it is left as it was.
    ``row_pieces`` as in :func:`make_train_step`.

    Calls :func:`lt.tune_malloc` first (glibc keeps a step's freed pages for the next step).
    """
    _check_counts(
        steps=steps,
        batch_size=batch_size,
        seq_len=seq_len,
        accumulate=accumulate,
        log_every=log_every,
        eval_every=eval_every,
        eval_batches=eval_batches,
        checkpoint_every=checkpoint_every,
    )
    if steps < state.step:
        raise ValueError(f"steps ({steps}) is before the state's step ({state.step})")
    tune_malloc()
    strategy = DataParallel() if strategy is None else strategy
    root = strategy.is_root
    batch_for = batch_sampler(train_tokens, random.fold_in(rng, "data"), batch_size, seq_len, accumulate)
    given, state, mine = state, strategy.start(model, state, optimizer), donate  # mine: the step may donate it
    keep_step, donated_step = (
        make_train_step(model, optimizer, strategy=strategy, donate=d, row_pieces=row_pieces) for d in (False, True)
    )
    eval_loss = (
        make_evaluator(model, val_tokens, batch_size, seq_len, eval_batches, strategy)
        if val_tokens is not None and eval_every
        else None
    )
    save = (
        make_checkpointer(checkpoint_path, model, checkpoint_metadata, strategy, optimizer) if checkpoint_path else None
    )
    bar = Progress(steps, start=state.step, enabled=progress if root else False)
    log, window = [], LogWindow(time.perf_counter())
    try:
        while state.step < steps:
            step = donated_step if mine else keep_step
            state, metrics = step(state, batch_for(state.step), random.fold_in(rng, state.step))
            mine = mine or not donation.shares(state, given)  # the loop's own state from now on, not the caller's
            window = window.add(metrics)
            bar.update(state.step, loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
            last = state.step if stop is not None and state.step < steps and stop(state.step) else steps
            logging = due(state.step, max(log_every, 1), last)
            evaluating = eval_loss is not None and due(state.step, eval_every, last)
            if logging or evaluating:
                record = window.record(state.step, metrics["lr"], time.perf_counter() if logging else None)
                if evaluating and eval_loss is not None:
                    record["eval_loss"] = eval_loss(state.params)
                log.append(record)
                if root and verbose:
                    bar.write(format_record(record))
                if root and on_log:
                    on_log(record)
                window = LogWindow(time.perf_counter())
            if save and due(state.step, checkpoint_every):
                save(state)
            if state.step == last:
                break
        if save and not due(state.step, checkpoint_every):
            save(state)  # the end, unless just written
    finally:
        bar.close()
    return strategy.finish(model, state, optimizer), log


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
