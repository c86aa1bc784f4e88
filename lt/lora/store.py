"""A LoRA run's file: its adapters, optimizer state and step, and a record of the base they need.

``adapters.safetensors`` (in a run directory, beside ``run.json``) holds the tensors
``adapters/<path>`` and ``opt_state/<path>``, and in its header the format, the step, the LoRA
settings, the base model's config and :class:`BaseRecord`: where the base weights are (a
Hugging Face directory or hub name), the SHA-256 of those weights as lt loads them, and the
quantization the run trained over. The base is never copied into the run: loading reads it
from its path and refuses weights whose fingerprint differs (another model, or a changed one).
"""

from __future__ import annotations

import hashlib
import json

import attrs
import numpy as np

from .. import guards, quant, safetensors_io, tree
from ..nn import GPT, config
from .adapters import Adapted
from .config import LoRA

__all__ = ["ADAPTERS_FILE", "BaseRecord", "fingerprint", "save", "load", "load_base", "load_adapted", "LoraRunError"]

ADAPTERS_FILE = "adapters.safetensors"
FORMAT, VERSION = "lt-lora", 1


class LoraRunError(ValueError):
    """A LoRA run's adapters file that is corrupt, or a base that is not the one it was trained on."""


def fingerprint(params) -> str:
    """SHA-256 of a float params tree: every leaf's path, dtype, shape and bytes, in path order."""
    h = hashlib.sha256()
    for path, x in tree.items(params):
        x = np.ascontiguousarray(x)
        h.update(f"{path}:{x.dtype.str}:{x.shape};".encode())
        h.update(x.data)
    return h.hexdigest()


@attrs.frozen
class BaseRecord:
    """The base a run's adapters need: ``path`` (as ``lt.hf.from_hf`` takes it), the
    :func:`fingerprint` of its float32 weights, and ``quantize`` (None, "int8" or "int4")."""

    path: str
    sha256: str
    quantize: str | None = attrs.field(default=None, validator=attrs.validators.in_((None, "int8", "int4")))


def save(path, adapted: Adapted, adapters, base: BaseRecord, opt_state=None, step: int = 0) -> None:
    """Write a LoRA run's file atomically; NaN or inf in it is refused, nothing written."""
    adapted.check_adapters(adapters)
    tensors = {f"adapters/{p}": np.asarray(x) for p, x in tree.items(adapters)}
    if opt_state is not None:
        tensors.update({f"opt_state/{p}": np.asarray(x) for p, x in tree.items(opt_state)})
    for name, x in tensors.items():
        guards.finite(x, f"step {step}: {name}", hint=f"not written ({path} is left as it was)")
    meta = {
        "format": FORMAT,
        "format_version": str(VERSION),
        "step": str(int(step)),
        "lora": json.dumps(attrs.asdict(adapted.lora), sort_keys=True),
        "model": json.dumps(config(adapted.model), sort_keys=True),
        "base": json.dumps(attrs.asdict(base), sort_keys=True),
        "has_opt_state": "1" if opt_state is not None else "0",
    }
    safetensors_io.save(path, tensors, meta)


def _field(meta: dict, name: str, path, build):
    try:
        return build(json.loads(meta[name]))
    except (KeyError, TypeError, ValueError) as e:
        raise LoraRunError(f"{path}: header field {name!r} is missing or invalid ({e})") from None


def load(path) -> tuple[Adapted, object, BaseRecord, int]:
    """``(adapted, adapters, base record, step)`` of a LoRA run's file, every tensor's name and
    shape checked against the LoRA settings it records before any is read."""
    with safetensors_io.SafeTensors(path) as st:
        meta = dict(st.metadata)
        if meta.get("format") != FORMAT or meta.get("format_version") != str(VERSION):
            raise LoraRunError(
                f"{path} is not an lt LoRA adapters file (format {meta.get('format')!r} version "
                f"{meta.get('format_version')!r}; expected {FORMAT!r} version {VERSION})"
            )
        model = _field(meta, "model", path, lambda v: GPT(**v))
        lora = _field(meta, "lora", path, lambda v: LoRA(**{**v, "targets": tuple(v["targets"])}))
        base = _field(meta, "base", path, lambda v: BaseRecord(**v))
        step = _field(meta, "step", path, int)
        adapted = Adapted(model, lora)
        spec = adapted.spec()
        flat, treedef = tree.flatten(spec)
        leaves = []
        for p, want in zip(tree.paths(spec), flat):
            name = f"adapters/{p}"
            if name not in st or st.shape(name) != want.shape or st.numpy_dtype(name) not in (np.float32, np.float64):
                got = f"{st.dtype(name)}{list(st.shape(name))}" if name in st else "nothing"
                raise LoraRunError(f"{path}: {name} should be a float tensor of shape {list(want.shape)}, got {got}")
            x = st[name]
            guards.finite(x, f"{path}: {name}", error=LoraRunError)
            leaves.append(tree.seal(x))
    return adapted, tree.unflatten(treedef, leaves), base, step


def load_base(record: BaseRecord, model: GPT | None = None):
    """``(model, params)`` of the base a record names, refused (:class:`LoraRunError`) unless its
    weights have the recorded fingerprint; quantized as the run trained over it."""
    from .. import hf

    base_model, params = hf.from_hf(record.path)
    got = fingerprint(params)
    if got != record.sha256:
        raise LoraRunError(
            f"the base model at {record.path} is not the one these adapters were trained on: its weights' "
            f"SHA-256 is {got[:16]}..., the run recorded {record.sha256[:16]}...; restore that model there"
        )
    if model is not None and attrs.evolve(base_model, dropout=model.dropout) != model:
        raise LoraRunError(f"the base model at {record.path} has another configuration than the run's")
    if record.quantize is not None:
        params = quant.quantize(params, bits=int(record.quantize[3:]), model=base_model)
    return base_model if model is None else model, params


def load_adapted(path) -> tuple[GPT, object]:
    """``(adapted model, its params)`` of a LoRA run's file: the base read and checked, the
    adapters joined to it; ready for ``apply``, ``generate`` and ``lt.training.evaluate``."""
    adapted, adapters, record, _ = load(path)
    _, base = load_base(record, adapted.model)
    return adapted.gpt, adapted.params(base, adapters)
