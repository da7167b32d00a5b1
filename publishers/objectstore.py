"""The narrow object-store protocol CRLs are published through, and the directory store.

Writes are conditional: ``if_match`` names the ETag the writer last read (the
write fails if the object changed since) and ``if_none_match=True`` requires
the key to be new. S3 implements the same protocol with its conditional writes
(``publishers.s3store``). ``metadata`` is a few short lowercase names and
values stored with the object (S3 user metadata) and returned by ``head``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from revocation.errors import PCAError, StorageError


class PreconditionFailed(PCAError):
    """A conditional write lost: the object is not in the state the writer expected."""


@dataclasses.dataclass(frozen=True)
class StoredObject:
    key: str
    data: bytes
    etag: str
    content_type: str
    cache_control: str
    expires: str  # HTTP-date, or ""
    last_modified: str  # HTTP-date
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ObjectHead:
    key: str
    etag: str
    size: int
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)


class ObjectStore(Protocol):
    async def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        cache_control: str = "",
        expires: str = "",
        if_match: str | None = None,
        if_none_match: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Write ``data`` at ``key``; returns the new ETag. Raises PreconditionFailed, StorageError."""
        ...

    async def get(self, key: str) -> StoredObject | None: ...

    async def head(self, key: str) -> ObjectHead | None: ...


_METADATA_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


def check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Metadata every store can keep: lowercase names, short printable ASCII values."""
    out = dict(metadata or {})
    for name, value in out.items():
        if not _METADATA_NAME.fullmatch(name):
            raise ValueError(f"metadata name {name!r} is not lowercase letters, digits and dashes")
        if len(value) > 256 or not value.isascii() or not value.isprintable():
            raise ValueError(f"metadata {name} value {value[:32]!r} is not short printable ASCII")
    return out


def check_key(key: str) -> None:
    """Refuse keys that are not plain relative paths (a directory store must not escape its root)."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"object key {key!r} is not a plain relative path")
    if len(key) > 1024 or any(len(p.encode()) > 255 for p in parts):
        raise ValueError(f"object key {key[:64]!r}... is too long")


def _http_date(epoch: float) -> str:
    from email.utils import formatdate

    return formatdate(epoch, usegmt=True)


def _etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".meta")


def _replace_durably(target: Path, body: bytes) -> None:
    """Write ``body`` to a temporary file, fsync it, rename it over ``target``, fsync the directory."""
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class DirectoryStore:
    """Objects as files under a directory; metadata in a sidecar ``.meta`` JSON file.

    A lock file serialises writers across processes so the conditional checks hold.
    The data is written (and renamed into place) before its sidecar, and the sidecar
    names the data file (inode, size, modification time) and the data's hash: after a
    crash between the two, readers see the new bytes with an ETag computed from them
    and without the old sidecar's metadata, never one object's bytes with another's
    ETag, CRL number or expiry.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        check_key(key)
        return self.root / key

    def _put_sync(
        self,
        key: str,
        data: bytes,
        content_type: str,
        cache_control: str,
        expires: str,
        if_match: str | None,
        if_none_match: bool,
        metadata: dict[str, str],
    ) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self._head_sync(key)
            if if_none_match and current is not None:
                raise PreconditionFailed(f"object {key} exists already")
            if if_match is not None and (current is None or current.etag != if_match):
                raise PreconditionFailed(f"object {key} changed since it was read (ETag {if_match} expected)")
            etag = _etag(data)
            _replace_durably(path, data)
            written = path.stat()
            meta = {
                "etag": etag,
                "inode": written.st_ino,  # a new file each time: the old one still existed when it was made
                "size": written.st_size,
                "mtime_ns": written.st_mtime_ns,
                "content_type": content_type,
                "cache_control": cache_control,
                "expires": expires,
                "metadata": metadata,
            }
            _replace_durably(_sidecar(path), json.dumps(meta).encode())
            return etag

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        cache_control: str = "",
        expires: str = "",
        if_match: str | None = None,
        if_none_match: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        checked = check_metadata(metadata)
        try:
            return await asyncio.to_thread(
                self._put_sync, key, data, content_type, cache_control, expires, if_match, if_none_match, checked
            )
        except OSError as exc:
            raise StorageError(f"writing {key} to {self.root}: {exc}") from exc

    def _meta(self, path: Path, st: os.stat_result, data: bytes | None) -> tuple[str, dict[str, str], dict[str, str]]:
        """The ETag, the headers (content_type...) and the user metadata of the data file at ``path``
        (``st`` its stat, ``data`` its bytes if read).

        The sidecar is trusted when it names the file's inode, size and modification time, or else (a copied
        directory, an older sidecar) when its ETag is the data's hash. Otherwise it belongs to other
        bytes (a crash came between writing the data and the sidecar): the ETag is the data's hash,
        and only the headers every object of a key shares (content type, Cache-Control) are kept.
        """
        try:
            value = json.loads(_sidecar(path).read_text())
            headers = {str(k): str(v) for k, v in value.items() if k != "metadata"}
            metadata = {str(k): str(v) for k, v in (value.get("metadata") or {}).items()}
        except (OSError, ValueError, AttributeError):
            headers, metadata = {}, {}
        same_file = [headers.get(k) for k in ("inode", "size", "mtime_ns")] == [
            str(st.st_ino),
            str(st.st_size),
            str(st.st_mtime_ns),
        ]
        if same_file and headers.get("etag"):
            return headers["etag"], headers, metadata
        etag = _etag(path.read_bytes() if data is None else data)
        if headers.get("etag") == etag:
            return etag, headers, metadata
        return etag, {k: v for k, v in headers.items() if k in ("content_type", "cache_control")}, {}

    def _head_sync(self, key: str) -> ObjectHead | None:
        path = self._path(key)
        try:
            st = path.stat()
            etag, _, metadata = self._meta(path, st, None)
        except FileNotFoundError:
            return None
        return ObjectHead(key, etag, st.st_size, metadata)

    def get_sync(self, key: str) -> StoredObject | None:
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                data = fh.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        etag, meta, metadata = self._meta(path, st, data)
        return StoredObject(
            key,
            data,
            etag,
            meta.get("content_type", "application/octet-stream"),
            meta.get("cache_control", ""),
            meta.get("expires", ""),
            _http_date(st.st_mtime),
            metadata,
        )

    async def get(self, key: str) -> StoredObject | None:
        try:
            return await asyncio.to_thread(self.get_sync, key)
        except OSError as exc:
            raise StorageError(f"reading {key} from {self.root}: {exc}") from exc

    async def head(self, key: str) -> ObjectHead | None:
        try:
            return await asyncio.to_thread(self._head_sync, key)
        except OSError as exc:
            raise StorageError(f"reading {key} from {self.root}: {exc}") from exc
