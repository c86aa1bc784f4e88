"""lt's differentiable primitives: each a NumPy forward with a hand-derived VJP beside it.

Model code is written once on these; outside ``lt.value_and_grad`` they are plain NumPy.
"""

from .fused_attention import attention, masked_fill_value, softmax
from .basic import (add, astype, concat, div, exp, index, linear, log, matmul, mean, mul,
                    neg, reshape, split, sub, sum, tanh, transpose, unbroadcast)
from .layers import dropout, embedding, gelu, layer_norm, relu, unembed
from .loss import cross_entropy
from .primitive import Primitive, Tape, Tracer, primitive, value_of

__all__ = [
    "add", "sub", "mul", "div", "neg", "exp", "log", "tanh", "astype", "matmul", "linear",
    "reshape", "transpose", "split", "concat", "index", "sum", "mean", "unbroadcast",
    "layer_norm", "gelu", "relu", "softmax", "attention", "embedding", "cross_entropy",
    "dropout", "unembed", "masked_fill_value", "Primitive", "Tape", "Tracer", "primitive", "value_of",
]
