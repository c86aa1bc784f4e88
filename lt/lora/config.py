"""What a LoRA fine-tuning is: its rank, its alpha, the matrices it adapts, its dropout.

Shapes: D hidden, H heads of size d, Hkv key/value heads, F feed-forward, r the rank.

Targets name matrices of every block by their place in lt's params tree:

    target       matrix (lt path under blocks.i)   adapter(s)               PEFT module(s)
    attn.q       attn.qkv.w, columns [0, H d)       A (D, r), B (r, H d)     q_proj
    attn.k       attn.qkv.w, the key columns        A (D, r), B (r, Hkv d)   k_proj
    attn.v       attn.qkv.w, the value columns      A (D, r), B (r, Hkv d)   v_proj
    attn.qkv     attn.qkv.w, all of it              A (D, r), B (r, (H+2Hkv) d)  GPT-2's c_attn
    attn.proj    attn.proj.w (H d, D)               one                      o_proj, attn.c_proj
    ffn.<name>   ffn.<name>.w                       one                      gate/up/down_proj, c_fc, mlp.c_proj
    ffn          every matrix of the feed-forward

lt's fused q|k|v matrix thus takes one adapter per column block, and its update equals
PEFT's on separate ``q_proj``/``k_proj``/``v_proj``. PEFT's module names are accepted as
aliases (``q_proj`` -> ``attn.q``, ``c_attn`` -> ``attn.qkv``, ``c_proj`` -> both of GPT-2's),
as are ``attention`` (q, k, v, o) and ``all-linear`` (those and the feed-forward).
The default, ``attn.q`` and ``attn.v``, is PEFT's default for Llama, Qwen2 and Mistral.
"""

from __future__ import annotations

import attrs

from .._checks import number, positive, probability

__all__ = ["LoRA", "TARGETS", "DEFAULT_TARGETS", "ALIASES", "QKV_BLOCKS", "FFN_NAMES"]

QKV_BLOCKS = ("q", "k", "v")  # the column blocks of attn.qkv, in their order
FFN_NAMES = ("fc", "proj", "gate", "up", "down")  # GPT-2's MLP, Llama's gated one
TARGETS = ("attn.q", "attn.k", "attn.v", "attn.qkv", "attn.proj", "ffn") + tuple(f"ffn.{n}" for n in FFN_NAMES)
DEFAULT_TARGETS = ("attn.q", "attn.v")
ALIASES: dict[str, tuple[str, ...]] = {
    "q_proj": ("attn.q",),
    "k_proj": ("attn.k",),
    "v_proj": ("attn.v",),
    "o_proj": ("attn.proj",),
    "gate_proj": ("ffn.gate",),
    "up_proj": ("ffn.up",),
    "down_proj": ("ffn.down",),
    "c_attn": ("attn.qkv",),
    "c_fc": ("ffn.fc",),
    "c_proj": ("attn.proj", "ffn.proj"),  # GPT-2 names both output projections c_proj
    "attention": ("attn.q", "attn.k", "attn.v", "attn.proj"),
    "all-linear": ("attn.q", "attn.k", "attn.v", "attn.proj", "ffn"),
}


def _targets(value) -> tuple[str, ...]:
    """Targets as lt's names, aliases expanded, in :data:`TARGETS`' order; a comma-separated
    string is accepted (the command line's spelling)."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    names: set[str] = set()
    for name in value:
        if not isinstance(name, str) or (name not in TARGETS and name not in ALIASES):
            raise ValueError(
                f"LoRA.targets: unknown target {name!r}; choose from {', '.join(TARGETS)} "
                f"or PEFT's names {', '.join(ALIASES)}"
            )
        names.update(ALIASES.get(name, (name,)))
    if not names:
        raise ValueError("LoRA.targets: give at least one matrix to adapt")
    blocks = sorted(names & {"attn.q", "attn.k", "attn.v"})
    if "attn.qkv" in names and blocks:
        raise ValueError(
            f"LoRA.targets: attn.qkv adapts the whole fused q|k|v matrix, {', '.join(blocks)} a block of it: "
            "give one or the other"
        )
    if "ffn" in names:
        names = {n for n in names if not n.startswith("ffn.")}
    return tuple(t for t in TARGETS if t in names)


@attrs.frozen
class LoRA:
    """A LoRA fine-tuning's hyperparameters (Hu et al. 2021; PEFT's ``LoraConfig``).

    Each target matrix ``W`` computes ``x W + scale · dropout(x) A B`` with ``scale = alpha /
    rank``, ``A`` (in, rank) and ``B`` (rank, out), ``B`` starting at zero. ``dropout`` acts
    on the adapter's input only (PEFT's ``lora_dropout``), when a key is given."""

    rank: int = attrs.field(default=8, validator=positive)
    alpha: float = attrs.field(default=16.0, validator=number(0, low_open=True))
    targets: tuple[str, ...] = attrs.field(default=DEFAULT_TARGETS, converter=_targets)
    dropout: float = attrs.field(default=0.0, validator=probability)

    @property
    def scale(self) -> float:
        """``alpha / rank``: what the low-rank product is multiplied by."""
        return self.alpha / self.rank

    def adapts(self, target: str) -> bool:
        """Whether ``target`` (a name of :data:`TARGETS`) is adapted, ``ffn`` covering each ``ffn.<name>``."""
        return target in self.targets or (target.startswith("ffn.") and "ffn" in self.targets)
