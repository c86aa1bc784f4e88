"""Checkpoints: params, optimizer state and step in one safetensors file (lt.safetensors_io).

Tensors are keyed ``params/<path>`` and ``opt_state/<path>`` by tree path; the header
metadata holds the format name and version, the step and the model config (JSON), so a
checkpoint alone rebuilds its model. Files are written to a temporary name in the same
directory, fsynced and renamed over the old one: a crash leaves the previous checkpoint
whole. Loading checks the format, the config and every path, shape and dtype, and raises
:class:`CheckpointError` saying what differs.

Nothing in a file is trusted before it is checked: header fields (``step``, each model
config field) are validated with the field named; the config is compared with the
tensors the header lists (their names and shapes) before anything of the config's size
is built or allocated; params must be floating point. A load reads the metadata and every
tensor through one open file, so a checkpoint renamed over the path meanwhile is never
mixed in. A tree with NaN or inf is never written (``save`` refuses it, naming the step
and the leaf, and leaves the previous file in place) nor loaded
(:class:`NonFiniteCheckpointError`, naming the tensor).

Quantized params (``lt.quantize``) save each quantized leaf as two tensors,
``params/<path>.codes`` (I8 or U8) and ``params/<path>.scales`` (the params' float dtype),
with the schemes in the header field ``quantized`` (JSON: path -> bits, group size, axis, and
``signed_scales: true`` for a leaf loaded from GGUF's Q4_0); they load back bit-exactly, checked
like every other tensor (scales finite, and >= 0 unless signed).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, NamedTuple

import numpy as np

from . import _checks, donation, guards, quant, safetensors_io, tree
from .nn import GPT, config
from .safetensors_io import SafetensorsError

__all__ = [
    "CheckpointError",
    "NonFiniteCheckpointError",
    "Checkpoint",
    "save",
    "load",
    "load_model",
    "read_metadata",
    "FORMAT",
    "FORMAT_VERSION",
]

FORMAT = "lt-checkpoint"
FORMAT_VERSION = 1
_FLOATS = ("F32", "F64")  # the stored dtypes a params tree may have (as init makes)


class CheckpointError(ValueError):
    """A checkpoint that is unreadable, truncated, or does not fit what it is loaded into."""


class NonFiniteCheckpointError(CheckpointError, FloatingPointError):
    """A params tree or optimizer state with NaN or inf values, refused on save and on load."""


class Checkpoint(NamedTuple):
    model: GPT
    params: Any
    opt_state: Any  # None when the file holds no optimizer state or none was asked for
    step: int
    metadata: dict


def model_config(model: GPT) -> dict:
    """The model's hyperparameters as the checkpoint's header stores them (``lt.nn.config``)."""
    return config(model)


def save(path, model: GPT, params, opt_state=None, step: int = 0, metadata: dict | None = None) -> None:
    """Write a checkpoint atomically. ``metadata`` adds string entries to the header.

    A params tree or optimizer state holding NaN or inf is refused with
    :class:`NonFiniteCheckpointError` naming the step and the first bad leaf, and nothing is
    written: a diverged model never replaces the last good checkpoint.
    """
    donation.check((params, opt_state), "checkpoint.save")
    model.check_params(params)
    step = _checks.integer(step, "checkpoint step", low=0)
    opt_items = tree.items(opt_state) if opt_state is not None else []
    for what, prefix, items in (("params", "", _stored_items(params)), ("optimizer state", "opt_state/", opt_items)):
        for leaf, x in items:
            guards.finite(
                x,
                f"step {step}: {what} leaf {prefix}{leaf}",
                hint=f"checkpoint not written ({path} is left as it was)",
                error=NonFiniteCheckpointError,
            )
    tensors, schemes = _param_tensors(params)
    if opt_state is not None:
        tensors.update({f"opt_state/{p}": np.asarray(x, order="C") for p, x in tree.items(opt_state)})
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update(
        {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "step": str(step),
            "model": json.dumps(model_config(model), sort_keys=True),
            "has_opt_state": "1" if opt_state is not None else "0",
        }
    )
    if schemes:
        meta["quantized"] = json.dumps(schemes, sort_keys=True)
    safetensors_io.save(path, tensors, meta)


def _stored_items(params) -> list:
    """(name under ``params/``, array) of every tensor ``params`` is stored as: a float leaf is
    one, a quantized leaf two (``<path>.codes``, ``<path>.scales``)."""
    out = []
    for p, x in tree.items(params):
        if quant.is_quantized(x):
            out += [(f"{p}.codes", x.codes), (f"{p}.scales", x.scales)]
        else:
            out.append((p, x))
    return out


def _param_tensors(params) -> tuple[dict, dict]:
    """The tensors a params tree is saved as, and the quantized leaves' schemes by path."""
    tensors = {f"params/{p}": np.asarray(x, order="C") for p, x in _stored_items(params)}
    schemes = {p: x.scheme for p, x in tree.items(params) if quant.is_quantized(x)}
    return tensors, schemes


def _open(path) -> safetensors_io.SafeTensors:
    """The open lt checkpoint at ``path`` (format and version checked), or a CheckpointError.

    Everything one call reads — metadata and every tensor — comes through this one open
    file, so a checkpoint renamed over ``path`` meanwhile is never mixed in.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        st = safetensors_io.SafeTensors(path)
    except SafetensorsError as e:
        raise CheckpointError(f"not a readable checkpoint (truncated or corrupt?): {e}") from None
    meta = st.metadata
    try:
        if meta.get("format") != FORMAT:
            raise CheckpointError(
                f"{path} is a safetensors file but not an lt checkpoint "
                f"(format {meta.get('format')!r}, expected {FORMAT!r})"
            )
        if meta.get("format_version") != str(FORMAT_VERSION):
            raise CheckpointError(
                f"{path} has checkpoint format version {meta.get('format_version')}; "
                f"this lt reads version {FORMAT_VERSION}"
            )
    except BaseException:
        st.close()
        raise
    return st


def read_metadata(path) -> dict:
    """The header metadata of a checkpoint, checked to be lt's format and a known version."""
    with _open(path) as st:
        return dict(st.metadata)


def _step_from(meta: dict, path) -> int:
    text = meta.get("step")
    try:
        return _checks.integer(int(text) if isinstance(text, str) and text.strip().isdigit() else text, "step", low=0)
    except ValueError:
        raise CheckpointError(f"{path}: header field 'step' is {text!r}, expected a non-negative integer") from None


def _model_from(meta: dict, path) -> GPT:
    if "model" not in meta:
        raise CheckpointError(f"{path}: header field 'model' (the model config) is missing")
    try:
        config = json.loads(meta["model"])
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(
            f"{path}: header field 'model' is not a JSON model config ({type(e).__name__}: {str(e)[:200]})"
        ) from None
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path}: header field 'model' is a JSON {type(config).__name__}, expected an object of GPT fields"
        )
    try:
        if "layer_norm_eps" in config:
            _checks.real(config["layer_norm_eps"], "GPT.layer_norm_eps", 0, low_open=True)
        if not isinstance(config.get("tie_embeddings", True), bool):
            raise ValueError(f"GPT.tie_embeddings must be true or false, got {config['tie_embeddings']!r}")
        return GPT(**config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: header field 'model' (the model config) is unusable: {e}") from None


def _check_against_header(st, path, prefix: str, what: str, names: list, shapes: list, dtypes: list | None) -> None:
    """Every name present with its shape (and dtype), and nothing else under ``prefix``:
    checked from the header alone, before any tensor is read."""
    for name, shape, i in zip(names, shapes, range(len(names))):
        if name not in st:
            raise CheckpointError(f"{path}: missing tensor {name} for the {what}")
        got_shape, got_dtype = st.shape(name), st.numpy_dtype(name)
        want_dtype = dtypes[i] if dtypes is not None else got_dtype
        if got_shape != tuple(shape) or got_dtype != want_dtype:
            raise CheckpointError(
                f"{path}: tensor {name} is {got_dtype}{list(got_shape)}, the {what} expects {want_dtype}{list(shape)}"
            )
    known = set(names)
    extra = sorted(k for k in st if k.startswith(prefix) and k not in known)
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor {extra[0]} (not part of the {what})")


def _read_checked(st, path, prefix: str, what: str, treedef, leaf_paths: list, schemes: dict | None = None):
    """The tree of tensors ``prefix + leaf_path``, refusing non-finite values, frozen; a path in
    ``schemes`` (path -> (scheme, shape)) is a quantized leaf, read from its ``.codes`` and
    ``.scales`` tensors."""

    def read(name):
        try:
            x = st[prefix + name]
        except SafetensorsError as e:
            raise CheckpointError(f"not a readable checkpoint (truncated or corrupt?): {e}") from None
        guards.finite(x, f"{path}: {what} tensor {prefix}{name}", error=NonFiniteCheckpointError)
        return x

    out = []
    for p in leaf_paths:
        if schemes and p in schemes:
            scheme, shape = schemes[p]
            try:
                x = quant.QuantizedArray(read(f"{p}.codes"), read(f"{p}.scales"), **scheme, shape=shape, copy=False)
            except ValueError as e:
                raise CheckpointError(f"{path}: quantized {what} leaf {p}: {e}") from None
        else:
            x = tree.seal(read(p))  # a fresh array nobody else holds: sealed, not copied
        out.append(x)
    return tree.freeze(tree.unflatten(treedef, out))


_SCHEME_KEYS = {"bits", "group_size", "axis", "signed_scales"}


def _quantized_schemes(meta: dict, path, spec_shapes: dict) -> dict:
    """The header field ``quantized`` checked against the model's params: path -> (scheme, shape)."""
    text = meta.get("quantized")
    if text is None:
        return {}
    try:
        schemes = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: header field 'quantized' is not JSON ({type(e).__name__})") from None
    if not isinstance(schemes, dict):
        raise CheckpointError(
            f"{path}: header field 'quantized' must map param paths to schemes, got a JSON {type(schemes).__name__}"
        )
    out = {}
    for p, scheme in schemes.items():
        if p not in spec_shapes or len(spec_shapes[p]) != 2:
            raise CheckpointError(
                f"{path}: header field 'quantized' names {p!r}, which is not a matrix of the model's params"
            )
        if not isinstance(scheme, dict) or not {"bits", "group_size", "axis"} <= set(scheme) <= _SCHEME_KEYS:
            raise CheckpointError(
                f"{path}: quantized scheme of {p} must be {{bits, group_size, axis}} (and optionally "
                f"signed_scales), got {scheme!r}"
            )
        signed = scheme.get("signed_scales", False)
        bits, G, axis = scheme["bits"], scheme["group_size"], scheme["axis"]
        if (
            type(bits) is not int
            or bits not in quant.SCHEMES
            or type(G) is not int
            or G < 1
            or (bits == 4 and G % 2)
            or type(axis) is not int
            or axis not in (0, 1)
            or type(signed) is not bool
        ):
            raise CheckpointError(
                f"{path}: quantized scheme of {p} is unusable: {scheme!r} (bits 8 or 4, "
                "a positive group_size, even for 4 bits, axis 0 or 1)"
            )
        out[p] = ({"bits": bits, "group_size": G, "axis": axis, "signed_scales": signed}, tuple(spec_shapes[p]))
    return out


def _params_layout(model: GPT, st, path) -> tuple[list, Any, np.dtype | None, dict]:
    """(paths, treedef, stored dtype, quantized schemes) of ``model``'s params, checked against
    the header before anything of the config's size is built or allocated."""
    stored = [k for k in st if k.startswith("params/")]
    if not stored:
        raise CheckpointError(f"{path} holds no params")
    # The spec grows with num_layers: compare that to the blocks the file holds before
    # building it, so a config claiming 10**9 layers costs nothing.
    blocks = {k.split(".")[1] for k in stored if k.startswith("params/blocks.") and k.count(".") >= 2}
    if model.num_layers > len(blocks):
        raise CheckpointError(
            f"{path}: the model config says num_layers={model.num_layers}, but the "
            f"file holds params of {len(blocks)} blocks"
        )
    spec_leaves, treedef = tree.flatten(model.spec())
    leaf_paths = tree.paths(model.spec())
    schemes = _quantized_schemes(st.metadata, path, dict(zip(leaf_paths, (x.shape for x in spec_leaves))))
    first = next((f"params/{p}" for p in leaf_paths if p not in schemes), f"params/{leaf_paths[0]}")
    kind = st.dtype(first) if first in st else None
    if kind is not None and kind not in _FLOATS:
        raise CheckpointError(f"{path}: tensor {first} is {kind}; params must be floating point ({', '.join(_FLOATS)})")
    dtype = st.numpy_dtype(first) if kind is not None else None
    names, shapes, dtypes = [], [], []
    for p, leaf in zip(leaf_paths, spec_leaves):
        if p not in schemes:
            names.append(f"params/{p}")
            shapes.append(leaf.shape)
            dtypes.append(dtype)
            continue
        scheme = schemes[p][0]
        R, K, G = leaf.shape[1 - scheme["axis"]], leaf.shape[scheme["axis"]], scheme["group_size"]
        Kp = -(-K // G) * G
        names += [f"params/{p}.codes", f"params/{p}.scales"]
        shapes += [(R, Kp if scheme["bits"] == 8 else Kp // 2), (R, Kp // G)]
        dtypes += [np.dtype(np.int8 if scheme["bits"] == 8 else np.uint8), dtype]
    _check_against_header(st, path, "params/", "model's params", names, shapes, None if dtype is None else dtypes)
    return leaf_paths, treedef, dtype, schemes


def load(path, model: GPT | None = None, opt_state_template=None) -> Checkpoint:
    """Read a checkpoint, checking it against ``model`` (default: the one in the file).

    ``opt_state_template`` — e.g. ``optimizer.init(params)`` — gives the optimizer state's
    structure; without it the optimizer state is not read. Every header field, tensor name,
    shape and dtype is checked before a tensor is read, and params or optimizer state holding
    NaN or inf are refused (:class:`NonFiniteCheckpointError`, naming the tensor).
    """
    with _open(path) as st:
        meta = dict(st.metadata)
        stored = _model_from(meta, path)
        step = _step_from(meta, path)
        if model is not None and model != stored:
            diff = [
                f"{k}={v!r} in the file, {getattr(model, k)!r} expected"
                for k, v in model_config(stored).items()
                if getattr(model, k) != v
            ]
            raise CheckpointError(f"{path} is a checkpoint of another model: " + "; ".join(diff))
        model = stored
        leaf_paths, treedef, _, schemes = _params_layout(model, st, path)
        params = _read_checked(st, path, "params/", "params", treedef, leaf_paths, schemes)
        opt_state = None
        if opt_state_template is not None:
            if meta.get("has_opt_state") != "1":
                raise CheckpointError(f"{path} holds no optimizer state")
            flat, opt_def = tree.flatten(opt_state_template)
            opt_paths = tree.paths(opt_state_template)
            leaves = [np.asarray(x) for x in flat]
            _check_against_header(
                st,
                path,
                "opt_state/",
                "optimizer state",
                [f"opt_state/{p}" for p in opt_paths],
                [x.shape for x in leaves],
                [x.dtype.newbyteorder("=") for x in leaves],
            )
            opt_state = _read_checked(st, path, "opt_state/", "optimizer state", opt_def, opt_paths)
    return Checkpoint(model, params, opt_state, step, meta)


def load_model(path) -> tuple[GPT, Any]:
    """``(model, params)`` from a checkpoint, the model rebuilt from the file's config."""
    ckpt = load(path)
    return ckpt.model, ckpt.params
