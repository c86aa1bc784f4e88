"""Checking gradients: lt's VJPs against central finite differences along random directions.

For a function ``f`` and a random unit direction ``v`` (over every floating-point leaf of
the checked arguments), the directional derivative ``(f(x + εv) - f(x - εv)) / 2ε`` must
equal ``<∇f(x), v>``. Non-scalar outputs are first projected on a random cotangent ``u``:
``f → Σ u·f``, which checks the whole VJP. Run it in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from . import ops, random, tree
from .autodiff import value_and_grad
from .ops.primitive import value_of

__all__ = ["check_grads"]


def _is_float(x) -> bool:
    return isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating)


def _directions(rng, arg):
    """A random direction tree (zero on non-float leaves), scaled to unit norm overall."""
    flat, treedef = tree.flatten(arg)
    dirs = [
        random.normal(random.fold_in(rng, i), x.shape, x.dtype) if _is_float(x) else None for i, x in enumerate(flat)
    ]
    norm = np.sqrt(sum(float(np.sum(d * d)) for d in dirs if d is not None)) or 1.0
    return [None if d is None else d / norm for d in dirs], treedef


def _shift(arg, dirs, treedef, eps):
    flat = tree.leaves(arg)
    return tree.unflatten(treedef, [x if d is None else x + eps * d for x, d in zip(flat, dirs)])


def check_grads(
    fn: Callable,
    args: Sequence,
    argnums: int | Sequence[int] = 0,
    *,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    num_directions: int = 3,
    seed: int = 0,
) -> None:
    """Raise AssertionError unless ``fn``'s VJP matches finite differences at ``args``.

    ``args`` are the positional arguments; ``argnums`` picks those to check (their float
    leaves). Use float64 inputs: in float32 the finite differences themselves are noisy.
    """
    args = list(args)
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    rng = random.key(seed)
    out = np.asarray(value_of(fn(*args)))
    u = random.normal(random.fold_in(rng, "cotangent"), out.shape, out.dtype if _is_float(out) else np.float64)

    def scalar_fn(*a):
        y = fn(*a)
        return y if out.ndim == 0 else ops.sum(ops.mul(y, u))

    _, grads = value_and_grad(scalar_fn, argnums=nums)(*args)
    for d in range(num_directions):
        drng = random.fold_in(rng, d)
        plus, minus, predicted = list(args), list(args), 0.0
        for j, i in enumerate(nums):
            dirs, treedef = _directions(random.fold_in(drng, i), args[i])
            plus[i] = _shift(args[i], dirs, treedef, eps)
            minus[i] = _shift(args[i], dirs, treedef, -eps)
            predicted += sum(float(np.sum(g * v)) for g, v in zip(tree.leaves(grads[j]), dirs) if v is not None)
        numeric = (float(scalar_fn(*plus)) - float(scalar_fn(*minus))) / (2 * eps)
        if not abs(numeric - predicted) <= atol + rtol * max(abs(numeric), abs(predicted)):
            raise AssertionError(
                f"VJP disagrees with finite differences along direction {d}: "
                f"autodiff {predicted!r}, finite differences {numeric!r} "
                f"(relative error {abs(numeric - predicted) / max(abs(numeric), 1e-300):.3e})"
            )
