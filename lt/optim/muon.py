"""Muon: momentum whose update for each hidden weight matrix is orthogonalised, AdamW for the rest.

Muon (Keller Jordan et al., 2024, the optimizer of the NanoGPT speedrun), per matrix ``W`` with
gradient ``g`` and momentum ``beta``:

    buf = beta * buf + (1 - beta) * g
    u   = (1 - beta) * g + beta * buf          (Nesterov; plain momentum: u = buf)
    O   = NS(u)                                 u's singular values pushed toward 1, its singular vectors kept
    W  <- W - lr * (O * sqrt(max(1, out / in)) + weight_decay * W)

``NS`` is five steps of a quintic Newton–Schulz iteration ``X <- a X + (b A + c A²) X`` with
``A = X Xᵀ``, from ``X = u / max(‖u‖_F, eps)``; its published coefficients (3.4445, -4.7750, 2.0315) trade
exactness for speed: singular values end between about 0.7 and 1.2, not at 1, which training
does not mind. Only matrix multiplications, so it runs on the BLAS.

Which leaves Muon updates comes from the model's declarations: every 2-D leaf declared with
the role ``"weight"`` (a hidden linear map: attention and feed-forward; the untied LM head is
declared ``"head"``). Embeddings, the head, norms and biases go to AdamW, as in the speedrun. A
fused matrix (lt's q|k|v) is orthogonalised block by block along its declared split, so its
update equals that of three separate q, k and v matrices.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .. import donation, threads, tree
from .._checks import integer, real
from ..ops.traces import BatchTracer
from .adam_update import adamw
from .partition import add_decayed_weights, partition, scale_by_learning_rate
from .transforms import GradientTransformation, chain

__all__ = ["NS_COEFFICIENTS", "newton_schulz", "MuonState", "scale_by_muon", "muon", "muon_labels"]

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # a, b, c of the quintic (Keller Jordan's)


def newton_schulz(g, steps: int = 5, eps: float = 1e-7) -> np.ndarray:
    """(..., m, n) -> (..., m, n): ``g`` with its singular values mapped near 1 and its singular
    vectors kept (approximately ``U Vᵀ`` of ``g = U S Vᵀ``), by ``steps`` quintic iterations.
    The Gram matrix is taken on the short side (``X Xᵀ`` of the wide orientation)."""
    x = np.asarray(g)
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = np.swapaxes(x, -1, -2)
    dt = x.dtype.type
    x = x / np.maximum(np.sqrt(np.sum(x * x, axis=(-2, -1), keepdims=True)), dt(eps))
    a, b, c = (dt(v) for v in NS_COEFFICIENTS)
    for _ in range(steps):
        A = x @ np.swapaxes(x, -1, -2)  # (..., m, m), m the short side
        x = a * x + (b * A + c * (A @ A)) @ x
    return np.swapaxes(x, -1, -2) if tall else x


class MuonState(NamedTuple):
    momentum: tuple  # one buffer per leaf the transform updates


def _blocks_of(shape: tuple[int, ...], layout: tuple[int, tuple[int, ...]] | None) -> list[tuple]:
    """The index of each block a (..., in, out) leaf is orthogonalised in: the whole leaf, or its
    column (axis 1) or row (axis 0) blocks of ``layout = (axis, widths)``; leading axes (an
    ensemble's members) are kept whole."""
    axis, widths = (1, (shape[-1],)) if layout is None else layout
    starts = np.cumsum((0,) + tuple(widths[:-1]))
    return [
        (..., slice(None), slice(a, a + w)) if axis == 1 else (..., slice(a, a + w), slice(None))
        for a, w in zip(starts, widths)
    ]


def _orthogonalised(directions: list[np.ndarray], layouts: Sequence, steps: int) -> list[np.ndarray]:
    """Each (in, out) direction orthogonalised block by block (see :func:`_blocks_of`), each block
    scaled by ``sqrt(max(1, out / in))`` of its own shape. Blocks of one shape (the same matrix of
    every layer) go through :func:`newton_schulz` together where they are small.

    Stacks worth it are cut into one piece a block, which lt's workers share (:func:`lt.threads.run`):
    the BLAS runs products as small as these on one thread, so one stack at a time left a core
    idle. A block's result does not depend on the stack it is in, so the bits do not depend on the cut."""
    outs = [np.empty_like(u) for u in directions]
    by_shape: dict[tuple, list] = {}
    for i, (u, layout) in enumerate(zip(directions, layouts)):
        for index in _blocks_of(u.shape, layout):
            by_shape.setdefault((u[index].shape, u.dtype.str), []).append((i, index))

    def orthogonalise(places, rows: int, cols: int) -> None:
        stack = np.stack([directions[i][index] for i, index in places])  # (n, ..., rows, cols)
        done = newton_schulz(stack, steps)
        done *= done.dtype.type(np.sqrt(max(1.0, cols / rows)))
        for (i, index), block in zip(places, done):
            outs[i][index] = block

    tasks, total = [], 0.0
    for ((*_, rows, cols), _), places in by_shape.items():
        short, long = sorted((rows, cols))
        matrices = len(places) * int(np.prod(directions[places[0][0]].shape[:-2]))  # (an ensemble's members too)
        us = threads.flops_us(matrices * steps * (4 * short * short * long + 2 * short**3))
        total += us
        cut = [[place] for place in places] if us >= threads.PIECE_US else [places]  # a block a piece, if worth it
        tasks += [functools.partial(orthogonalise, part, rows, cols) for part in cut]
    threads.run(tasks, total)
    return outs


def scale_by_muon(
    momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5, blocks: Sequence | None = None
) -> GradientTransformation:
    """Muon's direction for a tree of 2-D leaves (in, out): Nesterov momentum, then Newton–Schulz.

    ``blocks``: one entry per leaf (in leaf order), None to orthogonalise the leaf whole or
    ``(axis, widths)`` for a fused matrix. Chain it with :func:`add_decayed_weights` and
    :func:`scale_by_learning_rate`, as :func:`muon` does."""
    real(momentum, "momentum", 0, 1, high_open=True)
    integer(ns_steps, "ns_steps", 1)
    beta = float(momentum)

    def init(params):
        flat = tree.leaves(params)
        for i, p in enumerate(flat):
            if np.ndim(p) != 2:
                raise ValueError(f"scale_by_muon: leaf {i} has shape {np.shape(p)}; Muon updates 2-D matrices only")
        if blocks is not None and len(blocks) != len(flat):
            raise ValueError(f"scale_by_muon: {len(blocks)} block layouts for {len(flat)} leaves")
        return MuonState(tuple(tree.seal(np.zeros(np.shape(p), np.asarray(p).dtype)) for p in flat))

    def update(grads, state, params=None, **extra):
        if extra.get("donated") is None:  # (a donated step checked its state already)
            donation.check((grads, state), "the optimizer's update")
        flat, treedef = tree.flatten(grads)
        layouts = blocks if blocks is not None else [None] * len(flat)
        members = _ensemble_of(flat, state.momentum)
        momentum = state.momentum
        if members is not None:  # an ensemble's (lt.vmap) leaves: each a stack, the members first
            flat, momentum = ([np.moveaxis(x.value, x.bdim, 0) for x in xs] for xs in (flat, momentum))
        bufs, directions = [], []
        for g, buf in zip(flat, momentum):
            g = np.asarray(g, buf.dtype)
            dt = buf.dtype.type
            new = buf * dt(beta) + g * dt(1 - beta)
            directions.append(g * dt(1 - beta) + new * dt(beta) if nesterov else new)
            bufs.append(tree.seal(new))
        outs = _orthogonalised(directions, layouts, ns_steps)
        if members is not None:
            trace, bdim = members
            outs, bufs = ([BatchTracer(np.moveaxis(x, 0, bdim), bdim, trace) for x in xs] for xs in (outs, bufs))
        return tree.unflatten(treedef, outs), MuonState(tuple(bufs))

    return GradientTransformation(init, update)


def _ensemble_of(grads: list, momentum) -> tuple | None:
    """``(trace, axis)`` when the leaves are an ensemble's under ``lt.vmap`` (every gradient and
    momentum a stack batched along one axis by one vmap), None when none is traced. Each member's
    update is then computed on the stacks (Newton–Schulz takes leading axes), the same bits as alone."""
    leaves = [*grads, *momentum]
    traced = [x for x in leaves if isinstance(x, BatchTracer)]
    if not traced:
        return None
    first = traced[0]
    if len(traced) < len(leaves) or any(
        x.trace is not first.trace or x.bdim != first.bdim or not isinstance(x.value, np.ndarray) for x in traced
    ):
        raise TypeError(
            "scale_by_muon under lt.vmap needs every gradient and momentum batched along one axis by one vmap "
            "(an ensemble's stacked states); other transforms of Muon are not supported"
        )
    return first.trace, first.bdim


def _spec(model):
    return model.spec() if hasattr(model, "spec") else model


def muon_labels(model):
    """A tree shaped like ``model``'s params: ``"muon"`` for each 2-D leaf declared a hidden
    ``"weight"``, ``"adam"`` for the rest (tables, the head, norms, biases)."""
    return tree.map(lambda p: "muon" if p.role == "weight" and len(p.shape) == 2 else "adam", _spec(model))


def _layout(param) -> tuple[int, tuple[int, ...]] | None:
    """The blocks a fused matrix is orthogonalised in: its split's blocks (q | k | v), else whole."""
    split = param.split
    if split is None or len(split.units) == 1:
        return None
    return split.axis, tuple(units * split.unit for units in split.units)


def muon(
    learning_rate,
    *,
    model,
    adam_learning_rate,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    adam_weight_decay: float = 0.0,
) -> GradientTransformation:
    """Muon with rate ``learning_rate`` for ``model``'s hidden matrices, AdamW with
    ``adam_learning_rate`` for every other leaf; either rate a float or a schedule.

    The state is ``{"muon": (Muon's state, (), rate), "adam": AdamW's state}``;
    ``current_learning_rate`` reads Muon's rate."""
    spec = _spec(model)
    labels = muon_labels(spec)
    layouts = [_layout(p) for p, lab in zip(tree.leaves(spec), tree.leaves(labels)) if lab == "muon"]
    return partition(
        {
            "muon": chain(
                scale_by_muon(momentum, nesterov, ns_steps, layouts),
                add_decayed_weights(weight_decay),
                scale_by_learning_rate(learning_rate),
            ),
            "adam": adamw(adam_learning_rate, b1, b2, eps, adam_weight_decay),
        },
        labels,
    )
