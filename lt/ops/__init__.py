"""lt's differentiable primitives: each a NumPy forward with a hand-derived VJP beside it.

Model code is written once on these; outside ``lt.value_and_grad`` they are plain NumPy.

- ``basic``: broadcasting arithmetic, ``matmul``/``linear``, shapes, reductions.
- ``elementwise``: fused GELU, ReLU, dropout.
- ``norms``: layer norm (GPT-2) and RMS norm (Llama-family decoders).
- ``embedding``: the token-table gather and the tied LM head (``unembed``).
- ``softmax``: the primitive and the one in-place kernel of fused attention, the loss and sampling.
- ``attention``: fused scaled dot-product attention.  ``loss``: cross-entropy.
- ``basic_rules``, ``attention_rules``: the ``lt.vmap`` and ``lt.jvp`` rules of ``basic``'s primitives
  and of both attention kernels (the others keep theirs beside the primitive).
- ``traces``: the tracers of ``lt.vmap`` and ``lt.jvp``, and the helpers their rules use.
- ``blockwise``: the same attention tile by tile (no (T, S) matrix), and the one
  policy (``attention_kernel``) that ``dot_product_attention`` uses to pick a kernel.
- ``rotary``: the rotary position embedding (RoPE).  ``gated``: the SwiGLU gate.
- ``quantized``: products and gathers with int8/int4 leaves (``lt.quant``), a tile at a time.
- ``primitive``: what makes them differentiable (``primitive``, ``Tracer``, ``Tape``).
- ``kernels``: compiled kernels (numba, the ``fast`` extra) that primitives run where they cover a call;
  ``LT_KERNELS=numpy`` or ``kernels.use("numpy")`` runs the NumPy code, the reference.
"""

from . import attention_rules, basic_rules, kernels  # noqa: F401  (rules kept apart from their primitives)
from .attention import attention
from .basic import (
    add,
    astype,
    concat,
    div,
    exp,
    index,
    linear,
    log,
    matmul,
    mean,
    mul,
    neg,
    reshape,
    split,
    sub,
    sum,
    tanh,
    transpose,
    unbroadcast,
)
from .blockwise import attention_kernel, blockwise_attention, dot_product_attention
from .elementwise import dropout, gelu, relu, relu_squared, softcap
from .embedding import embedding, unembed
from .gated import swiglu
from .loss import cross_entropy
from .norms import layer_norm, rms_norm
from .primitive import Primitive, Tape, Tracer, primitive, value_of
from .rotary import rope
from .softmax import log_softmax, masked_fill_value, softmax

__all__ = [
    "add",
    "sub",
    "mul",
    "div",
    "neg",
    "exp",
    "log",
    "tanh",
    "astype",
    "matmul",
    "linear",
    "reshape",
    "transpose",
    "split",
    "concat",
    "index",
    "sum",
    "mean",
    "unbroadcast",
    "layer_norm",
    "gelu",
    "relu",
    "relu_squared",
    "softcap",
    "softmax",
    "log_softmax",
    "attention",
    "blockwise_attention",
    "attention_kernel",
    "dot_product_attention",
    "embedding",
    "cross_entropy",
    "dropout",
    "unembed",
    "rms_norm",
    "rope",
    "swiglu",
    "masked_fill_value",
    "Primitive",
    "Tape",
    "Tracer",
    "primitive",
    "value_of",
]
