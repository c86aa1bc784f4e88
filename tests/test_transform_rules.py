"""Every primitive's batching and JVP rules, walked from the registry.

For each rule, over hypothesis-drawn shapes and batch axes (float64):
- ``vmap(f)(xs)`` equals ``stack([f(x) for x in xs])``;
- ``jvp`` agrees with central finite differences;
- ``jvp`` agrees with the VJP: ``<v, J u> == <J^T v, u>``.
A primitive without a rule, or without a case here, fails :func:`test_every_primitive_has_rules`.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from rule_cases_basic import CASES as BASIC
from rule_cases_fused import CASES as FUSED

import lt
import lt.parallel  # noqa: F401  (its collective primitives join the registry)
from lt import ops
from lt.ops.primitive import registry
from lt.ops.traces import missing_rules

CASES = {**BASIC, **FUSED}
NAMES = sorted(CASES)
settings.register_profile("rules", deadline=None, max_examples=20)


def test_every_primitive_has_rules():
    assert missing_rules() == {}, "primitives without a rule (name: rules it lacks)"
    assert sorted(set(registry()) - set(CASES)) == [], "primitives without a case in tests/rule_cases_*.py"


def _is_array(x) -> bool:
    return isinstance(x, np.ndarray)


def _outputs(out) -> list:
    return list(out) if isinstance(out, tuple) else [out]


def _call(name, options):
    prim = registry()[name]
    return lambda *a: prim(*a, **options)


@pytest.mark.parametrize("name", NAMES)
@settings(settings.get_profile("rules"))
@given(data=st.data())
def test_batching_rule_equals_a_stack_of_members(name, data):
    case = CASES[name](data.draw)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    n = data.draw(st.integers(1, 3), label="members")
    members = [case.sample(rng) for _ in range(n)]
    first = members[0]
    eligible = [i for i, a in enumerate(first) if _is_array(a) and (case.batched is None or i in case.batched)]
    assert eligible, f"{name}: the case has no argument that may be batched"
    axes = [None] * len(first)
    for i in eligible:
        if data.draw(st.booleans(), label=f"batch argument {i}"):
            axes[i] = data.draw(st.integers(0, first[i].ndim), label=f"axis of argument {i}")
    if all(a is None for a in axes):
        axes[eligible[0]] = 0
    shared = [tuple(m[i] if axes[i] is not None else first[i] for i in range(len(first))) for m in members]
    args = [
        np.stack([m[i] for m in shared], axis=axes[i]) if axes[i] is not None else first[i] for i in range(len(first))
    ]
    fn = _call(name, case.options)
    got = _outputs(lt.vmap(fn, in_axes=tuple(axes))(*args))
    expected = [np.stack(outs) for outs in zip(*(_outputs(fn(*m)) for m in shared))]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12)


def _tangent_positions(case, args) -> list[int]:
    floats = [i for i, a in enumerate(args) if _is_array(a) and np.issubdtype(a.dtype, np.floating)]
    return floats if case.diff is None else [i for i in floats if i in case.diff]


def _flat(out) -> np.ndarray:
    return np.concatenate([np.ravel(o) for o in _outputs(out)])


@pytest.mark.parametrize("name", NAMES)
@settings(settings.get_profile("rules"))
@given(data=st.data())
def test_jvp_rule_agrees_with_finite_differences_and_the_vjp(name, data):
    case = CASES[name](data.draw)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    args = case.sample(rng)
    fn = _call(name, case.options)
    positions = _tangent_positions(case, args)
    assert positions, f"{name}: the case has no argument with a tangent"
    tangents = [rng.standard_normal(args[i].shape) if i in positions else None for i in range(len(args))]
    out, t_out = lt.jvp(fn, args, tangents)
    np.testing.assert_allclose(_flat(out), _flat(fn(*args)), rtol=1e-12, atol=1e-12)

    eps = 1e-6
    shifted = lambda s: [a + s * t if t is not None else a for a, t in zip(args, tangents)]  # noqa: E731
    numeric = (_flat(fn(*shifted(eps))) - _flat(fn(*shifted(-eps)))) / (2 * eps)
    scale = max(1.0, float(np.abs(numeric).max(initial=0.0)))
    np.testing.assert_allclose(_flat(t_out), numeric, rtol=case.tolerance, atol=case.tolerance * scale)

    flat_fn = lambda *a: ops.concat(*[ops.reshape(o, (-1,)) for o in _outputs(fn(*a))], axis=0)  # noqa: E731
    value, pullback = lt.vjp(flat_fn, *args)
    v = rng.standard_normal(value.shape)
    cts = pullback(v)
    lhs = float(np.dot(v, _flat(t_out)))
    rhs = sum(float(np.vdot(cts[i], tangents[i])) for i in positions)
    assert lhs == pytest.approx(rhs, rel=1e-9, abs=1e-9 * (1 + abs(lhs)))
