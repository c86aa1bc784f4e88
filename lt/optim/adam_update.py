"""Adam and AdamW (``torch.optim.Adam``/``AdamW``'s rules step for step).

Each leaf's update is one pass over memory: the compiled kernel
:func:`lt.ops.kernels.adam.adam_block` where the kernels are on and cover the leaf (float32 or
float64, gradient, moments and parameter of one dtype), else NumPy's in-place operations on
cache-sized blocks (:func:`_adam_block`, the reference). Either way the leaves are cut into
blocks that lt's worker pool shares (:func:`lt.threads.run`), all leaves in one job: not a
``prange`` per leaf, so that a model's hundreds of small leaves cost one hand-off, and a busy
core holds up one block, not a static share of every leaf.

With a :class:`~lt.donation.Donation` (a donated train step) the new moments are written
over the old ones and the update over the gradient, so the step allocates nothing the size of
the model; the numbers are the same bits as without. Under ``lt.vmap`` (an ensemble) the leaves
are traced: :func:`_adam_batched`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

from .. import donation, threads, tree
from .._checks import real
from ..ops import kernels
from ..ops.traces import BatchTracer
from .schedules import as_schedule
from .transforms import GradientTransformation, ScheduleState, schedule_init, schedule_step, traced, zeros_like

__all__ = ["AdamState", "adam", "adamw", "decay_mask"]


class AdamState(NamedTuple):
    schedule: ScheduleState
    mu: Any  # first moment, tree like params
    nu: Any  # second moment, tree like params


def decay_mask(params):
    """The default weight-decay mask: True for parameters with two or more dimensions.

    Matrices (linear weights, embeddings) decay; biases and layer-norm scales do not.
    """
    return tree.map(lambda p: np.ndim(p) >= 2, params)


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


def _adam(learning_rate, b1, b2, eps, weight_decay, mask) -> GradientTransformation:
    real(b1, "b1", 0, 1, high_open=True)
    real(b2, "b2", 0, 1, high_open=True)
    real(eps, "eps", 0)
    real(weight_decay, "weight_decay", 0)
    schedule = as_schedule(learning_rate)

    def init(params):
        return AdamState(schedule_init(schedule), zeros_like(params), zeros_like(params))

    def update(grads, state, params=None, *, donated: donation.Donation | None = None, **extra):
        """``donated``: the buffers this update may overwrite (a donated train step's)."""
        if donated is None:  # (a donated step checked its state already)
            donation.check((grads, state, params), "the optimizer's update")
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
        leaves = zip(flat_g, tree.leaves(state.mu), tree.leaves(state.nu), flat_p, decays)
        if traced(flat_g):  # under lt.vmap (an ensemble): see _adam_batched
            moments = [_adam_batched(g, m, v, p, hyper, lr * weight_decay if d else 0.0) for g, m, v, p, d in leaves]
            mu, nu, updates = (tree.unflatten(treedef, [s[i] for s in moments]) for i in range(3))
            return updates, AdamState(sched, mu, nu)
        steps, tasks = [], []
        for g, m, v, p, d in leaves:
            leaf_step, leaf_tasks = _adam_leaf(g, m, v, p, hyper, lr * weight_decay if d else 0.0, donated)
            steps.append(leaf_step)
            tasks += leaf_tasks
        moved = sum(np.size(g) * np.asarray(g).itemsize for g in flat_g) * 7  # g, m, v, p read; m, v, u written
        threads.run(tasks, threads.bytes_us(moved))  # every block of every leaf, on the free cores
        mu, nu, updates = (tree.unflatten(treedef, [_result(*s[i]) for s in steps]) for i in range(3))
        return updates, AdamState(sched, mu, nu)

    return GradientTransformation(init, update)


_CHUNK = 1 << 16  # elements per NumPy block: the block's seven arrays stay in cache
_KERNEL_CHUNK = 1 << 18  # elements per kernel block: one pass, so only the hand-offs count


def _result(out: np.ndarray, donated_leaf) -> np.ndarray:
    """The leaf handed back: a fresh buffer sealed read-only, or (its memory donated) a new
    object over the donated leaf's memory, read-only as the leaf was."""
    return tree.seal(out) if donated_leaf is None else donated_leaf.view()


def _outputs(g, m, v, donated) -> tuple[tuple[np.ndarray, Any], ...]:
    """``(buffer, donated leaf or None)`` for m', v' and u: m' over m, v' over v, u over g where
    donated (u only when g has m's shape and dtype), else new buffers."""
    outs = []
    for leaf in (m, v, g):
        buf = None
        if donated is not None and np.shape(leaf) == m.shape:
            buf = donated.buffer(leaf, m.dtype)
        outs.append((np.empty(m.shape, m.dtype), None) if buf is None else (buf, leaf))
    return tuple(outs)


def _adam_leaf(g, m, v, p, hyper, decay_rate, donated=None) -> tuple[tuple, list]:
    """One leaf's ``(buffer, donated leaf)`` pairs for ``(m', v', u)`` (see :func:`_outputs`), and
    the tasks that fill the buffers block by block, each element read once: the compiled kernels
    where they cover the leaf (in place when m, v and g were all donated), else
    :func:`_adam_block` (in temporaries first when an output overwrites an input:
    :func:`_adam_block_aliased`)."""
    outs = _outputs(g, m, v, donated)
    flat_outs = tuple(o.reshape(-1) for o, _ in outs)
    g1, m1, v1 = (np.asarray(a, m.dtype).reshape(-1) for a in (g, m, v))
    p1 = None if p is None or not decay_rate else np.asarray(p).reshape(-1)
    n = m1.size
    if _kernel_covers(m1, p1):
        from ..ops.kernels.adam import adam_block, adam_block_over

        h = _hyper_array(hyper, decay_rate, m1.dtype)
        p1 = _read_only(p1) if p1 is not None else np.empty(0, m1.dtype)
        spans = [slice(lo, lo + _KERNEL_CHUNK) for lo in range(0, n, _KERNEL_CHUNK)]
        decay = [p1[s] if p1.size else p1 for s in spans]
        if all(d is not None for _, d in outs):  # m, v and g donated: one in-place pass
            m_out, v_out, u_out = flat_outs
            return outs, [
                functools.partial(adam_block_over, u_out[s], m_out[s], v_out[s], q, h) for s, q in zip(spans, decay)
            ]
        g1, m1, v1 = (_read_only(a) for a in (g1, m1, v1))
        return outs, [
            functools.partial(adam_block, g1[s], m1[s], v1[s], q, *(o[s] for o in flat_outs), h)
            for s, q in zip(spans, decay)
        ]
    block = _adam_block if all(d is None for _, d in outs) else _adam_block_aliased
    tasks = [
        functools.partial(block, g1, m1, v1, p1, flat_outs, slice(lo, lo + _CHUNK), hyper, decay_rate)
        for lo in range(0, n, _CHUNK)
    ]
    return outs, tasks


def _kernel_covers(m1: np.ndarray, p1) -> bool:
    """Whether the compiled kernels run this leaf: kernels on, float32/float64, p of m's dtype."""
    return kernels.enabled() and m1.dtype in (np.float32, np.float64) and (p1 is None or p1.dtype == m1.dtype)


@functools.lru_cache(maxsize=8)
def _hyper_array(hyper: tuple, decay_rate: float, dtype: np.dtype) -> np.ndarray:
    """The kernels' ``h`` (see :mod:`lt.ops.kernels.adam`) in the leaf's dtype, made once per update."""
    b1, b2, eps, step_size, root_correction = hyper
    return _read_only(np.array([1.0 - b1, 1.0 - b2, 1.0 / root_correction, eps, -step_size, decay_rate], dtype))


def _read_only(a: np.ndarray) -> np.ndarray:
    """``a``, read-only (a view if need be): the kernels' inputs always have one type, so they
    compile once per dtype."""
    if not a.flags.writeable:
        return a
    view = a.view()
    view.flags.writeable = False
    return view


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


def _adam_block_aliased(g1, m1, v1, p1, outs, sl, hyper, decay_rate) -> None:
    """:func:`_adam_block` when an output is an input's own memory (a donated step): the block's
    results go to temporaries first, then over the inputs (the same operations, the same bits)."""
    size = len(range(*sl.indices(m1.size)))
    temps = tuple(np.empty(size, m1.dtype) for _ in range(3))
    blocks = (g1[sl], m1[sl], v1[sl], None if p1 is None else p1[sl])
    _adam_block(*blocks, temps, slice(None), hyper, decay_rate)
    for o, t in zip(outs, temps):
        o[sl] = t


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
        threads.run(tasks, threads.bytes_us(7 * outs[0][0].nbytes))
        return tuple(BatchTracer(tree.seal(o), first.bdim, first.trace) for o, _ in outs)
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
