"""What follows from the parameter declarations alone: the layout's consumers that live in nn.

Every ``Param`` of a ``spec()`` says what its leaf is (``role``) and where tensor parallelism may
cut it (``split``); ``lt.tree.map(fn, params, model.spec())`` walks a params tree together with
its declarations. The tensor-parallel plan (``lt.parallel``) and the quantization plan
(``lt.quantize``) read the same declarations.
"""

from __future__ import annotations

from .. import tree

__all__ = ["decay_mask"]

# Roles whose leaves weight decay shrinks: the matrices and tables (nanoGPT's choice: embeddings
# decay too), never a norm's scale or a bias.
DECAYED_ROLES = ("weight", "head", "table", "positions")


def decay_mask(model):
    """A tree of bools shaped like ``model``'s params (``model`` a component, or its ``spec()``):
    True where AdamW should decay the leaf, from its declared role. For the built-in models it
    equals ``lt.optim.decay_mask`` (two or more dimensions), which needs no model."""
    spec = model.spec() if hasattr(model, "spec") else model
    return tree.map(lambda p: p.role in DECAYED_ROLES, spec)
