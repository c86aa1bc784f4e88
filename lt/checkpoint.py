"""Checkpoints: params, optimizer state and step in one safetensors file (lt.safetensors_io).

Tensors are keyed ``params/<path>`` and ``opt_state/<path>`` by tree path; the header
metadata holds the format name and version, the step and the model config (JSON), so a
checkpoint alone rebuilds its model. Files are written to a temporary name in the same
directory, fsynced and renamed over the old one: a crash leaves the previous checkpoint
whole. Loading checks the format, the config and every path, shape and dtype, and raises
:class:`CheckpointError` saying what differs.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, NamedTuple

import attrs
import numpy as np

from . import safetensors_io, tree
from .nn import GPT
from .safetensors_io import SafetensorsError

__all__ = ["CheckpointError", "Checkpoint", "save", "load", "load_model", "read_metadata",
           "FORMAT", "FORMAT_VERSION"]

FORMAT = "lt-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is unreadable, truncated, or does not fit what it is loaded into."""


class Checkpoint(NamedTuple):
    model: GPT
    params: Any
    opt_state: Any          # None when the file holds no optimizer state or none was asked for
    step: int
    metadata: dict


def model_config(model: GPT) -> dict:
    return attrs.asdict(model)


def save(path, model: GPT, params, opt_state=None, step: int = 0, metadata: dict | None = None) -> None:
    """Write a checkpoint atomically. ``metadata`` adds string entries to the header."""
    model.check_params(params)
    tensors = {f"params/{p}": np.asarray(x, order="C") for p, x in tree.items(params)}
    if opt_state is not None:
        tensors.update({f"opt_state/{p}": np.asarray(x, order="C") for p, x in tree.items(opt_state)})
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update({"format": FORMAT, "format_version": str(FORMAT_VERSION), "step": str(int(step)),
                 "model": json.dumps(model_config(model), sort_keys=True),
                 "has_opt_state": "1" if opt_state is not None else "0"})
    safetensors_io.save(path, tensors, meta)


def _open(path):
    """(metadata, tensors) of an lt checkpoint file, or a CheckpointError saying why not."""
    meta = read_metadata(path)
    try:
        return meta, safetensors_io.load(path)
    except SafetensorsError as e:
        raise CheckpointError(f"not a readable checkpoint (truncated or corrupt?): {e}") from None


def read_metadata(path) -> dict:
    """The header metadata of a checkpoint, checked to be lt's format and a known version."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        meta = dict(safetensors_io.SafeTensors(path).metadata)
    except SafetensorsError as e:
        raise CheckpointError(f"not a readable checkpoint (truncated or corrupt?): {e}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not an lt checkpoint "
                              f"(format {meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(f"{path} has checkpoint format version {meta.get('format_version')}; "
                              f"this lt reads version {FORMAT_VERSION}")
    return meta


def _model_from(meta: dict, path) -> GPT:
    try:
        return GPT(**json.loads(meta["model"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: the model config in the header is unusable: {e}") from None


def _fill(template, tensors: dict, prefix: str, path, what: str):
    """``template``'s tree with each leaf read from ``tensors[prefix + path]``, checked."""
    flat, treedef = tree.flatten(template)
    names = [f"{prefix}{p}" for p in tree.paths(template)]
    out = []
    for name, leaf in zip(names, flat):
        if name not in tensors:
            raise CheckpointError(f"{path}: missing tensor {name} for the {what}")
        got, want = tensors[name], np.asarray(leaf)
        if got.shape != want.shape or got.dtype != want.dtype:
            raise CheckpointError(f"{path}: tensor {name} is {got.dtype}{list(got.shape)}, "
                                  f"the {what} expects {want.dtype}{list(want.shape)}")
        out.append(got)
    extra = sorted(k for k in tensors if k.startswith(prefix) and k not in set(names))
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor {extra[0]} (not part of the {what})")
    return tree.freeze(tree.unflatten(treedef, out))


def load(path, model: GPT | None = None, opt_state_template=None) -> Checkpoint:
    """Read a checkpoint, checking it against ``model`` (default: the one in the file).

    ``opt_state_template`` — e.g. ``optimizer.init(params)`` — gives the optimizer state's
    structure; without it the optimizer state is not read.
    """
    meta, tensors = _open(path)
    stored = _model_from(meta, path)
    if model is not None and model != stored:
        diff = [f"{k}={v!r} in the file, {getattr(model, k)!r} expected"
                for k, v in model_config(stored).items() if getattr(model, k) != v]
        raise CheckpointError(f"{path} is a checkpoint of another model: " + "; ".join(diff))
    model = stored
    template = _params_template(model, tensors, path)
    params = _fill(template, tensors, "params/", path, "model's params")
    opt_state = None
    if opt_state_template is not None:
        if meta.get("has_opt_state") != "1":
            raise CheckpointError(f"{path} holds no optimizer state")
        opt_state = _fill(opt_state_template, tensors, "opt_state/", path, "optimizer state")
    return Checkpoint(model, params, opt_state, int(meta["step"]), meta)


def _params_template(model: GPT, tensors: dict, path):
    """Empty arrays shaped like the model's params, in the dtype the file stores."""
    dtype = next((t.dtype for k, t in tensors.items() if k.startswith("params/")), None)
    if dtype is None:
        raise CheckpointError(f"{path} holds no params")
    return tree.map(lambda p: np.empty(p.shape, dtype), model.spec())


def load_model(path) -> tuple[GPT, Any]:
    """``(model, params)`` from a checkpoint, the model rebuilt from the file's config."""
    ckpt = load(path)
    return ckpt.model, ckpt.params
