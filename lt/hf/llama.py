"""Llama, Qwen2, Qwen3, Mistral (``model_type`` ``llama``, ``qwen2``, ``qwen3``, ``mistral``): one GPT setting each.

All four are pre-RMSNorm decoders with rotary positions (Hugging Face's rotate-half
layout, which is lt's, so q and k need no permutation), grouped-query attention and a
SwiGLU feed-forward. They differ only in biases, q/k norms and attention span:

    family    lt.GPT settings (all: norm="rms", positional="rope", activation="swiglu")
    llama     bias=False                  (attention_bias=true: bias=True, q k v and o biased)
    qwen2     bias=False, qkv_bias=True   (use_sliding_window=true: every layer or none)
    qwen3     qk_norm=True, bias=False    (attention_bias=true: bias=True; sliding window as qwen2)
    mistral   bias=False, sliding_window=config.sliding_window

Shapes: D hidden, H heads, Hkv kv heads, d = D // H head size, F intermediate, V vocab.
Linear weights are torch's (out, in), transposed into lt's (in, out):

    lt path                     Hugging Face tensor (``model.`` prefix optional)
    wte.w (V, D)                embed_tokens.weight (V, D)
    blocks.i.ln1.scale (D,)     layers.i.input_layernorm.weight
    blocks.i.attn.qkv.w         layers.i.self_attn.{q (H*d, D), k (Hkv*d, D), v (Hkv*d, D)}_proj.weight,
      (D, (H + 2 Hkv) d)          each transposed, side by side: columns [q | k | v]
    blocks.i.attn.qkv.b         layers.i.self_attn.{q, k, v}_proj.bias, joined   [qwen2; llama attention_bias]
    blocks.i.attn.proj.{w, b}   layers.i.self_attn.o_proj.{weight (D, H*d) transposed, bias [attention_bias]}
    blocks.i.attn.q_norm.scale  layers.i.self_attn.q_norm.weight (d,)   [qwen3; k_norm likewise]
    blocks.i.ln2.scale          layers.i.post_attention_layernorm.weight
    blocks.i.ffn.gate.w (D, F)  layers.i.mlp.gate_proj.weight (F, D), transposed; up likewise
    blocks.i.ffn.down.w (F, D)  layers.i.mlp.down_proj.weight (D, F), transposed
    ln_f.scale                  norm.weight
    head.w (D, V)               lm_head.weight (V, D), transposed   [untied head only]

``rotary_emb.inv_freq`` buffers (old checkpoints) and a tied checkpoint's copy of the
embedding as ``lm_head.weight`` are skipped. The RoPE settings are read from
``rope_parameters`` (transformers 5) or ``rope_theta`` + ``rope_scaling`` (4.x), and both
are written. Options whose maths lt does not implement are refused by name.
"""

from __future__ import annotations

import re

import numpy as np

from .. import _checks, tree
from ..nn.gpt import GPT
from ..nn.rotary import RopeScaling
from .files import Source, check_types

__all__ = ["MODEL_TYPES", "gpt_from_config", "config_from_gpt"]

MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
PREFIX = "model."  # *ForCausalLM's prefix of every tensor but lm_head.weight
BLOCKS = "layers"
LAYERS_FIELD = "num_hidden_layers"
KIND = "Llama-family LM"
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
}

# Each config class's defaults (transformers 5), for fields a config.json leaves out.
_COMMON = {
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "rope_theta": 10000.0,
    "head_dim": None,
    "num_key_value_heads": None,
}
_DEFAULTS_QWEN2 = {
    **_COMMON,
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 22016,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 32768,
    "use_sliding_window": False,
    "sliding_window": 4096,
    "max_window_layers": 28,
    "layer_types": None,
}
_DEFAULTS = {
    "llama": {
        **_COMMON,
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "max_position_embeddings": 2048,
        "attention_bias": False,
        "mlp_bias": False,
    },
    "qwen2": _DEFAULTS_QWEN2,
    "qwen3": {
        **_DEFAULTS_QWEN2,
        "head_dim": 128,
        "attention_bias": False,
    },
    "mistral": {
        **_COMMON,
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 4096 * 32,
        "sliding_window": 4096,
    },
}
# The JSON type of every field lt reads (lt.hf.files.check_types): "false" is no boolean.
_TYPES = {
    "vocab_size": "int",
    "hidden_size": "int",
    "intermediate_size": "int",
    "num_hidden_layers": "int",
    "num_attention_heads": "int",
    "num_key_value_heads": "int?",
    "head_dim": "int?",
    "max_position_embeddings": "int",
    "hidden_act": "str",
    "rms_norm_eps": "number",
    "tie_word_embeddings": "bool",
    "rope_theta": "number",
    "rope_scaling": "object?",
    "rope_parameters": "object?",
    "partial_rotary_factor": "number",
    "attention_bias": "bool",
    "mlp_bias": "bool",
    "use_sliding_window": "bool",
    "sliding_window": "int?",
    "max_window_layers": "int",
    "layer_types": "list?",
}
_ROPE_TYPES = {
    "rope_type": "str",
    "type": "str",
    "rope_theta": "number",
    "partial_rotary_factor": "number",
    "factor": "number",
    "low_freq_factor": "number",
    "high_freq_factor": "number",
    "original_max_position_embeddings": "int",
}
_SILU = ("silu", "swish")  # transformers' names of x * sigmoid(x)
_BLOCK = {
    "ln1.scale": "input_layernorm.weight",
    "ln2.scale": "post_attention_layernorm.weight",
    "attn.proj.w": "self_attn.o_proj.weight",
    "attn.proj.b": "self_attn.o_proj.bias",
    "ffn.gate.w": "mlp.gate_proj.weight",
    "ffn.up.w": "mlp.up_proj.weight",
    "ffn.down.w": "mlp.down_proj.weight",
    "attn.q_norm.scale": "self_attn.q_norm.weight",  # qwen3
    "attn.k_norm.scale": "self_attn.k_norm.weight",
}
_QKV = ("q_proj", "k_proj", "v_proj")
_TOP = {"wte.w": "embed_tokens.weight", "ln_f.scale": "norm.weight", "head.w": "lm_head.weight"}
_BUFFER = re.compile(r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


def _int(c: dict, field: str, where: str, low: int = 1) -> int:
    return _checks.integer(c[field], f"{where}: {field}", low)


def _refuse(where: str, field: str, value, why: str):
    raise ValueError(f"{where}: {field}={value!r} is not supported ({why})")


def _rope(c: dict, where: str) -> tuple[float, RopeScaling | None]:
    """``(rope_theta, rope_scaling)`` as transformers reads them: ``rope_scaling`` (4.x) or else
    ``rope_parameters`` (5.x), with ``rope_theta`` from that dict or the top level."""
    name = "rope_scaling" if c.get("rope_scaling") else "rope_parameters"
    entry = c.get("rope_scaling") or c.get("rope_parameters") or {}
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: rope_parameters / rope_scaling must be a JSON object, got {entry!r}")
    if any(isinstance(v, dict) for v in entry.values()):
        raise ValueError(
            f"{where}: rope_parameters per layer type {sorted(entry)} are not supported "
            "(lt uses one rotary embedding for every layer)"
        )
    check_types(entry, _ROPE_TYPES, where, prefix=f"{name}.")
    theta = entry.get("rope_theta", c["rope_theta"])
    partial = entry.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        _refuse(where, "partial_rotary_factor", partial, "lt rotates every feature of a head")
    kind = entry.get("rope_type", entry.get("type", "default"))
    entry = dict(entry)
    if kind == "llama3":  # transformers' default for the pre-scaling context
        entry.setdefault("original_max_position_embeddings", c["max_position_embeddings"])
    theta = _checks.real(theta, f"{where}: rope_theta", 0, low_open=True)
    try:
        return theta, RopeScaling.from_config(entry)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: rope_scaling {entry!r}: {e}") from None


def _sliding_window(model_type: str, c: dict, num_layers: int, where: str) -> int | None:
    """The window every layer attends within, or None (full causal attention); a config in which
    some layers slide and others do not is refused."""
    if model_type == "llama":
        return None
    window = c["sliding_window"]
    if model_type in ("qwen2", "qwen3"):
        window = window if c["use_sliding_window"] else None
        types = c["layer_types"]
        if types is None:
            first = _int(c, "max_window_layers", where, 0) if window is not None else num_layers
            types = ["sliding_attention" if i >= first else "full_attention" for i in range(num_layers)]
        if (
            not isinstance(types, list)
            or len(types) != num_layers
            or not all(t in ("full_attention", "sliding_attention") for t in types)
        ):
            raise ValueError(
                f"{where}: layer_types must list 'full_attention' or 'sliding_attention' "
                f"for each of the {num_layers} layers, got {types!r}"
            )
        if window is None or "sliding_attention" not in types:
            return None
        if "full_attention" in types:
            raise ValueError(
                f"{where}: use_sliding_window=true with max_window_layers="
                f"{c['max_window_layers']!r} (layer_types {types}) slides some layers and not "
                "others; lt's sliding_window applies to every layer"
            )
    return None if window is None else _int(c, "sliding_window", where)


def gpt_from_config(config: dict, *, dropout: float | None = None, where: str = "config") -> GPT:
    """The lt GPT a ``LlamaConfig``, ``Qwen2Config``, ``Qwen3Config`` or ``MistralConfig`` dict describes.

    ``dropout`` defaults to 0.0: these families have no residual or embedding dropout, and
    their ``attention_dropout`` (0 in released checkpoints) is not lt's kind; dropout does
    not change inference.
    """
    model_type = config["model_type"]
    check_types(config, _TYPES, where)
    c = {**_DEFAULTS[model_type], **config}
    act = c["hidden_act"]
    if act not in _SILU:
        _refuse(where, "hidden_act", act, "the gated feed-forward lt computes is SwiGLU: hidden_act 'silu'")
    if model_type == "llama" and c["mlp_bias"] is not False:
        _refuse(where, "mlp_bias", c["mlp_bias"], "lt's SwiGLU feed-forward has no biases")
    attention_bias = model_type in ("llama", "qwen3") and c["attention_bias"]  # a JSON boolean (check_types)
    hidden, heads = _int(c, "hidden_size", where), _int(c, "num_attention_heads", where)
    kv_heads = heads if c["num_key_value_heads"] is None else _int(c, "num_key_value_heads", where)
    if heads % kv_heads:
        raise ValueError(
            f"{where}: num_attention_heads={heads} is not divisible by num_key_value_heads="
            f"{kv_heads}; each group of query heads shares one key/value head"
        )
    if c["head_dim"] is not None and c["head_dim"] != hidden // heads:
        _refuse(
            where,
            "head_dim",
            c["head_dim"],
            f"lt's head size is hidden_size // num_attention_heads = {hidden // heads}",
        )
    num_layers = _int(c, "num_hidden_layers", where)
    window = _sliding_window(model_type, c, num_layers, where)
    theta, scaling = _rope(c, where)
    try:
        return GPT(
            vocab_size=c["vocab_size"],
            max_seq_len=c["max_position_embeddings"],
            num_layers=num_layers,
            num_heads=heads,
            hidden_dim=hidden,
            ffn_dim=c["intermediate_size"],
            dropout=0.0 if dropout is None else float(dropout),
            tie_embeddings=c["tie_word_embeddings"],
            norm="rms",
            layer_norm_eps=c["rms_norm_eps"],
            positional="rope",
            rope_theta=theta,
            rope_scaling=scaling,
            activation="swiglu",
            num_kv_heads=None if kv_heads == heads else kv_heads,
            bias=bool(attention_bias),
            qkv_bias=True if model_type == "qwen2" else None,
            sliding_window=window,
            qk_norm=model_type == "qwen3",
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


# ------------------------------------------------------------------ writing the config


def _setting(model: GPT, field: str, default=None):
    return getattr(model, field, default)


def family(model: GPT) -> str:
    """``llama``, ``qwen2``, ``qwen3`` or ``mistral``: the family that computes what ``model``
    does, else a ValueError naming the field no family has."""
    for field, value in (("norm", "rms"), ("positional", "rope"), ("activation", "swiglu")):
        if _setting(model, field) != value:
            raise ValueError(
                f"GPT.{field}={_setting(model, field)!r} cannot be written as Llama, Qwen2, "
                f"Qwen3 or Mistral, which need {field}={value!r}"
            )
    softcap = _setting(model, "logit_softcap")
    if softcap is not None:
        raise ValueError(
            f"GPT.logit_softcap={softcap!r} cannot be written as Llama, Qwen2, Qwen3 or Mistral, "
            "which have no capped logits (logit_softcap=None)"
        )
    bias = _setting(model, "bias", True)
    qkv_bias = bias if _setting(model, "qkv_bias") is None else _setting(model, "qkv_bias")
    window = _setting(model, "sliding_window")
    if bias and not qkv_bias:
        raise ValueError(
            "GPT.bias=True with qkv_bias=False (a biased output projection and unbiased "
            "q, k, v) is no Hugging Face family's attention"
        )
    if _setting(model, "qk_norm", False):
        if qkv_bias and not bias:
            raise ValueError(
                "GPT.qk_norm=True with qkv_bias=True and bias=False cannot be written: Qwen3 "
                "(the family with q/k norms) biases q, k, v and o together (attention_bias) or none"
            )
        return "qwen3"
    if bias:
        if window is not None:
            raise ValueError(
                f"GPT.sliding_window={window} with bias=True cannot be written: Llama "
                "(attention_bias) has no sliding window"
            )
        return "llama"
    if qkv_bias:
        return "qwen2"
    return "llama" if window is None else "mistral"


def config_from_gpt(model: GPT, dtype=np.float32) -> dict:
    """The ``config.json`` dict of ``model`` in the family :func:`family` picks."""
    model_type = family(model)
    heads = model.num_heads
    kv_heads = _setting(model, "num_kv_heads") or heads
    theta, scaling = float(_setting(model, "rope_theta", 10000.0)), _setting(model, "rope_scaling")
    rope = {"rope_type": "default", "rope_theta": theta}
    if scaling is not None:
        rope = {"rope_type": scaling.kind, "rope_theta": theta, "factor": scaling.factor}
        if scaling.kind == "llama3":
            rope.update(
                low_freq_factor=scaling.low_freq_factor,
                high_freq_factor=scaling.high_freq_factor,
                original_max_position_embeddings=scaling.original_max_position_embeddings,
            )
    config = {
        "model_type": model_type,
        "architectures": [ARCHITECTURES[model_type]],
        "vocab_size": model.vocab_size,
        "hidden_size": model.hidden_dim,
        "intermediate_size": model.ffn_dim,
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": model.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": model.max_seq_len,
        "rms_norm_eps": model.layer_norm_eps,
        "tie_word_embeddings": model.tie_embeddings,
        "rope_parameters": rope,
        "rope_theta": theta,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "dtype": np.dtype(dtype).name,
    }
    if scaling is not None:  # transformers 4.x reads rope_theta + rope_scaling
        config["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    window = _setting(model, "sliding_window")
    if model_type == "llama":
        config.update(attention_bias=bool(_setting(model, "bias")), mlp_bias=False)
    elif model_type == "mistral":
        config.update(sliding_window=window)
    else:  # qwen2, qwen3
        if model_type == "qwen3":
            config.update(attention_bias=bool(_setting(model, "bias")))
        config.update(
            use_sliding_window=window is not None,
            sliding_window=window,
            max_window_layers=0,
            layer_types=["full_attention" if window is None else "sliding_attention"] * model.num_layers,
        )
    return config


# ------------------------------------------------------------------ tensors


def sources(model: GPT):
    """``lt_path -> Source``: q, k, v joined into ``attn.qkv``; every Linear weight (its declared
    role) transposed, as torch stores them (out, in); tables, norms and biases as they are."""
    decls = dict(tree.items(model.spec()))

    def source(lt_path: str) -> Source:
        decl = decls[lt_path]
        shape, transpose = decl.shape, decl.role in ("weight", "head")
        stored = shape[::-1] if transpose else shape
        if lt_path in _TOP:
            return Source(((_TOP[lt_path], stored),), transpose)
        _, i, rest = lt_path.split(".", 2)
        if rest in ("attn.qkv.w", "attn.qkv.b"):  # the q | k | v column blocks the declaration names
            kind = "weight" if rest.endswith(".w") else "bias"
            widths = [n * decl.split.unit for n in decl.split.units]
            return Source(
                tuple((f"layers.{i}.self_attn.{p}.{kind}", (n, *shape[:-1])) for p, n in zip(_QKV, widths)),
                transpose=transpose,
            )
        if rest not in _BLOCK:
            raise ValueError(f"{lt_path} has no Hugging Face Llama-family counterpart")
        return Source(((f"layers.{i}.{_BLOCK[rest]}", stored),), transpose)

    return source


def skip(model: GPT):
    """Stored tensors that are not weights: rotary buffers, a tied head's copy of the embedding."""
    return lambda name: bool(_BUFFER.fullmatch(name)) or (name == "lm_head.weight" and model.tie_embeddings)


def tensors(model: GPT, params) -> dict:
    """The tensors ``*ForCausalLM.save_pretrained`` would write for ``params`` (torch's (out, in))."""
    source = sources(model)
    out = {}
    for lt_path, array in tree.items(params):
        src = source(lt_path)
        ends = np.cumsum([shape[0] for _, shape in src.tensors])[:-1]  # q | k | v columns
        for (name, _), part in zip(src.tensors, np.split(array, ends, axis=-1)):
            part = part.T if src.transpose else part
            out[name if name == "lm_head.weight" else PREFIX + name] = np.ascontiguousarray(part)
    return out
