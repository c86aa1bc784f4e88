"""LoRA fine-tuning: low-rank adapters as a params tree of their own, in PEFT's format.

``lt.lora.LoRA`` holds the settings (rank, alpha, targets, dropout); ``adapt(model, ...)`` gives
an :class:`Adapted` model whose adapters are initialised, applied, differentiated and merged as
their own tree, over a float or quantized (``lt.quantize``) base that is never copied or changed.
``plan`` is how: the target Linears are swapped, from outside, for :class:`LoraLinear` through
``lt.nn.Parts``; the model's one forward runs unchanged. ``save_peft`` / ``load_peft`` write and
read PEFT's ``adapter_config.json`` + ``adapter_model.safetensors``. Runs of ``lt train --lora``
keep their adapters and a record of the base in ``adapters.safetensors`` (:mod:`lt.lora.store`).
"""

from __future__ import annotations

from .adapters import Adapted, Bound, adapt, adapted_linears, combine, init, merge
from .config import ALIASES, DEFAULT_TARGETS, TARGETS, LoRA
from .layer import LoraLinear, plan
from .peft import load_peft, save_peft

__all__ = [
    "LoRA",
    "TARGETS",
    "DEFAULT_TARGETS",
    "ALIASES",
    "Adapted",
    "Bound",
    "adapt",
    "init",
    "merge",
    "combine",
    "adapted_linears",
    "LoraLinear",
    "plan",
    "save_peft",
    "load_peft",
]
