"""PEFT's adapter format both ways: ``adapter_config.json`` + ``adapter_model.safetensors``.

Shapes: I a matrix's input width, O_m a module's output width, R its rank.

PEFT adapts Hugging Face modules by name and stores, per module ``M``, ``lora_A.weight``
(R, I) and ``lora_B.weight`` (O_m, R) under ``base_model.model.<M>`` (torch's (out, in):
lt's A (I, R) and B (R, O_m) transposed), with ``scale = lora_alpha / r`` (``rank_pattern`` /
``alpha_pattern`` per module; ``use_rslora``: ``alpha / √r``). The module names come from
``lt.hf``'s own name maps (``sources``), so they are the ones ``from_hf``/``to_hf`` use.

Where lt's blocks and the modules differ, the mapping is exact, not approximate:

- Llama, Qwen2, Mistral: lt's q, k, v blocks are PEFT's ``q_proj``, ``k_proj``, ``v_proj``
  one to one; a whole-matrix ``attn.qkv`` adapter becomes three modules sharing A, each with
  its columns of B.
- GPT-2 keeps one fused ``c_attn``, and PEFT puts one adapter on it. lt's q and v adapters (rank
  r each) are written as one ``c_attn`` adapter of rank 2r: A side by side, B block-diagonal
  (zeros in the key columns), with ``rank_pattern``/``alpha_pattern`` keeping ``alpha / r``;
  its update is the same matrix. A PEFT ``c_attn`` adapter loads as lt's ``attn.qkv`` target.

Loading pads a module of lower rank than the largest with zero columns of A and rows of B, and
folds a module's own scale into its B (``B · s_m / s``), so every module computes what PEFT's
does; modules PEFT left out (``layers_to_transform``) get zero adapters. DoRA, biases, trained
embeddings and other PEFT methods are refused by name.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from .. import guards, safetensors_io, tree
from ..files import atomic_write_text, check_overwrite
from ..nn import GPT
from .adapters import LORA, Adapted, adapted_linears
from .config import FFN_NAMES, QKV_BLOCKS, LoRA
from .layer import WHOLE

__all__ = ["save_peft", "load_peft", "CONFIG_FILE", "WEIGHTS_FILE", "PeftFormatError"]

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModelForCausalLM's prefix of every saved key
_MARK = "lt.lora"  # header metadata lt writes: an adapter file lt may replace
_REFUSED = {  # PEFT options whose maths lt does not implement: field -> the value lt computes
    "use_dora": (False, "DoRA's magnitude vectors"),
    "bias": ("none", "trained biases"),
    "lora_bias": (False, "a bias on lora_B"),
    "modules_to_save": (None, "fully trained extra modules"),
    "trainable_token_indices": (None, "trained token embeddings"),
    "layer_replication": (None, "replicated layers"),
    "target_parameters": (None, "adapters on bare parameters"),
    "use_qalora": (False, "QA-LoRA's pooled inputs"),
}


class PeftFormatError(ValueError):
    """A PEFT adapter directory lt cannot read as LoRA adapters of the given model."""


def _family(model: GPT):
    from ..hf import gpt2, llama

    return llama if model.positional == "rope" else gpt2


def _candidates(model: GPT) -> list[str]:
    """Paths of every Linear of every block that LoRA may adapt (``blocks.i.attn.qkv``, ...)."""
    ffn = [n for n in FFN_NAMES if n in model.block.ffn.spec()]
    rel = ["attn.qkv", "attn.proj"] + [f"ffn.{n}" for n in ffn]
    return [f"blocks.{i}.{r}" for i in range(model.num_layers) for r in rel]


def modules(model: GPT, path: str) -> list[tuple[str, int, int]]:
    """The Hugging Face modules holding the columns of lt Linear ``path``'s weight: ``(module name,
    lo, hi)``, e.g. ``("model.layers.0.self_attn.k_proj", 64, 96)``, from ``lt.hf``'s name maps."""
    fam = _family(model)
    src = fam.sources(model)(f"{path}.w")
    out, at = [], 0
    for name, shape in src.tensors:
        width = shape[0] if src.transpose else shape[-1]  # torch's (out, in), or GPT-2's Conv1D (in, out)
        out.append((fam.PREFIX + name.removesuffix(".weight"), at, at + width))
        at += width
    return out


# ----------------------------------------------------------------- writing


def _module_pair(layer, lora, mlo: int, mhi: int):
    """A (I, R), B (R, mhi - mlo) of one module from the lt blocks over its columns, or None."""
    a_parts, rows = [], []
    for name, lo, hi in layer.blocks:
        if hi <= mlo or lo >= mhi:
            continue
        ab = lora if name == WHOLE else lora[name]
        a, b = np.asarray(ab["a"]), np.asarray(ab["b"])
        c0, c1 = max(lo, mlo), min(hi, mhi)
        row = np.zeros((b.shape[0], mhi - mlo), b.dtype)
        row[:, c0 - mlo : c1 - mlo] = b[:, c0 - lo : c1 - lo]
        a_parts.append(a)
        rows.append(row)
    if not a_parts:
        return None
    return np.concatenate(a_parts, axis=1), np.concatenate(rows, axis=0)  # (I, R), (R, O_m)


def peft_tensors(adapted: Adapted, adapters) -> tuple[dict, dict]:
    """``({key: tensor}, {module: rank})``: the tensors PEFT's ``save_pretrained`` writes for
    ``adapters`` (torch's layout), and each module's rank."""
    adapted.check_adapters(adapters)
    tensors, ranks = {}, {}
    for path, layer in adapted_linears(adapted.gpt).items():
        lora = tree.get(adapters, f"{path}.{LORA}")
        for module, mlo, mhi in modules(adapted.model, path):
            pair = _module_pair(layer, lora, mlo, mhi)
            if pair is None:
                continue
            a, b = pair
            tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a.T)  # (R, I)
            tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b.T)  # (O_m, R)
            ranks[module] = a.shape[1]
    return tensors, ranks


def peft_config(adapted: Adapted, ranks: dict, base_name: str | None = None) -> dict:
    """``adapter_config.json``'s fields for ``adapted``; modules of another rank than ``r`` (GPT-2's
    fused c_attn) get ``rank_pattern`` and an ``alpha_pattern`` that keeps ``alpha / r``."""
    lora = adapted.lora
    first = [p for p in _candidates(adapted.model) if p.startswith("blocks.0.")]
    everything = [m for path in first for m, _, _ in modules(adapted.model, path)]
    kinds = {re.sub(r"^.*?\.\d+\.", "", m) for m in everything}  # "attn.c_proj": a module without its layer
    last = [k.rsplit(".", 1)[-1] for k in kinds]
    short: dict[str, int] = {}
    for module, rank in ranks.items():
        kind = re.sub(r"^.*?\.\d+\.", "", module)
        name = kind.rsplit(".", 1)[-1]
        name = name if last.count(name) == 1 else kind  # GPT-2's two c_proj: attn.c_proj, mlp.c_proj
        if short.setdefault(name, rank) != rank:
            raise ValueError(f"modules named {name} have ranks {short[name]} and {rank}; PEFT's patterns need one")
    odd = {n: r for n, r in short.items() if r != lora.rank}
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": sorted(short),
        "rank_pattern": odd,
        "alpha_pattern": {n: lora.alpha * r / lora.rank for n, r in odd.items()},
        "fan_in_fan_out": _family(adapted.model).__name__.endswith("gpt2"),  # GPT-2's Conv1D is (in, out)
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "revision": None,
    }


def written_by_lt(path) -> bool:
    """Whether ``path`` is an adapter file lt wrote (its header says so)."""
    try:
        with safetensors_io.SafeTensors(path) as st:
            return st.metadata.get(_MARK) == "1"
    except (ValueError, OSError):
        return False


def save_peft(path, adapted: Adapted, adapters, *, base_name: str | None = None, force: bool = False) -> Path:
    """Write ``adapters`` in PEFT's format in the directory ``path`` (made if missing), each file
    atomically; ``peft.PeftModel.from_pretrained(hf_model, path)`` loads them onto the
    transformers twin of ``adapted.model``. Files there that lt did not write are replaced only
    with ``force``. ``base_name`` is recorded as ``base_model_name_or_path``. Returns ``path``."""
    tensors, ranks = peft_tensors(adapted, adapters)
    config = peft_config(adapted, ranks, base_name)
    path = Path(path)
    weights, config_path = path / WEIGHTS_FILE, path / CONFIG_FILE
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory; PEFT adapters are a directory of two files")
    ours = weights.exists() and written_by_lt(weights)
    check_overwrite(weights, written_by_lt, force=force, ours="an adapter file lt wrote")
    check_overwrite(config_path, lambda _: ours, force=force, ours="the config of an adapter file lt wrote")
    path.mkdir(parents=True, exist_ok=True)
    safetensors_io.save(weights, tensors, {"format": "pt", _MARK: "1"})
    atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


# ----------------------------------------------------------------- reading


def _check_config(config, where: str) -> dict:
    if not isinstance(config, dict):
        raise PeftFormatError(f"{where}: expected a JSON object, got {type(config).__name__}")
    if config.get("peft_type", "LORA") != "LORA":
        raise PeftFormatError(f"{where}: peft_type is {config.get('peft_type')!r}; lt reads LoRA adapters (LORA)")
    for field, (value, what) in _REFUSED.items():
        got = config.get(field, value)
        if got not in (value, [], {}) and not (value is None and not got):
            raise PeftFormatError(f"{where}: {field} is {got!r}: lt's LoRA has no {what} (expected {value!r})")
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise PeftFormatError(f"{where}: r must be a positive integer, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise PeftFormatError(f"{where}: lora_alpha must be a positive number, got {alpha!r}")
    for field in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(field) or {}, dict):
            raise PeftFormatError(f"{where}: {field} must be an object of module patterns, got {config[field]!r}")
    return config


def _pattern(patterns: dict, module: str, default):
    """PEFT's per-module value: the first pattern matching the end of the module's name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _target(model: GPT, path: str, lo: int, hi: int) -> tuple[str, str]:
    """(lt target, block name) of the module over columns [lo, hi) of Linear ``path``."""
    rel = path.split(".", 2)[2]
    if rel != "attn.qkv":
        return rel, WHOLE
    widths = model.block.attn.widths
    edges = np.cumsum((0,) + widths)
    if (lo, hi) == (0, int(edges[-1])):
        return "attn.qkv", WHOLE
    name = QKV_BLOCKS[int(np.searchsorted(edges, lo))]
    return f"attn.{name}", name


def _read_modules(st, model: GPT, where: str) -> dict:
    """``{(path, lo, hi): (A (R, I), B (O_m, R))}`` of every module in the file, checked."""
    owner = {m: (path, lo, hi) for path in _candidates(model) for m, lo, hi in modules(model, path)}
    found: dict = {}
    for key in st:
        m = re.fullmatch(rf"{re.escape(PREFIX)}(.+)\.lora_([AB])\.weight", key)
        if m is None or m.group(1) not in owner:
            raise PeftFormatError(
                f"{where}: tensor {key} is not a LoRA matrix of this model's modules "
                f"(expected {PREFIX}<module>.lora_A.weight / lora_B.weight, modules such as {next(iter(owner))})"
            )
        found.setdefault(m.group(1), {})[m.group(2)] = key
    out = {}
    for module, keys in found.items():
        path, lo, hi = owner[module]
        if set(keys) != {"A", "B"}:
            raise PeftFormatError(
                f"{where}: {module} has lora_{next(iter(keys))} but no lora_{'B' if 'A' in keys else 'A'}"
            )
        for k in keys.values():
            if st.numpy_dtype(k).kind != "f":
                raise PeftFormatError(f"{where}: tensor {k} is {st.dtype(k)}; LoRA matrices are floating point")
        a_shape, b_shape = st.shape(keys["A"]), st.shape(keys["B"])
        in_dim = tree.get(model.spec(), f"{path}.w").shape[0]
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[1] != in_dim or b_shape != (hi - lo, a_shape[0]):
            raise PeftFormatError(
                f"{where}: {module}'s lora_A {list(a_shape)} and lora_B {list(b_shape)} do not fit it: "
                f"expected (r, {in_dim}) and ({hi - lo}, r)"
            )
        pair = []
        for k in (keys["A"], keys["B"]):
            x = st[k]
            guards.finite(x, f"{where}: tensor {k}", error=PeftFormatError)
            pair.append(x.astype(np.float64))
        out[(path, lo, hi, module)] = tuple(pair)
    if not out:
        raise PeftFormatError(f"{where}: holds no LoRA matrices")
    return out


def load_peft(path, model: GPT, *, dtype=np.float32) -> tuple[Adapted, object]:
    """``(adapted, adapters)`` from a PEFT adapter directory made for the Hugging Face twin of
    ``model``: the LoRA settings and targets it implies (rank: its largest module's) and a frozen
    adapters tree, whose adapted model computes what PEFT's does on the transformers model."""
    from ..hf.files import read_json

    path = Path(path)
    config_path, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} is not a PEFT adapter directory (no {CONFIG_FILE})")
    if not weights.is_file():
        bin_file = path / "adapter_model.bin"
        hint = (
            f" (it has {bin_file.name}, a torch pickle lt does not read: save with safe_serialization)"
            if bin_file.exists()
            else ""
        )
        raise FileNotFoundError(f"{path} has no {WEIGHTS_FILE}{hint}")
    config = _check_config(read_json(config_path, "PEFT's adapter config"), str(config_path))
    r, alpha, rslora = config.get("r", 8), float(config.get("lora_alpha", 8)), bool(config.get("use_rslora"))
    with safetensors_io.SafeTensors(weights) as st:
        found = _read_modules(st, model, str(weights))
    rank = max(a.shape[0] for a, _ in found.values())
    targets = {_target(model, p, lo, hi)[0] for p, lo, hi, _ in found}
    lt_alpha = alpha * rank / r  # alpha / r kept: modules at PEFT's default scale need no folding
    adapted = Adapted(model, LoRA(rank, lt_alpha, tuple(targets), float(config.get("lora_dropout") or 0.0)))
    scale = adapted.lora.scale
    values = {}
    for (p, lo, hi, module), (a, b) in found.items():
        r_m = a.shape[0]
        want = _pattern(config.get("rank_pattern") or {}, module, r)
        if r_m != want:
            raise PeftFormatError(f"{weights}: {module} has rank {r_m}, but adapter_config.json gives it rank {want}")
        alpha_m = float(_pattern(config.get("alpha_pattern") or {}, module, alpha))
        s_m = alpha_m / (math.sqrt(r_m) if rslora else r_m)
        block = _target(model, p, lo, hi)[1]
        where = f"{p}.{LORA}" + (f".{block}" if block else "")
        a_lt = np.zeros((a.shape[1], rank))
        a_lt[:, :r_m] = a.T
        b_lt = np.zeros((rank, hi - lo))
        b_lt[:r_m] = b.T if s_m == scale else b.T * (s_m / scale)
        values[f"{where}.a"], values[f"{where}.b"] = a_lt, b_lt
    spec = adapted.spec()
    flat, treedef = tree.flatten(spec)
    leaves = [values.get(p, np.zeros(x.shape)).astype(dtype) for p, x in zip(tree.paths(spec), flat)]
    return adapted, tree.unflatten(treedef, [tree.seal(x) for x in leaves])
