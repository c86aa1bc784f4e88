"""GPT-2 (``model_type: "gpt2"``): the config and tensor names of ``GPT2LMHeadModel``.

GPT-2 and lt compute the same function, so conversion is renaming:

    lt path                      Hugging Face tensor (``transformer.`` prefix optional)
    wte.w (V, D)                 wte.weight (V, D)
    wpe.w (T, D)                 wpe.weight (T, D)
    blocks.i.ln1.{scale, bias}   h.i.ln_1.{weight, bias}
    blocks.i.attn.qkv.{w, b}     h.i.attn.c_attn.{weight (D, 3D), bias}   q | k | v along out
    blocks.i.attn.proj.{w, b}    h.i.attn.c_proj.{weight, bias}
    blocks.i.ln2.{scale, bias}   h.i.ln_2.{weight, bias}
    blocks.i.ffn.fc.{w, b}       h.i.mlp.c_fc.{weight (D, F), bias}
    blocks.i.ffn.proj.{w, b}     h.i.mlp.c_proj.{weight (F, D), bias}
    ln_f.{scale, bias}           ln_f.{weight, bias}
    head.w (D, V)                lm_head.weight (V, D), transposed  [untied head only]

GPT-2's Conv1D stores its weight (in, out), as lt's Linear does, so only the LM head
(a torch ``nn.Linear``, stored (out, in)) is transposed. The causal-mask buffers old
checkpoints carry (``h.i.attn.bias``, ``h.i.attn.masked_bias``) are not weights and are
skipped; a tied checkpoint's ``lm_head.weight``, if present, is the embedding again.
Config options whose maths lt does not implement are refused with the field named;
``reorder_and_upcast_attn`` is accepted, as it changes only the precision of the scores
(lt computes them in the params' dtype, float32 or float64).
"""

from __future__ import annotations

import re

import numpy as np

from .. import tree
from ..nn.gpt import GPT
from .files import Source, check_types

__all__ = ["MODEL_TYPES", "hf_name", "gpt_from_config", "config_from_gpt"]

MODEL_TYPES = ("gpt2",)
PREFIX = "transformer."  # GPT2LMHeadModel's prefix of every tensor but lm_head.weight
BLOCKS = "h"  # block i's tensors are h.i.…
LAYERS_FIELD = "n_layer"
KIND = "GPT-2 LM"

# GPT2Config's defaults, used for fields a config.json leaves out (as transformers does).
_DEFAULTS = {
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": None,
    "activation_function": "gelu_new",
    "resid_pdrop": 0.1,
    "embd_pdrop": 0.1,
    "attn_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5,
    "tie_word_embeddings": True,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
}
# The JSON type of every field lt reads (lt.hf.files.check_types): "false" is no boolean.
_TYPES = {
    "vocab_size": "int",
    "n_positions": "int",
    "n_embd": "int",
    "n_layer": "int",
    "n_head": "int",
    "n_inner": "int?",
    "activation_function": "str",
    "resid_pdrop": "number",
    "embd_pdrop": "number",
    "attn_pdrop": "number",
    "layer_norm_epsilon": "number",
    "tie_word_embeddings": "bool",
    "scale_attn_weights": "bool",
    "scale_attn_by_inverse_layer_idx": "bool",
    "add_cross_attention": "bool",
}
# transformers' activations that are GELU's tanh form (lt's "gelu"), and ReLU.
_ACTIVATIONS = {
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu_fast": "gelu",
    "gelu_python_tanh": "gelu",
    "gelu_accurate": "gelu",
    "relu": "relu",
}
# Options that change what the model computes, with the value lt computes.
_FIXED = {
    "scale_attn_weights": (True, "lt always scales attention scores by 1/sqrt(head_dim)"),
    "scale_attn_by_inverse_layer_idx": (False, "lt does not scale attention by 1/(layer+1)"),
    "add_cross_attention": (False, "lt's GPT is decoder-only, without cross-attention"),
}
_BLOCK = {
    "ln1.scale": "ln_1.weight",
    "ln1.bias": "ln_1.bias",
    "attn.qkv.w": "attn.c_attn.weight",
    "attn.qkv.b": "attn.c_attn.bias",
    "attn.proj.w": "attn.c_proj.weight",
    "attn.proj.b": "attn.c_proj.bias",
    "ln2.scale": "ln_2.weight",
    "ln2.bias": "ln_2.bias",
    "ffn.fc.w": "mlp.c_fc.weight",
    "ffn.fc.b": "mlp.c_fc.bias",
    "ffn.proj.w": "mlp.c_proj.weight",
    "ffn.proj.b": "mlp.c_proj.bias",
}
_TOP = {
    "wte.w": "wte.weight",
    "wpe.w": "wpe.weight",
    "ln_f.scale": "ln_f.weight",
    "ln_f.bias": "ln_f.bias",
    "head.w": "lm_head.weight",
}
_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
_ENDOFTEXT = 50256  # GPT-2's <|endoftext|> id, its bos and eos
# lt.GPT fields GPT-2 has one value of: (field, GPT-2's value, what GPT-2 computes).
_GPT2_ONLY = (
    ("norm", "layer", "LayerNorm (norm='layer')"),
    ("activation", ("gelu", "relu"), "a GELU or ReLU feed-forward"),
    ("bias", True, "biases on every Linear (bias=True)"),
    ("qkv_bias", (None, True), "biases on q, k, v (qkv_bias=None or True)"),
    ("sliding_window", None, "full causal attention (sliding_window=None)"),
    ("qk_norm", False, "queries and keys as projected (qk_norm=False)"),
    ("logit_softcap", (None,), "logits without a cap (logit_softcap=None)"),
)


def hf_name(path: str) -> str:
    """The Hugging Face tensor name (without ``transformer.``) of lt param ``path``."""
    if path in _TOP:
        return _TOP[path]
    parts = path.split(".", 2)
    if len(parts) == 3 and parts[0] == "blocks" and parts[2] in _BLOCK:
        return f"h.{parts[1]}.{_BLOCK[parts[2]]}"
    raise ValueError(f"{path} is not a parameter of lt's GPT")


# ------------------------------------------------------------------ config


def gpt_from_config(config: dict, *, dropout: float | None = None, where: str = "config") -> GPT:
    """The lt GPT a ``GPT2Config`` dict describes; refuses options lt cannot compute.

    ``dropout`` (one rate in lt) defaults to the config's, which must then have equal
    ``resid_pdrop``, ``embd_pdrop`` and ``attn_pdrop``; dropout does not change inference.
    """
    check_types(config, _TYPES, where)
    c = {**_DEFAULTS, **config}
    for field, (value, why) in _FIXED.items():
        if c[field] != value:
            raise ValueError(f"{where}: {field}={c[field]!r} is not supported ({why}); expected {value!r}")
    act = c["activation_function"]
    if act not in _ACTIVATIONS:
        raise ValueError(
            f"{where}: activation_function={act!r} is not supported; lt computes "
            f"the tanh GELU {sorted(k for k, v in _ACTIVATIONS.items() if v == 'gelu')} "
            "or 'relu' (note 'gelu' in transformers is the exact erf form)"
        )
    if dropout is None:
        rates = {c[k] for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
        if len(rates) != 1:
            raise ValueError(
                f"{where}: resid_pdrop, embd_pdrop and attn_pdrop differ "
                f"({c['resid_pdrop']}, {c['embd_pdrop']}, {c['attn_pdrop']}); lt has one "
                "dropout rate: pass dropout= to choose it"
            )
        dropout = rates.pop()
    try:
        return GPT(
            vocab_size=c["vocab_size"],
            max_seq_len=c["n_positions"],
            num_layers=c["n_layer"],
            num_heads=c["n_head"],
            hidden_dim=c["n_embd"],
            ffn_dim=c["n_inner"] if c["n_inner"] is not None else 4 * c["n_embd"],
            dropout=float(dropout),
            tie_embeddings=c["tie_word_embeddings"],
            positional="learned",
            activation=_ACTIVATIONS[act],
            layer_norm_eps=float(c["layer_norm_epsilon"]),
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def config_from_gpt(model: GPT, dtype=np.float32) -> dict:
    """The ``config.json`` dict (a GPT2Config) of ``model``; refuses what GPT-2 cannot express.

    bos/eos are GPT-2's ``<|endoftext|>`` (50256) when the vocabulary holds that id, and
    unset otherwise (lt models carry no special tokens).
    """
    if not isinstance(model, GPT):
        raise TypeError(f"to_hf needs an lt.GPT, got {type(model).__name__}")
    if model.positional != "learned":
        raise ValueError(
            f"GPT.positional={model.positional!r} cannot be written as GPT-2, "
            "whose positions are a learned table (positional='learned')"
        )
    for field, allowed, what in _GPT2_ONLY:
        value = getattr(model, field, allowed if not isinstance(allowed, tuple) else allowed[0])
        if value not in (allowed if isinstance(allowed, tuple) else (allowed,)):
            raise ValueError(f"GPT.{field}={value!r} cannot be written as GPT-2, which computes {what}")
    kv_heads = getattr(model, "num_kv_heads", None)
    if kv_heads not in (None, model.num_heads):
        raise ValueError(
            f"GPT.num_kv_heads={kv_heads!r} cannot be written as GPT-2, whose every "
            f"head has its own keys and values (num_kv_heads=None or num_heads)"
        )
    eot = _ENDOFTEXT if model.vocab_size > _ENDOFTEXT else None
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": model.vocab_size,
        "n_positions": model.max_seq_len,
        "n_embd": model.hidden_dim,
        "n_layer": model.num_layers,
        "n_head": model.num_heads,
        "n_inner": model.ffn_dim,
        "activation_function": "gelu_new" if model.activation == "gelu" else "relu",
        "resid_pdrop": model.dropout,
        "embd_pdrop": model.dropout,
        "attn_pdrop": model.dropout,
        "summary_first_dropout": model.dropout,
        "layer_norm_epsilon": model.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": model.tie_embeddings,
        "use_cache": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "dtype": np.dtype(dtype).name,
    }


# ------------------------------------------------------------------ tensors


def sources(model: GPT):
    """``lt_path -> Source``: each leaf is one stored tensor; only the LM head is transposed."""
    shapes = dict(zip(tree.paths(model.spec()), (p.shape for p in tree.leaves(model.spec()))))

    def source(lt_path: str) -> Source:
        transpose = lt_path == "head.w"
        shape = shapes[lt_path][::-1] if transpose else shapes[lt_path]
        return Source(((hf_name(lt_path), shape),), transpose)

    return source


def skip(model: GPT):
    """Stored tensors that are not weights: causal-mask buffers, a tied head's copy of wte."""
    return lambda name: bool(_BUFFER.fullmatch(name)) or (name == "lm_head.weight" and model.tie_embeddings)


def tensors(model: GPT, params) -> dict:
    """The tensors ``GPT2LMHeadModel.save_pretrained`` would write for ``params``."""
    out = {}
    for lt_path, array in tree.items(params):
        name = hf_name(lt_path)
        if lt_path == "head.w":
            out[name] = np.ascontiguousarray(array.T)
        else:
            out[f"{PREFIX}{name}"] = array
    return out
