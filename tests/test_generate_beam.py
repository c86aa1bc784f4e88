"""lt.generate.beam_search: exhaustive search on a tiny vocabulary, greedy with one beam, scores."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lt
from lt import generate as gen, random, tree

TINY = lt.GPT.preset("tiny")
FOUR = lt.GPT(vocab_size=4, max_seq_len=16, num_layers=2, num_heads=2, hidden_dim=8, ffn_dim=16)


def peaked(model, seed, scale=4.0):
    params = model.init(random.key(seed), np.float64)
    return tree.map(lambda x: scale * x + 0.1 * random.normal(random.fold_in(random.key(seed + 1), x.size),
                                                              x.shape, x.dtype), params)


def log_probs(model, params, prompt, cont):
    """Log-probability of each token of ``cont`` after ``prompt``, by one full forward pass."""
    ids = np.concatenate([prompt, cont]).astype(int)
    logits = model.apply(params, ids)[len(prompt) - 1:-1]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    return logp[np.arange(len(cont)), cont]


def exhaustive(model, params, prompt, n, length_penalty, eos_id):
    """Every continuation (ending at its first eos, or after n tokens), scored and ranked."""
    hyps = set()
    for seq in itertools.product(range(model.vocab_size), repeat=n):
        cut = seq.index(eos_id) + 1 if eos_id in seq else n
        hyps.add(seq[:cut])
    scored = [(log_probs(model, params, prompt, np.array(h)).sum() / len(h) ** length_penalty, h) for h in hyps]
    return sorted(scored, key=lambda s: -s[0])


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2 ** 16), st.sampled_from([0.0, 0.5, 1.0, 2.0]), st.sampled_from([None, 0, 3]),
       st.integers(1, 4))
def test_enough_beams_equal_exhaustive_search(seed, length_penalty, eos_id, T):
    params = peaked(FOUR, seed, scale=2.0)
    prompt = random.randint(random.key(seed), (T,), 0, 4)
    n = 3
    ranked = exhaustive(FOUR, params, prompt, n, length_penalty, eos_id)
    seqs, scores = gen.beam_search(FOUR, params, prompt, 4 ** n, n, length_penalty, eos_id, pad_id=1)
    assert len(ranked) <= 4 ** n and np.all(np.isneginf(scores[len(ranked):]))
    assert np.allclose(scores[:len(ranked)], [s for s, _ in ranked], rtol=1e-10, atol=1e-12)
    for row, (_, h) in zip(seqs, ranked):
        assert np.array_equal(row[:T], prompt) and tuple(row[T:T + len(h)]) == h
        assert np.all(row[T + len(h):] == 1)                         # pad_id after eos


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2 ** 16), st.booleans())
def test_one_beam_is_greedy_decoding(seed, with_eos):
    params = peaked(TINY, seed)
    prompt = random.randint(random.key(seed), (5,), 0, 500)
    free = gen.generate(TINY, params, prompt, max_new_tokens=8, temperature=0)
    eos = int(free[7]) if with_eos else None              # greedy emits it at step 2 or before
    greedy = gen.generate(TINY, params, prompt, max_new_tokens=8, temperature=0, eos_id=eos)
    seqs, scores = gen.beam_search(TINY, params, prompt, 1, 8, eos_id=eos)
    assert seqs.shape == (1, 13) and np.array_equal(seqs[0], greedy)


def test_scores_are_the_length_normalised_log_probabilities_of_the_sequences():
    params = peaked(TINY, 3)
    prompt = np.array([9, 8, 7, 6])
    eos = int(gen.beam_search(TINY, params, prompt, 4, 3).sequences[1, 5])   # an eos that some beam hits
    seqs, scores = gen.beam_search(TINY, params, prompt, 4, 6, length_penalty=0.7, eos_id=eos)
    assert np.all(np.diff(scores) <= 0) and len({tuple(s) for s in seqs}) == 4      # best first, distinct
    lengths = []
    for row, score in zip(seqs, scores):
        cont = row[4:].tolist()
        cont = cont[:cont.index(eos) + 1] if eos in cont else cont
        lengths.append(len(cont))
        assert np.isclose(score, log_probs(TINY, params, prompt, np.array(cont)).sum() / len(cont) ** 0.7,
                          rtol=1e-10)
    assert min(lengths) < 6                               # an eos-ended hypothesis competes


def test_a_batch_of_prompts_gives_each_prompts_own_beams():
    params = peaked(TINY, 5)
    prompts = [np.array([1, 2, 3, 4, 5]), np.array([6]), np.array([7, 8, 9])]
    seqs, scores = gen.beam_search(TINY, params, prompts, 3, 4, eos_id=2)
    assert seqs.shape == (3, 3, 9) and scores.shape == (3, 3)
    for b, p in enumerate(prompts):
        alone_seqs, alone_scores = gen.beam_search(TINY, params, p, 3, 4, eos_id=2)
        assert np.array_equal(seqs[b, :, 5:], alone_seqs[:, len(p):])
        assert np.allclose(scores[b], alone_scores, rtol=1e-10)


def test_no_new_tokens_returns_the_prompt():
    seqs, scores = gen.beam_search(TINY, peaked(TINY, 0), np.array([3, 4]), 2, 0)
    assert np.array_equal(seqs, [[3, 4], [3, 4]]) and scores[0] == 0 and np.isneginf(scores[1])


@pytest.mark.parametrize("args,kwargs,name", [
    ((0, 3), {}, "num_beams"), ((2, -1), {}, "max_new_tokens"), ((2, 3), {"eos_id": 500}, "eos_id"),
    ((2, 3), {"length_penalty": float("nan")}, "length_penalty"), ((2, 200), {}, "max_seq_len"),
])
def test_bad_arguments_are_named(args, kwargs, name):
    with pytest.raises(ValueError, match=name):
        gen.beam_search(TINY, TINY.init(random.key(0)), np.arange(3), *args, **kwargs)
    with pytest.raises(ValueError, match="prompt_ids"):
        gen.beam_search(TINY, TINY.init(random.key(0)), np.array([], int), 2, 3)
