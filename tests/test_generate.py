"""lt.generate: decoding against a no-cache reference, batches and padding, eos, streaming, errors."""

import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lt
from lt import generate as gen, random, tree

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = lt.GPT.preset("tiny")


def peaked(model, seed=0, scale=4.0, dtype=np.float64):
    """Params with every leaf perturbed and weights scaled up: confident, far-from-uniform logits,
    so that no two tokens are near a tie (float64 by default: token equality is then robust)."""
    params = model.init(random.key(seed), dtype)
    return tree.map(lambda x: scale * x + 0.1 * random.normal(random.fold_in(random.key(seed + 1), x.size),
                                                              x.shape, x.dtype), params)


P64 = peaked(TINY)


def reference(model, params, prompts, n, rng=None, eos_id=None, **sampling):
    """Generation the slow, obvious way: the whole context through GPT.apply at every step,
    row r drawing step s with the s-th uniform of fold_in(rng, r) (the documented rule)."""
    temperature = sampling.get("temperature", 1.0)
    rows = []
    for r, prompt in enumerate(prompts):
        ids = list(prompt)
        u = random.uniform(random.fold_in(rng, r), (n,), np.float64) if temperature > 0 else None
        for s in range(n):
            logits = model.apply(params, np.array(ids))[-1]
            if temperature == 0:
                tok = int(np.argmax(logits))
            else:
                cdf = np.cumsum(gen.distribution(logits, **sampling))
                tok = int(np.argmax(cdf > u[s] * cdf[-1]))
            ids.append(tok)
            if tok == eos_id:
                break
        rows.append(ids[len(prompt):])
    return rows


def new_tokens(out, T):
    """Each row's generated tokens (B, n) as lists, to compare with reference()."""
    return [[int(t) for t in row[T:]] for row in np.atleast_2d(out)]


# ------------------------------------------------------------- cache vs no cache

@pytest.mark.parametrize("sampling", [
    dict(temperature=0), dict(temperature=1.0), dict(temperature=0.7, top_k=20),
    dict(temperature=1.5, top_p=0.9), dict(temperature=0.9, top_k=30, top_p=0.8),
])
def test_cached_generation_gives_the_tokens_of_recomputing_the_context(sampling):
    prompt = random.randint(random.key(1), (6,), 0, TINY.vocab_size)
    out = gen.generate(TINY, P64, prompt, rng=random.key(3), max_new_tokens=12, **sampling)
    assert out.shape == (18,) and np.array_equal(out[:6], prompt)
    assert out[6:].tolist() == reference(TINY, P64, [prompt], 12, random.key(3), **sampling)[0]


def test_cached_logits_are_within_1e_5_of_the_full_forward_in_float32():
    params = peaked(TINY, seed=4, scale=2.0, dtype=np.float32)
    prompts = [random.randint(random.key(5), (7,), 0, 500), random.randint(random.key(6), (3,), 0, 500)]
    logits, cache = gen.prefill(TINY, params, prompts, capacity=9)      # grows past 9 below
    seqs = [list(p) for p in prompts]
    worst, scale = 0.0, 0.0
    for step in range(10):
        for b, seq in enumerate(seqs):
            full = TINY.apply(params, np.array(seq))[-1]
            worst, scale = max(worst, np.abs(logits[b] - full).max()), max(scale, np.abs(full).max())
        tok = np.argmax(logits, -1)
        for seq, t in zip(seqs, tok):
            seq.append(int(t))
        logits, cache = gen.extend(TINY, params, cache, tok)
    assert logits.dtype == np.float32 and scale > 1.0 and worst < 1e-5, (worst, scale)


def test_each_decode_step_runs_one_new_position_over_the_cached_context(monkeypatch):
    seen = []
    attention = lt.ops.dot_product_attention             # every attention call, either kernel

    def recording(q, k, v, *args, **kwargs):
        seen.append((q.shape[-2], k.shape[-2]))
        return attention(q, k, v, *args, **kwargs)
    monkeypatch.setattr(lt.ops, "dot_product_attention", recording)
    gen.generate(TINY, P64, np.arange(5), max_new_tokens=4, temperature=0)
    L = TINY.num_layers
    assert seen[:L] == [(5, 5)] * L                     # the prefill: the prompt in one pass
    assert seen[L:] == [(1, 5 + s) for s in range(1, 4) for _ in range(L)]   # then 1 query, O(context)


def test_cache_holds_each_layers_keys_and_values_of_the_context():
    ids = random.randint(random.key(8), (2, 6), 0, 500)
    _, cache = gen.prefill(TINY, P64, ids[:, :4])
    _, cache = gen.extend(TINY, P64, cache, ids[:, 4:])                  # two positions at once
    _, hidden = TINY.apply(P64, ids, return_hidden_states=True)
    block = TINY.block
    for i in range(TINY.num_layers):
        h = block.ln.apply(P64["blocks"][i]["ln1"], hidden[i])
        _, k, v = block.attn.project_qkv(P64["blocks"][i]["attn"], h, h, h)
        assert np.allclose(cache.keys[i], k, atol=1e-12) and np.allclose(cache.values[i], v, atol=1e-12)
    assert cache.length == 6 and np.array_equal(cache.next_positions, [6, 6]) and cache.mask.all()


def test_sinusoidal_positions_and_an_untied_head_decode_like_the_full_forward():
    model = lt.GPT.preset("tiny", positional="sinusoidal", tie_embeddings=False)
    params = peaked(model, seed=2)
    prompts = [np.array([5, 9, 2, 7]), np.array([11])]
    out = gen.generate(model, params, prompts, rng=random.key(4), max_new_tokens=8, temperature=0.9, top_k=25)
    assert new_tokens(out, 4) == reference(model, params, prompts, 8, random.key(4), temperature=0.9, top_k=25)


# ------------------------------------------------------------- the cache is a value

def test_cache_is_read_only_and_extending_never_changes_an_existing_cache():
    logits0, c0 = gen.prefill(TINY, P64, np.arange(4), capacity=16)
    for a in (*c0.keys, *c0.values, c0.mask, c0.next_positions):
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a[...] = 0
    snapshot = [k.copy() for k in c0.keys]
    la, ca = gen.extend(TINY, P64, c0, np.array([7]))
    lb, cb = gen.extend(TINY, P64, c0, np.array([9]))                    # a second branch from c0
    ka = [k.copy() for k in ca.keys]
    lc, cc = gen.extend(TINY, P64, ca, np.array([1]))                    # ca grows after cb exists
    assert all(np.array_equal(s, k) for s, k in zip(snapshot, c0.keys)) and c0.length == 4
    assert all(np.array_equal(s, k) for s, k in zip(ka, ca.keys))
    assert np.allclose(lb[0], TINY.apply(P64, np.array([0, 1, 2, 3, 9]))[-1], atol=1e-12)
    assert np.allclose(lc[0], TINY.apply(P64, np.array([0, 1, 2, 3, 7, 1]))[-1], atol=1e-12)
    assert np.allclose(logits0, TINY.apply(P64, np.arange(4))[-1], atol=1e-12)


def test_a_cache_pickles_and_extends_the_same_after():
    logits, cache = gen.prefill(TINY, P64, np.arange(5), capacity=8)
    again = pickle.loads(pickle.dumps(cache))
    assert all(np.array_equal(a, b) for a, b in zip(cache.keys + cache.values, again.keys + again.values))
    assert np.array_equal(gen.extend(TINY, P64, again, np.array([3]))[0], gen.extend(TINY, P64, cache, np.array([3]))[0])


def test_take_reorders_rows():
    ids = random.randint(random.key(2), (3, 5), 0, 500)
    _, cache = gen.prefill(TINY, P64, ids)
    swapped = cache.take([2, 0, 0])
    logits, _ = gen.extend(TINY, P64, swapped, np.array([4, 4, 5]))
    for b, (row, t) in enumerate([(2, 4), (0, 4), (0, 5)]):
        assert np.allclose(logits[b], TINY.apply(P64, np.append(ids[row], t))[-1], atol=1e-12)


# ------------------------------------------------------------- batches and padding

@settings(max_examples=12, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=4), st.integers(0, 2 ** 32),
       st.sampled_from([dict(temperature=0), dict(temperature=1.0, top_k=40), dict(temperature=0.8, top_p=0.9)]))
def test_padding_a_batch_changes_no_rows_output(lengths, seed, sampling):
    rng = random.key(seed)
    prompts = [random.randint(random.fold_in(rng, i), (n,), 0, 500) for i, n in enumerate(lengths)]
    out = gen.generate(TINY, P64, prompts, rng=rng, max_new_tokens=6, **sampling)
    T = max(lengths)
    assert out.shape == (len(lengths), T + 6)
    assert new_tokens(out, T) == reference(TINY, P64, prompts, 6, rng, **sampling)
    for r, p in enumerate(prompts):                     # row r beside other, longer prompts
        assert np.array_equal(out[r, T - len(p):T], p) and not out[r, :T - len(p)].any()
        others = [random.randint(random.fold_in(rng, 100 + i), (12 - i,), 0, 500) for i in range(r)]
        alone = gen.generate(TINY, P64, others + [p], rng=rng, max_new_tokens=6, **sampling)
        assert np.array_equal(alone[r, -6:], out[r, -6:])
    single = gen.generate(TINY, P64, prompts[0], rng=rng, max_new_tokens=6, **sampling)
    assert np.array_equal(single[-6:], out[0, -6:])     # a single prompt is row 0


def test_an_explicit_attention_mask_equals_ragged_lists():
    prompts = [np.array([5, 6, 7]), np.array([8])]
    ids = np.array([[5, 6, 7], [3, 3, 8]])              # the pad token is any valid id
    mask = np.array([[True, True, True], [False, False, True]])
    a = gen.generate(TINY, P64, ids, attention_mask=mask, rng=random.key(0), max_new_tokens=5)
    b = gen.generate(TINY, P64, prompts, rng=random.key(0), max_new_tokens=5)
    assert np.array_equal(a[:, 3:], b[:, 3:]) and np.array_equal(a[:, :3], ids)


def test_rows_stop_at_eos_independently():
    prompts = [np.array([1, 2, 3]), np.array([40, 41, 42])]
    free = gen.generate(TINY, P64, prompts, max_new_tokens=10, temperature=0)
    eos = int(free[0, 5])                               # row 0 emits it by step 2
    out = gen.generate(TINY, P64, prompts, max_new_tokens=10, temperature=0, eos_id=eos, pad_id=7)
    stops = []
    for r in range(2):
        steps = free[r, 3:].tolist()
        stops.append(steps.index(eos) + 1 if eos in steps else 10)
        assert out[r, 3:3 + stops[r]].tolist() == steps[:stops[r]] and np.all(out[r, 3 + stops[r]:] == 7)
    assert stops[0] <= 3 < stops[1]                     # row 1 goes on after row 0 has stopped


# ------------------------------------------------------------- streaming

def test_stream_yields_the_generated_tokens_step_by_step(monkeypatch):
    prompt = np.array([10, 11, 12])
    full = gen.generate(TINY, P64, prompt, rng=random.key(1), max_new_tokens=6, top_k=10)
    calls, forward = [], lt.GPT.forward

    def counted(self, params, ids, **options):                        # the model's one forward pass
        calls.append(ids.shape)
        return forward(self, params, ids, **options)
    monkeypatch.setattr(lt.GPT, "forward", counted)
    it = gen.stream(TINY, P64, prompt, rng=random.key(1), max_new_tokens=6, top_k=10)
    assert not calls                                                   # nothing computed before next()
    first = next(it)
    assert isinstance(first, int) and first == full[3] and len(calls) == 1   # the prefill, no step ahead
    assert [first, *it] == full[3:].tolist() and len(calls) == 6       # then one forward per new token
    assert calls == [(1, 3)] + [(1, 1)] * 5
    seen = []
    batch = gen.generate(TINY, P64, [prompt, prompt[:1]], rng=random.key(1), max_new_tokens=4,
                         callback=seen.append)
    assert np.array_equal(np.stack(seen, 1), batch[:, 3:])


def test_stream_ends_once_every_row_has_emitted_eos():
    free = gen.generate(TINY, P64, np.array([1, 2, 3]), max_new_tokens=8, temperature=0)
    eos = int(free[4])
    steps = list(gen.stream(TINY, P64, np.array([1, 2, 3]), max_new_tokens=8, temperature=0, eos_id=eos))
    assert steps[-1] == eos and len(steps) == free[3:].tolist().index(eos) + 1


# ------------------------------------------------------------- keys, purity, the model method

def test_same_key_same_tokens_in_a_fresh_process():
    code = ("import numpy as np, lt; m = lt.GPT.preset('tiny'); p = m.init(lt.random.key(0)); "
            "print(m.generate(p, np.arange(4), rng=lt.random.key(9), max_new_tokens=20, top_k=50, top_p=0.9).tolist())")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=ROOT).stdout.strip() for _ in range(2)}
    here = TINY.generate(TINY.init(random.key(0)), np.arange(4), rng=random.key(9), max_new_tokens=20,
                         top_k=50, top_p=0.9)
    assert runs == {str(here.tolist())}
    other = TINY.generate(TINY.init(random.key(0)), np.arange(4), rng=random.key(10), max_new_tokens=20)
    assert not np.array_equal(here, other)


def test_the_prompt_is_never_modified_and_the_method_delegates():
    prompt = np.array([[4, 5, 6], [7, 8, 9]])
    frozen = prompt.copy()
    frozen.flags.writeable = False
    out = TINY.generate(P64, frozen, rng=random.key(2), max_new_tokens=3)
    assert np.array_equal(prompt, frozen) and not np.shares_memory(out, frozen)
    assert np.array_equal(out, gen.generate(TINY, P64, prompt, rng=random.key(2), max_new_tokens=3))
    assert np.array_equal(TINY.generate(P64, prompt, max_new_tokens=0, temperature=0), prompt)


# ------------------------------------------------------------- errors

@pytest.mark.parametrize("prompt,options,name", [
    (np.array([], int), {}, "prompt_ids"),
    (np.zeros((2, 0), int), {}, "prompt_ids"),
    ([[1, 2], []], {}, "prompt_ids"),
    (np.arange(100), {"max_new_tokens": 29}, "max_new_tokens=29.*max_seq_len=128"),
    (np.arange(3), {"max_new_tokens": -1}, "max_new_tokens"),
    (np.arange(3), {"top_k": 0}, "top_k"),
    (np.arange(3), {"top_p": 0.0}, "top_p"),
    (np.arange(3), {"top_p": 1.01}, "top_p"),
    (np.arange(3), {"temperature": -1.0}, "temperature"),
    (np.arange(3), {"eos_id": 500}, "eos_id"),
    (np.arange(3), {"rng": None}, "rng"),
    (np.array([[1, 2], [3, 4]]), {"attention_mask": np.array([[True, False], [True, True]])}, "left padding"),
    (np.array([[1, 2], [3, 4]]), {"attention_mask": np.array([[True, True], [False, False]])}, "row 1 is empty"),
])
def test_bad_arguments_raise_value_errors_naming_them(prompt, options, name):
    kwargs = {"rng": random.key(0), "max_new_tokens": 4, **options}
    with pytest.raises(ValueError, match=name):
        gen.generate(TINY, P64, prompt, **kwargs)
    with pytest.raises(ValueError, match=name):
        gen.stream(TINY, P64, prompt, **kwargs)          # checked at the call, not at the first next()


def test_stream_window_matches_stream_inside_the_context_and_slides_past_it():
    model = lt.GPT.preset("tiny", max_seq_len=16)
    params = model.init(lt.random.key(0))
    prompt = np.arange(5, dtype=np.int64)
    key = lt.random.key(3)
    inside = list(lt.generate.stream_window(model, params, prompt, rng=key, max_new_tokens=11, temperature=1.0))
    assert inside == list(lt.generate.stream(model, params, prompt, rng=key, max_new_tokens=11, temperature=1.0))
    long = list(lt.generate.stream_window(model, params, prompt, max_new_tokens=40, temperature=0))
    assert len(long) == 40 and long[:11] == list(lt.generate.stream(model, params, prompt, max_new_tokens=11,
                                                                      temperature=0))
    # after the context fills, the last max_seq_len // 2 tokens become the new prompt
    context = (list(prompt) + long[:11])[-8:]
    again = list(lt.generate.stream(model, params, np.array(context), max_new_tokens=8, temperature=0))
    assert long[11:19] == again
