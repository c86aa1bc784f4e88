"""What every component shares: a parameter spec, init from place-derived keys, validation.

A component is a frozen attrs class of hyperparameters. Its ``spec()`` is a tree of
:class:`Param` with the exact structure of its params: each declares its shape, its
initialiser, its *role* (what the leaf is) and where tensor parallelism may cut it
(:class:`Split`). That one declaration is the layout: shard plans, the quantization plan and
the weight-decay mask derive from it (``lt.tree.map`` over params and ``spec()`` together),
so no code outside a component finds its leaves by their names.

``init`` draws each leaf from the key ``fold_in(... fold_in(rng, path[0]) ..., path[-1])``, so
a parameter's initial value depends only on its place in the model, and a sub-component
initialised with the key of its place gets the same numbers as inside the whole model.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import numpy as np

from .. import donation, random, tree

__all__ = [
    "Param",
    "Split",
    "ROLES",
    "Module",
    "init_params",
    "check_params",
    "PARAM_DTYPES",
    "part",
    "Parts",
    "config",
]

# The dtypes params may have: init makes them, apply and loss accept them (NumPy has no fast
# float16 matmul, and bfloat16 does not exist in it; loaders upcast).
PARAM_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# What a leaf is. "weight": a hidden linear map stored (in, out), ``x @ w``; "head": the untied LM
# head, a linear map (in, out) to the vocabulary's logits (Muon leaves it to AdamW); "table": rows
# looked up by integer id (a token embedding, and the tied LM head ``h @ table.T``); "positions": a
# learned table looked up by position; "scale": a norm's per-feature gain; "bias": added to an output.
ROLES = ("weight", "head", "table", "positions", "scale", "bias")


@attrs.frozen
class Split:
    """Where tensor parallelism may cut a leaf: along ``axis``, which holds consecutive blocks
    of ``units[i]`` units of ``unit`` elements each. Each rank takes its share of every block's
    units (``lt.parallel``): a feed-forward's F hidden units are one block of F units; a fused
    q|k|v weight is three blocks of H, Hkv and Hkv heads of d columns each. With ``copies``, a
    block of fewer units than ranks (a divisor of them) is held whole by several ranks instead
    (a key/value head shared by P / Hkv ranks)."""

    axis: int
    units: tuple[int, ...]
    unit: int = 1
    copies: bool = False

    @property
    def size(self) -> int:
        """The length of the split axis: every block's units times the unit size."""
        return sum(self.units) * self.unit


@attrs.frozen
class Param:
    """A parameter's declaration: its shape; how to initialise it (``normal`` with ``std``,
    ``zeros``, ``ones``); its ``role`` (one of :data:`ROLES`); and ``split``, the axis tensor
    parallelism may cut (None: every rank holds it whole)."""

    shape: tuple[int, ...]
    init: str = "normal"
    std: float = 0.02
    role: str = attrs.field(default="weight", kw_only=True)
    split: Split | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"Param.role must be one of {ROLES}, got {self.role!r}")
        if self.split is not None and self.split.size != self.shape[self.split.axis]:
            raise ValueError(
                f"Param: split {self.split} covers {self.split.size} of axis {self.split.axis}, "
                f"which has {self.shape[self.split.axis]}"
            )

    def sample(self, rng: random.Key, dtype) -> np.ndarray:
        if self.init == "zeros" or self.std == 0:  # a normal of std 0 is exact zeros (not -0.0)
            return np.zeros(self.shape, dtype)
        if self.init == "ones":
            return np.ones(self.shape, dtype)
        out = random.normal(rng, self.shape, dtype)
        out *= out.dtype.type(self.std)
        return out


@attrs.frozen
class Parts:
    """Sub-components handed to a component in place of the ones it builds from its fields, by
    name: how a plan from outside (``lt.parallel``'s tensor-parallel wrappers) swaps a part
    without the component knowing. Empty for every model a user builds. A component with
    sub-components has the field ``parts: Parts = attrs.field(factory=Parts, kw_only=True,
    repr=False)`` and builds each with :func:`part`."""

    items: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, **parts) -> Parts:
        return cls(tuple(sorted(parts.items())))

    def get(self, name: str):
        return next((part for key, part in self.items if key == name), None)


def part(build: Callable) -> functools.cached_property:
    """Decorator for a sub-component built from the fields (once), unless ``parts`` hands one in."""
    name = build.__name__

    @functools.wraps(build)
    def get(self):
        given = self.parts.get(name)
        return build(self) if given is None else given

    return functools.cached_property(get)


def config(component) -> dict:
    """A component's hyperparameters as plain values (what checkpoints and run.json store): its
    fields, without the ``parts`` a plan handed in."""
    return attrs.asdict(component, filter=lambda field, _: field.name != "parts")


def _init_node(spec, rng: random.Key, dtype):
    if isinstance(spec, Param):
        return tree.seal(spec.sample(rng, dtype))
    if isinstance(spec, Mapping):
        return tree.FrozenDict({name: _init_node(sub, random.fold_in(rng, name), dtype) for name, sub in spec.items()})
    return tuple(_init_node(sub, random.fold_in(rng, i), dtype) for i, sub in enumerate(spec))


def init_params(spec, rng: random.Key, dtype=np.float32):
    """A frozen params tree for ``spec``; each leaf's key comes from its path."""
    if not isinstance(rng, random.Key):
        raise TypeError(f"init needs an lt.random.Key as rng, got {type(rng).__name__}")
    dtype = np.dtype(dtype)
    if dtype not in PARAM_DTYPES:
        raise TypeError(f"params dtype must be float32 or float64, got {dtype}")
    return _init_node(spec, rng, dtype)


def _spec_shapes(spec) -> dict[str, tuple]:
    flat, _ = tree.flatten(spec)
    return dict(zip(tree.paths(spec), (p.shape for p in flat)))


@functools.lru_cache(maxsize=64)
def layout(component) -> tuple[tree.TreeDef, tuple]:
    """(structure, leaf shapes) of a component's params, computed once per configuration."""
    flat, treedef = tree.flatten(component.spec())
    return treedef, tuple(p.shape for p in flat)


def _fits(component, params) -> bool:
    """The quick check: same structure, same shapes, float leaves (no paths built)."""
    flat, treedef = tree.flatten(params)
    want_def, want_shapes = layout(component)
    return treedef == want_def and all(
        getattr(x, "shape", None) == shape and getattr(x, "dtype", None) in PARAM_DTYPES
        for x, shape in zip(flat, want_shapes)
    )


# A memo of ``_fits`` for frozen trees (with ``layout``'s, lt.nn's caches). It cannot change a
# result: a FrozenDict cannot be edited and its leaves are read-only, so a tree that fitted once fits for
# as long as it lives (weak values: the memo never keeps a tree alive). It skips re-walking
# the tree on every call: 63 us -> 1.4 us per check on the tiny preset, 7% of its forward pass
# (293 us on gpt2). Traced trees (inside lt.value_and_grad) are new objects and always walked.
_checked: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def check_params(component, params, owner: str) -> None:
    """Raise a ValueError naming the first path whose presence or shape differs from the
    component's ``spec()``; a params tree that fits costs one flatten."""
    if not isinstance(params, Mapping):
        raise TypeError(f"{owner} params must be a mapping (from {owner}.init), got {type(params).__name__}")
    donation.check(params, f"{owner}.apply")
    key = (component, id(params))
    if _checked.get(key) is params:
        return
    if _fits(component, params):
        if type(params) is tree.FrozenDict:  # immutable: it fits for as long as it lives
            _checked[key] = params
        return
    expected = _spec_shapes(component.spec())
    found = dict(tree.items(params))
    for path, shape in expected.items():
        if path not in found:
            raise ValueError(f"{owner} params: missing {path} (expected shape {shape})")
        got = tuple(getattr(found[path], "shape", ()))
        if got != shape:
            raise ValueError(f"{owner} params: {path} has shape {got}, expected {shape}")
        dtype = getattr(found[path], "dtype", None)
        if dtype not in PARAM_DTYPES:
            raise TypeError(f"{owner} params: {path} must be a float32 or float64 array (as init makes), got {dtype}")
    extra = [p for p in found if p not in expected]
    if extra:
        raise ValueError(f"{owner} params: unexpected {extra[0]} (not part of this {owner})")


class Module:
    """Mixin for components: ``init`` and ``num_params`` from ``spec()``."""

    def spec(self):
        raise NotImplementedError

    def init(self, rng: random.Key, dtype=np.float32):
        """Fresh parameters, a frozen tree shaped like ``spec()``."""
        return init_params(self.spec(), rng, dtype)

    def num_params(self) -> int:
        """Number of scalar parameters (computed from shapes; nothing is allocated)."""
        return int(sum(int(np.prod(p.shape)) for p in tree.leaves(self.spec())))
