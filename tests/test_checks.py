"""lt._checks, the one home for argument checks, and the places that rely on it."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import lt
from lt import _checks, random


@given(st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.booleans(), st.none(), st.text(max_size=3)),
       st.integers(-5, 5), st.integers(0, 10))
def test_integer_accepts_exactly_the_ints_in_range(value, low, width):
    high = low + width
    ok = type(value) is int and low <= value < high
    if ok:
        assert _checks.integer(value, "n", low, high) == value
    else:
        with pytest.raises(ValueError, match=rf"n must be an integer in \[{low}, {high}\), got"):
            _checks.integer(value, "n", low, high)


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-100, 100), st.booleans()))
def test_real_refuses_bools_and_non_finite_values_and_honours_open_bounds(value):
    ok = not isinstance(value, bool) and np.isfinite(value) and 0.0 < value <= 1.0
    if ok:
        assert _checks.real(value, "p", 0.0, 1.0, low_open=True) == float(value)
    else:
        with pytest.raises(ValueError, match=r"p must be a finite number in \(0.0, 1.0\]"):
            _checks.real(value, "p", 0.0, 1.0, low_open=True)


def test_numpy_scalars_count_as_numbers_and_numpy_bools_do_not():
    assert _checks.integer(np.int32(3), "n", 0) == 3 and _checks.real(np.float32(0.5), "p", 0, 1) == 0.5
    for flag in (True, np.bool_(True)):
        with pytest.raises(ValueError):
            _checks.integer(flag, "n")


@given(st.lists(st.integers(-3, 12), min_size=1, max_size=20))
def test_index_array_names_the_first_value_out_of_range_and_where_it_is(values):
    bad = [i for i, v in enumerate(values) if not 0 <= v < 10]
    if not bad:
        assert np.array_equal(_checks.index_array(values, 10, "ids"), values)
        return
    first = bad[0]
    with pytest.raises(ValueError, match=rf"^ids: {values[first]} at position {first} is outside the vocabulary \[0, 10\)"):
        _checks.index_array(values, 10, "ids")


def test_index_array_refuses_float_arrays_with_a_type_error():
    with pytest.raises(TypeError, match="ids must be an integer array, got dtype float64"):
        _checks.index_array(np.array([1.0]), 10, "ids")


def test_a_loss_call_checks_ids_once_and_targets_once(monkeypatch):
    model = lt.GPT.preset("tiny")
    params = model.init(random.key(0))
    ids = random.randint(random.key(1), (2, 9), 0, model.vocab_size)
    checked = []
    real = _checks.index_array
    monkeypatch.setattr(_checks, "index_array",
                        lambda values, size, name, *a: checked.append(name.split(" ")[0]) or real(values, size, name, *a))
    model.loss(params, ids)
    assert checked == ["ids", "targets"]
    checked.clear()
    lt.value_and_grad(model.loss)(params, ids[:, :-1], ids[:, 1:])
    assert checked == ["ids", "targets"]


def test_fold_in_of_no_key_is_no_key():
    assert random.fold_in(None, "attn") is None and random.fold_in(None, 3) is None
    with pytest.raises(TypeError, match="Key"):
        random.fold_in(5, "attn")
