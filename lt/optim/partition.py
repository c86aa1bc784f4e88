"""One optimizer per group of leaves: ``partition`` (optax's ``multi_transform``), and the small
transforms an optimizer is chained from.

``partition({"muon": t1, "adam": t2}, labels)`` hands each transform the leaves labelled with its
name, as one flat tuple (in the params tree's leaf order), and puts the updates back in place.
The labels are a tree shaped like the params (or a function of the params giving one); a
model's declarations make them (``lt.nn.layout``), so no leaf is found by its name.
"""

from __future__ import annotations

from collections.abc import Mapping

from .. import tree
from .._checks import real
from .schedules import as_schedule
from .transforms import EmptyState, GradientTransformation, accepted_extra, schedule_init, schedule_step

__all__ = ["partition", "scale_by_learning_rate", "add_decayed_weights"]


def _labels_of(labels, params, names) -> list:
    """The label of every leaf of ``params``, in leaf order, each one of ``names``."""
    tree_of_labels = labels(params) if callable(labels) else labels
    flat, treedef = tree.flatten(tree_of_labels)
    if treedef != tree.structure(params):
        raise ValueError("partition: labels must be shaped like the params " + (tree.mismatch(params, labels) or ""))
    unknown = sorted({str(x) for x in flat} - set(names))
    if unknown:
        raise ValueError(f"partition: labels {unknown} name no transform; the transforms are {sorted(names)}")
    return flat


def partition(transforms: Mapping[str, GradientTransformation], labels) -> GradientTransformation:
    """Each leaf updated by the transform its label names: ``labels`` is a tree shaped like the
    params whose leaves are keys of ``transforms``, or a function of the params giving one.

    The state is a ``FrozenDict`` name -> that transform's state, over a tuple of its leaves.
    ``extra`` values (``grad_norm``, the norm of the *whole* gradient) go to every transform."""
    names = tuple(transforms)

    def split(flat_labels, values):
        return {name: tuple(v for v, lab in zip(values, flat_labels) if lab == name) for name in names}

    def init(params):
        flat_labels = _labels_of(labels, params, names)
        groups = split(flat_labels, tree.leaves(params))
        return tree.FrozenDict({name: transforms[name].init(groups[name]) for name in names})

    def update(grads, state, params=None, **extra):
        if params is None and callable(labels):
            raise ValueError("partition: labels given as a function need params in update")
        flat_g, treedef = tree.flatten(grads)
        flat_labels = _labels_of(labels, params if params is not None else grads, names)
        groups = split(flat_labels, flat_g)
        param_groups = split(flat_labels, tree.leaves(params)) if params is not None else dict.fromkeys(names)
        out, new_state = {}, {}
        for name in names:
            t = transforms[name]
            out[name], new_state[name] = t.update(
                groups[name], state[name], param_groups[name], **accepted_extra(t.update, extra)
            )
        cursor = dict.fromkeys(names, 0)
        updates = []
        for lab in flat_labels:
            updates.append(out[lab][cursor[lab]])
            cursor[lab] += 1
        return tree.unflatten(treedef, updates), tree.FrozenDict(new_state)

    return GradientTransformation(init, update)


def scale_by_learning_rate(learning_rate) -> GradientTransformation:
    """``u -> -lr * u``, with ``lr`` a float or a schedule of the update count (its state is a
    :class:`ScheduleState`, so ``current_learning_rate`` reads it)."""
    schedule = as_schedule(learning_rate)

    def update(grads, state, params=None, **extra):
        lr, sched = schedule_step(schedule, state)
        return tree.map(lambda g: g * g.dtype.type(-lr), grads), sched

    return GradientTransformation(lambda params: schedule_init(schedule), update)


def add_decayed_weights(weight_decay: float) -> GradientTransformation:
    """``u -> u + weight_decay * p``: decoupled weight decay, applied before the learning rate
    scales the update (so the step is ``-lr * (u + wd * p)``, AdamW's and Muon's rule)."""
    real(weight_decay, "weight_decay", 0)

    def update(grads, state, params=None, **extra):
        if not weight_decay:
            return grads, state
        if params is None:
            raise ValueError("add_decayed_weights needs params in update")
        return tree.map(lambda g, p: g + p * g.dtype.type(weight_decay), grads, params), state  # (traced leaves too)

    return GradientTransformation(lambda params: EmptyState(), update)
