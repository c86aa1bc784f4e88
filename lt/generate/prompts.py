"""What decoding and beam search check and prepare before the first forward pass.

Shapes: B batch, T prompt length (after left padding), V vocabulary.

:func:`prepare_prompts` turns one prompt, a batch or a list of prompts of different
lengths into left-padded :class:`Prompts`; :func:`prepare_decoding` checks the options
every decoder shares (``max_new_tokens``, ``eos_id``, ``pad_id``, ``vocab_limit``, the params,
the length budget) and prepares the prompts, so ``generate``, ``stream`` and ``beam_search`` check
them in one place and word their errors alike.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _checks

__all__ = ["Prompts", "prepare_prompts", "Decoding", "prepare_decoding"]

_LIMIT_HINT = " (how many ids, from 0, may be generated: the tokenizer's size) or None"


class Prompts(NamedTuple):
    """A batch of left-padded prompts ready for prefill; every array is (B, T)."""

    ids: np.ndarray  # token ids; padding holds pad_id
    mask: np.ndarray  # True at real tokens
    positions: np.ndarray  # position ids: 0 at each row's first real token
    single: bool  # the caller gave one prompt (T,)


def _left_pad(rows, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of different lengths -> ids (B, T) padded on the left with pad_id, mask (B, T)."""
    rows = [np.asarray(r) for r in rows]
    for i, r in enumerate(rows):
        if r.ndim != 1 or (r.size and not np.issubdtype(r.dtype, np.integer)):
            raise TypeError(f"prompt_ids[{i}] must be a 1-D sequence of integer ids, got {r.dtype} of shape {r.shape}")
    T = max(len(r) for r in rows)
    ids = np.full((len(rows), T), pad_id, np.int64)
    mask = np.zeros((len(rows), T), bool)
    for i, r in enumerate(rows):  # once per prompt, before decoding
        if len(r):
            ids[i, T - len(r) :], mask[i, T - len(r) :] = r, True
    return ids, mask


def _check_mask(attention_mask, shape: tuple) -> np.ndarray:
    """A (B, T) bool mask of left padding: False before each row's prompt, True from its first token."""
    mask = np.asarray(attention_mask)
    if mask.dtype != bool:
        raise TypeError(f"attention_mask must be a bool array, got dtype {mask.dtype}")
    mask = mask[None] if mask.ndim == 1 else mask
    if mask.shape != shape:
        raise ValueError(f"attention_mask must have the shape of prompt_ids {shape}, got {np.shape(attention_mask)}")
    if np.any(mask[:, 1:] < mask[:, :-1]):
        raise ValueError(
            "attention_mask must mark left padding (False before a row's prompt, True "
            "from its first token on); a row has False after True"
        )
    return mask


def prepare_prompts(model, prompt_ids, attention_mask=None, pad_id: int = 0) -> Prompts:
    """Check and left-pad the prompts; a ValueError naming the argument when they do not fit.

    ``prompt_ids`` is one prompt (T,), a batch (B, T) (left-padded when ``attention_mask``
    (B, T) marks padding with False), or a list of 1-D prompts of any lengths, which is
    left-padded with ``pad_id``. The caller's arrays are never written to.
    """
    if (
        isinstance(prompt_ids, (list, tuple))
        and prompt_ids
        and all(np.ndim(r) == 1 for r in prompt_ids)
        and len({len(r) for r in prompt_ids}) > 1
    ):
        if attention_mask is not None:
            raise ValueError(
                "attention_mask must be None when prompt_ids is a list of prompts of "
                "different lengths (they are left-padded for you)"
            )
        ids, attention_mask = _left_pad(prompt_ids, pad_id)
    else:
        ids = np.asarray(prompt_ids)
        if ids.size == 0 and ids.dtype == np.float64:
            ids = ids.astype(np.int64)  # [] is an empty prompt, not a float array
    ids = model.check_ids(ids, "prompt_ids")
    single = ids.ndim == 1
    ids = ids[None] if single else ids  # (B, T), a view
    B, T = ids.shape
    if B == 0 or T == 0:
        raise ValueError(
            f"prompt_ids is empty (shape {ids.shape[1:] if single else ids.shape}); give at least one token per prompt"
        )
    mask = np.ones((B, T), bool) if attention_mask is None else _check_mask(attention_mask, (B, T))
    empty = ~mask[:, -1]  # left padding: a real row ends with True
    if empty.any():
        raise ValueError(
            f"prompt_ids row {int(np.argmax(empty))} is empty (no position is marked "
            "real); give at least one token per prompt"
        )
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)  # (B, T)
    return Prompts(ids, mask, positions, single)


class Decoding(NamedTuple):
    """The checked arguments every decoder shares."""

    prompts: Prompts
    max_new_tokens: int
    eos_id: int | None
    pad_id: int
    vocab_limit: int  # ids 0..vocab_limit-1 may be generated (the model's vocab_size unless limited)


def prepare_decoding(
    model, params, prompt_ids, *, max_new_tokens, eos_id=None, pad_id=None, attention_mask=None, vocab_limit=None
) -> Decoding:
    """Check the shared decoding arguments and left-pad the prompts (a ValueError naming the bad one).

    ``pad_id`` defaults to ``eos_id``, else 0. The longest prompt plus ``max_new_tokens``
    must fit in ``model.max_seq_len``. ``vocab_limit`` (default ``model.vocab_size``): only
    ids below it may be generated, so ``eos_id`` must be below it too.
    """
    V = model.vocab_size
    n = _checks.integer(max_new_tokens, "max_new_tokens", 0)
    limit = V if vocab_limit is None else _checks.integer(vocab_limit, "vocab_limit", 1, V + 1, _LIMIT_HINT)
    token = " (a token of the vocabulary)"
    eos_id = None if eos_id is None else _checks.integer(eos_id, "eos_id", 0, V, token)
    if eos_id is not None and eos_id >= limit:
        raise ValueError(f"eos_id {eos_id} is at or past vocab_limit={limit}: it could never be generated")
    pad_id = (0 if eos_id is None else eos_id) if pad_id is None else _checks.integer(pad_id, "pad_id", 0, V, token)
    model.check_params(params)
    prompts = prepare_prompts(model, prompt_ids, attention_mask, pad_id)
    longest = int(prompts.positions[:, -1].max()) + 1
    if longest + n > model.max_seq_len:
        raise ValueError(
            f"a prompt of {longest} tokens + max_new_tokens={n} is "
            f"{longest + n} positions, more than max_seq_len={model.max_seq_len}: "
            "shorten the prompt or lower max_new_tokens, or use lt.generate.stream_window "
            "(learned positions stop at max_seq_len)"
        )
    return Decoding(prompts, n, eos_id, pad_id, limit)
