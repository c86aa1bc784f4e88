"""lt: a functional, stateless library for GPT-style language models in NumPy.

Parameters are immutable pytrees (``lt.tree``), randomness comes from explicit keys
(``lt.random``), components are pure (``lt.nn``), and gradients come from
``lt.value_and_grad`` over lt's own primitives (``lt.ops``), as do JAX's other transforms:
``lt.vmap``, ``lt.jvp``, ``lt.hvp`` and ``lt.remat``.

Importing lt changes nothing process-wide. :func:`tune_malloc` (glibc keeps freed pages for
the next training step) is an explicit call, made by :func:`train`, the ``lt`` command and
the benchmarks.
"""

from . import (
    checkpoint,
    corpus,
    data,
    ensemble,
    files,
    generate,
    gguf,
    hf,
    lora,
    nn,
    ops,
    optim,
    parallel,
    quant,
    random,
    safetensors_io,
    threads,
    tokenizers,
    tree,
)
from ._allocator import tune_malloc
from ._version import __version__ as __version__
from .autodiff import grad, hvp, jvp, remat, value_and_grad, vjp, vmap
from .generate import beam_search
from .nn import GPT
from .quant import QuantizedArray, dequantize, quantize
from .tokenizers import BPETokenizer, CharTokenizer
from .training import NonFiniteError, TrainState, evaluate, make_train_step, train

__all__ = [
    "GPT",
    "vmap",
    "jvp",
    "hvp",
    "remat",
    "BPETokenizer",
    "CharTokenizer",
    "beam_search",
    "checkpoint",
    "corpus",
    "data",
    "ensemble",
    "files",
    "generate",
    "gguf",
    "hf",
    "lora",
    "nn",
    "ops",
    "optim",
    "parallel",
    "random",
    "safetensors_io",
    "tokenizers",
    "tree",
    "threads",
    "TrainState",
    "NonFiniteError",
    "make_train_step",
    "evaluate",
    "train",
    "grad",
    "value_and_grad",
    "vjp",
    "tune_malloc",
    "quant",
    "quantize",
    "dequantize",
    "QuantizedArray",
]
