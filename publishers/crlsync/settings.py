"""The agent's settings: from a small TOML file, overridden by command-line flags."""

from __future__ import annotations

import dataclasses
import difflib
import os
import socket
import tomllib
from pathlib import Path
from typing import Any

from revocation.digits import port_number
from revocation.files import FileWriteError, check_writable

DEFAULT_INTERVAL = 5.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_ON_CHANGE_TIMEOUT = 60.0
DEFAULT_MAX_SKEW = 60.0
DEFAULT_WARN_BEFORE = 3600.0
FORMATS = ("pem", "der")

# TOML key -> type; paths are relative to the TOML file's directory.
_KEYS: dict[str, type | tuple[type, ...]] = {
    "urls": list,
    "delta_urls": list,
    "ca_bundle": str,
    "out": str,
    "format": str,
    "interval": (int, float),
    "on_change": str,
    "on_change_timeout": (int, float),
    "state_file": str,
    "agent_id": str,
    "report_to": str,
    "token_file": str,
    "tls_ca": str,
    "metrics_listen": str,
    "timeout": (int, float),
    "max_bytes": int,
    "max_skew": (int, float),
    "warn_before": (int, float),
    "limits": dict,  # the /metrics listener's [limits] table, checked by the command (pca.cli.crlsync)
}
_PATH_KEYS = ("ca_bundle", "out", "state_file", "token_file", "tls_ca")


class UsageError(ValueError):
    """Settings that cannot work together; the command exits with status 2."""


@dataclasses.dataclass(frozen=True)
class SyncSettings:
    urls: tuple[str, ...]
    ca_bundle: Path
    out: Path
    format: str = "pem"
    delta_urls: frozenset[str] = frozenset()
    interval: float = DEFAULT_INTERVAL
    on_change: str | None = None
    on_change_timeout: float = DEFAULT_ON_CHANGE_TIMEOUT
    state_file: Path | None = None
    agent_id: str = ""
    report_to: str | None = None
    token: str | None = dataclasses.field(default=None, repr=False)  # never printed
    tls_ca: Path | None = None
    metrics_listen: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_bytes: int = DEFAULT_MAX_BYTES
    max_skew: float = DEFAULT_MAX_SKEW
    warn_before: float = DEFAULT_WARN_BEFORE
    limits: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)  # the file's [limits] table

    @property
    def state_path(self) -> Path:
        return self.state_file or self.out.with_name(self.out.name + ".state.json")

    def all_urls(self) -> list[str]:
        """Every URL fetched, each once, in the order given (full CRLs, then deltas only named as such)."""
        out = list(dict.fromkeys(self.urls))
        out += [u for u in sorted(self.delta_urls) if u not in out]
        return out


def read_toml(path: Path) -> dict[str, Any]:
    """The settings of a ``--config`` file, checked for unknown keys and types; paths made absolute."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}") from exc
    out: dict[str, Any] = {}
    for key, value in data.items():
        expected = _KEYS.get(key)
        if expected is None:
            near = difflib.get_close_matches(key.replace("-", "_"), _KEYS, n=1)
            hint = f"did you mean {near[0]}?" if near else f"known: {', '.join(sorted(_KEYS))}"
            raise UsageError(f"{path}: unknown setting {key!r} ({hint})")
        if not isinstance(value, expected) or isinstance(value, bool):
            raise UsageError(f"{path}: {key} has the wrong type ({type(value).__name__})")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise UsageError(f"{path}: {key} must be a list of strings")
        if key in _PATH_KEYS and isinstance(value, str):
            value = str(path.parent / value)
        out[key] = value
    return out


def build_settings(given: dict[str, Any]) -> SyncSettings:
    """Settings from merged values (the file's, then the flags' that were given); UsageError when unusable."""
    urls = tuple(given.get("urls") or ())
    delta_urls = frozenset(given.get("delta_urls") or ())
    if not urls and not delta_urls:
        raise UsageError("give at least one --url (or urls in the --config file)")
    for url in (*urls, *delta_urls):
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"{url!r} is not an http:// or https:// URL")
    for key in ("ca_bundle", "out"):
        if not given.get(key):
            raise UsageError(f"--{key.replace('_', '-')} is required")
    fmt = given.get("format") or "pem"
    if fmt not in FORMATS:
        raise UsageError(f"--format must be pem or der, not {fmt!r}")
    count = len(set(urls) | delta_urls)
    if fmt == "der" and count != 1:
        raise UsageError(f"--format der writes a single CRL: give exactly one --url (got {count}); or use pem")
    numbers = {
        key: float(given.get(key, default))
        for key, default in (
            ("interval", DEFAULT_INTERVAL),
            ("timeout", DEFAULT_TIMEOUT),
            ("on_change_timeout", DEFAULT_ON_CHANGE_TIMEOUT),
            ("max_skew", DEFAULT_MAX_SKEW),
            ("warn_before", DEFAULT_WARN_BEFORE),
        )
    }
    for key in ("interval", "timeout", "on_change_timeout"):
        if not numbers[key] > 0:
            raise UsageError(f"--{key.replace('_', '-')} must be positive")
    max_bytes = int(given.get("max_bytes", DEFAULT_MAX_BYTES))
    if max_bytes <= 0:
        raise UsageError("--max-bytes must be positive")
    report_to = given.get("report_to") or None
    token = None
    if report_to:
        if not report_to.startswith(("http://", "https://")):
            raise UsageError(f"--report-to {report_to!r} is not an http:// or https:// URL")
        token = _token(given.get("token_file"))
    listen = given.get("metrics_listen") or None
    if listen:
        parse_listen(listen)

    def path(key: str) -> Path | None:
        value = given.get(key)
        return Path(value) if value else None

    settings = SyncSettings(
        urls=urls,
        ca_bundle=Path(given["ca_bundle"]),
        out=Path(given["out"]),
        format=fmt,
        delta_urls=delta_urls,
        interval=numbers["interval"],
        on_change=given.get("on_change") or None,
        on_change_timeout=numbers["on_change_timeout"],
        state_file=path("state_file"),
        agent_id=given.get("agent_id") or socket.gethostname(),
        report_to=report_to.rstrip("/") if report_to else None,
        token=token,
        tls_ca=path("tls_ca"),
        metrics_listen=listen,
        timeout=numbers["timeout"],
        max_bytes=max_bytes,
        max_skew=numbers["max_skew"],
        warn_before=numbers["warn_before"],
        limits=dict(given.get("limits") or {}),
    )
    for target in (settings.out, settings.state_path):
        try:  # a symbolic link, a FIFO or a device at --out would be refused at every pass: say it now
            if os.path.lexists(target):
                check_writable(target, replace=True)
        except FileWriteError as exc:
            raise UsageError(str(exc)) from None
    return settings


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``PORT`` (loopback); IPv6 hosts in brackets."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    number = port_number(port)
    if number is None:
        raise UsageError(f"--metrics-listen {value!r} is not HOST:PORT")
    return host, number


def _token(token_file: str | None) -> str:
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read the token file {token_file}: {exc.strerror or exc}") from exc
    else:
        token = os.environ.get("PCA_TOKEN", "").strip()
    if not token:
        raise UsageError("--report-to needs a token: --token-file FILE or the PCA_TOKEN environment variable")
    return token
