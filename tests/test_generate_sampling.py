"""lt.generate sampling: top-k, top-p, temperature, greedy and the draw, against plain references."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lt
from lt import generate as gen, random

# Reference: tokens ranked most likely first, ties by lower index; written with Python's sort.


def ranked(x):
    return sorted(range(len(x)), key=lambda i: (-x[i], i))


def ranked_as_sampled(x, temperature):
    """The ranking sampling sees: logits shifted by their max, then divided by the temperature
    (values that differ only below float precision, like 0 and -1e-308, tie there)."""
    x = np.asarray(x, np.float64)
    return ranked((x - x.max()) / temperature)


def ref_distribution(logits, temperature=1.0, top_k=None, top_p=None):
    """The filtered, renormalised distribution, one row (V,), the plain way."""
    x = np.asarray(logits, np.float64) / temperature
    order = ranked_as_sampled(logits, temperature)[:top_k]
    p = np.exp(x[order] - x[order].max())
    p /= p.sum()
    if top_p is not None:
        reach = np.nonzero(np.cumsum(p) >= top_p)[0]
        m = reach[0] + 1 if len(reach) else len(p)    # the smallest prefix reaching top_p
        order, p = order[:m], p[:m] / p[:m].sum()
    out = np.zeros(len(x))
    out[order] = p
    return out


# Logits with ties: small integers, so top-k's tie rule and top-p's order are exercised.
tied_logits = st.integers(2, 12).flatmap(
    lambda V: st.lists(st.integers(-3, 3), min_size=V, max_size=V).map(lambda v: np.array(v, np.float64)))
any_logits = st.integers(2, 40).flatmap(
    lambda V: st.lists(st.floats(-20, 20), min_size=V, max_size=V).map(lambda v: np.array(v, np.float64)))


@settings(max_examples=150, deadline=None)
@given(st.one_of(tied_logits, any_logits), st.integers(1, 45))
def test_top_k_keeps_exactly_k_most_likely_ties_by_index(x, k):
    idx = gen.top_k_indices(x, k)
    assert list(idx) == ranked(x)[:k]                 # exactly min(k, V), most likely first
    batch = np.stack([x, x[::-1]])
    assert np.array_equal(gen.top_k_indices(batch, k), [ranked(x)[:k], ranked(x[::-1])[:k]])


@settings(max_examples=150, deadline=None)
@given(st.one_of(tied_logits, any_logits), st.one_of(st.none(), st.integers(1, 45)),
       st.floats(0.01, 1.0), st.sampled_from([0.3, 1.0, 2.5]))
def test_top_p_keeps_the_smallest_set_reaching_p_after_top_k(x, k, p, temperature):
    dist = gen.distribution(x, temperature=temperature, top_k=k, top_p=p)
    assert abs(dist.sum() - 1) < 1e-12 and np.all(dist >= 0)
    kept = np.nonzero(dist)[0]
    order = ranked_as_sampled(x, temperature)[:k]      # top-k first
    assert set(kept) <= set(order) and len(kept) >= 1  # never outside top-k, never empty
    assert list(order[:len(kept)]) == sorted(kept, key=lambda i: order.index(i))   # a prefix of the ranking
    within_k = ref_distribution(x, temperature, k)     # top-k renormalised, before top-p
    mass = within_k[kept].sum()
    least = within_k[order[len(kept) - 1]]
    assert mass >= p - 1e-12 and mass - least < p + 1e-12          # reaches p; one fewer does not
    assert np.allclose(dist, ref_distribution(x, temperature, k, p), atol=1e-12) or \
        abs(np.cumsum(within_k[order])[len(kept) - 1] - p) < 1e-12  # equal unless p sits on a boundary


@settings(max_examples=100, deadline=None)
@given(any_logits, st.sampled_from([0.5, 1.0, 3.0]))
def test_temperature_alone_is_softmax_of_logits_over_t(x, temperature):
    dist = gen.distribution(x, temperature=temperature)
    expected = np.exp(x / temperature - (x / temperature).max())
    assert np.allclose(dist, expected / expected.sum(), rtol=1e-12, atol=1e-300)
    assert np.allclose(gen.distribution(x, temperature=temperature, top_p=1.0), dist)


def test_temperature_zero_is_greedy_with_ties_to_the_lowest_index():
    x = np.array([[0.0, 2.0, 1.0, 2.0], [5.0, 5.0, 5.0, 5.0]], np.float32)
    assert np.array_equal(gen.sample(None, x, temperature=0), [1, 0])
    assert np.array_equal(gen.distribution(x, temperature=0, top_k=2, top_p=0.1), np.eye(4)[[1, 0]])
    tiny = gen.distribution(np.array([1.0, 2.0, 2.0 - 1e-9]), temperature=1e-300)   # no overflow to NaN
    assert np.array_equal(tiny, [0.0, 1.0, 0.0])


@settings(max_examples=40, deadline=None)
@given(st.one_of(tied_logits, any_logits), st.one_of(st.none(), st.integers(1, 6)),
       st.one_of(st.none(), st.floats(0.05, 1.0)), st.integers(0, 2 ** 32))
def test_samples_never_leave_the_top_k_or_the_nucleus(x, k, p, seed):
    tokens = gen.sample(random.key(seed), np.tile(x, (300, 1)), temperature=0.7, top_k=k, top_p=p)
    within_k = ref_distribution(x, 0.7, k)
    order = ranked_as_sampled(x, 0.7)[:k]
    for t in set(tokens.tolist()):
        assert t in order                                               # among the k most likely
        before = within_k[order[:order.index(t)]].sum()                 # mass of more likely tokens
        assert p is None or before < p + 1e-12                          # inside the nucleus


# 0.999 quantiles of the chi-square distribution by degrees of freedom (standard tables,
# e.g. NIST/SEMATECH e-Handbook 1.3.6.7.4). A correct sampler exceeds them with probability
# 0.001; the draws are fixed by the seed, so the test is deterministic, and the checks
# below show that plausible bugs land far beyond them.
CHI2_999 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458, 7: 24.322, 8: 26.124}


def chi_square(counts, probs):
    """Pearson's statistic over the support of ``probs``; counts outside it must be zero."""
    support = probs > 0
    assert counts[~support].sum() == 0
    expected = counts.sum() * probs[support]
    assert expected.min() >= 5                          # where the chi-square approximation holds
    return float(((counts[support] - expected) ** 2 / expected).sum()), int(support.sum()) - 1


LOGITS = np.array([2.0, 1.5, 1.4, 1.0, 0.5, 0.2, 0.0, -0.5, -1.0, -3.0], np.float32)


def test_frequencies_match_the_filtered_renormalised_distribution():
    N, options = 40_000, dict(temperature=0.8, top_k=5, top_p=0.85)
    tokens = gen.sample(random.key(2024), np.tile(LOGITS, (N, 1)), **options)
    counts = np.bincount(tokens, minlength=len(LOGITS))
    probs = ref_distribution(LOGITS, 0.8, 5, 0.85)
    assert (probs > 0).sum() == 4                       # top-p cuts inside top-k: both filters matter
    stat, df = chi_square(counts, probs)
    assert stat < CHI2_999[df], (stat, df)
    # The same counts reject plausible bugs: temperature ignored, the draw shifted by one
    # token, top-p applied before top-k (on the full softmax, which keeps a fifth token).
    nucleus_first = ref_distribution(LOGITS, 0.8, None, 0.85)
    nucleus_first[ranked(LOGITS)[5:]] = 0
    for q in (ref_distribution(LOGITS, 1.0, 5, 0.85), np.roll(probs, 1), nucleus_first / nucleus_first.sum()):
        cats = (q > 0) | (probs > 0)
        expected = N * np.maximum(q[cats], 1e-12)
        assert (((counts[cats] - expected) ** 2) / expected).sum() > 10 * CHI2_999[df]


def test_generate_draws_first_tokens_from_the_distribution_of_the_model():
    model = lt.GPT.preset("tiny", vocab_size=12)
    params = lt.tree.map(lambda w: 3 * w, model.init(random.key(0)))     # peaked, not uniform
    prompt = np.array([3, 1, 4])
    probs = ref_distribution(model.apply(params, prompt)[-1], 1.3, 5, 0.95)
    N = 3000
    out = gen.generate(model, params, np.tile(prompt, (N, 1)), rng=random.key(7), max_new_tokens=1,
                       temperature=1.3, top_k=5, top_p=0.95)
    stat, df = chi_square(np.bincount(out[:, -1], minlength=12), probs)
    assert df >= 2 and stat < CHI2_999[df], (stat, df)


def test_filter_logits_masks_with_the_most_negative_finite_value():
    x = np.array([[1.0, 3.0, 3.0, 2.0, -1.0]], np.float32)
    f = gen.filter_logits(x, top_k=2)
    fill = np.finfo(np.float32).min
    assert f.dtype == np.float32 and np.array_equal(f, [[fill, 3.0, 3.0, fill, fill]])
    g = gen.filter_logits(x.astype(np.float64), top_p=0.5)           # 3.0 at index 1 alone is 0.38
    assert np.array_equal(g > np.finfo(np.float64).min, [[False, True, True, False, False]])
    draws = random.categorical(random.key(0), np.tile(f, (500, 1)))
    assert set(draws.tolist()) == {1, 2}
    assert np.array_equal(x, [[1.0, 3.0, 3.0, 2.0, -1.0]])          # input untouched


def test_same_key_same_draws_and_rows_use_successive_uniforms():
    x = np.tile(LOGITS, (4, 1))
    a = gen.sample(random.key(1), x, top_k=8)
    assert np.array_equal(a, gen.sample(random.key(1), x, top_k=8))
    u = random.uniform(random.key(1), (4,), np.float64)
    cdf = np.cumsum(ref_distribution(LOGITS, 1.0, 8))
    assert np.array_equal(a, [int(np.argmax(cdf > v * cdf[-1])) for v in u])   # the documented rule


@pytest.mark.parametrize("options,name", [
    ({"temperature": -0.5}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"top_k": 0}, "top_k"), ({"top_k": -3}, "top_k"), ({"top_k": 2.5}, "top_k"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_p": -0.1}, "top_p"),
])
def test_bad_sampling_options_are_named(options, name):
    with pytest.raises(ValueError, match=name):
        gen.distribution(LOGITS, **options)
    with pytest.raises(ValueError, match=name):
        gen.sample(random.key(0), LOGITS, **options)


def test_sampling_needs_a_key_unless_greedy():
    with pytest.raises(ValueError, match="rng"):
        gen.sample(None, LOGITS, temperature=1.0)
