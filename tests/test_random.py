"""lt.random: keys are values; streams are reproducible, independent and well distributed."""

import pathlib
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as st

from lt import random

ROOT = pathlib.Path(__file__).resolve().parents[1]


@given(st.integers(0, 2**64), st.integers(1, 8))
def test_split_i_is_fold_in_i_and_more_keys_keep_the_first(seed, n):
    rng = random.key(seed)
    keys = random.split(rng, n)
    assert keys == tuple(random.fold_in(rng, i) for i in range(n))
    assert random.split(rng, n + 3)[:n] == keys


@given(st.integers(0, 2**32), st.integers(0, 2**20), st.integers(0, 2**20))
def test_different_fold_in_data_give_different_streams(seed, a, b):
    rng = random.key(seed)
    if a != b:
        assert random.fold_in(rng, a) != random.fold_in(rng, b)
        assert not np.array_equal(random.bits(random.fold_in(rng, a), 4), random.bits(random.fold_in(rng, b), 4))


def test_string_and_int_data_are_separate_domains():
    rng = random.key(0)
    assert random.fold_in(rng, "0") != random.fold_in(rng, 0)
    assert random.fold_in(rng, "attn") == random.fold_in(rng, "attn")


def test_same_key_same_numbers_and_keys_are_values():
    rng = random.key(42)
    assert np.array_equal(random.normal(rng, (5,)), random.normal(rng, (5,)))
    assert random.key(42) == rng and hash(random.key(42)) == hash(rng)
    assert pickle.loads(pickle.dumps(rng)) == rng
    assert random.key(41) != rng


def test_numbers_are_bit_identical_in_a_fresh_process():
    code = ("import numpy as np; from lt import random as r; k = r.fold_in(r.key(7), 'x'); "
            "print(r.normal(k, (3,), np.float64).tobytes().hex(), r.uniform(k, (2,)).tobytes().hex(), k)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    k = random.fold_in(random.key(7), "x")
    here = f"{random.normal(k, (3,), np.float64).tobytes().hex()} {random.uniform(k, (2,)).tobytes().hex()} {k}"
    assert out.stdout.strip() == here


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_uniform_is_in_range_with_the_right_moments(dtype):
    u = random.uniform(random.key(1), (200_000,), dtype)
    assert u.dtype == dtype and u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    v = random.uniform(random.key(1), (1000,), dtype, minval=-2.0, maxval=3.0)
    assert v.min() >= -2.0 and v.max() < 3.0


def test_normal_moments_and_shape():
    z = random.normal(random.key(2), (400, 501), np.float64)
    assert z.shape == (400, 501)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs(np.mean(z ** 4) - 3) < 0.05            # Gaussian kurtosis


def test_bernoulli_rate():
    b = random.bernoulli(random.key(3), 0.3, (100_000,))
    assert b.dtype == bool and abs(b.mean() - 0.3) < 0.01
    assert not random.bernoulli(random.key(3), 0.0, (100,)).any()
    assert random.bernoulli(random.key(3), 1.0, (100,)).all()


def test_categorical_matches_softmax_frequencies():
    logits = np.log(np.array([0.1, 0.2, 0.3, 0.4]))
    draws = np.array([random.categorical(random.fold_in(random.key(4), i), logits) for i in range(4000)])
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert np.allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.025)
    batch = random.categorical(random.key(5), np.log(np.full((3, 5), 0.2)))
    assert batch.shape == (3,)


def test_masked_logits_are_never_drawn():
    logits = np.array([0.0, np.finfo(np.float32).min, 0.0, np.finfo(np.float32).min])
    draws = random.categorical(random.key(6), np.tile(logits, (5000, 1)))
    assert set(np.unique(draws)) == {0, 2}


def test_randint_and_permutation():
    r = random.randint(random.key(8), (10_000,), 3, 9)
    assert r.min() == 3 and r.max() == 8
    p = random.permutation(random.key(9), 50)
    assert sorted(p) == list(range(50))


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="seed"):
        random.key(1.5)
    with pytest.raises(TypeError, match="Key"):
        random.normal(0, (2,))
    with pytest.raises(ValueError, match="p must be"):
        random.bernoulli(random.key(0), 1.5, (2,))


def test_lt_never_touches_numpy_global_random_state():
    pattern = re.compile(r"np\.random\.(seed|rand|randn|randint|random|choice|shuffle|permutation|normal|"
                         r"uniform|default_rng|RandomState|Generator)\b")
    offenders = [f"{p}:{i}" for p in (ROOT / "lt").rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
