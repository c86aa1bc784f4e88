"""Choosing the next token from logits: temperature, top-k, top-p, greedy, and the draw.

Shapes: B batch (any leading axes), V vocabulary, m candidates left after filtering.

The order is temperature first, then top-k, then top-p (on the probabilities of the
tokens top-k kept, renormalised), then a draw from what is left, renormalised:

- ``temperature=0`` is greedy: the most likely token, the lowest index among equals.
- top-k keeps exactly ``min(k, V)`` tokens: the most likely, ties broken by lower token
  index (never "every token at least as likely as the k-th", which lets ties through).
- top-p keeps the smallest set of most likely tokens whose probability reaches ``p``
  (same tie order); the most likely token is always kept, so the set is never empty.
  ``top_p=1`` keeps everything.

The draw is by inverse CDF from one float64 uniform ``u`` per row: the token is the
first, in token-index order, whose cumulative probability under :func:`distribution`
exceeds ``u``. A caller decides where each row's ``u`` comes from (``generate`` gives
each row its own key).
"""

from __future__ import annotations

import numpy as np

from .. import _checks, ops, random
from ..ops.softmax import exp_normalize_

__all__ = ["check_sampling", "check_logits", "distribution", "filter_logits", "sample", "greedy", "top_k_indices"]


def check_sampling(temperature, top_k, top_p) -> tuple[float, int | None, float | None]:
    """The sampling options as ``(float, int or None, float or None)``, or a ValueError naming the bad one."""
    temperature = _checks.real(temperature, "temperature", 0.0, hint=" (0 means greedy)")
    top_k = None if top_k is None else _checks.integer(top_k, "top_k", 1, hint=" or None")
    top_p = None if top_p is None else _checks.real(top_p, "top_p", 0.0, 1.0, low_open=True, hint=" or None")
    return temperature, top_k, top_p


def check_logits(logits: np.ndarray, step: int, who: str, rows: bool = True) -> None:
    """Raise FloatingPointError unless every logit of ``logits`` (B, V) is finite, naming ``who``
    (the decoder), the ``step`` and, with ``rows``, the first row that is not. A NaN would
    otherwise decode silently (argmax picks token 0) or break a filter; one check per step."""
    finite = np.isfinite(logits).all(axis=-1)  # (B,)
    if not finite.all():
        row = f" (row {int(np.argmin(finite))})" if rows else ""
        raise FloatingPointError(
            f"{who}: the model's logits are not finite (NaN/inf) at step {step}{row}; check the weights"
        )


def top_k_indices(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``min(k, V)`` largest entries of ``x`` (..., V), largest first, ties by lower index.

    (..., V) -> (..., k). Exactly k per row: the k-th largest value is found by a
    partition, entries above it are all kept, and of the entries equal to it only the
    lowest-indexed ones that fill the row up to k.
    """
    V = x.shape[-1]
    k = min(int(k), V)
    if k < V:
        kth = np.partition(x, V - k, axis=-1)[..., V - k, None]  # (..., 1) k-th largest value
        above, tied = x > kth, x == kth  # (..., V)
        room = k - above.sum(axis=-1, keepdims=True)  # ties still to take
        keep = above | (tied & (np.cumsum(tied, axis=-1) <= room))  # exactly k per row
        idx = np.nonzero(keep)[-1].reshape(x.shape[:-1] + (k,))  # (..., k), ascending index
    else:
        idx = np.broadcast_to(np.arange(V), x.shape)
    order = np.argsort(-np.take_along_axis(x, idx, -1), axis=-1, kind="stable")  # ties keep index order
    return np.take_along_axis(idx, order, -1)  # (..., k)


def _candidates(logits, temperature: float, top_k, top_p):
    """The filtered, renormalised distribution in compact form.

    Returns ``(idx, probs)``: token ids (..., m) in increasing order and their float64
    probabilities (..., m), zero for tokens top-p dropped; or ``(None, probs)`` (..., V)
    when nothing is filtered. ``temperature`` must be > 0.
    """
    x = np.asarray(logits, dtype=np.float64)  # (..., V)
    x = (x - x.max(axis=-1, keepdims=True)) / temperature  # <= 0: no overflow at tiny t
    if top_k is None and (top_p is None or top_p >= 1.0):
        exp_normalize_(x)  # x is a new array: in place
        return None, x
    idx = top_k_indices(x, x.shape[-1] if top_k is None else top_k)  # (..., m) most likely first
    probs = np.take_along_axis(x, idx, -1)  # (..., m), a new array; its max is 0
    exp_normalize_(probs)  # renormalised over top-k
    if top_p is not None and top_p < 1.0:
        before = np.cumsum(probs, axis=-1)  # mass of the tokens ahead
        before[..., 1:] = before[..., :-1].copy()
        before[..., 0] = 0.0
        probs *= before < top_p  # the first token always stays
        probs /= probs.sum(axis=-1, keepdims=True)
    by_index = np.argsort(idx, axis=-1)  # back to token order
    return np.take_along_axis(idx, by_index, -1), np.take_along_axis(probs, by_index, -1)


def distribution(
    logits, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> np.ndarray:
    """The distribution the next token is drawn from: float64 (..., V), each row summing to 1.

    Zero outside the tokens temperature, top-k and top-p leave; ``temperature=0`` gives
    the one-hot of the greedy token.
    """
    temperature, top_k, top_p = check_sampling(temperature, top_k, top_p)
    logits = np.asarray(logits)
    dense = np.zeros(logits.shape, np.float64)
    if temperature == 0.0:
        np.put_along_axis(dense, greedy(logits)[..., None], 1.0, -1)  # one-hot
        return dense
    idx, probs = _candidates(logits, temperature, top_k, top_p)
    if idx is None:
        return probs
    np.put_along_axis(dense, idx, probs, -1)
    return dense


def filter_logits(logits, *, top_k: int | None = None, top_p: float | None = None) -> np.ndarray:
    """``logits`` with the tokens top-k and top-p drop set to the dtype's most negative value.

    Same shape and dtype; top-p is computed on ``softmax(logits)`` (no temperature). Ready
    for ``lt.random.categorical``, which never draws such an entry.
    """
    _, top_k, top_p = check_sampling(1.0, top_k, top_p)
    logits = np.asarray(logits)
    if not np.issubdtype(logits.dtype, np.floating):
        raise TypeError(f"logits must be a float array, got dtype {logits.dtype}")
    keep = distribution(logits, top_k=top_k, top_p=top_p) > 0  # (..., V)
    return np.where(keep, logits, logits.dtype.type(ops.masked_fill_value(logits.dtype)))


def greedy(logits) -> np.ndarray:
    """The most likely token of each row (..., V) -> (...), the lowest index among equals."""
    return np.argmax(logits, axis=-1)


def _inverse_cdf(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Column drawn from each row of ``probs`` (..., m) by a uniform ``u`` (...) in [0, 1).

    The first column whose cumulative probability exceeds ``u`` times the row's total;
    a zero-probability column is never chosen (its cumulative value equals its left
    neighbour's), and rounding at the very top falls back to the last nonzero column.
    """
    cdf = np.cumsum(probs, axis=-1)  # (..., m)
    x = u * cdf[..., -1]  # (...)
    col = (cdf <= x[..., None]).sum(axis=-1)  # first cdf > x
    last = probs.shape[-1] - 1 - np.argmax(probs[..., ::-1] > 0, axis=-1)
    return np.minimum(col, last)


def draw(logits, u, temperature: float, top_k: int | None, top_p: float | None) -> np.ndarray:
    """Tokens (...) from ``logits`` (..., V) and uniforms ``u`` (...) in [0, 1) by inverse CDF
    (the module docstring's rule); the options already checked by :func:`check_sampling`."""
    if temperature == 0.0:
        return greedy(logits)
    idx, probs = _candidates(logits, temperature, top_k, top_p)
    col = _inverse_cdf(probs, np.asarray(u, np.float64))
    return col if idx is None else np.take_along_axis(idx, col[..., None], -1)[..., 0]


def sample(
    rng, logits, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> np.ndarray:
    """Tokens drawn from :func:`distribution` of ``logits`` (..., V) -> (...) int.

    Row ``i`` (in C order over the leading axes) uses the ``i``-th float64 of
    ``lt.random.uniform(rng, logits.shape[:-1], np.float64)``. ``rng`` may be None
    only for ``temperature=0``.
    """
    temperature, top_k, top_p = check_sampling(temperature, top_k, top_p)
    logits = np.asarray(logits)
    if temperature == 0.0:
        return greedy(logits)
    if rng is None:
        raise ValueError("rng is needed to sample with temperature > 0 (pass lt.random.key(seed)), got None")
    u = random.uniform(rng, logits.shape[:-1], np.float64)
    return draw(logits, u, temperature, top_k, top_p)
