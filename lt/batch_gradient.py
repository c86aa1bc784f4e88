"""A training step's loss and gradient over a batch: micro-batches in turn, and a small model's
rows in pieces that lt's workers share.

The BLAS runs a small model's products (a hidden size of a few hundred) on two threads hardly
faster than on one, so a step's second core sat mostly idle. Cut in ``ROW_PIECES`` pieces of
rows, each piece's forward and backward runs on one thread (:func:`lt.threads.run`) and the
pieces' gradients are added, each weighted by its share of the counted tokens, in a fixed order.
Measured on a 2-core AMD EPYC, llama-mini at 16 x 128 tokens: the gradient in 132 ms a step
against 174 ms whole. A model whose gradient copies would pass ``PIECE_BYTES`` (gpt2's products
keep both threads busy, and each piece holds a whole gradient) stays whole.

The cut depends on the model and the shapes alone, never on how many workers there are: one
worker (a busy machine) takes the pieces in turn and gives the same bits. They are the uncut
batch's up to float rounding (the sums over rows are added in another order). Only a plain
:class:`lt.GPT` without dropout is cut: dropout's masks are drawn for the whole batch, and a
sharded model's collectives must run in one order on every rank.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from . import random, threads, tree
from ._checks import integer
from .autodiff import value_and_grad
from .nn import GPT

__all__ = ["ROW_PIECES", "PIECE_BYTES", "gradient_fn", "row_pieces", "count_tokens"]

ROW_PIECES = 2  # one a core of the 2-core machines lt is tuned on; fixed, so the bits are the machine's own
PIECE_BYTES = 64 << 20  # the most the pieces' gradients may take together (64 MiB: models to ~8 M parameters)


def row_pieces(model, params, rows: int, pieces: int | None = None) -> int:
    """How many pieces a batch of ``rows`` rows is cut into (at most one a row).

    ``pieces`` None (automatic): ``ROW_PIECES`` for a :class:`lt.GPT` without dropout whose
    ``params``' gradients fit ``PIECE_BYTES`` that many times, else 1. A number is taken as it is
    (1: the whole batch at once, the gradient of ``lt.value_and_grad(model.loss)`` to the bit);
    more than one needs an :class:`lt.GPT` (a sharded model's collectives run in one order)."""
    if pieces is not None:
        integer(pieces, "row_pieces", 1)
        if pieces > 1 and not isinstance(model, GPT):
            raise ValueError(
                f"row_pieces={pieces} needs an lt.GPT, got {type(model).__name__} (a sharded model's collectives "
                "must run in one order on every rank); use row_pieces=1"
            )
        return min(pieces, rows)
    auto = min(ROW_PIECES, rows)
    if auto == 1 or type(model) is not GPT or model.dropout:
        return 1
    return auto if auto * tree.nbytes(params) <= PIECE_BYTES else 1


def count_tokens(targets, ignore_index: int) -> int:
    """The target tokens a loss counts: those not ``ignore_index``."""
    return int(np.sum(np.asarray(targets) != ignore_index))


def _weighted_sum(parts: list, counts: list[int]) -> tuple[float, object]:
    """The mean loss and gradient over all counted tokens, from each part's mean loss and gradient
    weighted by its tokens, added in the parts' order."""
    total = max(sum(counts), 1)
    loss, grads = 0.0, None
    for (l_i, g_i), n in zip(parts, counts):
        w = n / total
        loss += float(l_i) * w
        grads = (
            tree.map(lambda g, w=w: g * g.dtype.type(w), g_i)
            if grads is None
            else tree.map(lambda a, g, w=w: a + g * g.dtype.type(w), grads, g_i)
        )
    return loss, grads


def gradient_fn(model, ignore_index: int = -100, pieces: int | None = None) -> Callable:
    """``grads_of(params, inputs, targets, rng) -> (loss, grads, tokens)``: the mean loss over the
    counted target tokens of (B, T) inputs, or of (k, B, T) micro-batches (in turn, each weighted
    by its tokens), and its gradient; a batch's rows in :func:`row_pieces` pieces (``pieces``:
    None for the automatic choice). With dropout, piece i draws from ``fold_in(rng, i)``."""
    if pieces is not None:
        row_pieces(model, None, 1, pieces)  # checked now, not at the first step
    loss_and_grad = value_and_grad(model.loss)

    def batch(params, x, y, rng) -> tuple[float, object, int]:
        n = row_pieces(model, params, len(x), pieces)
        if n == 1:
            loss, grads = loss_and_grad(params, x, y, rng=rng, ignore_index=ignore_index)
            return float(loss), grads, count_tokens(y, ignore_index)
        cuts = [slice(c[0], c[-1] + 1) for c in np.array_split(np.arange(len(x)), n)]
        parts: list = [None] * n

        def piece(i: int) -> None:
            key = random.fold_in(rng, i)  # its own dropout masks (the automatic cut has no dropout)
            parts[i] = loss_and_grad(params, x[cuts[i]], y[cuts[i]], rng=key, ignore_index=ignore_index)

        threads.run([functools.partial(piece, i) for i in range(n)])
        counts = [count_tokens(y[rows], ignore_index) for rows in cuts]
        return (*_weighted_sum(parts, counts), sum(counts))

    def grads_of(params, inputs, targets, rng):
        if np.ndim(inputs) == 2:
            return batch(params, np.asarray(inputs), np.asarray(targets), rng)
        micro = [batch(params, x, y, random.fold_in(rng, i)) for i, (x, y) in enumerate(zip(inputs, targets))]
        counts = [n for _, _, n in micro]
        return (*_weighted_sum([(l_i, g_i) for l_i, g_i, _ in micro], counts), sum(counts))

    return grads_of
