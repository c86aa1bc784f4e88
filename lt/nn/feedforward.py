"""The position-wise feed-forwards of a block: GPT-2's MLP and Llama's gated (SwiGLU) one.

Shapes: ... any leading axes, D hidden (``dim``), F the inner width (``ffn_dim``). Hugging
Face's Llama names in brackets. The first matrices (D, F) may be cut by their columns and
the last (F, D) by its rows: F hidden units that tensor parallelism deals among ranks. Each
Linear is handed a key of its own (``fold_in(rng, name)``): a plain one ignores it, a part
swapped in from outside (``lt.lora``'s adapter dropout) may use it.
"""

from __future__ import annotations

import attrs

from .. import ops, random
from .._checks import one_of, positive, probability
from .layers import Linear, dropout
from .module import Module, Parts, Split, part

__all__ = ["FeedForward", "GatedFeedForward"]


# The feed-forward's activations: GPT-2's tanh GELU, ReLU, and ReLU² (the NanoGPT speedrun's).
_ACTIVATIONS = {"gelu": ops.gelu, "relu": ops.relu, "relu2": ops.relu_squared}


@attrs.frozen
class FeedForward(Module):
    """Position-wise MLP: ``proj(act(fc(x)))`` then dropout; act is GELU (tanh) or ReLU."""

    dim: int = attrs.field(validator=positive)
    ffn_dim: int = attrs.field(validator=positive)
    activation: str = attrs.field(default="gelu", validator=one_of("gelu", "relu", "relu2"))
    dropout: float = attrs.field(default=0.0, validator=probability)
    out_init_std: float = 0.02
    bias: bool = True
    parts: Parts = attrs.field(factory=Parts, kw_only=True, repr=False)

    @part
    def fc(self) -> Linear:
        return Linear(self.dim, self.ffn_dim, bias=self.bias, split=Split(1, (self.ffn_dim,)))

    @part
    def proj(self) -> Linear:
        split = Split(0, (self.ffn_dim,))
        return Linear(self.ffn_dim, self.dim, bias=self.bias, init_std=self.out_init_std, split=split)

    def spec(self):
        return {"fc": self.fc.spec(), "proj": self.proj.spec()}

    def apply(self, params, x, *, rng=None):
        """(..., D) -> (..., F) -> (..., D)."""
        h = self.fc.apply(params["fc"], x, rng=random.fold_in(rng, "fc"))  # (..., F)
        h = _ACTIVATIONS[self.activation](h)
        y = self.proj.apply(params["proj"], h, rng=random.fold_in(rng, "proj"))
        return dropout(y, self.dropout, rng)  # (..., D)


@attrs.frozen
class GatedFeedForward(Module):
    """``down(silu(gate(x)) * up(x))`` (SwiGLU), no biases, then dropout: (..., D) -> (..., F) -> (..., D)."""

    dim: int = attrs.field(validator=positive)
    ffn_dim: int = attrs.field(validator=positive)
    out_init_std: float = 0.02
    dropout: float = attrs.field(default=0.0, validator=probability)
    parts: Parts = attrs.field(factory=Parts, kw_only=True, repr=False)

    @part
    def gate(self) -> Linear:
        return Linear(self.dim, self.ffn_dim, bias=False, split=Split(1, (self.ffn_dim,)))  # [gate_proj]

    @part
    def up(self) -> Linear:
        return Linear(self.dim, self.ffn_dim, bias=False, split=Split(1, (self.ffn_dim,)))  # [up_proj]

    @part
    def down(self) -> Linear:
        split = Split(0, (self.ffn_dim,))
        return Linear(self.ffn_dim, self.dim, bias=False, init_std=self.out_init_std, split=split)  # [down_proj]

    def spec(self):
        return {"gate": self.gate.spec(), "up": self.up.spec(), "down": self.down.spec()}

    def apply(self, params, x, *, rng=None):
        """(..., D) -> (..., D)."""
        gate = self.gate.apply(params["gate"], x, rng=random.fold_in(rng, "gate"))
        h = ops.swiglu(gate, self.up.apply(params["up"], x, rng=random.fold_in(rng, "up")))  # (..., F)
        return dropout(self.down.apply(params["down"], h, rng=random.fold_in(rng, "down")), self.dropout, rng)
