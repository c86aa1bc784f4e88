"""What every component shares: a parameter spec, init from place-derived keys, validation.

A component is a frozen attrs class of hyperparameters. Its ``spec()`` is a tree of
:class:`Param` (shape and initialiser) with the exact structure of its params; ``init``
draws each leaf from the key ``fold_in(... fold_in(rng, path[0]) ..., path[-1])``, so a
parameter's initial value depends only on its place in the model, and a sub-component
initialised with the key of its place gets the same numbers as inside the whole model.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Mapping

import attrs
import numpy as np

from .. import random, tree

__all__ = ["Param", "Module", "init_params", "check_params", "PARAM_DTYPES"]

# The dtypes params may have: init makes them, apply and loss accept them (NumPy has no fast
# float16 matmul, and bfloat16 does not exist in it; loaders upcast).
PARAM_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@attrs.frozen
class Param:
    """A parameter's shape and how to initialise it: ``normal`` (with ``std``), ``zeros``, ``ones``."""

    shape: tuple[int, ...]
    init: str = "normal"
    std: float = 0.02

    def sample(self, rng: random.Key, dtype) -> np.ndarray:
        if self.init == "zeros":
            return np.zeros(self.shape, dtype)
        if self.init == "ones":
            return np.ones(self.shape, dtype)
        out = random.normal(rng, self.shape, dtype)
        out *= out.dtype.type(self.std)
        return out


def _init_node(spec, rng: random.Key, dtype):
    if isinstance(spec, Param):
        return tree._seal(spec.sample(rng, dtype))
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


# A memo of ``_fits`` for frozen trees, the one cache in lt.nn. It cannot change a result: a
# FrozenDict cannot be edited and its leaves are read-only, so a tree that fitted once fits for
# as long as it lives (weak values: the memo never keeps a tree alive). It skips re-walking
# the tree on every call: 63 us -> 1.4 us per check on the tiny preset, 7% of its forward pass
# (293 us on gpt2). Traced trees (inside lt.value_and_grad) are new objects and always walked.
_checked: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def check_params(component, params, owner: str) -> None:
    """Raise a ValueError naming the first path whose presence or shape differs from the
    component's ``spec()``; a params tree that fits costs one flatten."""
    if not isinstance(params, Mapping):
        raise TypeError(f"{owner} params must be a mapping (from {owner}.init), got {type(params).__name__}")
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
