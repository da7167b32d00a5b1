"""Writing a file an operator names (``--out``, ``--key-out``, a CSR, a token file, a CRL bundle).

Never through a symbolic link, never over a device, FIFO, socket or directory (as root,
``--key-out /dev/null`` used to replace /dev/null with a private key), and never over an
existing file unless the caller says so. The content goes to a temporary file in the same
directory, created with mode 0600 (a private key is never readable by others, even for a
moment), synced, given its mode, then renamed over the old file or linked to a new name
(which fails if anything has appeared there meanwhile): a reader sees the old file or the
whole new one, never a part.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from revocation.errors import PCAError

_KINDS = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
    stat.S_IFSOCK: "a socket",
}


class FileWriteError(PCAError, OSError):
    """A file cannot or must not be written; the message names it. An OSError too, for callers that
    handle every failure to write alike."""


def check_writable(path: Path, *, replace: bool = False, hint: str = "") -> None:
    """Raise FileWriteError unless ``write_file(path, ..., replace=replace)`` may write ``path``: call it before
    work whose result would be lost if the write were then refused. ``hint`` ends the "exists already" message
    (e.g. "; --force replaces it")."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise FileWriteError(f"cannot write {path}: {path.parent} is not a directory") from None
        return
    except OSError as exc:
        raise FileWriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise FileWriteError(f"{path} is a symbolic link: refusing to write through it (name the file itself)")
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise FileWriteError(f"{path} is {kind}, not a regular file: refusing to replace it")
    if not replace:
        raise FileWriteError(f"{path} exists already: refusing to overwrite it{hint}")


def write_file(path: Path, data: bytes, *, mode: int = 0o644, replace: bool = False, hint: str = "") -> None:
    """Write ``data`` to ``path`` atomically with ``mode`` (see the module); ``replace``: an existing regular
    file may be replaced. FileWriteError, naming ``path``, for anything refused or failed."""
    check_writable(path, replace=replace, hint=hint)
    directory = path.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")  # 0600, O_EXCL
    except OSError as exc:
        raise FileWriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        _install(tmp, path, replace, hint)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, FileWriteError):
            raise
        raise FileWriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _install(tmp: str, path: Path, replace: bool, hint: str) -> None:
    """Give the written temporary file its name; a file that appeared at ``path`` meanwhile is checked again."""
    if not replace:
        try:
            os.link(tmp, path)  # fails on anything at path, a dangling symbolic link included
        except FileExistsError:
            check_writable(path, replace=False, hint=hint)
            raise
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            check_writable(path, replace=False, hint=hint)  # a file system without hard links
            os.rename(tmp, path)
            return
        os.unlink(tmp)
        return
    check_writable(path, replace=True)
    os.replace(tmp, path)  # replaces a symbolic link itself, never what it points to
