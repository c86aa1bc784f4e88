"""Quantized weight leaves (int8 and int4 codes with one scale per group, llama.cpp's Q8_0 / Q4_0)
and the quantizing of a params tree.

- :mod:`lt.quant.arrays`: the leaf, :class:`QuantizedArray`, its schemes and storage;
- :mod:`lt.quant.trees`: :func:`quantize` / :func:`dequantize` of a model's params, from its
  declarations.

The products of quantized leaves are in ``lt.ops.quantized``.
"""

from .arrays import (
    DEFAULT_GROUP_SIZE,
    INT4_DIVISORS,
    SCHEMES,
    QuantizedArray,
    dequantize_array,
    dequantize_codes,
    from_codes,
    integer_codes,
    is_quantized,
    quantize_array,
    signed_codes,
)
from .trees import dequantize, describe, plan, planned_nbytes, quantize

__all__ = [
    "QuantizedArray",
    "quantize_array",
    "dequantize_array",
    "from_codes",
    "integer_codes",
    "signed_codes",
    "dequantize_codes",
    "quantize",
    "dequantize",
    "is_quantized",
    "describe",
    "plan",
    "planned_nbytes",
    "SCHEMES",
    "DEFAULT_GROUP_SIZE",
    "INT4_DIVISORS",
]
