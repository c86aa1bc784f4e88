"""A model's hyperparameters as GGUF metadata, and back: the keys llama.cpp reads per architecture.

Every architecture (``A`` = ``llama``, ``qwen2``, ``qwen3`` or ``gpt2``) has ``A.context_length`` (T),
``A.embedding_length`` (D), ``A.block_count`` (L), ``A.feed_forward_length`` (F) and
``A.attention.head_count`` (H). The llama family adds ``A.attention.head_count_kv`` (Hkv),
``A.attention.layer_norm_rms_epsilon``, ``A.rope.freq_base`` (theta) and
``A.rope.dimension_count`` (d, the whole head: lt rotates every feature); qwen3 also
``A.attention.key_length`` and ``A.attention.value_length`` (d); linear rope scaling is
``A.rope.scaling.type`` + ``A.rope.scaling.factor``, llama 3's is the tensor ``rope_freqs.weight``
(d/2 factors dividing the frequencies; written, not read back). GPT-2 adds
``A.attention.layer_norm_epsilon``. ``A.vocab_size`` (V) is written too, though readers take
V from the token table's rows.

llama.cpp's llama, qwen2 and qwen3 attend to the whole context, so a model with a sliding window is
written with ``context_length`` = the window: in every context llama.cpp accepts without a
warning, both compute the same. Reading builds the Hugging Face ``config.json`` the metadata
describes and hands it to :func:`lt.hf.gpt_from_config`, so a GGUF file gets the same checks
and refusals, named by the GGUF key.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..hf import gpt_from_config
from ..nn.gpt import GPT
from ..nn.rotary import rope_inv_freq
from .reader import GGUFError

__all__ = ["model_metadata", "rope_freqs", "model_from_metadata"]


def model_metadata(model: GPT, arch: str) -> dict[str, Any]:
    """``{key: value}`` of ``model``'s hyperparameters for llama.cpp's ``arch`` (ints and floats
    as Python numbers; the writer picks uint32 / float32 as llama.cpp reads them)."""
    out: dict[str, Any] = {
        f"{arch}.context_length": model.max_seq_len,
        f"{arch}.embedding_length": model.hidden_dim,
        f"{arch}.block_count": model.num_layers,
        f"{arch}.feed_forward_length": model.ffn_dim,
        f"{arch}.attention.head_count": model.num_heads,
        f"{arch}.vocab_size": model.vocab_size,
    }
    if arch == "gpt2":
        out[f"{arch}.attention.layer_norm_epsilon"] = float(model.layer_norm_eps)
        return out
    if model.sliding_window is not None:
        out[f"{arch}.context_length"] = min(model.max_seq_len, model.sliding_window)
    out[f"{arch}.attention.head_count_kv"] = model.kv_heads
    out[f"{arch}.attention.layer_norm_rms_epsilon"] = float(model.layer_norm_eps)
    out[f"{arch}.rope.freq_base"] = float(model.rope_theta)
    out[f"{arch}.rope.dimension_count"] = model.head_dim
    if arch == "qwen3":  # as convert_hf_to_gguf.py writes Qwen3's head_dim
        out[f"{arch}.attention.key_length"] = out[f"{arch}.attention.value_length"] = model.head_dim
    scaling = model.rope_scaling
    if scaling is not None and scaling.kind == "linear":
        out[f"{arch}.rope.scaling.type"] = "linear"
        out[f"{arch}.rope.scaling.factor"] = float(scaling.factor)
    return out


def rope_freqs(model: GPT) -> np.ndarray | None:
    """llama 3 scaling's ``rope_freqs.weight`` (d/2,) float32: the factor dividing each
    frequency; None for any other model."""
    scaling = model.rope_scaling
    if model.positional != "rope" or scaling is None or scaling.kind != "llama3":
        return None
    plain = rope_inv_freq(model.head_dim, model.rope_theta, None)
    return (plain / rope_inv_freq(model.head_dim, model.rope_theta, scaling)).astype(np.float32)


def _get(meta: dict, key: str, kind: str, where: str, default: Any = ...) -> Any:
    """``meta[key]`` checked to be an ``"int"`` (>= 0), a ``"number"`` or a ``"str"``."""
    if key not in meta:
        if default is ...:
            raise GGUFError(f"{where}: metadata key {key} is missing; llama.cpp needs it for this architecture")
        return default
    value = meta[key]
    ok = {
        "int": type(value) is int and value >= 0,
        "number": type(value) in (int, float) and np.isfinite(value),
        "str": type(value) is str,
    }[kind]
    if not ok:
        shown = f"an array of {len(value)}" if isinstance(value, (list, np.ndarray)) else repr(value)
        wanted = "a non-negative integer" if kind == "int" else f"a {kind}"
        raise GGUFError(f"{where}: metadata key {key} is {shown}; expected {wanted}")
    return value


def model_from_metadata(meta: dict, tensors: dict, where: str) -> GPT:
    """The lt GPT a GGUF file's metadata and tensor table (name -> info with ``shape``) describe."""
    arch = _get(meta, "general.architecture", "str", where)
    if arch not in ("llama", "qwen2", "qwen3", "gpt2"):
        raise GGUFError(
            f"{where}: general.architecture is {arch!r}; lt reads 'llama', 'qwen2', 'qwen3' and 'gpt2' files"
        )
    if "token_embd.weight" not in tensors or len(tensors["token_embd.weight"].shape) != 2:
        raise GGUFError(f"{where}: no 2-D tensor token_embd.weight (the token table)")
    vocab = tensors["token_embd.weight"].shape[0]
    a = arch
    hidden, heads = (
        _get(meta, f"{a}.embedding_length", "int", where),
        _get(meta, f"{a}.attention.head_count", "int", where),
    )
    common = dict(vocab_size=vocab, tie_word_embeddings="output.weight" not in tensors)
    context, layers = _get(meta, f"{a}.context_length", "int", where), _get(meta, f"{a}.block_count", "int", where)
    ffn = _get(meta, f"{a}.feed_forward_length", "int", where)
    if arch == "gpt2":
        eps = _get(meta, f"{a}.attention.layer_norm_epsilon", "number", where)
        config = dict(common, model_type="gpt2", n_positions=context, n_embd=hidden, n_layer=layers, n_head=heads,
                      n_inner=ffn, layer_norm_epsilon=eps, activation_function="gelu_new")  # fmt: skip
        return gpt_from_config(config, dropout=0.0, where=where)
    head_dim = hidden // heads if heads else 0
    rot = _get(meta, f"{a}.rope.dimension_count", "int", where, head_dim)
    if rot != head_dim:
        raise GGUFError(
            f"{where}: {a}.rope.dimension_count is {rot}, the head size {head_dim}: lt rotates every feature of a head"
        )
    for key in (f"{a}.attention.key_length", f"{a}.attention.value_length"):
        if _get(meta, key, "int", where, head_dim) != head_dim:
            raise GGUFError(
                f"{where}: {key} is {meta[key]}; lt's head size is embedding_length / head_count = {head_dim}"
            )
    if "rope_freqs.weight" in tensors:
        raise GGUFError(f"{where}: rope_freqs.weight (llama 3's rope frequency factors) is not read by lt.gguf.load")
    scaling = _get(meta, f"{a}.rope.scaling.type", "str", where, "none")
    rope: dict = {"rope_type": "default"}
    if scaling == "linear":
        rope = {"rope_type": "linear", "factor": _get(meta, f"{a}.rope.scaling.factor", "number", where)}
    elif scaling != "none":
        raise GGUFError(f"{where}: {a}.rope.scaling.type is {scaling!r}; lt reads 'none' and 'linear'")
    config = dict(
        common,
        model_type=arch,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        head_dim=head_dim,
        num_key_value_heads=_get(meta, f"{a}.attention.head_count_kv", "int", where, heads),
        max_position_embeddings=context,
        rms_norm_eps=_get(meta, f"{a}.attention.layer_norm_rms_epsilon", "number", where),
        rope_theta=_get(meta, f"{a}.rope.freq_base", "number", where, 10000.0),
        rope_parameters=rope,
    )
    if arch == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in tensors
    return gpt_from_config(config, dropout=0.0, where=where)
