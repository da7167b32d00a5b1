"""Admin API bearer tokens: stored as SHA-256 hashes, compared in constant time.

Tokens carry 256 random bits, so a plain SHA-256 (no slow KDF) is enough to
make the stored file useless to a reader.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import Any

from revocation.errors import ConfigError, ValidationError
from revocation.files import write_file

# agent: a relying party's CRL sync agent (``pca crl-sync``), which only reports the CRLs it installed.
ROLES = ("admin", "revoker", "auditor", "prober", "recorder", "agent")


@dataclasses.dataclass(frozen=True)
class Principal:
    name: str
    role: str


@dataclasses.dataclass(frozen=True)
class _Entry:
    name: str
    role: str
    digest: bytes


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenStore:
    def __init__(self, entries: list[_Entry]) -> None:
        self._entries = entries

    @classmethod
    def load(cls, path: Path) -> TokenStore:
        try:
            data = _read(path)
        except FileNotFoundError:
            return cls([])
        try:
            entries = [_Entry(str(e["name"]), str(e["role"]), bytes.fromhex(str(e["sha256"]))) for e in data["tokens"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"token file {path} is malformed: an entry lacks a name, role or hex sha256") from exc
        for e in entries:
            if e.role not in ROLES:
                raise ConfigError(f"token {e.name!r} in {path} has unknown role {e.role!r}")
        return cls(entries)

    def authenticate(self, token: str) -> Principal | None:
        """The token's principal, or None. Compares against every entry, in constant time each."""
        digest = _digest(token)
        found: Principal | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = Principal(entry.name, entry.role)
        return found

    def names(self) -> list[tuple[str, str]]:
        return [(e.name, e.role) for e in self._entries]


class TokenFile:
    """The token file, re-read only when it changes (tokens added by `pca token create` apply at once)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._store = TokenStore([])

    def __call__(self) -> TokenStore:
        try:
            st = self._path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, 0)
        if stamp != self._stamp:
            self._store = TokenStore.load(self._path)
            self._stamp = stamp
        return self._store


def add_token(path: Path, name: str, role: str) -> str:
    """Create a token, store its hash in ``path``; returns the token (shown once)."""
    if role not in ROLES:
        raise ValidationError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if not name:
        raise ValidationError("token name must not be empty")
    try:
        data = _read(path)
    except FileNotFoundError:
        data = {"tokens": []}
    if any(e.get("name") == name for e in data["tokens"]):
        raise ValidationError(f"a token named {name!r} exists already")
    token = "pca_" + secrets.token_urlsafe(32)
    data["tokens"].append({"name": name, "role": role, "sha256": _digest(token).hex()})
    write_secret_file(path, json.dumps(data, indent=2))
    return token


def _read(path: Path) -> dict[str, Any]:
    """The token file's JSON object with its ``tokens`` list; ConfigError naming the file (FileNotFoundError
    passes through). The messages quote nothing from the file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"token file {path} cannot be read: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"token file {path} is not JSON (line {exc.lineno}, column {exc.colno})") from exc
    except ValueError as exc:
        raise ConfigError(f"token file {path} is not UTF-8 JSON") from exc
    if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
        raise ConfigError(f'token file {path} is malformed: it must be an object {{"tokens": [...]}}')
    return data


def write_secret_file(path: Path, secret: str) -> None:
    """Write a secret readable by the owner only, also when ``path`` exists with a wider mode (never through a
    symbolic link or over anything but a regular file: ``revocation.files``)."""
    write_file(path, (secret + "\n").encode(), mode=0o600, replace=True)
