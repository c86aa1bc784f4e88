"""The parts of Llama-family blocks that are not GPT-2's: RMS norm and the gated feed-forward.

Shapes: ... any leading axes, D hidden, F feed-forward. Hugging Face names in brackets.
"""

from __future__ import annotations

import functools

import attrs

from .. import ops
from .._checks import number, positive
from .layers import Linear
from .module import Module, Param

__all__ = ["RMSNorm", "GatedFeedForward"]


@attrs.frozen
class RMSNorm(Module):
    """``x / rms(x) * scale`` over the last axis, no mean and no bias (``LlamaRMSNorm``)."""

    dim: int = attrs.field(validator=positive)
    eps: float = attrs.field(default=1e-6, validator=number(0, low_open=True))

    def spec(self):
        return {"scale": Param((self.dim,), "ones")}                    # [weight]

    def apply(self, params, x, *, rng=None):
        """(..., dim) -> (..., dim)."""
        return ops.rms_norm(x, params["scale"], self.eps)


@attrs.frozen
class GatedFeedForward(Module):
    """``down(silu(gate(x)) * up(x))`` (SwiGLU), no biases: (..., D) -> (..., F) -> (..., D)."""

    dim: int = attrs.field(validator=positive)
    hidden_dim: int = attrs.field(validator=positive)
    out_init_std: float = 0.02

    @functools.cached_property
    def gate(self) -> Linear:
        return Linear(self.dim, self.hidden_dim, bias=False)             # [gate_proj]

    @functools.cached_property
    def up(self) -> Linear:
        return Linear(self.dim, self.hidden_dim, bias=False)             # [up_proj]

    @functools.cached_property
    def down(self) -> Linear:
        return Linear(self.hidden_dim, self.dim, bias=False, init_std=self.out_init_std)   # [down_proj]

    def spec(self):
        return {"gate": self.gate.spec(), "up": self.up.spec(), "down": self.down.spec()}

    def apply(self, params, x, *, rng=None):
        """(..., D) -> (..., D)."""
        h = ops.swiglu(self.gate.apply(params["gate"], x), self.up.apply(params["up"], x))   # (..., F)
        return self.down.apply(params["down"], h)
