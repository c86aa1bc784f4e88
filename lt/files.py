"""Writing files so that nothing a user saved is ever half-written.

Every file lt writes (checkpoints, exported weights, tokenizers, run settings) goes to a
temporary name in the target folder, is fsynced and renamed over the final path, and the
rename is made durable by fsyncing the folder: a reader sees the old file or the whole new
one, even after a crash or a SIGKILL. An OS error while writing (a full disk, a missing
folder) names the file, never lt's temporary name.

What a command writes at a path the user gives (``--out``) replaces only what lt wrote there
itself, unless the user asks with ``--force``: :func:`check_overwrite`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text", "atomic_path", "check_overwrite", "naming"]


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
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    except OSError as e:  # a missing or read-only folder: name the file asked for, not tmp
        raise type(e)(e.errno, e.strerror, str(path)) from None
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
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (fsync the folder), where the OS allows it."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside ``path``, for a writer that opens its file by name (another
    project's format writer): when the block ends without an error the file there is fsynced and
    renamed over ``path``, else removed. Readers see the old file or the whole new one."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(2, "No such directory", str(path))
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with naming(path):
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, [text.encode("utf-8")])


def check_overwrite(
    path, is_ours: Callable[[Path], bool], *, force: bool = False, ours: str = "a file lt wrote", flag: str = "--force"
) -> None:
    """Refuse to write ``path`` where that would replace something lt did not write.

    A missing path may be written. A directory never may (IsADirectoryError: a file path is
    expected). An existing regular file is replaced when ``is_ours(path)`` says lt wrote it
    (``ours`` describes such a file in the message), or when ``force``; ``is_ours`` is asked of
    regular files only. Anything else there (a user's file, a symbolic link, a FIFO) is refused
    with FileExistsError naming the path and ``flag``, the way to replace it anyway.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; expected the path of a file to write")
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if force:
        return
    if stat.S_ISLNK(mode):
        what = "a symbolic link"
    elif not stat.S_ISREG(mode):
        what = "not a regular file"
    elif is_ours(path):
        return
    else:
        what = f"not {ours}"
    raise FileExistsError(
        f"{path} already exists and is {what}; lt replaces only files it wrote: give {flag} to replace it"
    )
