"""Optimizers as pairs of pure functions, in optax's vocabulary.

A :class:`GradientTransformation` is ``(init, update)``: ``init(params) -> state`` and
``update(grads, state, params) -> (updates, state)``. Updates are deltas;
``apply_updates`` adds them. States are named tuples of frozen arrays, so an optimizer
step never changes its inputs and a state can be checkpointed like params.

The rules match ``torch.optim`` (SGD with momentum/nesterov, Adam, AdamW) step for step.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from .. import threads, tree
from .._checks import real
from ..ops.primitive import ArrayMethods
from ..ops.traces import BatchTracer
from .schedules import as_schedule

__all__ = [
    "GradientTransformation",
    "ScheduleState",
    "sgd",
    "adam",
    "adamw",
    "chain",
    "clip_by_global_norm",
    "global_norm",
    "apply_updates",
    "decay_mask",
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


class AdamState(NamedTuple):
    schedule: ScheduleState
    mu: Any  # first moment, tree like params
    nu: Any  # second moment, tree like params


def _scalar(x, dtype) -> np.ndarray:
    return tree.seal(np.asarray(x, dtype))


def schedule_init(schedule) -> ScheduleState:
    return ScheduleState(_scalar(0, np.int64), _scalar(schedule(0), np.float64))


def schedule_step(schedule, state: ScheduleState) -> tuple[float, ScheduleState]:
    """The rate for this update, and the state after it."""
    count = int(state.count)
    lr = float(schedule(count))
    return lr, ScheduleState(_scalar(count + 1, np.int64), _scalar(lr, np.float64))


def _zeros_like(params):
    return tree.map(lambda p: np.zeros_like(p), params)


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
        return MomentumState(schedule_init(schedule), _zeros_like(params) if momentum else None)

    def update(grads, state, params=None, **extra):
        lr, sched = schedule_step(schedule, state.schedule)
        if not momentum:
            return tree.map(lambda g: g * g.dtype.type(-lr), grads), MomentumState(sched, None)
        buf = tree.map(lambda b, g: b * b.dtype.type(momentum) + g, state.momentum, grads)
        direction = tree.map(lambda g, b: g + b * b.dtype.type(momentum), grads, buf) if nesterov else buf
        return tree.map(lambda d: d * d.dtype.type(-lr), direction), MomentumState(sched, buf)

    return GradientTransformation(init, update)


def decay_mask(params):
    """The default weight-decay mask: True for parameters with two or more dimensions.

    Matrices (linear weights, embeddings) decay; biases and layer-norm scales do not.
    """
    return tree.map(lambda p: np.ndim(p) >= 2, params)


def _adam(learning_rate, b1, b2, eps, weight_decay, mask) -> GradientTransformation:
    real(b1, "b1", 0, 1, high_open=True)
    real(b2, "b2", 0, 1, high_open=True)
    real(eps, "eps", 0)
    real(weight_decay, "weight_decay", 0)
    schedule = as_schedule(learning_rate)

    def init(params):
        return AdamState(schedule_init(schedule), _zeros_like(params), _zeros_like(params))

    def update(grads, state, params=None, **extra):
        lr, sched = schedule_step(schedule, state.schedule)
        t = int(sched.count)
        step_size = lr / (1.0 - b1**t)  # bias corrections, as torch applies them
        root_correction = np.sqrt(1.0 - b2**t)
        if weight_decay:
            if params is None:
                raise ValueError("adamw's update needs params for the weight decay")
            decays = tree.leaves(mask(params) if callable(mask) else (mask if mask is not None else decay_mask(params)))
        else:
            decays = [False] * len(tree.leaves(grads))
        flat_g, treedef = tree.flatten(grads)
        flat_p = tree.leaves(params) if params is not None else [None] * len(flat_g)
        hyper = (b1, b2, eps, step_size, root_correction)
        if traced(flat_g):  # under lt.vmap (an ensemble): see _adam_batched
            moments = [
                _adam_batched(g, m, v, p, hyper, lr * weight_decay if d else 0.0)
                for g, m, v, p, d in zip(flat_g, tree.leaves(state.mu), tree.leaves(state.nu), flat_p, decays)
            ]
            mu, nu, updates = (tree.unflatten(treedef, [s[i] for s in moments]) for i in range(3))
            return updates, AdamState(sched, mu, nu)
        steps, tasks = [], []
        for g, m, v, p, d in zip(flat_g, tree.leaves(state.mu), tree.leaves(state.nu), flat_p, decays):
            leaf_step, leaf_tasks = _adam_leaf(g, m, v, p, hyper, lr * weight_decay if d else 0.0)
            steps.append(leaf_step)
            tasks += leaf_tasks
        moved = sum(np.size(g) * np.asarray(g).itemsize for g in flat_g) * 7  # g, m, v, p read; m, v, u written
        threads.run(tasks, threads.bytes_us(moved))  # every block of every leaf, on the free cores
        mu, nu, updates = (tree.unflatten(treedef, [tree.seal(s[i]) for s in steps]) for i in range(3))
        return updates, AdamState(sched, mu, nu)

    return GradientTransformation(init, update)


_CHUNK = 1 << 16  # elements per block: the block's seven arrays stay in cache


def _adam_leaf(g, m, v, p, hyper, decay_rate) -> tuple[tuple[np.ndarray, ...], list]:
    """One leaf's new moments and update ``(m', v', u)`` (empty), and the tasks that fill them,
    one per block of ``_CHUNK`` elements, so each element is read once (see :func:`_adam_block`)."""
    g1, m1, v1 = (np.asarray(a, m.dtype).reshape(-1) for a in (g, m, v))
    p1 = None if p is None else np.asarray(p).reshape(-1)
    outs = tuple(np.empty(m.shape, m.dtype) for _ in range(3))
    flat_outs = tuple(o.reshape(-1) for o in outs)
    tasks = [
        functools.partial(_adam_block, g1, m1, v1, p1, flat_outs, slice(lo, lo + _CHUNK), hyper, decay_rate)
        for lo in range(0, m1.size, _CHUNK)
    ]
    return outs, tasks


def _adam_block(g1, m1, v1, p1, outs, sl, hyper, decay_rate) -> None:
    """Adam's rule on one block of a leaf, written into the block of ``outs = (m', v', u)``:

    ``m' = m + (1-b1)(g - m)``, ``v' = v + (1-b2)(g² - v)``,
    ``u = -step m' / (sqrt(v') / root_correction + eps) - decay_rate p``.
    """
    b1, b2, eps, step_size, root_correction = hyper
    dt = m1.dtype.type
    gs, ms, vs = g1[sl], m1[sl], v1[sl]
    mn, vn, un = (o[sl] for o in outs)
    np.subtract(gs, ms, out=mn)
    mn *= dt(1.0 - b1)
    mn += ms
    np.multiply(gs, gs, out=vn)
    vn -= vs
    vn *= dt(1.0 - b2)
    vn += vs
    np.sqrt(vn, out=un)
    un *= dt(1.0 / root_correction)
    un += dt(eps)
    np.divide(mn, un, out=un)
    un *= dt(-step_size)
    if decay_rate:
        un -= p1[sl] * dt(decay_rate)


def traced(leaves) -> bool:
    """Whether any leaf is traced by a transform (``lt.vmap`` of an optimizer step): the
    update then takes its path of lt.ops arithmetic instead of NumPy's in-place blocks."""
    return any(isinstance(x, ArrayMethods) for x in leaves)


def _adam_batched(g, m, v, p, hyper, decay_rate) -> tuple:
    """Adam's rule on traced leaves. When all of them are plain stacks batched by one
    ``lt.vmap`` along one axis (an ensemble's), the rule is elementwise, so the members are
    updated at once by the same in-place blocks on the stacks (bit for bit each member's own
    update); otherwise, :func:`_adam_traced`."""
    leaves = (g, m, v) if p is None else (g, m, v, p)
    first = leaves[0]
    if all(
        isinstance(x, BatchTracer)
        and x.trace is first.trace
        and x.bdim == first.bdim
        and isinstance(x.value, np.ndarray)
        and x.value.shape == first.value.shape
        for x in leaves
    ):
        stacks = g.value, m.value, v.value, None if p is None else p.value
        outs, tasks = _adam_leaf(*stacks, hyper, decay_rate)
        threads.run(tasks, threads.bytes_us(7 * outs[0].nbytes))
        return tuple(BatchTracer(tree.seal(o), first.bdim, first.trace) for o in outs)
    return _adam_traced(g, m, v, p, hyper, decay_rate)


def _adam_traced(g, m, v, p, hyper, decay_rate) -> tuple:
    """:func:`_adam_block`'s rule on whole (traced) leaves, operation for operation."""
    b1, b2, eps, step_size, root_correction = hyper
    dt = m.dtype.type
    if g.dtype != m.dtype:
        g = g.astype(m.dtype)
    mn = (g - m) * dt(1.0 - b1) + m
    vn = (g * g - v) * dt(1.0 - b2) + v
    un = mn / (np.sqrt(vn) * dt(1.0 / root_correction) + dt(eps)) * dt(-step_size)
    if decay_rate:
        un = un - p * dt(decay_rate)
    return mn, vn, un


def adam(learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> GradientTransformation:
    """Adam (Kingma & Ba), ``torch.optim.Adam``'s rule with bias correction; no weight decay."""
    return _adam(learning_rate, b1, b2, eps, 0.0, None)


def adamw(
    learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.01, mask=None
) -> GradientTransformation:
    """AdamW: Adam plus decoupled decay ``-lr * weight_decay * p`` (``torch.optim.AdamW``).

    By default only parameters with two or more dimensions decay (:func:`decay_mask`);
    ``mask`` — a tree of bools shaped like params, or a function of params giving one —
    overrides that.
    """
    return _adam(learning_rate, b1, b2, eps, weight_decay, mask)


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

    def update(grads, state, params=None, *, grad_norm: float | None = None, **extra):
        if traced(tree.leaves(grads)) or isinstance(grad_norm, ArrayMethods):  # under lt.vmap: no branch
            norm = traced_global_norm(grads) if grad_norm is None else grad_norm
            scale = max_norm / np.maximum(norm, max_norm)  # 1 when within the bound
            return tree.map(lambda g: g * scale.astype(g.dtype), grads), state
        norm = global_norm(grads) if grad_norm is None else float(grad_norm)
        if norm <= max_norm or not np.isfinite(norm):
            return grads, state
        scale = max_norm / norm
        return tree.map(lambda g: g * g.dtype.type(scale), grads), state

    return GradientTransformation(lambda params: EmptyState(), update)


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply transformations in order; the state is the tuple of their states. The ``extra``
    values of ``update`` go to each transform; ``grad_norm`` (the norm of the gradient given)
    only while no earlier transform has changed the updates."""

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(grads, state, params=None, **extra):
        given, new_states = grads, []
        for t, s in zip(transforms, state):
            if grads is not given:
                extra.pop("grad_norm", None)
            grads, s = t.update(grads, s, params, **accepted_extra(t.update, extra))
            new_states.append(s)
        return grads, tuple(new_states)

    return GradientTransformation(init, update)


def apply_updates(params, updates):
    """``params + updates``, each leaf cast back to its parameter's dtype; a new frozen tree.
    Big leaves are added block by block on the free cores (``lt.threads``)."""
    if traced(tree.leaves(updates)):  # under lt.vmap
        return tree.map(lambda p, u: p + (u if u.dtype == p.dtype else u.astype(p.dtype)), params, updates)
    if threads.bytes_us(3 * tree.nbytes(params)) < threads.MIN_PARALLEL_US:  # small: leaf by leaf, inline
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
        o = np.empty(p.shape if p.shape == u.shape else np.broadcast_shapes(p.shape, u.shape), p.dtype)
        if p.shape != o.shape or u.shape != o.shape:
            p, u = np.broadcast_to(p, o.shape), np.broadcast_to(u, o.shape)
        p1, u1, o1 = p.reshape(-1), u.reshape(-1), o.reshape(-1)
        tasks += [
            functools.partial(
                np.add, p1[lo : lo + _CHUNK], u1[lo : lo + _CHUNK], out=o1[lo : lo + _CHUNK], dtype=p.dtype
            )
            for lo in range(0, max(o.size, 1), _CHUNK)
        ]
        out.append(o)
    threads.run(tasks, threads.bytes_us(sum(o.nbytes for o in out) * 3))
    return tree.unflatten(treedef, [tree.seal(o) for o in out])


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
