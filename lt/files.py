"""Writing files so that nothing a user saved is ever half-written.

Every file lt writes (checkpoints, exported weights, tokenizers, run settings) goes to a
temporary name in the target folder, is fsynced and renamed over the final path, and the
rename is made durable by fsyncing the folder: a reader sees the old file or the whole new
one, even after a crash or a SIGKILL. An OS error while writing (a full disk) names the file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text", "naming"]


@contextlib.contextmanager
def naming(path):
    """Re-raise an OSError that names no file (``ENOSPC`` from a write) with ``path`` as its file."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise type(e)(e.errno, e.strerror, str(path)) from e


def atomic_write(path, chunks: Iterable) -> None:
    """Write ``chunks`` (bytes-like) to ``path`` via a temporary file in the same folder,
    fsynced and renamed over ``path``: readers see the old file or the whole new one."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with naming(path), os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, [text.encode("utf-8")])
