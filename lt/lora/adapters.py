"""Adapters as a params tree of their own: init, apply, loss, merge, for a float or quantized base.

Shapes: B batch, T sequence, V vocabulary, D hidden, r rank.

The base params are a constant tree; the adapters are a second, small tree (A and B of every
adapted matrix, under the same paths plus ``lora``: ``blocks.i.attn.qkv.lora.q.a``). Only the
adapters are ever differentiated, so gradients and optimizer state exist for them alone, and
swapping adapters is swapping trees: the base tree, float or quantized (QLoRA), is never copied
or changed. :class:`Adapted` is the model and the LoRA settings (no arrays); :meth:`Adapted.bind`
fixes a base and gives the model's interface in the adapters alone, which ``lt.train`` trains::

    tuned = lt.lora.adapt(model, rank=8, alpha=16, targets=("attn.q", "attn.v"))
    adapters = tuned.init(rng)                       # B = 0: the base model's logits, exactly
    loss, grads = lt.value_and_grad(tuned.loss, argnums=1)(base, adapters, ids, targets)
    merged = tuned.merge(base, adapters)             # W + (alpha / r) A B folded in
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from .. import quant, random, tree
from ..nn import GPT
from ..nn.module import check_params, init_params
from .config import LoRA
from .layer import WHOLE, LoraLinear, plan

__all__ = ["Adapted", "Bound", "adapt", "init", "merge", "combine", "adapted_linears"]

LORA = "lora"  # the key of an adapted Linear's adapters, beside its w and b


def combine(base, adapters):
    """One params tree for the adapted model: ``base`` with each ``lora`` entry of ``adapters``
    put beside its ``w``. Shares every leaf (nothing copied); works on traced trees too."""
    if isinstance(adapters, Mapping):
        if not isinstance(base, Mapping):
            raise ValueError(f"LoRA adapters: a mapping where the base params hold a {type(base).__name__}")
        out = dict(base)
        for name, sub in adapters.items():
            out[name] = sub if name == LORA else combine(base.get(name, {}), sub)
        return tree.FrozenDict(out)
    if isinstance(adapters, tuple) and isinstance(base, tuple) and len(base) == len(adapters):
        return tuple(combine(b, a) for b, a in zip(base, adapters))
    raise ValueError("LoRA adapters do not have the base params' structure (see Adapted.spec())")


def _only_lora(spec):
    """The ``lora`` entries of an adapted model's tree, with the paths that lead to them."""
    if isinstance(spec, Mapping):
        out = {k: (v if k == LORA else _only_lora(v)) for k, v in spec.items()}
        return {k: v for k, v in out.items() if v != {} and v != ()}
    if isinstance(spec, tuple):
        parts = tuple(_only_lora(v) for v in spec)
        return parts if any(p != {} for p in parts) else ()
    return {}


def adapted_linears(model: GPT) -> dict[str, LoraLinear]:
    """``{path of the Linear: its LoraLinear}`` of an adapted model (:func:`lt.lora.plan`), in
    params order: ``blocks.0.attn.qkv``, ``blocks.0.attn.proj``, ..."""
    block = model.block
    found = {}
    for i in range(model.num_layers):
        for owner_name in ("attn", "ffn"):
            owner = getattr(block, owner_name)
            for name in owner.spec():
                part = getattr(owner, name)
                if isinstance(part, LoraLinear):
                    found[f"blocks.{i}.{owner_name}.{name}"] = part
    return found


@attrs.frozen
class Adapted:
    """A model with LoRA adapters: ``model`` (the base ``lt.GPT``) and ``lora`` (its settings).
    Holds no arrays; the base params and the adapters are arguments of every method."""

    model: GPT = attrs.field(validator=attrs.validators.instance_of(GPT))
    lora: LoRA = attrs.field(validator=attrs.validators.instance_of(LoRA))

    def __attrs_post_init__(self):
        _ = self.gpt  # a target the model lacks raises here

    @functools.cached_property
    def gpt(self) -> GPT:
        """The adapted model (:func:`lt.lora.plan`): its params are ``combine(base, adapters)``."""
        return plan(self.model, self.lora)

    def spec(self):
        """The adapters' declarations: a tree of ``lt.nn.Param`` shaped like the adapters."""
        return _only_lora(self.gpt.spec())

    def num_params(self) -> int:
        return int(sum(int(np.prod(p.shape)) for p in tree.leaves(self.spec())))

    def init(self, rng: random.Key, dtype=np.float32):
        """Fresh adapters: A drawn from the key of its place in the model (the same numbers for
        the same paths, whatever else is adapted), B zeros."""
        return init_params(self.spec(), rng, dtype)

    def check_adapters(self, adapters) -> None:
        """Raise naming the first adapter path whose presence or shape differs from :meth:`spec`."""
        check_params(self, adapters, "LoRA adapters")

    def check_params(self, adapters) -> None:  # the model interface's name (lt.train, checkpoints)
        self.check_adapters(adapters)

    def params(self, base, adapters):
        """The adapted model's params (for ``self.gpt.apply``, ``generate``): the two trees joined."""
        self.check_adapters(adapters)
        return combine(base, adapters)

    def apply(self, base, adapters, ids, **options):
        """Logits (B, T, V) of the base with its adapters; options as ``GPT.apply``."""
        return self.gpt.apply(self.params(base, adapters), ids, **options)

    def loss(self, base, adapters, ids, targets=None, **options):
        """Mean cross-entropy as ``GPT.loss``; differentiate it with ``argnums=1`` (the adapters)."""
        return self.gpt.loss(self.params(base, adapters), ids, targets, **options)

    def merge(self, base, adapters):
        """``base`` with every adapted ``W`` replaced by ``W + (alpha / r) A B`` (each block's
        product in its columns), a new frozen tree in the base's float dtype; the rest shared.
        A quantized adapted ``W`` is dequantized first (the merged matrix is float)."""
        self.check_adapters(adapters)
        self.model.check_params(base)
        merged = base
        for path, layer in adapted_linears(self.gpt).items():
            lora = tree.get(adapters, f"{path}.{LORA}")
            w = tree.get(base, f"{path}.w")
            w = quant.dequantize_array(w) if quant.is_quantized(w) else np.asarray(w)
            delta = np.zeros(w.shape, np.float64)
            for name, lo, hi in layer.blocks:
                ab = lora if name == WHOLE else lora[name]
                delta[:, lo:hi] = np.asarray(ab["a"], np.float64) @ np.asarray(ab["b"], np.float64)
            merged = tree.set(merged, f"{path}.w", (w + layer.scale * delta).astype(w.dtype))
        return merged

    def bind(self, base) -> Bound:
        """The model as a function of its adapters alone, ``base`` fixed (for ``lt.train``)."""
        return Bound(self, base)


class Bound:
    """An :class:`Adapted` model with its base params fixed: the model interface (``loss``,
    ``apply``, ``check_params``, ``spec``, ``init``, ``num_params``) in the adapters alone, so
    ``lt.train``, ``lt.training.evaluate`` and ``lt.value_and_grad`` see a model whose params
    are the adapters. The base is held, never copied or changed."""

    def __init__(self, adapted: Adapted, base):
        adapted.model.check_params(base)
        self.adapted, self.base = adapted, base

    def spec(self):
        return self.adapted.spec()

    def num_params(self) -> int:
        return self.adapted.num_params()

    def init(self, rng: random.Key, dtype=np.float32):
        return self.adapted.init(rng, dtype)

    def check_params(self, adapters) -> None:
        self.adapted.check_adapters(adapters)

    def apply(self, adapters, ids, **options):
        return self.adapted.apply(self.base, adapters, ids, **options)

    def loss(self, adapters, ids, targets=None, **options):
        return self.adapted.loss(self.base, adapters, ids, targets, **options)


def adapt(model: GPT, lora: LoRA | None = None, **fields: Any) -> Adapted:
    """``model`` with LoRA adapters: ``lora``, or a :class:`LoRA` made of ``fields`` (rank,
    alpha, targets, dropout)."""
    if lora is not None and fields:
        raise TypeError(f"adapt: give a LoRA or its fields ({', '.join(fields)}), not both")
    return Adapted(model, LoRA(**fields) if lora is None else lora)


def init(model: GPT, rng: random.Key, *, dtype=np.float32, **fields: Any):
    """Fresh adapters for ``model`` (``fields``: rank=8, alpha=16, targets=..., dropout): ``B``
    is zero, so the adapted model computes exactly what the base does. The LoRA these fields
    make is ``lt.lora.LoRA(**fields)``: apply and merge with ``adapt(model, **fields)``."""
    return adapt(model, **fields).init(rng, dtype)


def merge(adapted: Adapted, params, adapters):
    """``params`` with the adapters folded in (:meth:`Adapted.merge`)."""
    return adapted.merge(params, adapters)
