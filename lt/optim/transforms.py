"""Optimizers as pairs of pure functions, in optax's vocabulary.

A :class:`GradientTransformation` is ``(init, update)``: ``init(params) -> state`` and
``update(grads, state, params) -> (updates, state)``. Updates are deltas;
``apply_updates`` adds them. States are named tuples of frozen arrays, so an optimizer
step never changes its inputs and a state can be checkpointed like params.

The rules match ``torch.optim`` (SGD with momentum/nesterov, Adam, AdamW) step for step;
Adam and AdamW are in :mod:`lt.optim.adam_update`.

A donated step (``make_train_step(..., donate=True)``) hands ``update`` the extra value
``donated``, a :class:`~lt.donation.Donation`: the buffers of the gradient and of the state
that may be overwritten. Clipping then scales the gradient in place, Adam writes its moments
over the old ones and its update over the gradient, and :func:`apply_updates` adds the update
into the parameters' memory; a transform that ignores ``donated`` allocates, as always.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from .. import donation, threads, tree
from .._checks import real
from ..ops.primitive import ArrayMethods
from .schedules import as_schedule

__all__ = [
    "GradientTransformation",
    "ScheduleState",
    "sgd",
    "chain",
    "clip_by_global_norm",
    "global_norm",
    "apply_updates",
    "current_learning_rate",
    "traced",
    "traced_global_norm",
]


class GradientTransformation(NamedTuple):
    """``init(params) -> state`` and ``update(grads, state, params=None, **extra) -> (updates, state)``.

    ``extra`` are values the training step already computed, by keyword (optax's
    ``GradientTransformationExtraArgs``): ``grad_norm``, the global norm of the whole gradient,
    which :func:`clip_by_global_norm` then uses instead of computing it again (and which a rank
    holding a slice of the gradient could not compute alone). Every lt transform takes and
    passes on what it does not use; call :meth:`update_with` for a transform that may not."""

    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any]]

    def update_with(self, grads, state, params=None, **extra):
        """``update`` with the ``extra`` values it accepts (all of them for lt's transforms, none
        for a hand-written ``update(grads, state, params)``)."""
        return self.update(grads, state, params, **accepted_extra(self.update, extra))


def accepted_extra(fn: Callable, extra: dict) -> dict:
    if not extra:
        return extra
    names = _keywords(fn)
    return extra if names is None else {k: v for k, v in extra.items() if k in names}


@functools.lru_cache(maxsize=256)
def _keywords(fn: Callable) -> frozenset | None:
    """The keyword names ``fn`` takes, or None when it takes any (``**kwargs``)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


class ScheduleState(NamedTuple):
    """Updates applied so far, and the learning rate of the latest one (of the first, before any)."""

    count: np.ndarray  # type: ignore[assignment]  # () int64; optax's name, shadowing tuple.count on purpose
    learning_rate: np.ndarray  # () float64


class MomentumState(NamedTuple):
    schedule: ScheduleState
    momentum: Any  # tree like params, or None without momentum


def _scalar(x, dtype) -> np.ndarray:
    return tree.seal(np.asarray(x, dtype))


def schedule_init(schedule) -> ScheduleState:
    return ScheduleState(_scalar(0, np.int64), _scalar(schedule(0), np.float64))


def schedule_step(schedule, state: ScheduleState) -> tuple[float, ScheduleState]:
    """The rate for this update, and the state after it."""
    count = int(state.count)
    lr = float(schedule(count))
    return lr, ScheduleState(_scalar(count + 1, np.int64), _scalar(lr, np.float64))


def zeros_like(params):
    """A tree of zeros shaped like ``params``: a moment's initial state (SGD's momentum, Adam's m and v)."""
    return tree.map(np.zeros_like, params)


def sgd(learning_rate, momentum: float = 0.0, nesterov: bool = False) -> GradientTransformation:
    """Stochastic gradient descent, ``torch.optim.SGD``'s rule (no dampening).

    ``buf = momentum * buf + g``; the step is ``-lr * buf`` (``-lr * (g + momentum * buf)``
    with nesterov).
    """
    real(momentum, "momentum", 0)
    if nesterov and momentum <= 0:
        raise ValueError("nesterov needs momentum > 0")
    schedule = as_schedule(learning_rate)

    def init(params):
        return MomentumState(schedule_init(schedule), zeros_like(params) if momentum else None)

    def update(grads, state, params=None, **extra):
        if extra.get("donated") is None:  # (a donated step checked its state already)
            donation.check((grads, state, params), "the optimizer's update")
        lr, sched = schedule_step(schedule, state.schedule)
        if not momentum:
            return tree.map(lambda g: g * g.dtype.type(-lr), grads), MomentumState(sched, None)
        buf = tree.map(lambda b, g: b * b.dtype.type(momentum) + g, state.momentum, grads)
        direction = tree.map(lambda g, b: g + b * b.dtype.type(momentum), grads, buf) if nesterov else buf
        return tree.map(lambda d: d * d.dtype.type(-lr), direction), MomentumState(sched, buf)

    return GradientTransformation(init, update)


_CHUNK = 1 << 16  # elements per block of apply_updates


def traced(leaves) -> bool:
    """Whether any leaf is traced by a transform (``lt.vmap`` of an optimizer step): the
    update then takes its path of lt.ops arithmetic instead of NumPy's in-place blocks."""
    return any(isinstance(x, ArrayMethods) for x in leaves)


def global_norm(updates) -> float:
    """The L2 norm of all leaves together."""
    return float(np.sqrt(sum(float(np.vdot(x, x)) for x in tree.leaves(updates))))


def traced_global_norm(updates):
    """:func:`global_norm` as an lt.ops value (under ``lt.vmap``, one norm per member): each
    leaf's sum of squares in its own dtype (as ``np.vdot`` there), added up in float64."""
    total = None
    for x in tree.leaves(updates):
        sq = (x * x).sum().astype(np.float64)
        total = sq if total is None else total + sq
    return np.sqrt(total)


class EmptyState(NamedTuple):
    pass


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Scale the updates down so that their global norm is at most ``max_norm``; the norm is
    the ``grad_norm`` handed to ``update`` when given (the step computed it), else computed."""
    real(max_norm, "max_norm", 0, low_open=True)

    def update(grads, state, params=None, *, grad_norm: float | None = None, donated=None, **extra):
        if traced(tree.leaves(grads)) or isinstance(grad_norm, ArrayMethods):  # under lt.vmap: no branch
            norm = traced_global_norm(grads) if grad_norm is None else grad_norm
            scale = max_norm / np.maximum(norm, max_norm)  # 1 when within the bound
            return tree.map(lambda g: g * scale.astype(g.dtype), grads), state
        norm = global_norm(grads) if grad_norm is None else float(grad_norm)
        if norm <= max_norm or not np.isfinite(norm):
            return grads, state
        scale = max_norm / norm
        if donated is not None:  # scaled in place where the gradient was donated (the same bits)
            flat, treedef = tree.flatten(grads)
            return tree.unflatten(treedef, [_scale_over(g, g.dtype.type(scale), donated) for g in flat]), state
        return tree.map(lambda g: g * g.dtype.type(scale), grads), state

    return GradientTransformation(lambda params: EmptyState(), update)


def _scale_over(g, scale, donated: donation.Donation):
    """``g * scale``, written over ``g``'s memory when it was donated (``g`` itself is returned,
    so that it stays donated for the next transform)."""
    buf = donated.buffer(g)
    if buf is None:
        return tree.seal(g * scale)
    np.multiply(buf, scale, out=buf)
    return g


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply transformations in order; the state is the tuple of their states. The ``extra``
    values of ``update`` go to each transform; ``grad_norm`` (the norm of the gradient given)
    only while no earlier transform has changed the updates."""

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(grads, state, params=None, **extra):
        if extra.get("donated") is None:
            donation.check(state, "the optimizer's update")
        given, new_states = grads, []
        for t, s in zip(transforms, state):
            if grads is not given:
                extra.pop("grad_norm", None)
            grads, s = t.update(grads, s, params, **accepted_extra(t.update, extra))
            new_states.append(s)
        return grads, tuple(new_states)

    return GradientTransformation(init, update)


def apply_updates(params, updates, *, donated: donation.Donation | None = None):
    """``params + updates``, each leaf cast back to its parameter's dtype; a new frozen tree.
    Big leaves are added block by block on the free cores (``lt.threads``).

    ``donated`` (a donated train step's buffers): a parameter leaf whose memory was donated
    gets the sum written over it (the new tree's leaf is a new read-only view of that memory);
    the others get new buffers, as without it."""
    if donated is None:  # (a donated step checked its state already)
        donation.check((params, updates), "apply_updates")
    if traced(tree.leaves(updates)):  # under lt.vmap
        return tree.map(lambda p, u: p + (u if u.dtype == p.dtype else u.astype(p.dtype)), params, updates)
    if donated is None and threads.bytes_us(3 * tree.nbytes(params)) < threads.MIN_PARALLEL_US:  # small: inline
        return tree.map(lambda p, u: np.add(p, u, dtype=p.dtype), params, updates)
    flat_p, treedef = tree.flatten(params)
    flat_u, udef = tree.flatten(updates)
    if udef != treedef:
        raise ValueError(
            "apply_updates: params and updates differ in structure " + (tree.mismatch(params, updates) or "")
        )
    out, tasks = [], []
    for p, u in zip(flat_p, flat_u):
        p, u = np.asarray(p), np.asarray(u)
        shape = p.shape if p.shape == u.shape else np.broadcast_shapes(p.shape, u.shape)
        o = donated.buffer(p) if donated is not None and shape == p.shape else None
        o, given = (np.empty(shape, p.dtype), None) if o is None else (o, p)
        if p.shape != o.shape or u.shape != o.shape:
            p, u = np.broadcast_to(p, o.shape), np.broadcast_to(u, o.shape)
        p1, u1, o1 = p.reshape(-1), u.reshape(-1), o.reshape(-1)
        tasks += [
            functools.partial(
                np.add, p1[lo : lo + _CHUNK], u1[lo : lo + _CHUNK], out=o1[lo : lo + _CHUNK], dtype=p.dtype
            )
            for lo in range(0, max(o.size, 1), _CHUNK)
        ]
        out.append((o, given))
    threads.run(tasks, threads.bytes_us(sum(o.nbytes for o, _ in out) * 3))
    return tree.unflatten(treedef, [tree.seal(o) if given is None else given.view() for o, given in out])


def current_learning_rate(state) -> float | None:
    """The learning rate of the latest update (or of the first, before any), read from an
    optimizer state; None when the optimizer has no learning rate.

    (Named apart from the ``learning_rate`` argument that every optimizer takes.)"""
    if isinstance(state, ScheduleState):
        return float(state.learning_rate)
    if isinstance(state, (tuple, Mapping)):  # a chain's tuple, a partition's FrozenDict (its first group)
        for sub in state.values() if isinstance(state, Mapping) else state:
            lr = current_learning_rate(sub)
            if lr is not None:
                return lr
    return None
