"""The adapted layer and the adapted model: a Linear plus low-rank updates, swapped in from outside.

Shapes: ... any leading axes, I the layer's input width, O its output width, r the rank;
a block [lo, hi) is a range of the output's columns (one of q, k, v in the fused matrix).

:func:`plan` returns the same ``lt.GPT`` with the target Linears of its block replaced, through
``lt.nn.Parts``, by :class:`LoraLinear`: the model's one forward runs unchanged and no layer
knows it is adapted (the way ``lt.parallel`` swaps in its sharded layers). The adapted model's
params are the base params with a ``lora`` entry beside each adapted ``w``::

    blocks.i.attn.qkv.{w, b}         the base leaves, float or quantized, untouched
    blocks.i.attn.qkv.lora.q.{a, b}  A (D, r), B (r, H d): one adapter per column block
    blocks.i.ffn.down.lora.{a, b}    A (F, r), B (r, D): a whole matrix's adapter
"""

from __future__ import annotations

import math

import attrs
import numpy as np

from .. import ops, random
from .._checks import positive, probability
from ..nn import GPT, Linear, Parts
from ..nn.layers import dropout
from ..nn.module import Module, Param
from .config import FFN_NAMES, QKV_BLOCKS, LoRA

__all__ = ["LoraLinear", "plan", "WHOLE"]

WHOLE = ""  # the name of a block that is the whole matrix: its adapter is {a, b} itself


@attrs.frozen
class LoraLinear(Module):
    """``x W + b`` plus, for each block, ``scale · dropout(x) A B`` in that block's columns.

    ``blocks``: ``(name, lo, hi)`` column ranges of W, each with its adapter A (I, r),
    B (r, hi - lo); a single block named :data:`WHOLE` spanning all columns keeps its A, B at
    the top of the ``lora`` entry. ``W + A B`` is never formed: the update costs two thin
    matmuls, (..., I) -> (..., r) -> (..., hi - lo). Each block draws its own dropout mask
    (PEFT's q_proj and v_proj have a dropout each)."""

    linear: Linear
    rank: int = attrs.field(validator=positive)
    scale: float = 1.0
    dropout: float = attrs.field(default=0.0, validator=probability)
    blocks: tuple[tuple[str, int, int], ...] = ()

    def __attrs_post_init__(self):
        at = 0
        for name, lo, hi in self.blocks:
            if not at <= lo < hi <= self.linear.out_dim:
                raise ValueError(
                    f"LoraLinear: block {name!r} [{lo}, {hi}) is out of order or outside 0..{self.linear.out_dim}"
                )
            at = hi

    @property
    def whole(self) -> bool:
        return self.blocks == ((WHOLE, 0, self.linear.out_dim),)

    def adapter_spec(self):
        """The ``lora`` entry's declarations: A like PEFT's (its kaiming-uniform bound 1/√I is a
        standard deviation of 1/√(3 I)), B zeros, so an untrained adapter changes nothing."""

        def pair(width: int) -> dict:
            std = 1.0 / math.sqrt(3 * self.linear.in_dim)
            return {
                "a": Param((self.linear.in_dim, self.rank), "normal", std, role="weight"),
                "b": Param((self.rank, width), "zeros", role="weight"),
            }

        if self.whole:
            return pair(self.linear.out_dim)
        return {name: pair(hi - lo) for name, lo, hi in self.blocks}

    def spec(self):
        return {**self.linear.spec(), "lora": self.adapter_spec()}

    def apply(self, params, x, *, rng=None):
        """(..., I) -> (..., O): the base layer's output plus every block's low-rank update."""
        y = self.linear.apply(params, x)  # (..., O)
        lora = params["lora"]
        pieces, at = [], 0
        for name, lo, hi in self.blocks:
            ab = lora if name == WHOLE else lora[name]
            h = dropout(x, self.dropout, random.fold_in(rng, name or "lora"))  # (..., I)
            u = ops.linear(h, ab["a"])  # (..., r)
            u = u * u.dtype.type(self.scale)
            if lo > at:  # columns between blocks get no update
                pieces.append(np.zeros(u.shape[:-1] + (lo - at,), u.dtype))
            pieces.append(ops.linear(u, ab["b"]))  # (..., hi - lo)
            at = hi
        if at < self.linear.out_dim:
            pieces.append(np.zeros(y.shape[:-1] + (self.linear.out_dim - at,), y.dtype))
        return y + (pieces[0] if len(pieces) == 1 else ops.concat(*pieces, axis=-1))


def _adapted(linear: Linear, lora: LoRA, blocks=None) -> LoraLinear:
    blocks = ((WHOLE, 0, linear.out_dim),) if blocks is None else blocks
    return LoraLinear(linear, lora.rank, lora.scale, lora.dropout, tuple(blocks))


def _with_parts(component, **parts):
    """``component`` with ``parts`` swapped in, keeping any it was handed before."""
    return attrs.evolve(component, parts=Parts.of(**{**dict(component.parts.items), **parts}))


def qkv_blocks(attn, lora: LoRA) -> tuple[tuple[str, int, int], ...]:
    """The adapted column blocks of the fused q|k|v matrix: (name, lo, hi) of q, k, v (H d, Hkv d
    and Hkv d columns), or the whole matrix for ``attn.qkv``."""
    if lora.adapts("attn.qkv"):
        return ((WHOLE, 0, sum(attn.widths)),)
    edges = np.cumsum((0,) + attn.widths)
    return tuple(
        (name, int(edges[i]), int(edges[i + 1])) for i, name in enumerate(QKV_BLOCKS) if lora.adapts(f"attn.{name}")
    )


def plan(model: GPT, lora: LoRA) -> GPT:
    """``model`` with the matrices ``lora.targets`` names made :class:`LoraLinear` in every block.
    A feed-forward target the model lacks (``ffn.gate`` on GPT-2) is refused, naming what it has."""
    if not isinstance(model, GPT) or not isinstance(lora, LoRA):
        raise TypeError(f"plan needs an lt.GPT and an lt.lora.LoRA, got {type(model).__name__}, {type(lora).__name__}")
    block = model.block
    attn, ffn = block.attn, block.ffn
    has = tuple(ffn.spec())
    missing = [t for t in lora.targets if t.startswith("ffn.") and t[4:] not in has]
    if missing:
        raise ValueError(
            f"LoRA targets {', '.join(missing)}: this model's feed-forward has "
            f"{', '.join('ffn.' + n for n in has)} (GPT-2's is fc, proj; the Llama family's gate, up, down)"
        )
    attn_parts = {}
    if blocks := qkv_blocks(attn, lora):
        attn_parts["qkv"] = _adapted(attn.qkv, lora, blocks)
    if lora.adapts("attn.proj"):
        attn_parts["proj"] = _adapted(attn.proj, lora)
    ffn_parts = {n: _adapted(getattr(ffn, n), lora) for n in FFN_NAMES if n in has and lora.adapts(f"ffn.{n}")}
    parts = {}
    if attn_parts:
        parts["attn"] = _with_parts(attn, **attn_parts)
    if ffn_parts:
        parts["ffn"] = _with_parts(ffn, **ffn_parts)
    return _with_parts(model, block=_with_parts(block, **parts))
