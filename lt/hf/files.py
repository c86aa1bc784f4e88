"""Reading a Hugging Face model directory safely: config.json, the shard index, the shards.

Nothing in the directory is trusted before it is checked, with the guards every lt reader
shares (:mod:`lt.guards`). ``config.json`` and the shard index must be regular files of bounded
size (a FIFO would block, a 10 GB "config" would fill memory); every file a loader opens
(config, weights, index, shards, tokenizer files) must lie inside the model directory once
links are followed (:func:`model_file`; a hub snapshot's links into its repository's
``blobs/`` are allowed); shard names must be plain relative names (no NUL byte, absolute path
or ``..``); every config field lt reads must have its JSON type (:func:`check_types`: a
``"false"`` string is not a boolean); tensor names, shapes and dtypes are compared with what
the config implies, from the safetensors headers alone, before any tensor is read, and every
tensor read must be finite. Every problem is an :class:`HFCheckpointError` (a ValueError)
naming the file and the field or tensor, never a NumPy traceback.

A family module (:mod:`lt.hf.gpt2`, :mod:`lt.hf.llama`) says where each lt leaf comes
from as a :class:`Source`: one or more stored tensors, each with the shape the config
implies, transposed or not, concatenated along the last axis (Llama's separate q, k, v
projections become lt's one ``attn.qkv``). :func:`read_params` does the rest.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .. import guards, safetensors_io, tree

__all__ = [
    "HFCheckpointError",
    "MAX_JSON",
    "read_bounded",
    "read_json",
    "read_config",
    "check_types",
    "model_file",
    "shard_files",
    "open_weights",
    "Source",
    "read_params",
    "count_blocks",
    "FLOAT_DTYPES",
]

MAX_JSON = 64 * 2**20  # config.json and the shard index are a few KB; more means corrupt
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # stored dtypes a weight may have; all upcast exactly


class HFCheckpointError(ValueError):
    """A Hugging Face model directory whose files are unsafe or do not fit each other."""


def read_bounded(path: Path, what: str, limit: int = MAX_JSON) -> bytes:
    """The bytes of ``path``: a regular file (a FIFO would block) of at most ``limit`` bytes;
    ``what`` names what it should be (``"the shard index"``)."""
    return guards.read_bytes(path, what, limit, error=HFCheckpointError)


def read_json(path: Path, what: str):
    """The JSON in ``path``, read by :func:`read_bounded`; invalid JSON is an HFCheckpointError."""
    data = read_bounded(path, what)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HFCheckpointError(f"{path}: {what} is not valid JSON ({e})") from None
    except RecursionError:
        raise HFCheckpointError(f"{path}: {what} is JSON nested too deeply to be one") from None


def read_config(path: Path) -> dict:
    """``path``/config.json as a dict (a missing file is a FileNotFoundError)."""
    config_path = path / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(
            f"{path} has no config.json; expected a Hugging Face model directory (config.json and model.safetensors)"
        )
    config = read_json(model_file(path, "config.json"), "the model config (config.json)")
    if not isinstance(config, dict):
        raise HFCheckpointError(
            f"{config_path}: expected a JSON object (a model config), got a JSON {type(config).__name__}"
        )
    return config


# What each kind of config field must be, as JSON: (description, test).
_KINDS: dict[str, tuple[str, Callable[[object], bool]]] = {
    "bool": ("a JSON boolean (true or false)", lambda v: isinstance(v, bool)),
    "int": ("a JSON integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "int?": ("a JSON integer or null", lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool))),
    "number": (
        "a finite JSON number",
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    ),
    "str": ("a JSON string", lambda v: isinstance(v, str)),
    "object?": ("a JSON object or null", lambda v: v is None or isinstance(v, dict)),
    "list?": ("a JSON list or null", lambda v: v is None or isinstance(v, list)),
}


def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_types(config: dict, kinds: dict[str, str], where: str, prefix: str = "") -> None:
    """Every field of ``config`` named in ``kinds`` has its JSON type (``"bool"``, ``"int"``,
    ``"int?"`` (or null), ``"number"``, ``"str"``, ``"object?"``, ``"list?"``), else one
    HFCheckpointError naming the file (``where``), the field (after ``prefix``, for a nested
    object: ``"rope_scaling."``) and the value."""
    for field, kind in kinds.items():
        if field in config:
            expected, ok = _KINDS[kind]
            if not ok(config[field]):
                raise HFCheckpointError(f"{where}: {prefix}{field} must be {expected}, got {_shown(config[field])}")


def _roots(path: Path) -> tuple[Path, tuple[Path, ...]]:
    """Where the files of model directory ``path`` may lie once links are followed: inside it,
    and, for a snapshot of the hub's cache (``models--org--name/snapshots/<rev>``, whose files
    link to ``../../blobs/``), inside that repository's ``blobs/``."""
    root = path.resolve()
    repo = root.parent.parent
    if root.parent.name == "snapshots" and repo.name.startswith("models--") and (repo / "blobs").is_dir():
        return root, (repo / "blobs",)
    return root, ()


def model_file(path: Path, name: str) -> Path:
    """``path / name``, once it is known to lie inside model directory ``path`` with links
    followed (see :func:`_roots`): the one link policy for every file a loader opens."""
    file = path / name
    root, also = _roots(path)
    guards.inside(file, root, str(file), also, place=f"the model directory {path}", error=HFCheckpointError)
    return file


def shard_files(path: Path, index: Path) -> list[Path]:
    """The shard files ``index`` names: relative paths inside ``path`` (a hub cache snapshot's
    links into its blobs are followed), each a regular file."""
    data = read_json(index, "the shard index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise HFCheckpointError(
            f"{index}: expected a JSON object with a 'weight_map' of tensor name -> shard file name"
        )
    root, also = _roots(path)
    place = f"the model directory {path}"
    files = []
    for name in sorted(set(weight_map.values())):
        guards.check_name(name, f"{index}: shard", place=place, error=HFCheckpointError)
        shard = Path(name)
        inside = guards.inside(
            path / shard, root, f"{index}: shard {name!r}", also, place=place, error=HFCheckpointError
        )
        try:
            mode = os.stat(inside).st_mode
        except FileNotFoundError:
            raise FileNotFoundError(f"{index}: shard {name!r} not found in {path}") from None
        if not stat.S_ISREG(mode):
            raise HFCheckpointError(f"{index}: shard {name!r} is not a regular file")
        files.append(path / shard)
    return files


def open_weights(path: Path, prefix: str) -> dict[str, tuple[safetensors_io.SafeTensors, str]]:
    """Every stored tensor name (``prefix`` stripped) -> (the file holding it, its name there).

    The files stay open (one descriptor each) until the caller closes them."""
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.exists():
        files = [model_file(path, single.name)]
    elif index.exists():
        files = shard_files(path, model_file(path, index.name))
    else:
        found = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        raise FileNotFoundError(
            f"{path} has no model.safetensors (found {found}); lt reads "
            "safetensors weights only (re-save with "
            "save_pretrained(..., safe_serialization=True))"
        )
    names: dict = {}
    opened = []
    try:
        for file in files:
            st = safetensors_io.SafeTensors(file)
            opened.append(st)
            if sum(len(o) for o in opened) > safetensors_io.MAX_TENSORS:
                raise HFCheckpointError(f"{path}: its shards hold more than {safetensors_io.MAX_TENSORS} tensors")
            for stored in st:
                name = stored.removeprefix(prefix)
                if name in names:
                    raise HFCheckpointError(f"{path}: tensor {name} is stored twice ({names[name][1]} and {stored})")
                names[name] = (st, stored)
    except BaseException:
        for st in opened:
            st.close()
        raise
    return names


def _finite(st: safetensors_io.SafeTensors, key: str, dtype) -> np.ndarray:
    """Tensor ``key`` of ``st`` as ``dtype``, refused (naming it) when it holds NaN or inf, as
    stored or once narrowed (an F64 value beyond float32's range becomes inf)."""
    stored = st[key]
    guards.finite(stored, f"{st.path}: tensor {key}", error=HFCheckpointError)
    with np.errstate(over="ignore"):  # an overflow becomes inf, refused just below
        array = stored.astype(dtype, copy=False)
    if array.dtype.itemsize < stored.dtype.itemsize:
        guards.finite(
            array,
            f"{st.path}: tensor {key} as {array.dtype}",
            hint=f"refusing to load it (a value beyond {array.dtype}'s range: load with dtype=np.float64)",
            error=HFCheckpointError,
        )
    return array


class Source(NamedTuple):
    """Where one lt leaf comes from: stored ``tensors`` (name, shape the config implies), each
    transposed when ``transpose`` (torch's Linear is (out, in), lt's (in, out)), then joined
    along the last axis."""

    tensors: tuple[tuple[str, tuple[int, ...]], ...]
    transpose: bool = False


def count_blocks(stored, block_prefix: str) -> int:
    """How many distinct blocks ``{block_prefix}.{i}.…`` the stored names hold."""
    pattern = re.compile(rf"{re.escape(block_prefix)}\.(\d+)\.")
    return len({m.group(1) for name in stored if (m := pattern.match(name))})


def read_params(
    path: Path, model, stored: dict, dtype, sources: Callable[[str], Source], skip: Callable[[str], bool], kind: str
):
    """The frozen params of ``model`` from the ``stored`` tensors (as :func:`open_weights` gives).

    ``sources(lt_path)`` says where each leaf comes from; a stored tensor no leaf uses is an
    error unless ``skip(name)`` (``kind`` names the model in that message). Shapes and dtypes are
    checked from the headers, all of them before any tensor is read."""
    spec = model.spec()
    spec_leaves, treedef = tree.flatten(spec)
    plan = []
    for lt_path, param in zip(tree.paths(spec), spec_leaves):
        source = sources(lt_path)
        for name, expected in source.tensors:
            if name not in stored:
                raise HFCheckpointError(
                    f"{path}: missing tensor {name} (lt {lt_path}), expected shape {expected} from config.json"
                )
            st, key = stored[name]
            found = st.shape(key)
            if found != expected:
                raise HFCheckpointError(
                    f"{st.path}: tensor {key} has shape {found}, expected {expected} (lt {lt_path}) from config.json"
                )
            if st.dtype(key) not in FLOAT_DTYPES:
                raise HFCheckpointError(
                    f"{st.path}: tensor {key} is {st.dtype(key)}; weights must be "
                    f"floating point ({', '.join(FLOAT_DTYPES)})"
                )
        plan.append((lt_path, param.shape, source))
    used = {name for _, _, source in plan for name, _ in source.tensors}
    extra = [name for name in stored if name not in used and not skip(name)]
    if extra:
        raise HFCheckpointError(
            f"{path}: unexpected tensors {extra[:5]}{' ...' if len(extra) > 5 else ''} "
            f"(not part of a {kind} with this config.json)"
        )
    leaves = []
    for lt_path, shape, source in plan:
        parts = []
        for name, _ in source.tensors:
            st, key = stored[name]
            array = _finite(st, key, dtype)
            parts.append(array.T if source.transpose else array)
        array = np.ascontiguousarray(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1))
        assert array.shape == shape, (lt_path, array.shape, shape)  # the sources' shapes imply it
        array.flags.writeable = False
        leaves.append(array)
    params = tree.freeze(tree.unflatten(treedef, leaves))
    model.check_params(params)
    return params
