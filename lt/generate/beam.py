"""Beam search: the most likely continuations, K hypotheses at a time.

Shapes: B prompts, K beams, V vocabulary (the ids below ``vocab_limit``), T prompt length,
n = max_new_tokens.

The score of a continuation y_1..y_m (m new tokens, an ``eos_id`` included) is
``sum_i log p(y_i | prompt, y_<i) / m ** length_penalty``: 0 ranks by total
log-probability (favouring short endings), 1 by mean log-probability per token.

Each step extends every live beam by every token (K·V candidates per prompt) and keeps
the K with the highest total log-probability (ties by beam, then token index). A kept
candidate that ends in ``eos_id`` is finished and leaves the beam; the others are the
next step's beams. At the end the finished hypotheses and the beams still alive
(length n) are ranked by score. So one beam is exactly greedy decoding, and with
K >= V ** n nothing is ever pruned: the result is the exhaustive search's.

All prompts and beams decode together as one (B·K)-row batch sharing a KV cache whose
rows are reordered after each step.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _checks
from ..ops import log_softmax
from .kv_cache import extend_prepared, prefill_prompts
from .prompts import prepare_decoding
from .sampling import check_logits, top_k_indices

__all__ = ["beam_search", "BeamResult"]


class BeamResult(NamedTuple):
    """The best hypotheses, best first.

    ``sequences``: int64 (K, T + n), or (B, K, T + n) for a batch: the prompt (padded as
    given) then the new tokens, ``pad_id`` after an ``eos_id``. ``scores``: float64 (K,)
    or (B, K), as defined in the module docstring; ``-inf`` where fewer than K
    hypotheses exist (the sequence there is all ``pad_id`` after the prompt).
    """

    sequences: np.ndarray
    scores: np.ndarray


def beam_search(
    model,
    params,
    prompt_ids,
    num_beams: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    eos_id: int | None = None,
    *,
    pad_id: int | None = None,
    attention_mask=None,
    vocab_limit: int | None = None,
) -> BeamResult:
    """The ``num_beams`` best continuations of each prompt by beam search, with their scores.

    ``prompt_ids`` is one prompt (T,), a batch (B, T) (left-padded where
    ``attention_mask`` is False) or a list of prompts of different lengths, as in
    :func:`lt.generate.generate`; ``pad_id`` defaults to ``eos_id``, else 0. Returns a
    :class:`BeamResult` ``(sequences, scores)``; see the module docstring for the score.

    ``vocab_limit``: only ids below it are candidates (the tokenizer's size for a model whose
    table is padded past it), as if the others' logits were -inf: the result is that of a model
    without them. Logits that are not finite (NaN/inf weights) raise a FloatingPointError
    naming the step.
    """
    K = _checks.integer(num_beams, "num_beams", 1)
    length_penalty = _checks.real(length_penalty, "length_penalty")
    prompts, n, eos_id, pad_id, V = prepare_decoding(
        model,
        params,
        prompt_ids,
        max_new_tokens=max_new_tokens,
        eos_id=eos_id,
        pad_id=pad_id,
        attention_mask=attention_mask,
        vocab_limit=vocab_limit,
    )  # V: the ids that may be generated (the vocabulary unless limited)
    B, T = prompts.ids.shape

    pool: list[list] = [[] for _ in range(B)]  # per prompt: (score, order, tokens)
    alive_tokens = np.zeros((B, K, 0), np.int64)  # (B, K, step)
    if n:
        logits, cache = prefill_prompts(model, params, prompts, T + n)
        logits = logits[:, :V]  # (B, V_model) -> (B, V)
        check_logits(logits, 0, "beam search", rows=False)
        logp = np.repeat(log_softmax(logits), K, axis=0)  # (B·K, V): every beam sees the prompt
        cache = cache.take(np.repeat(np.arange(B), K))  # (B·K) rows
        alive = np.full((B, K), -np.inf)
        alive[:, 0] = 0.0  # one live beam: no duplicates
        for step in range(n):  # a loop over generated steps
            cand = (alive[..., None] + logp.reshape(B, K, V)).reshape(B, K * V)  # total log-prob
            top = top_k_indices(cand, K)  # (B, K) best first
            total = np.take_along_axis(cand, top, -1)  # (B, K)
            beam, tok = top // V, top % V
            alive_tokens = np.concatenate(
                [np.take_along_axis(alive_tokens, beam[..., None], 1), tok[..., None]], axis=-1
            )  # (B, K, step + 1)
            ended = np.isfinite(total) & (tok == eos_id if eos_id is not None else False)
            for b, k in zip(*np.nonzero(ended)):  # only the hypotheses ending now
                pool[b].append((total[b, k] / (step + 1) ** length_penalty, len(pool[b]), alive_tokens[b, k]))
            alive = np.where(ended, -np.inf, total)
            if step == n - 1 or not np.isfinite(alive).any():
                break
            rows = (np.arange(B)[:, None] * K + beam).reshape(-1)  # (B·K) parent row of each beam
            logits, cache = extend_prepared(model, params, cache.take(rows), tok.reshape(-1, 1))
            logits = logits[:, :V]  # (B·K, V_model) -> (B·K, V)
            check_logits(logits, step + 1, "beam search", rows=False)
            logp = log_softmax(logits)  # (B·K, V)
        for b, k in zip(*np.nonzero(np.isfinite(alive))):  # live beams of full length
            pool[b].append((alive[b, k] / n**length_penalty, len(pool[b]), alive_tokens[b, k]))
    else:
        for b in range(B):
            pool[b].append((0.0, 0, alive_tokens[b, 0]))  # the prompt alone

    sequences = np.full((B, K, T + n), pad_id, np.int64)
    sequences[:, :, :T] = prompts.ids[:, None]
    scores = np.full((B, K), -np.inf)
    for b in range(B):  # ranking, once per prompt
        for k, (score, _, toks) in enumerate(sorted(pool[b], key=lambda h: (-h[0], h[1]))[:K]):
            sequences[b, k, T : T + len(toks)], scores[b, k] = toks, score
    return BeamResult(sequences[0], scores[0]) if prompts.single else BeamResult(sequences, scores)
