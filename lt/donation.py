"""Donated buffers (JAX's ``donate_argnums``): the one exception to immutable trees.

A caller that gives a tree up (``make_train_step(..., donate=True)`` gives up the state it is
called with) lets the step write the new values into the old tree's memory: AdamW's new moments
over the old ones, the new parameters over the old ones, the update over the gradient (which
the step made itself). Nothing else is ever written: a tree that was not donated stays
bit for bit as it was.

How it is done, and why so:

- :class:`Donation` holds the arrays of one update that may be overwritten. An array qualifies
  only when its memory is NumPy's own (not a file's, not someone's bytes), it covers that
  memory whole, and no other array of the donation shares it; anything else is left alone
  and the result goes to a new buffer, as without donation. A transform asks
  :meth:`Donation.buffer` for a writeable alias of a donated leaf: a second array over the
  same memory, made from the array that owns it (hidden under the leaf's view, writeable only
  for the moment of making the alias); the leaves themselves stay read-only.
- A donated tree must refuse any later use, but a ``TrainState`` is a named tuple and its
  leaves are shared NumPy arrays: none of them can carry a flag. So the donated *array
  objects* are recorded (:func:`retire`, weakly: the record dies with the array), the new
  tree holds new array objects (views of the same memory), and lt's entry points (the train
  step, the optimizers' ``update``, ``apply_updates``, checkpoint writes) call :func:`check`,
  which raises :class:`DonatedError` naming what happened. The check is one dictionary look-up
  per leaf, and nothing at all while no tree has been donated.

Reading a donated array directly with NumPy is not caught (NumPy has no hook for it): it
holds the new values. Keep the tree the step returned.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from . import tree

__all__ = ["DonatedError", "Donation", "check", "give_up", "retire", "renew", "shares"]


class DonatedError(RuntimeError):
    """A tree given up to a step (its buffers now hold the step's results) was used again."""


# id(array) -> (weak reference to it, why it is gone). Weak: a donated array that nobody holds
# any more drops out, so a training loop keeps this to one state's leaves.
_retired: dict[int, tuple[weakref.ref, str]] = {}


def _forget(key: int, ref: weakref.ref) -> None:
    entry = _retired.get(key)
    if entry is not None and entry[0] is ref:
        del _retired[key]


def arrays(value) -> list[np.ndarray]:
    """The array leaves of a tree, in no particular order: :func:`lt.tree.leaves`'s containers
    (mappings, tuples, lists, named tuples) walked without building the tree's structure, which
    costs ten times more (the tiny models' steps notice)."""
    found, stack = [], [value]
    while stack:
        x = stack.pop()
        kind = type(x)
        if kind is np.ndarray:
            found.append(x)
        elif kind is tree.FrozenDict or kind is dict:
            stack.extend(x.values())
        elif isinstance(x, (tuple, list)):
            stack.extend(x)
        elif isinstance(x, np.ndarray):
            found.append(x)
        elif isinstance(x, Mapping):
            stack.extend(x.values())
    return found


def retire(old, reason: str) -> None:
    """Record every array leaf of ``old`` as donated; :func:`check` then refuses them with ``reason``."""
    for a in arrays(old):
        key = id(a)
        _retired[key] = (weakref.ref(a, functools.partial(_forget, key)), reason)


def check(value, what: str) -> None:
    """Raise :class:`DonatedError` if any array leaf of ``value`` was donated; ``what`` names the
    call that was refused (e.g. ``"train_step"``)."""
    if not _retired:  # nothing was ever donated (or all of it is gone): free
        return
    for a in arrays(value):
        entry = _retired.get(id(a))
        if entry is not None and entry[0]() is a:
            raise DonatedError(f"{what}: {entry[1]}")


def renew(new, old):
    """``new`` with every array leaf that is also a leaf of ``old`` replaced by a view of it (the
    same memory, a new object), so that retiring ``old`` leaves ``new`` usable."""
    old_ids = {id(a) for a in arrays(old)}
    if not any(id(a) in old_ids for a in arrays(new)):
        return new  # the usual case: every leaf is a new object already
    flat, treedef = tree.flatten(new)
    return tree.unflatten(treedef, [a.view() if id(a) in old_ids else a for a in flat])


def give_up(old, reason: str, update: Callable[[Donation], Any], *internal):
    """``update(given)``'s result, with ``old`` (and the step's own ``internal`` trees, e.g. its
    gradient) donated to it: ``given`` is their :class:`Donation`; the result's leaves are new
    objects (:func:`renew`), and ``old`` is retired with ``reason``, even when ``update`` fails
    half-way (its buffers may then hold part of the new values)."""
    old_arrays = arrays(old)  # walked once
    done = False
    try:
        new = renew(update(Donation(*internal, old_arrays)), old_arrays)
        done = True
    finally:
        retire(old_arrays, reason + ("; use the state it returned" if done else ", which failed half-way through"))
    return new


def shares(new, old) -> bool:
    """Whether an array leaf of ``new`` holds memory of one of ``old``'s arrays."""
    owners = {id(_owner(a)) for a in arrays(old)}
    return any(id(_owner(a)) in owners for a in arrays(new))


def _owner(a: np.ndarray) -> np.ndarray:
    """The array at the bottom of ``a``'s chain of views."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class Donation:
    """The arrays of one step that may be overwritten: the leaves of ``trees`` whose memory is
    NumPy's own, whole and not shared with another leaf (see the module's notes)."""

    def __init__(self, *trees: Any):
        by_owner: dict[int, list[np.ndarray]] = {}
        for a in arrays(trees):
            if a.size:
                by_owner.setdefault(id(_owner(a)), []).append(a)
        self._arrays: dict[int, np.ndarray] = {}
        for sharing in by_owner.values():
            a = sharing[0]
            owner = _owner(a)
            # both C-contiguous, as many bytes: the whole of the owner's memory, in the owner's order
            whole = a.flags.c_contiguous and owner.flags.c_contiguous and a.nbytes == owner.nbytes
            if len(sharing) == 1 and owner.flags.owndata and whole:
                self._arrays[id(a)] = a

    def __contains__(self, a) -> bool:
        return self._arrays.get(id(a)) is a

    def buffer(self, a, dtype=None) -> np.ndarray | None:
        """A writeable array over donated ``a``'s memory (its shape), or None when ``a`` was not
        donated or is not of ``dtype``."""
        if a not in self or (dtype is not None and a.dtype != dtype):
            return None
        owner = _owner(a)
        sealed = not owner.flags.writeable
        owner.flags.writeable = True  # NumPy's own memory (checked): for the moment of making the alias
        alias = owner.view(a.dtype).reshape(a.shape) if owner.dtype != a.dtype else owner.reshape(a.shape)
        owner.flags.writeable = not sealed  # as it was; the alias stays writeable
        return alias if alias.base is owner else None  # (a view, never a copy)

    def __len__(self) -> int:
        return len(self._arrays)
