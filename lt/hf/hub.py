"""Hugging Face hub names: ``resolve("gpt2")`` is a local model directory, from the hub's cache.

A path that exists is used as it is, with no dependency. Any other name that can be a hub
repository id (``gpt2``, ``Qwen/Qwen2.5-0.5B``) is fetched by ``huggingface_hub``'s
``snapshot_download`` (the ``hf`` extra) into its cache, files lt reads only: config.json,
the safetensors weights (one file or the index and its shards) and the tokenizer files.
The cache and offline mode are the hub's own: ``HF_HUB_CACHE`` (else ``HF_HOME``/hub),
``HF_HUB_OFFLINE=1`` (the cache only), read when a name is resolved, so a change made after
``huggingface_hub`` was imported counts too. A cached name resolves with no network.

The cache is input too: the folder the hub library returns must lie inside the repository's
``snapshots/`` (a crafted ``refs/main`` of ``../../../elsewhere`` would otherwise load any
directory on the machine), and a ref must be a small regular file (a FIFO would block).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .. import guards
from .files import HFCheckpointError

__all__ = ["resolve", "is_hub_name", "HUB_FILES"]

# What lt reads from a model repository; never PyTorch .bin files, nor the consolidated.* copies.
HUB_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
)

_REPO_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}")
_TRUE = {"1", "ON", "YES", "TRUE"}


def is_hub_name(name: str) -> bool:
    """Whether ``name`` can be a hub repository id: ``name`` or ``org/name`` of letters,
    digits, ``-``, ``_`` and ``.`` (no ``--`` or ``..``, as the hub requires)."""
    return bool(_REPO_ID.fullmatch(name)) and "--" not in name and ".." not in name


def _offline(constants) -> bool:
    """HF_HUB_OFFLINE as set now (else as huggingface_hub read it at import)."""
    value = os.environ.get("HF_HUB_OFFLINE")
    return value.upper() in _TRUE if value is not None else bool(constants.HF_HUB_OFFLINE)


def _cache_dir() -> str | None:
    """HF_HUB_CACHE, else HF_HOME/hub, as set now; None: huggingface_hub's own default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _hub_package():
    try:
        import huggingface_hub
    except ImportError:
        return None
    return huggingface_hub


_MAX_REF = 4096  # a ref holds one commit hash (40 characters)


def _ref(repo: Path, revision: str | None) -> tuple[Path, str | None]:
    """The ref file of ``revision`` (default ``main``) in cache folder ``repo``, and what it
    holds (None when there is none: ``revision`` is a commit); read by the shared guards, so
    a ref that is a FIFO or a huge file is refused naming it."""
    ref = repo / "refs" / (revision or "main")
    if not os.path.lexists(ref):
        return ref, None
    data = guards.read_bytes(ref, "a hub ref (a file holding a commit hash)", _MAX_REF, error=HFCheckpointError)
    return ref, data.decode("utf-8", "replace")


def _snapshot(folder, repo: Path, revision: str | None) -> Path:
    """``folder``, once it lies inside ``repo``'s ``snapshots/`` (links followed); else an
    HFCheckpointError naming the ref (or the revision) that led there."""
    ref, names = _ref(repo, revision)
    who = (
        f"revision {revision!r}: its snapshot" if names is None else f"{ref}: the snapshot its revision {names!r} names"
    )
    snapshots = repo / "snapshots"
    guards.inside(
        folder,
        snapshots,
        who,
        place=f"the hub cache's snapshots folder {snapshots}",
        error=HFCheckpointError,
    )
    return Path(folder)


def resolve(name_or_path, *, revision: str | None = None) -> Path:
    """The local path of ``name_or_path``: itself when it exists or cannot be a repository id
    (``./x``, ``/abs/x``), else the hub cache's snapshot of the repository it names (downloaded
    first unless offline; ``revision`` a branch, tag or commit, default ``main``).

    A name offline and not cached, or unknown to the hub, is a FileNotFoundError saying so;
    without ``huggingface_hub`` it is an ImportError naming the ``hf`` extra."""
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.exists() or not is_hub_name(text):
        return path  # a path: the reader names what is missing there
    hub = _hub_package()
    if hub is None:
        raise ImportError(
            f"{text} is not a local directory; loading it by name from the Hugging Face hub needs "
            "huggingface_hub: pip install 'lt[hf]' (or give the path of a downloaded model directory)"
        )
    from huggingface_hub import constants, errors

    offline, cache = _offline(constants), _cache_dir()
    where = cache or constants.HF_HUB_CACHE
    repo = Path(where) / f"models--{text.replace('/', '--')}"
    _ref(repo, revision)  # before the hub library opens it
    try:
        folder = hub.snapshot_download(
            text,
            revision=revision,
            cache_dir=cache,
            local_files_only=offline,
            allow_patterns=list(HUB_FILES),
            library_name="lt",
        )
    except errors.LocalEntryNotFoundError:
        why = (
            "HF_HUB_OFFLINE is set, so nothing is downloaded: run once with the network (without HF_HUB_OFFLINE)"
            if offline
            else "the hub could not be reached: check the network, or set HF_HUB_CACHE to a cache that holds it"
        )
        raise FileNotFoundError(
            f"{text} is not a local directory and not in the Hugging Face cache {where}; "
            f"{why}, or give a local model directory"
        ) from None
    except errors.GatedRepoError:
        raise PermissionError(
            f"{text} is a gated model on the Hugging Face hub: accept its terms on its page and "
            "log in (hf auth login), then try again"
        ) from None
    except errors.RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{text} is not a local directory, and the Hugging Face hub has no model {text} "
            "(a private one needs hf auth login)"
        ) from None
    except errors.RevisionNotFoundError:
        raise FileNotFoundError(f"{text} has no revision {revision!r} on the Hugging Face hub") from None
    except errors.HFValidationError as e:
        raise ValueError(f"{text} is not a local directory nor a valid hub name ({e})") from None
    return _snapshot(folder, repo, revision)
