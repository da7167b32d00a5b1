"""The output file and the state file: atomic writes, the bundle's bytes, reading both back at start."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from publishers.crlsync.fetch import Validators
from revocation.files import write_file

_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----\r?\n.*?-----END X509 CRL-----", re.DOTALL)
STATE_VERSION = 1


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a temporary file next to ``path``, fsync it, rename it over ``path``, fsync the
    directory: a reader sees the old file or the new one, never a part, even across a crash. A symbolic
    link or anything but a regular file at ``path`` is refused (an OSError naming it)."""
    write_file(path, data, mode=mode, replace=True)


def bundle(ders: Iterable[bytes], fmt: str) -> bytes:
    """The output file: PEM blocks of every CRL in order, or the DER of the single one."""
    items = list(ders)
    if fmt == "der":
        if len(items) != 1:
            raise ValueError(f"a DER output holds exactly one CRL, not {len(items)}")
        return items[0]
    return b"".join(x509.load_der_x509_crl(d).public_bytes(serialization.Encoding.PEM) for d in items)


def read_bundle(path: Path) -> list[x509.CertificateRevocationList]:
    """The CRLs of an existing output file (PEM bundle or one DER CRL); none when it is absent or unreadable."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    out = []
    for block in _PEM_CRL.findall(data) if b"-----BEGIN" in data else [data]:
        try:
            out.append(x509.load_pem_x509_crl(block) if block.startswith(b"-----") else x509.load_der_x509_crl(block))
        except ValueError:
            continue
    return out


@dataclasses.dataclass
class URLRecord:
    """What the state file remembers of a URL: the CRL installed last and the response it came in."""

    number: int
    sha256: str
    delta: bool
    installed_at: str
    validators: Validators = dataclasses.field(default_factory=Validators)

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "sha256": self.sha256,
            "delta": self.delta,
            "installed_at": self.installed_at,
            "etag": self.validators.etag,
            "last_modified": self.validators.last_modified,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> URLRecord:
        return cls(
            number=int(data["number"]),
            sha256=str(data["sha256"]),
            delta=bool(data.get("delta", False)),
            installed_at=str(data.get("installed_at", "")),
            validators=Validators(data.get("etag"), data.get("last_modified")),
        )


@dataclasses.dataclass
class SyncState:
    urls: dict[str, URLRecord] = dataclasses.field(default_factory=dict)
    on_change_pending: bool = False

    def dumps(self) -> bytes:
        data = {
            "version": STATE_VERSION,
            "urls": {url: rec.to_json() for url, rec in sorted(self.urls.items())},
            "on_change_pending": self.on_change_pending,
        }
        return (json.dumps(data, indent=2) + "\n").encode()


def load_state(path: Path) -> SyncState:
    """The state file; an empty state when it does not exist. A corrupt one is an error (ValueError):
    starting from nothing would forget the CRL numbers that must never go backwards."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return SyncState()
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the state file {path}: {exc}; move it away to start afresh") from exc
    try:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"version {data.get('version')!r}")
        urls = {str(url): URLRecord.from_json(rec) for url, rec in data["urls"].items()}
        return SyncState(urls, bool(data.get("on_change_pending", False)))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"the state file {path} is not one of crl-sync's ({exc}); move it away to start afresh"
        ) from exc
