"""The guards every reader of an untrusted file shares: a file is input, checked before it is used.

Each reader in lt (checkpoints, safetensors, Hugging Face directories, tokenizers, run logs)
opens files through these, so a new format cannot forget one:

- :func:`open_regular` / :func:`read_bytes`: a regular file (a FIFO would block the read, a
  device never ends), opened without blocking, of at most ``limit`` bytes;
- :func:`inside`: a path that, links followed, lies inside its folder (or one of a few others,
  as a hub snapshot's files lie in their repository's ``blobs/``);
- :func:`check_name`: a file name read from a file (a shard index) that can only name a file
  inside its folder: no NUL byte, no absolute path, no ``..``;
- :func:`finite`: an array without NaN or inf.

Every refusal is one exception of the caller's class (``error``, a ValueError by default; a
missing file is a FileNotFoundError) whose message names the file and what was expected.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterable
from pathlib import Path, PurePath

import numpy as np

__all__ = ["open_regular", "read_bytes", "inside", "check_name", "finite"]

_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


def open_regular(path, what: str, limit: int | None = None, *, error: type[Exception] = ValueError) -> io.FileIO:
    """``path`` opened for reading (unbuffered, binary): a regular file of at most ``limit`` bytes.

    The open never blocks (O_NONBLOCK: a FIFO with no writer would), and the check is made on the
    open descriptor, so what is read is what was checked. ``what`` says what the file should be
    (``"a safetensors file"``); it ends every message."""
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; expected {what}") from None
    except IsADirectoryError:  # where a directory cannot be opened (Windows); Linux opens it
        raise error(f"{path}: is a directory; expected {what}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise error(f"{path}: is a directory; expected {what}")
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: is not a regular file (a FIFO, device or socket?); expected {what}")
        if limit is not None and info.st_size > limit:
            raise error(f"{path}: is {info.st_size} bytes, more than the {limit} lt reads for {what}")
        return io.FileIO(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path, what: str, limit: int, *, error: type[Exception] = ValueError) -> bytes:
    """The bytes of ``path``, opened by :func:`open_regular`; a file that grows past ``limit``
    while it is read is refused too."""
    with open_regular(path, what, limit, error=error) as f:
        chunks, left = [], limit + 1
        while left and (chunk := f.read(left)):
            chunks.append(chunk)
            left -= len(chunk)
    data = b"".join(chunks)
    if len(data) > limit:
        raise error(f"{path}: is more than the {limit} bytes lt reads for {what}")
    return data


def inside(
    path,
    root,
    what: str,
    also: Iterable = (),
    *,
    place: str | None = None,
    error: type[Exception] = ValueError,
) -> Path:
    """``path`` resolved (links followed), once it is known to lie inside ``root`` or one of the
    folders ``also``; else ``error`` naming ``what`` (the file), ``place`` (default: ``root``)
    and where the path leads."""
    resolved = Path(path).resolve()
    for folder in (root, *also):
        if resolved.is_relative_to(Path(folder).resolve()):
            return resolved
    raise error(f"{what} is outside {place or root} (it resolves to {resolved})")


def check_name(name: str, what: str, *, place: str = "its folder", error: type[Exception] = ValueError) -> str:
    """``name``, a file name read from a file, once it can only name a file inside ``place``: not
    empty, no NUL byte, not absolute, no ``..``. ``what`` names the name (``"index.json: shard"``)."""
    parts = PurePath(name.replace("\\", "/")).parts
    if not name or "\0" in name:
        why = "is empty" if not name else "holds a NUL byte"
        raise error(f"{what} {name!r} {why}; expected a relative file name inside {place}")
    if PurePath(name).is_absolute() or name.startswith(("/", "\\")) or ".." in parts:
        why = "an absolute path" if ".." not in parts else "it holds '..'"
        raise error(f"{what} {name!r} is outside {place} ({why}); expected a relative file name inside it")
    return name


def finite(array, what: str, *, hint: str = "refusing to load it", error: type[Exception] = ValueError) -> None:
    """Nothing, when ``array`` holds no NaN or inf (integer and bool arrays always pass); else
    ``error``: ``"{what} 3 of its 768 values are non-finite (NaN and inf); {hint}"``."""
    x = np.asarray(array)
    if x.dtype.kind not in "fc":
        return
    ok = np.isfinite(x)
    if ok.all():
        return
    kinds = [kind for kind, test in (("NaN", np.isnan), ("inf", np.isinf)) if test(x).any()]
    count = x.size - int(np.count_nonzero(ok))
    raise error(f"{what} {count} of its {x.size} values are non-finite ({' and '.join(kinds)}); {hint}")
