"""Hugging Face GPT-2 checkpoints in and out: ``from_hf(path)`` and ``to_hf(model, params, path)``.

A Hugging Face GPT-2 model directory holds ``config.json`` (a ``GPT2Config``) and
``model.safetensors`` (or shards named by ``model.safetensors.index.json``). Both are
read here with NumPy alone, through :mod:`lt.safetensors_io`: no torch, no
transformers. GPT-2 and lt compute the same function, so conversion is renaming:

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
``config.json`` and the shard index must be regular files of bounded size; shards must be
regular files inside the model directory (no absolute or ``..`` names, no symlinks out of
it); ``n_layer`` and every tensor shape are checked against the weights' headers before
anything is built or read (:class:`HFCheckpointError`).
Config options whose maths lt does not implement are refused with the field named;
``reorder_and_upcast_attn`` is accepted, as it changes only the precision of the scores
(lt computes them in the params' dtype, float32 or float64).
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import numpy as np

from . import safetensors_io, tree
from .files import atomic_write_text
from .nn.gpt import GPT

__all__ = ["from_hf", "to_hf", "gpt_from_config", "config_from_gpt", "hf_name", "HFCheckpointError"]

_MAX_JSON = 64 * 2**20             # config.json and the shard index are a few KB; more means corrupt


class HFCheckpointError(ValueError):
    """A Hugging Face model directory whose files are unsafe or do not fit each other."""

# GPT2Config's defaults, used for fields a config.json leaves out (as transformers does).
_DEFAULTS = {
    "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
    "n_inner": None, "activation_function": "gelu_new", "resid_pdrop": 0.1, "embd_pdrop": 0.1,
    "attn_pdrop": 0.1, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True,
    "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
}
# transformers' activations that are GELU's tanh form (lt's "gelu"), and ReLU.
_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu",
                "gelu_python_tanh": "gelu", "gelu_accurate": "gelu", "relu": "relu"}
# Options that change what the model computes, with the value lt computes.
_FIXED = {"scale_attn_weights": (True, "lt always scales attention scores by 1/sqrt(head_dim)"),
          "scale_attn_by_inverse_layer_idx": (False, "lt does not scale attention by 1/(layer+1)"),
          "add_cross_attention": (False, "lt's GPT is decoder-only, without cross-attention")}
_BLOCK = {"ln1.scale": "ln_1.weight", "ln1.bias": "ln_1.bias",
          "attn.qkv.w": "attn.c_attn.weight", "attn.qkv.b": "attn.c_attn.bias",
          "attn.proj.w": "attn.c_proj.weight", "attn.proj.b": "attn.c_proj.bias",
          "ln2.scale": "ln_2.weight", "ln2.bias": "ln_2.bias",
          "ffn.fc.w": "mlp.c_fc.weight", "ffn.fc.b": "mlp.c_fc.bias",
          "ffn.proj.w": "mlp.c_proj.weight", "ffn.proj.b": "mlp.c_proj.bias"}
_TOP = {"wte.w": "wte.weight", "wpe.w": "wpe.weight", "ln_f.scale": "ln_f.weight",
        "ln_f.bias": "ln_f.bias", "head.w": "lm_head.weight"}
_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
_ENDOFTEXT = 50256                 # GPT-2's <|endoftext|> id, its bos and eos


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
    model_type = config.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(f"{where}: model_type is {model_type!r}; lt reads GPT-2 checkpoints ('gpt2')")
    c = {**_DEFAULTS, **config}
    for field, (value, why) in _FIXED.items():
        if c[field] != value:
            raise ValueError(f"{where}: {field}={c[field]!r} is not supported ({why}); "
                             f"expected {value!r}")
    act = c["activation_function"]
    if act not in _ACTIVATIONS:
        raise ValueError(f"{where}: activation_function={act!r} is not supported; lt computes "
                         f"the tanh GELU {sorted(k for k, v in _ACTIVATIONS.items() if v == 'gelu')} "
                         "or 'relu' (note 'gelu' in transformers is the exact erf form)")
    if dropout is None:
        rates = {c[k] for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
        if len(rates) != 1:
            raise ValueError(f"{where}: resid_pdrop, embd_pdrop and attn_pdrop differ "
                             f"({c['resid_pdrop']}, {c['embd_pdrop']}, {c['attn_pdrop']}); lt has one "
                             "dropout rate: pass dropout= to choose it")
        dropout = rates.pop()
    try:
        return GPT(vocab_size=c["vocab_size"], max_seq_len=c["n_positions"], num_layers=c["n_layer"],
                   num_heads=c["n_head"], hidden_dim=c["n_embd"],
                   ffn_dim=c["n_inner"] if c["n_inner"] is not None else 4 * c["n_embd"],
                   dropout=float(dropout), tie_embeddings=bool(c["tie_word_embeddings"]),
                   positional="learned", activation=_ACTIVATIONS[act],
                   layer_norm_eps=float(c["layer_norm_epsilon"]))
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
        raise ValueError(f"GPT.positional={model.positional!r} cannot be written as GPT-2, "
                         "whose positions are a learned table (positional='learned')")
    eot = _ENDOFTEXT if model.vocab_size > _ENDOFTEXT else None
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": model.vocab_size, "n_positions": model.max_seq_len,
        "n_embd": model.hidden_dim, "n_layer": model.num_layers, "n_head": model.num_heads,
        "n_inner": model.ffn_dim,
        "activation_function": "gelu_new" if model.activation == "gelu" else "relu",
        "resid_pdrop": model.dropout, "embd_pdrop": model.dropout, "attn_pdrop": model.dropout,
        "summary_first_dropout": model.dropout,
        "layer_norm_epsilon": model.layer_norm_eps, "initializer_range": 0.02,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "add_cross_attention": False,
        "tie_word_embeddings": model.tie_embeddings, "use_cache": True,
        "bos_token_id": eot, "eos_token_id": eot, "dtype": np.dtype(dtype).name,
    }


# ------------------------------------------------------------------ reading

def _read_json(path: Path, what: str):
    """The JSON in ``path``: a regular file (a FIFO would block) of bounded size, else an error."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError:
        raise HFCheckpointError(f"{path}: is a directory, expected the {what} (a JSON file)") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise HFCheckpointError(f"{path}: is not a regular file (a FIFO, device or socket?); "
                                    f"expected the {what} (a JSON file)")
        if info.st_size > _MAX_JSON:
            raise HFCheckpointError(f"{path}: is {info.st_size} bytes, more than the {_MAX_JSON} "
                                    f"a {what} may be")
        data = f.read(_MAX_JSON + 1)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HFCheckpointError(f"{path}: the {what} is not valid JSON ({e})") from None
    except RecursionError:
        raise HFCheckpointError(f"{path}: the {what} is JSON nested too deeply to be one") from None


def _shard_files(path: Path, index: Path) -> list[Path]:
    """The shard files ``index`` names: relative paths inside ``path``, each a regular file."""
    data = _read_json(index, "shard index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise HFCheckpointError(f"{index}: expected a JSON object with a 'weight_map' of tensor "
                                "name -> shard file name")
    root = path.resolve()
    files = []
    for name in sorted(set(weight_map.values())):
        shard = Path(name)
        inside = (path / shard).resolve()
        if shard.is_absolute() or ".." in shard.parts or not inside.is_relative_to(root):
            raise HFCheckpointError(f"{index}: shard {name!r} is outside the model directory {path}; "
                                    "shard names must be files inside it")
        try:
            mode = os.stat(inside).st_mode
        except FileNotFoundError:
            raise FileNotFoundError(f"{index}: shard {name!r} not found in {path}") from None
        if not stat.S_ISREG(mode):
            raise HFCheckpointError(f"{index}: shard {name!r} is not a regular file")
        files.append(path / shard)
    return files


def _open_weights(path: Path) -> dict[str, tuple[safetensors_io.SafeTensors, str]]:
    """Every stored tensor name (``transformer.`` stripped) -> (the file holding it, its name there).

    The files stay open (one descriptor each) until the caller closes them."""
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.exists():
        files = [single]
    elif index.exists():
        files = _shard_files(path, index)
    else:
        found = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        raise FileNotFoundError(f"{path} has no model.safetensors (found {found}); lt reads "
                                "safetensors weights only (re-save with "
                                "save_pretrained(..., safe_serialization=True))")
    names: dict = {}
    opened = []
    try:
        for file in files:
            st = safetensors_io.SafeTensors(file)
            opened.append(st)
            if sum(len(o) for o in opened) > safetensors_io.MAX_TENSORS:
                raise HFCheckpointError(f"{path}: its shards hold more than "
                                        f"{safetensors_io.MAX_TENSORS} tensors")
            for stored in st:
                name = stored.removeprefix("transformer.")
                if name in names:
                    raise HFCheckpointError(f"{path}: tensor {name} is stored twice "
                                            f"({names[name][1]} and {stored})")
                names[name] = (st, stored)
    except BaseException:
        for st in opened:
            st.close()
        raise
    return names


def from_hf(path, *, dtype=np.float32, dropout: float | None = None) -> tuple[GPT, object]:
    """``(model, params)`` from a Hugging Face GPT-2 directory (config.json + safetensors).

    Weights stored as F16, BF16, F32 or F64 are converted to ``dtype`` (float32 or
    float64). Every tensor's presence and shape is checked against the config: a missing,
    wrong-shaped or unexpected tensor raises a ValueError naming it. ``dropout`` overrides
    the config's dropout rate (see :func:`gpt_from_config`).
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"from_hf: dtype must be float32 or float64, got {dtype}")
    config_path = path / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{path} has no config.json; expected a Hugging Face GPT-2 "
                                "model directory (config.json and model.safetensors)")
    config = _read_json(config_path, "model config (config.json)")
    if not isinstance(config, dict):
        raise HFCheckpointError(f"{config_path}: expected a JSON object (a GPT2Config), "
                                f"got a JSON {type(config).__name__}")
    model = gpt_from_config(config, dropout=dropout, where=str(config_path))
    stored = _open_weights(path)
    files = {id(st): st for st, _ in stored.values()}.values()
    try:
        return _read_params(path, model, stored, dtype)
    finally:
        for st in files:
            st.close()


def _read_params(path: Path, model: GPT, stored: dict, dtype) -> tuple[GPT, object]:
    # The spec grows with n_layer: compare it to the blocks present before building it.
    blocks = {name.split(".")[1] for name in stored if name.startswith("h.") and name.count(".") >= 2}
    if model.num_layers > len(blocks):
        raise HFCheckpointError(f"{path / 'config.json'}: n_layer={model.num_layers}, but the "
                                f"weights hold {len(blocks)} blocks (h.0 ... h.{len(blocks) - 1})")
    spec_leaves, treedef = tree.flatten(model.spec())
    leaves = []
    for lt_path, param in zip(tree.paths(model.spec()), spec_leaves):
        name = hf_name(lt_path)
        transpose = lt_path == "head.w"
        expected = param.shape[::-1] if transpose else param.shape
        if name not in stored:
            raise HFCheckpointError(f"{path}: missing tensor {name} (lt {lt_path}), expected shape "
                                    f"{expected} from config.json")
        st, key = stored.pop(name)
        found = st.shape(key)
        if found != expected:
            raise HFCheckpointError(f"{st.path}: tensor {key} has shape {found}, expected {expected} "
                                    f"(lt {lt_path}) from config.json")
        array = st[key].astype(dtype, copy=False)
        array = np.ascontiguousarray(array.T) if transpose else array
        array.flags.writeable = False
        leaves.append(array)
    extra = [name for name in stored if not _BUFFER.fullmatch(name)
             and not (name == "lm_head.weight" and model.tie_embeddings)]
    if extra:
        raise HFCheckpointError(f"{path}: unexpected tensors {extra[:5]}{' ...' if len(extra) > 5 else ''} "
                                "(not part of a GPT-2 LM with this config.json)")
    params = tree.freeze(tree.unflatten(treedef, leaves))
    model.check_params(params)
    return model, params


# ------------------------------------------------------------------ writing

def to_hf(model: GPT, params, path) -> Path:
    """Write ``model`` and ``params`` as a Hugging Face GPT-2 directory at ``path``.

    ``config.json`` and ``model.safetensors`` (tensors named ``transformer.…`` as
    ``GPT2LMHeadModel`` saves them, in the params' dtype, plus ``lm_head.weight`` when the
    head is untied) are each written atomically; ``GPT2LMHeadModel.from_pretrained(path)``
    loads them. Returns ``path``.
    """
    config_from_gpt(model)                            # refuse what GPT-2 cannot express, first
    model.check_params(params)
    config = config_from_gpt(model, model.compute_dtype(params))
    tensors = {}
    for lt_path, array in tree.items(params):
        name = hf_name(lt_path)
        if lt_path == "head.w":
            tensors[name] = np.ascontiguousarray(array.T)
        else:
            tensors[f"transformer.{name}"] = array
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    safetensors_io.save(path / "model.safetensors", tensors, {"format": "pt"})
    atomic_write_text(path / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path
