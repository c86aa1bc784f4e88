"""Cases for the rule tests (test_transform_rules.py): the basic primitives."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rule_case import RuleCase

from lt.parallel import Group

ONE_RANK = Group(None, 0, 1)  # a group of one process: every collective is the plain operation


def _shape(draw, min_dims=0, max_dims=3, max_side=3) -> tuple:
    return draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side))


def _normal(rng, shape) -> np.ndarray:
    return np.asarray(rng.standard_normal(shape))


def _away_from_zero(rng, shape, signed=True) -> np.ndarray:
    """Magnitudes in [0.5, 2]: a divisor or a logarithm's argument far from its singularity."""
    x = np.asarray(rng.uniform(0.5, 2.0, shape))
    return x * np.where(rng.random(shape) < 0.5, -1.0, 1.0) if signed else x


def _static(draw, a_sample, names_values: dict, defaults: dict | None = None):
    """A case for a primitive ``prim(a, *static)``: the static arguments given either by position
    (after ``a``; hypothesis picks) or as keyword options. ``names_values`` in signature order."""
    if draw(st.booleans(), label="static arguments by position"):
        values = tuple(names_values.values())
        return RuleCase(lambda rng: (a_sample(rng), *values), batched=(0,), diff=(0,))
    return RuleCase(lambda rng: (a_sample(rng),), options=dict(names_values), batched=(0,), diff=(0,))


# ----------------------------------------------------------------- elementwise


def _binary(divisor: bool = False):
    def make(draw):
        sa, sb = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3)).input_shapes
        if divisor:
            return RuleCase(lambda rng: (_normal(rng, sa), _away_from_zero(rng, sb)))
        return RuleCase(lambda rng: (_normal(rng, sa), _normal(rng, sb)))

    return make


def _unary(positive: bool = False):
    def make(draw):
        shape = _shape(draw)
        if positive:
            return RuleCase(lambda rng: (_away_from_zero(rng, shape, signed=False),))
        return RuleCase(lambda rng: (_normal(rng, shape),))

    return make


def _astype(draw):
    shape = _shape(draw)
    dtype = draw(st.sampled_from([np.float64, "float64", np.dtype(np.longdouble)]))
    return _static(draw, lambda rng: _normal(rng, shape), {"dtype": dtype})


# ----------------------------------------------------------------- products


def _matmul(draw):
    la, lb = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3)).input_shapes
    m, k, n = (draw(st.integers(1, 3)) for _ in range(3))
    return RuleCase(lambda rng: (_normal(rng, (*la, m, k)), _normal(rng, (*lb, k, n))))


def _linear(draw):
    lead = _shape(draw, max_dims=2)
    n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    if draw(st.booleans(), label="bias"):
        return RuleCase(lambda rng: (_normal(rng, (*lead, n_in)), _normal(rng, (n_in, n_out)), _normal(rng, n_out)))
    return RuleCase(lambda rng: (_normal(rng, (*lead, n_in)), _normal(rng, (n_in, n_out))))


# ----------------------------------------------------------------- shapes


def _reshape(draw):
    shape = _shape(draw, max_dims=3, max_side=4)
    factors = [f for side in shape for f in (2, 2) if side == 4] + [side for side in shape if side in (2, 3)]
    factors = draw(st.permutations(factors))
    cuts = sorted(draw(st.lists(st.integers(0, len(factors)), max_size=3)))
    target = [int(np.prod(factors[lo:hi])) for lo, hi in zip([0, *cuts], [*cuts, len(factors)])]
    target = draw(st.permutations(target + [1] * draw(st.integers(0, 1))))
    if target and draw(st.booleans(), label="a -1"):
        target[draw(st.integers(0, len(target) - 1))] = -1
    new = target[0] if len(target) == 1 and draw(st.booleans(), label="an int shape") else tuple(target)
    return _static(draw, lambda rng: _normal(rng, shape), {"shape": new})


def _transpose(draw):
    shape = _shape(draw, max_dims=4)
    axes = draw(st.none() | st.permutations(range(len(shape))).map(tuple))
    return _static(draw, lambda rng: _normal(rng, shape), {"axes": axes})


def _split(draw):
    shape = _shape(draw, min_dims=1, max_side=4)
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    n = shape[axis]
    if draw(st.booleans(), label="equal sections"):
        sections = draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))
    else:
        sections = sorted(draw(st.lists(st.integers(0, n), min_size=1, max_size=3)))
    return _static(draw, lambda rng: _normal(rng, shape), {"sections": sections, "axis": axis})


def _concat(draw):
    shape = _shape(draw, min_dims=1)
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    shapes = [shape[: axis % len(shape)] + (s,) + shape[axis % len(shape) + 1 :] for s in sizes]
    options = {"axis": axis} if axis or draw(st.booleans(), label="axis given") else {}
    return RuleCase(lambda rng: tuple(_normal(rng, s) for s in shapes), options=options)


def _index_item(draw, kind: str, size: int, adv: tuple):
    if kind == "int":
        return draw(st.integers(-size, size - 1))
    if kind == "slice":
        bound = st.none() | st.integers(-size - 1, size + 1)
        return slice(draw(bound), draw(bound), draw(st.sampled_from([None, 1, 2, -1, -2])))
    # an integer array broadcastable to the advanced indices' common shape ``adv``
    shape = tuple(1 if draw(st.booleans()) else s for s in adv[draw(st.integers(0, len(adv))) :])
    return draw(hnp.arrays(np.int64, shape, elements=st.integers(-size, size - 1)))


def _draw_index(draw, shape: tuple):
    """Any NumPy index of an array of ``shape``: integers, slices, None, an Ellipsis, ``True``,
    and either integer arrays (broadcasting together) or one boolean mask over 1 or 2 axes."""
    n, mode = len(shape), draw(st.sampled_from(["basic", "arrays", "arrays", "mask"]))
    adv = _shape(draw, max_dims=2)
    named = n - draw(st.integers(0, n), label="axes the index leaves unnamed")
    ellipsis = draw(st.booleans(), label="an Ellipsis")
    before = draw(st.integers(0, named)) if ellipsis else named  # axes named before the Ellipsis
    axes = [*range(before), *range(n - (named - before), n)]
    kinds = {"basic": ["int", "slice"], "arrays": ["array", "array", "int", "slice"], "mask": ["mask", "int", "slice"]}
    items, masked, k = [], False, 0
    while k < len(axes):
        if ellipsis and k == before:
            items.append(Ellipsis)
        ax, kind = axes[k], draw(st.sampled_from(kinds[mode]))
        if kind == "mask" and not masked:
            two = k + 1 < len(axes) and axes[k + 1] == ax + 1 and (not ellipsis or k + 1 != before)
            width = draw(st.integers(1, 2)) if two else 1
            items.append(draw(hnp.arrays(np.bool_, shape[ax : ax + width])))
            k, masked = k + width, True
            continue
        items.append(_index_item(draw, "int" if kind == "mask" else kind, shape[ax], adv))
        k += 1
    if ellipsis and before == len(axes):
        items.append(Ellipsis)
    for extra in draw(st.lists(st.sampled_from([None, True]), max_size=2), label="None and True"):
        items.insert(draw(st.integers(0, len(items))), extra)
    if len(items) == 1 and draw(st.booleans(), label="a bare index"):
        return items[0]
    return tuple(items)


def _index(draw):
    shape = _shape(draw, min_dims=draw(st.sampled_from([1, 2, 0])), max_dims=4, max_side=4)
    idx = _draw_index(draw, shape)
    return _static(draw, lambda rng: _normal(rng, shape), {"idx": idx})


# ----------------------------------------------------------------- reductions


def _reduction(draw):
    shape = _shape(draw)
    n = len(shape)
    axes = st.none()
    if n:
        axes |= st.integers(-n, n - 1) | st.lists(st.integers(0, n - 1), unique=True).map(
            lambda a: tuple(ax - n if ax % 2 else ax for ax in a)  # some negative
        )
    return _static(draw, lambda rng: _normal(rng, shape), {"axis": draw(axes), "keepdims": draw(st.booleans())})


# ----------------------------------------------------------------- collectives


def _collective(**options):
    def make(draw):
        shape = _shape(draw)
        return RuleCase(lambda rng: (_normal(rng, shape),), options={"group": ONE_RANK, **options})

    return make


def _parallel_cross_entropy(draw):
    lead = _shape(draw, max_dims=2)
    vocab = draw(st.integers(1, 4))
    ignore = draw(st.sampled_from([-100, -1, 0]))
    options = {"group": ONE_RANK, "vocab_size": vocab, "ignore_index": ignore}
    if lead and draw(st.booleans(), label="member axes"):
        options["batch_dims"] = draw(st.integers(1, len(lead)))

    def sample(rng):
        targets = rng.integers(0, vocab, lead)
        targets = np.where(rng.random(lead) < 0.3, ignore, targets)  # some ignored positions
        return 2 * _normal(rng, (*lead, vocab)), np.asarray(targets, np.int64)

    return RuleCase(sample, options=options, diff=(0,))


CASES: dict = {
    "lt.ops.basic.add": _binary(),
    "lt.ops.basic.sub": _binary(),
    "lt.ops.basic.mul": _binary(),
    "lt.ops.basic.div": _binary(divisor=True),
    "lt.ops.basic.neg": _unary(),
    "lt.ops.basic.exp": _unary(),
    "lt.ops.basic.log": _unary(positive=True),
    "lt.ops.basic.tanh": _unary(),
    "lt.ops.basic.astype": _astype,
    "lt.ops.basic.matmul": _matmul,
    "lt.ops.basic.linear": _linear,
    "lt.ops.basic.reshape": _reshape,
    "lt.ops.basic.transpose": _transpose,
    "lt.ops.basic.split": _split,
    "lt.ops.basic.concat": _concat,
    "lt.ops.basic.index": _index,
    "lt.ops.basic.sum": _reduction,
    "lt.ops.basic.mean": _reduction,
    "lt.parallel.collective.copy_to_group": _collective(),
    "lt.parallel.collective.copy_to_replicas": _collective(blocks=1),
    "lt.parallel.collective.reduce_from_group": _collective(),
    "lt.parallel.collective.parallel_cross_entropy": _parallel_cross_entropy,
}
