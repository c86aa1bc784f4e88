"""Autoregressive decoding with a KV cache: ``generate`` (whole sequences) and ``stream``.

Shapes: B batch, T prompt length (after left padding), n = max_new_tokens, V vocabulary.

Randomness: row ``r`` of a batch draws its step-``s`` token with the ``s``-th float64 of
``lt.random.uniform(fold_in(rng, r), (n,), np.float64)`` (by inverse CDF, see
``lt.generate.sampling``). So a row's tokens depend on its prompt, its row index and
``rng``, never on the other prompts in the batch or how much they pad it, and a single
prompt (T,) gives the tokens of row 0 of a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from .. import _checks, random
from .kv_cache import extend_prepared, prefill_prompts
from .prompts import Decoding, prepare_decoding
from .sampling import check_logits, check_sampling, draw

__all__ = ["generate", "stream", "stream_window"]


def _setup(model, params, prompt_ids, rng, temperature, top_k, top_p, **decoding) -> tuple[Decoding, tuple]:
    """Check every argument (a ValueError naming the bad one) and left-pad the prompts;
    ``decoding``: :func:`prepare_decoding`'s options."""
    sampling = check_sampling(temperature, top_k, top_p)
    if sampling[0] > 0 and not isinstance(rng, random.Key):
        raise ValueError(
            f"rng must be an lt.random.Key (lt.random.key(seed)) to sample with "
            f"temperature={sampling[0]}; got {rng!r} (temperature=0 is greedy and needs none)"
        )
    return prepare_decoding(model, params, prompt_ids, **decoding), sampling


def _uniforms(rng, B: int, n: int) -> np.ndarray | None:
    """(B, n) float64: row r's uniforms for steps 0..n-1, from its own key fold_in(rng, r)."""
    if rng is None or n == 0:
        return None
    return np.stack([random.uniform(random.fold_in(rng, r), (n,), np.float64) for r in range(B)])


def _tokens(model, params, run: Decoding, rng, sampling, who: str) -> Iterator[np.ndarray]:
    """The decode loop: yields each step's new tokens (B,), pad_id in rows already finished.
    Ids past ``run.vocab_limit`` are cut from the logits before sampling (never drawn); the
    logits kept must be finite (a FloatingPointError naming ``who`` and the step otherwise)."""
    prompts, n, eos_id, pad_id, limit = run
    if n == 0:
        return
    B, T = prompts.ids.shape
    u = _uniforms(rng, B, n) if sampling[0] > 0 else None
    logits, cache = prefill_prompts(model, params, prompts, T + n)  # (B, V); room for every step
    finished = np.zeros(B, bool)
    for step in range(n):  # a loop over generated steps
        logits = logits[:, :limit]  # (B, V) -> (B, limit): as if masked to -inf, before temperature
        check_logits(logits, step, who)
        tok = draw(logits, None if u is None else u[:, step], *sampling).astype(np.int64)  # (B,)
        if eos_id is not None:
            tok[finished] = pad_id
            finished |= tok == eos_id
        yield tok.copy()  # the caller's to keep
        if step == n - 1 or finished.all():
            return
        logits, cache = extend_prepared(model, params, cache, tok[:, None])  # one new position per row


def stream(
    model,
    params,
    prompt_ids,
    *,
    rng=None,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    attention_mask=None,
    vocab_limit: int | None = None,
) -> Iterator:
    """Generate lazily: an iterator over the new tokens, one step at a time (for streaming).

    Each step yields an ``int`` for a single prompt (T,) and a fresh int64 array (B,)
    for a batch, with ``pad_id`` in rows that have already emitted ``eos_id``. It stops
    after ``max_new_tokens`` steps or once every row has emitted ``eos_id``. Arguments
    are checked when ``stream`` is called; the prompt is prefilled at the first
    ``next`` and each later ``next`` computes one step. Options as in :func:`generate`.
    """
    run, sampling = _setup(
        model,
        params,
        prompt_ids,
        rng,
        temperature,
        top_k,
        top_p,
        max_new_tokens=max_new_tokens,
        eos_id=eos_id,
        pad_id=pad_id,
        attention_mask=attention_mask,
        vocab_limit=vocab_limit,
    )
    steps = _tokens(model, params, run, rng, sampling, "stream")
    return (int(tok[0]) for tok in steps) if run.prompts.single else steps


def generate(
    model,
    params,
    prompt_ids,
    *,
    rng=None,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    attention_mask=None,
    callback: Callable | None = None,
    vocab_limit: int | None = None,
) -> np.ndarray:
    """Continue each prompt by ``max_new_tokens`` tokens: the prompts followed by them.

    ``prompt_ids``: one prompt (T,); a batch (B, T), left-padded where ``attention_mask``
    (B, T) is False; or a list of prompts of different lengths (left-padded here with
    ``pad_id``). Returns a new int64 array (T + n,) or (B, T + n): the prompts as given
    (padded) then the new tokens; the prompt array itself is never modified.

    Sampling: ``temperature=0`` is greedy; otherwise logits / temperature, then top-k
    (exactly k, ties by index), then top-p (the smallest set reaching p), then a draw
    (see ``lt.generate.sampling``). ``rng`` (an ``lt.random.Key``) is needed for
    temperature > 0; each row draws from its own key ``fold_in(rng, row)``.

    ``eos_id``: a row stops once it emits it; its later positions hold ``pad_id``
    (default ``eos_id``, else 0), and decoding ends when every row has stopped.
    ``callback``, if given, receives each step's tokens as :func:`stream` yields them.

    ``vocab_limit``: only ids ``0 .. vocab_limit - 1`` are generated (a model whose table is
    padded past its tokenizer's, as Qwen2's are, passes the tokenizer's size); the others are
    masked out of the logits before temperature, top-k and top-p, so the draw is the one a
    model without them would make. Logits that are not finite (NaN/inf weights) raise a
    FloatingPointError naming the step and row.

    Prompt length + ``max_new_tokens`` must fit in ``model.max_seq_len`` (ValueError
    otherwise; there is no sliding window). Inference only: plain NumPy, a KV cache
    sized for the whole run, the prompt prefilled in one pass, then one position per step.
    """
    run, sampling = _setup(
        model,
        params,
        prompt_ids,
        rng,
        temperature,
        top_k,
        top_p,
        max_new_tokens=max_new_tokens,
        eos_id=eos_id,
        pad_id=pad_id,
        attention_mask=attention_mask,
        vocab_limit=vocab_limit,
    )
    prompts = run.prompts
    B, T = prompts.ids.shape
    out = np.full((B, T + run.max_new_tokens), run.pad_id, np.int64)
    out[:, :T] = prompts.ids
    for step, tok in enumerate(_tokens(model, params, run, rng, sampling, "generate")):
        out[:, T + step] = tok
        if callback is not None:
            callback(int(tok[0]) if prompts.single else tok)
    return out[0] if prompts.single else out


def stream_window(model, params, prompt_ids, *, rng=None, max_new_tokens: int, **options) -> Iterator[int]:
    """Stream any number of tokens after one prompt (T,), sliding a window over the context.

    Learned positions stop at ``max_seq_len``, so once the context is full the last
    ``max_seq_len // 2`` tokens are prefilled again as a new prompt and decoding goes on
    from there (chunk ``c`` draws from ``fold_in(rng, c)``). Tokens further back are
    forgotten. Options as in :func:`stream`; within the context it equals ``stream``.
    """
    ids = [int(t) for t in np.asarray(prompt_ids).reshape(-1)][-model.max_seq_len :]
    remaining = _checks.integer(max_new_tokens, "max_new_tokens", 0)
    chunk = 0
    while remaining:
        if len(ids) >= model.max_seq_len:
            ids = ids[-(model.max_seq_len // 2) :]
        n = min(remaining, model.max_seq_len - len(ids))
        key = rng if chunk == 0 else random.fold_in(rng, chunk)
        for tok in stream(model, params, np.asarray(ids, np.int64), rng=key, max_new_tokens=n, **options):
            ids.append(tok)
            remaining -= 1
            yield tok
        chunk += 1
