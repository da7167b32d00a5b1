"""Admin API bearer tokens: stored as SHA-256 hashes, compared in constant time, optionally expiring, revocable.

Tokens carry 256 random bits, so a plain SHA-256 (no slow KDF) is enough to
make the stored file useless to a reader. The file (``admin.tokens_file``) keeps, per token, its
name, role, hash, creation time, expiry (or none) and revocation time (or none); a revoked token
stays listed, so its name is not given to another token and ``pca token list`` shows when it went.
The server re-reads the file when it changes (``TokenFile``), so a revocation applies at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from revocation.clock import iso, parse_iso
from revocation.errors import ConfigError, NotFoundError, ValidationError
from revocation.files import write_file

# agent: a relying party's CRL sync agent (``pca crl-sync``), which only reports the CRLs it installed.
log = logging.getLogger("pca.tokens")

ROLES = ("admin", "revoker", "auditor", "prober", "recorder", "agent")
MAX_NAME = 128


@dataclasses.dataclass(frozen=True)
class Principal:
    name: str
    role: str


@dataclasses.dataclass(frozen=True)
class TokenInfo:
    """What may be shown of a token: never its secret nor its hash."""

    name: str
    role: str
    created: datetime.datetime | None  # None: made before tokens recorded it
    expires: datetime.datetime | None
    revoked: datetime.datetime | None

    def state(self, now: datetime.datetime) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"

    def to_json(self, now: datetime.datetime) -> dict[str, Any]:
        def when(t: datetime.datetime | None) -> str | None:
            return None if t is None else iso(t)

        return {
            "name": self.name,
            "role": self.role,
            "created": when(self.created),
            "expires": when(self.expires),
            "revoked": when(self.revoked),
            "state": self.state(now),
        }


class TokenRefused(Exception):
    """A bearer token the API does not accept; the message is safe to show to whoever sent it."""


@dataclasses.dataclass(frozen=True)
class _Entry:
    info: TokenInfo
    digest: bytes


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _time(raw: object) -> datetime.datetime | None:
    return None if raw is None else parse_iso(str(raw))


def _entry(e: dict[str, Any]) -> _Entry:
    info = TokenInfo(str(e["name"]), str(e["role"]), _time(e.get("created")), _time(e.get("expires")), None)
    info = dataclasses.replace(info, revoked=_time(e.get("revoked")))
    return _Entry(info, bytes.fromhex(str(e["sha256"])))


class TokenStore:
    def __init__(self, entries: list[_Entry], on_use: Callable[[str, datetime.datetime], None] | None = None) -> None:
        self._entries = entries
        self.on_use = on_use  # told the name of each token accepted, and when

    @classmethod
    def load(cls, path: Path) -> TokenStore:
        try:
            data = _read(path)
        except FileNotFoundError:
            return cls([])
        try:
            entries = [_entry(e) for e in data["tokens"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"token file {path} is malformed: an entry lacks a name, role or hex sha256") from exc
        for e in entries:
            if e.info.role not in ROLES:
                raise ConfigError(f"token {e.info.name!r} in {path} has unknown role {e.info.role!r}")
        return cls(entries)

    def check(self, token: str, now: datetime.datetime) -> Principal:
        """The token's principal; raises TokenRefused (unknown, revoked or expired).

        Every entry is compared, each in constant time, so the time taken says nothing about
        which (or whether any) matched. Only a holder of the token can learn that it was
        revoked or has expired; to anyone else it is "not valid".
        """
        digest = _digest(token)
        found: _Entry | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        if found is None:
            raise TokenRefused("the bearer token is not valid")
        state = found.info.state(now)
        if state == "revoked":
            raise TokenRefused("the bearer token has been revoked; ask an administrator for a new one")
        if state == "expired":
            raise TokenRefused("the bearer token has expired; ask an administrator for a new one")
        if self.on_use is not None:
            self.on_use(found.info.name, now)
        return Principal(found.info.name, found.info.role)

    def authenticate(self, token: str, now: datetime.datetime | None = None) -> Principal | None:
        """The token's principal, or None when it is refused for any reason."""
        try:
            return self.check(token, now or datetime.datetime.now(datetime.UTC))
        except TokenRefused:
            return None

    def tokens(self) -> list[TokenInfo]:
        return [e.info for e in self._entries]

    def names(self) -> list[tuple[str, str]]:
        return [(e.info.name, e.info.role) for e in self._entries]


class TokenFile:
    """The token file, re-read whenever it changes: tokens created or revoked by `pca token` apply at once.

    A change is any new (inode, mtime, ctime, size): the file is always replaced by a rename,
    so even a rewrite of the same size within one clock tick is seen. When each token was last
    accepted is kept beside it (``last_used_path``): the first use in each minute is written, so
    the record is right to the minute and costs at most one write a minute per token.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int, int, int] | None = None
        self._store = TokenStore([])
        self._used: dict[str, str] = {}
        self._written: dict[str, datetime.datetime] = {}

    def __call__(self) -> TokenStore:
        try:
            st = self._path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, 0, 0, 0)
        if stamp != self._stamp:
            self._store = TokenStore.load(self._path)
            self._store.on_use = self._note_use
            self._stamp = stamp
        return self._store

    def _note_use(self, name: str, now: datetime.datetime) -> None:
        minute = now.replace(second=0, microsecond=0)
        if self._written.get(name) == minute:  # recorded in this minute already: right to the minute
            return
        self._written[name] = minute
        self._used[name] = iso(now)
        try:
            merged = {**read_last_used(self._path), **self._used}
            write_secret_file(last_used_path(self._path), json.dumps({"last_used": merged}, indent=2))
        except (OSError, ValueError) as exc:  # a record of use must never refuse the request
            log.warning("cannot record when tokens were last used: %s", exc)


def last_used_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.last-used.json")


def read_last_used(path: Path) -> dict[str, str]:
    """Token name -> when the API on this host last accepted it (to the minute); {} when never recorded."""
    try:
        data = json.loads(last_used_path(path).read_text())
        return {str(k): str(v) for k, v in data["last_used"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing or damaged: nothing recorded
        return {}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[dict[str, Any]]:
    """The token file's data, under an exclusive lock held until the caller has written it back."""
    lock_path = path.with_name(f".{path.name}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            data = _read(path)
        except FileNotFoundError:
            data = {"tokens": []}
        yield data
    finally:
        os.close(fd)


def check_new_token(path: Path, name: str, role: str) -> None:
    """Refuse what ``add_token`` would refuse, before anything is recorded."""
    if role not in ROLES:
        raise ValidationError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise ValidationError(f"a token name must be 1 to {MAX_NAME} printable characters")
    names = [e.name for e in TokenStore.load(path).tokens()]
    if name in names:
        raise ValidationError(f"a token named {name!r} exists already (revoked tokens keep their names)")


def add_token(
    path: Path,
    name: str,
    role: str,
    *,
    now: datetime.datetime | None = None,
    expires: datetime.datetime | None = None,
) -> str:
    """Create a token, store its hash in ``path``; returns the token (shown once)."""
    now = now or datetime.datetime.now(datetime.UTC)
    if expires is not None and expires <= now:
        raise ValidationError(f"the expiry {iso(expires)} is not in the future")
    check_new_token(path, name, role)
    with _locked(path) as data:
        if any(e.get("name") == name for e in data["tokens"]):
            raise ValidationError(f"a token named {name!r} exists already (revoked tokens keep their names)")
        token = "pca_" + secrets.token_urlsafe(32)
        entry = {
            "name": name,
            "role": role,
            "sha256": _digest(token).hex(),
            "created": iso(now),
            "expires": None if expires is None else iso(expires),
        }
        data["tokens"].append(entry)
        write_secret_file(path, json.dumps(data, indent=2))
    return token


def revoke_token(path: Path, name: str, now: datetime.datetime | None = None) -> TokenInfo:
    """Mark the token ``name`` revoked; the API refuses it from its next request on."""
    now = now or datetime.datetime.now(datetime.UTC)
    with _locked(path) as data:
        entry = next((e for e in data["tokens"] if e.get("name") == name), None)
        if entry is None:
            raise NotFoundError(f"no token named {name!r} in {path}")
        if entry.get("revoked") is not None:
            raise ValidationError(f"the token {name!r} was revoked already, at {entry['revoked']}")
        entry["revoked"] = iso(now)
        write_secret_file(path, json.dumps(data, indent=2))
    return _entry(entry).info


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
    """Write a secret readable by the owner only (0600), also when ``path`` exists with a wider mode;
    never through a symlink or over a non-regular file."""
    write_file(path, (secret + "\n").encode(), mode=0o600, replace=True)
