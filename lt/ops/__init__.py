"""lt's differentiable primitives: each a NumPy forward with a hand-derived VJP beside it.

Model code is written once on these; outside ``lt.value_and_grad`` they are plain NumPy.

- ``basic``: broadcasting arithmetic, ``matmul``/``linear``, shapes, reductions.
- ``elementwise``: fused layer norm, GELU, ReLU, dropout.
- ``embedding``: the token-table gather and the tied LM head (``unembed``).
- ``softmax``: the one softmax kernel (also used by attention, the loss and sampling).
- ``attention``: fused scaled dot-product attention.  ``loss``: cross-entropy.
- ``blockwise``: the same attention tile by tile (no (T, S) matrix), and the one
  policy (``attention_kernel``) that ``dot_product_attention`` uses to pick a kernel.
- ``modern``: the parts of Llama-family decoders: RMS norm, rotary embedding, SwiGLU.
- ``collective``: tensor parallelism's communication (``f``/``g``) and vocabulary-parallel loss.
"""

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
from .collective import Group, copy_to_group, copy_to_replicas, parallel_cross_entropy, reduce_from_group
from .elementwise import dropout, gelu, layer_norm, relu
from .embedding import embedding, unembed
from .loss import cross_entropy
from .modern import rms_norm, rope, swiglu
from .primitive import Primitive, Tape, Tracer, primitive, value_of
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
    "Group",
    "copy_to_group",
    "copy_to_replicas",
    "reduce_from_group",
    "parallel_cross_entropy",
    "Primitive",
    "Tape",
    "Tracer",
    "primitive",
    "value_of",
]
