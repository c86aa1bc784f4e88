"""Reading a Hugging Face model directory safely: config.json, the shard index, the shards.

Nothing in the directory is trusted before it is checked. ``config.json`` and the shard
index must be regular files of bounded size (a FIFO would block, a 10 GB "config" would
fill memory); shards must be regular files inside the model directory (no absolute or
``..`` names, no symlinks out of it); tensor names, shapes and dtypes are compared with
what the config implies, from the safetensors headers alone, before any tensor is read.
Every problem is an :class:`HFCheckpointError` (a ValueError) naming the file and the
field or tensor, never a NumPy traceback.

A family module (:mod:`lt.hf.gpt2`, :mod:`lt.hf.llama`) says where each lt leaf comes
from as a :class:`Source`: one or more stored tensors, each with the shape the config
implies, transposed or not, concatenated along the last axis (Llama's separate q, k, v
projections become lt's one ``attn.qkv``). :func:`read_params` does the rest.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .. import safetensors_io, tree

__all__ = [
    "HFCheckpointError",
    "MAX_JSON",
    "read_bounded",
    "read_json",
    "read_config",
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
    """The bytes of ``path``: a regular file (a FIFO would block) of at most ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError:
        raise HFCheckpointError(f"{path}: is a directory, expected the {what} (a JSON file)") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise HFCheckpointError(
                f"{path}: is not a regular file (a FIFO, device or socket?); expected the {what} (a JSON file)"
            )
        if info.st_size > limit:
            raise HFCheckpointError(f"{path}: is {info.st_size} bytes, more than the {limit} a {what} may be")
        data = f.read(limit + 1)
    if len(data) > limit:  # grew after the size check
        raise HFCheckpointError(f"{path}: is more than the {limit} bytes a {what} may be")
    return data


def read_json(path: Path, what: str):
    """The JSON in ``path``, read by :func:`read_bounded`; invalid JSON is an HFCheckpointError."""
    data = read_bounded(path, what)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HFCheckpointError(f"{path}: the {what} is not valid JSON ({e})") from None
    except RecursionError:
        raise HFCheckpointError(f"{path}: the {what} is JSON nested too deeply to be one") from None


def read_config(path: Path) -> dict:
    """``path``/config.json as a dict (a missing file is a FileNotFoundError)."""
    config_path = path / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(
            f"{path} has no config.json; expected a Hugging Face model directory (config.json and model.safetensors)"
        )
    config = read_json(config_path, "model config (config.json)")
    if not isinstance(config, dict):
        raise HFCheckpointError(
            f"{config_path}: expected a JSON object (a model config), got a JSON {type(config).__name__}"
        )
    return config


def _allowed_root(path: Path) -> Path:
    """Where the files of model directory ``path`` may lie once links are followed: inside it, or,
    for a snapshot of the hub's cache (``models--org--name/snapshots/<rev>``, whose files link to
    ``../../blobs/``), inside that repository's cache folder."""
    root = path.resolve()
    if (
        root.parent.name == "snapshots"
        and root.parent.parent.name.startswith("models--")
        and (root.parent.parent / "blobs").is_dir()
    ):
        return root.parent.parent
    return root


def shard_files(path: Path, index: Path) -> list[Path]:
    """The shard files ``index`` names: relative paths inside ``path`` (a hub cache snapshot's
    links into its blobs are followed), each a regular file."""
    data = read_json(index, "shard index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise HFCheckpointError(
            f"{index}: expected a JSON object with a 'weight_map' of tensor name -> shard file name"
        )
    root = _allowed_root(path)
    files = []
    for name in sorted(set(weight_map.values())):
        shard = Path(name)
        inside = (path / shard).resolve()
        if shard.is_absolute() or ".." in shard.parts or not inside.is_relative_to(root):
            raise HFCheckpointError(
                f"{index}: shard {name!r} is outside the model directory {path}; shard names must be files inside it"
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
        files = [single]
    elif index.exists():
        files = shard_files(path, index)
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
            array = st[key].astype(dtype, copy=False)
            parts.append(array.T if source.transpose else array)
        array = np.ascontiguousarray(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1))
        assert array.shape == shape, (lt_path, array.shape, shape)  # the sources' shapes imply it
        array.flags.writeable = False
        leaves.append(array)
    params = tree.freeze(tree.unflatten(treedef, leaves))
    model.check_params(params)
    return params
