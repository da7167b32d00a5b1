"""Configuration: one TOML file, checked at load, every bad value named.

Relative paths are relative to the directory holding the file. The file holds
references (paths, environment variable names), never secrets.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pca.admin_tls_config import AdminTLSConfig, default_admin_url, parse_admin_tls
from pca.config_keys import Schema, TracedTable, trace_schema, unknown_keys
from pca.listener_limits import LimitsConfig, parse_limits
from revocation.crl_layout import MAX_SHARDS, CRLLayout
from revocation.digits import port_number
from revocation.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class OCSPConfig:
    validity_seconds: int = 24 * 3600
    refresh_fraction: float = 0.5  # re-sign once this fraction of the validity has passed
    signer_validity_days: int = 30
    signer_renew_before_days: int = 10
    signer_warn_days: int = 14  # warn (metric, /healthz, log) this long before an issuer's OCSP signer expires
    cache_size: int = 1_000_000
    workers: int = 0  # pre-signing processes; 0 = one per core
    # How often a responder polls the store's change feed: on SQLite polling is how granian's workers
    # (other processes) learn of a new response, so it is short; PostgreSQL notifies, polling is a fallback.
    poll_interval: float = 0.2
    sqlite_poll_interval = 0.05


STORE_TYPES = ("directory", "s3")
S3_ADDRESSING_STYLES = ("auto", "path", "virtual")


@dataclasses.dataclass(frozen=True)
class CRLStoreConfig:
    """``[crl.store]``: where CRLs are published. S3 credentials come from the standard AWS chain."""

    type: str = "directory"  # the directory is paths.crl_dir
    bucket: str = ""
    prefix: str = ""  # prepended to every object key, e.g. "crl/"
    endpoint_url: str = ""  # empty: AWS; else MinIO, Ceph RGW or any S3-compatible endpoint
    region: str = ""
    addressing_style: str = "auto"
    profile: str = ""  # an AWS profile name; empty: the default chain


@dataclasses.dataclass(frozen=True)
class CRLConfig:
    validity_seconds: int = 24 * 3600  # nextUpdate - thisUpdate
    interval_seconds: int = 6 * 3600  # full CRL at least this often
    after_revocation_seconds: float = 2.0  # debounce: publish the changed shards' CRLs this soon after a revocation
    full_after_revocation: bool = True  # a revocation triggers a full CRL of its shard, not only a delta
    delta_interval_seconds: int = 300  # delta CRL at least this often; 0: no delta CRLs
    shards: int = 1  # CRL shards per leaf issuer
    expired_grace_seconds: int = 0  # an entry leaves the CRL this long after its certificate's notAfter
    base_url: str = ""  # URL prefix of CRLs in certificates; empty: public.url + "/crl"
    store: CRLStoreConfig = dataclasses.field(default_factory=CRLStoreConfig)


@dataclasses.dataclass(frozen=True)
class ScaleConfig:
    """``[scale]``: how roles in separate processes coordinate through the database."""

    lease_seconds: float = 10.0  # a pre-signer or publisher that stops renewing is replaced after this
    heartbeat_seconds: float = 1.0  # responders report their applied position this often
    responder_gone_seconds: float = 30.0  # a responder silent this long no longer counts as live
    slo_seconds: float = 5.0  # OCSP propagation SLO: revocation committed -> every live responder


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """``[audit]``: signed checkpoints of the event log's head, written by the publisher beside the CRLs."""

    checkpoint_every_events: int = 1000  # a checkpoint after this many events
    checkpoint_interval_seconds: int = 300  # or this long after the last one, when the log has moved


DATABASE_URL_ENV = "PCA_DATABASE_URL"
PUBLIC_SERVERS = ("granian", "uvicorn")  # the public listener's server; granian (RSGI, worker processes) first


@dataclasses.dataclass(frozen=True)
class Config:
    path: Path
    data_dir: Path
    database: Path
    crl_dir: Path
    public_url: str
    public_listen: tuple[str, int]
    admin_url: str
    admin_listen: tuple[str, int]
    token_file: Path  # the token the CLI sends
    tokens_db: Path  # hashed tokens the API accepts
    default_issuer: str
    leaf_validity_days: int
    key_algorithm: str
    max_body_bytes: int
    ocsp: OCSPConfig
    crl: CRLConfig
    database_url: str = ""  # postgresql://... ; empty: the SQLite file ``database``
    scale: ScaleConfig = dataclasses.field(default_factory=ScaleConfig)
    admin_tls: AdminTLSConfig = dataclasses.field(default_factory=AdminTLSConfig)
    audit: AuditConfig = dataclasses.field(default_factory=AuditConfig)
    limits: LimitsConfig = dataclasses.field(default_factory=LimitsConfig)  # header sizes, timeouts, connections
    public_server: str = "granian"  # public.server: granian (worker processes, RSGI) or uvicorn (in-process)
    public_workers: int = 0  # public.workers: granian worker processes; 0 = per core (pca.serve.public_server)

    @property
    def backend(self) -> str:
        return "postgres" if self.database_url else "sqlite"

    @property
    def database_label(self) -> str:
        """The database for messages: the SQLite path, or the PostgreSQL URL without its password."""
        return redact_url(self.database_url) if self.database_url else str(self.database)

    @property
    def ocsp_url(self) -> str:
        return self.public_url.rstrip("/") + "/ocsp"

    @property
    def crl_layout(self) -> CRLLayout:
        base = self.crl.base_url or self.public_url.rstrip("/") + "/crl"
        return CRLLayout(base, self.crl.shards, self.crl.delta_interval_seconds > 0)

    def crl_url(self, issuer_id: str, shard: int = 0) -> str:
        return self.crl_layout.full_url(issuer_id, shard)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = (parts.username or "") + ":***"
    return parts._replace(netloc=f"{user}@{netloc[2]}").geturl()


def _database_url(section: dict[str, Any], env: Mapping[str, str]) -> str:
    url: str = env.get(DATABASE_URL_ENV) or _typed(section, "database", "url", str, "")
    if not url:
        return ""
    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"database.url {redact_url(url)!r} must be a postgresql:// URL (or empty for SQLite)")
    if urlsplit(url).password is not None and DATABASE_URL_ENV not in env:
        raise ConfigError(
            "database.url must not hold a password: configuration files are not secret. "
            f"Give it in PGPASSWORD, a ~/.pgpass file, or the whole URL in {DATABASE_URL_ENV}"
        )
    return url


def parse_listen(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    number = port_number(port)
    if not sep or not host or number is None:
        raise ConfigError(f"{what} {value!r} must be HOST:PORT with a port from 1 to 65535")
    return host.strip("[]"), number


def listen_from_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"public URL {url!r} must be an http:// or https:// URL with a host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname, port


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return data.table(name, value) if isinstance(data, TracedTable) else value


def _typed(section: dict[str, Any], name: str, key: str, kind: type, default: Any) -> Any:
    value = section.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{name}.{key} must be {kind.__name__}, got {value!r}")
    return value


def _positive(value: float, what: str) -> None:
    if value <= 0:
        raise ConfigError(f"{what} must be positive, got {value!r}")


def _crl_store(section: dict[str, Any]) -> CRLStoreConfig:
    def text(key: str) -> str:
        value: str = _typed(section, "crl.store", key, str, getattr(CRLStoreConfig, key))
        return value

    store = CRLStoreConfig(
        type=text("type"),
        bucket=text("bucket"),
        prefix=text("prefix"),
        endpoint_url=text("endpoint_url"),
        region=text("region"),
        addressing_style=text("addressing_style"),
        profile=text("profile"),
    )
    if store.type not in STORE_TYPES:
        raise ConfigError(f"crl.store.type {store.type!r} is not one of {', '.join(STORE_TYPES)}")
    if store.type == "s3" and not store.bucket:
        raise ConfigError('crl.store.bucket is required when crl.store.type = "s3"')
    if store.addressing_style not in S3_ADDRESSING_STYLES:
        raise ConfigError(
            f"crl.store.addressing_style {store.addressing_style!r} is not one of {', '.join(S3_ADDRESSING_STYLES)}"
        )
    if store.endpoint_url and not store.endpoint_url.startswith(("http://", "https://")):
        raise ConfigError(f"crl.store.endpoint_url {store.endpoint_url!r} must be an http:// or https:// URL")
    if store.prefix.startswith("/") or "//" in store.prefix:
        raise ConfigError(f"crl.store.prefix {store.prefix!r} must be a relative key prefix such as 'crl/'")
    return store


def load_config(path: Path | str, env: Mapping[str, str] | None = None) -> Config:
    """Load and check ``path``; ``PCA_DATABASE_URL`` in ``env`` (default: the process environment)
    overrides ``database.url``."""
    env = os.environ if env is None else env
    path = Path(path).resolve()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration {path} is not valid TOML: {exc}") from exc
    wrong = unknown_keys(data, config_schema())
    if wrong:
        raise ConfigError(f"configuration {path}: {'; '.join(wrong)}")
    return _build(data, path, env)


@functools.cache
def config_schema() -> Schema:
    """The tables and keys of pca.toml: those ``_build`` reads (through ``_section`` and ``_typed``)."""
    return trace_schema(lambda empty: _build(empty, Path("/pca.toml"), {}))


def _build(data: dict[str, Any], path: Path, env: Mapping[str, str]) -> Config:
    base = path.parent

    def rel(value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else (base / p)

    paths = _section(data, "paths")
    public = _section(data, "public")
    admin = _section(data, "admin")
    ca = _section(data, "ca")
    o = _section(data, "ocsp")
    c = _section(data, "crl")
    sc = _section(data, "scale")

    data_dir = rel(_typed(paths, "paths", "data_dir", str, "."))
    public_url = _typed(public, "public", "url", str, "http://127.0.0.1:8080")
    public_listen = parse_listen(
        _typed(public, "public", "listen", str, "{}:{}".format(*listen_from_url(public_url))), "public.listen"
    )
    public_server = _typed(public, "public", "server", str, "granian")
    public_workers = _typed(public, "public", "workers", int, 0)
    if public_server not in PUBLIC_SERVERS:
        raise ConfigError(f"public.server {public_server!r} is not one of {', '.join(PUBLIC_SERVERS)}")
    if public_workers < 0 or (public_server == "uvicorn" and public_workers > 1):
        raise ConfigError(
            f"public.workers must be 0 (one per core) or more, and applies to granian only (uvicorn serves in "
            f"the pca serve process), got {public_workers}"
        )
    admin_listen = parse_listen(_typed(admin, "admin", "listen", str, "127.0.0.1:8081"), "admin.listen")
    admin_tls = parse_admin_tls(admin, rel, data_dir, _typed)
    admin_url = _typed(admin, "admin", "url", str, default_admin_url(admin_listen, admin_tls.enabled))

    ocsp = OCSPConfig(
        validity_seconds=_typed(o, "ocsp", "validity_seconds", int, OCSPConfig.validity_seconds),
        refresh_fraction=_typed(o, "ocsp", "refresh_fraction", float, OCSPConfig.refresh_fraction),
        signer_validity_days=_typed(o, "ocsp", "signer_validity_days", int, OCSPConfig.signer_validity_days),
        signer_renew_before_days=_typed(
            o, "ocsp", "signer_renew_before_days", int, OCSPConfig.signer_renew_before_days
        ),
        signer_warn_days=_typed(o, "ocsp", "signer_warn_days", int, OCSPConfig.signer_warn_days),
        cache_size=_typed(o, "ocsp", "cache_size", int, OCSPConfig.cache_size),
        workers=_typed(o, "ocsp", "workers", int, OCSPConfig.workers),
        poll_interval=_typed(
            o,
            "ocsp",
            "poll_interval",
            float,
            OCSPConfig.poll_interval
            if _database_url(_section(data, "database"), env)
            else OCSPConfig.sqlite_poll_interval,
        ),
    )
    _positive(ocsp.validity_seconds, "ocsp.validity_seconds")
    _positive(ocsp.cache_size, "ocsp.cache_size")
    _positive(ocsp.poll_interval, "ocsp.poll_interval")
    if not 0 < ocsp.refresh_fraction < 1:
        raise ConfigError(f"ocsp.refresh_fraction must be between 0 and 1, got {ocsp.refresh_fraction}")
    if ocsp.workers < 0:
        raise ConfigError(f"ocsp.workers must be 0 (one per core) or more, got {ocsp.workers}")
    if not 0 < ocsp.signer_renew_before_days < ocsp.signer_validity_days:
        raise ConfigError("ocsp.signer_renew_before_days must be positive and below ocsp.signer_validity_days")
    if not 0 <= ocsp.signer_warn_days <= 3650:
        raise ConfigError(f"ocsp.signer_warn_days must be between 0 (no warning) and 3650, got {ocsp.signer_warn_days}")

    crl = CRLConfig(
        validity_seconds=_typed(c, "crl", "validity_seconds", int, CRLConfig.validity_seconds),
        interval_seconds=_typed(c, "crl", "interval_seconds", int, CRLConfig.interval_seconds),
        after_revocation_seconds=_typed(
            c, "crl", "after_revocation_seconds", float, CRLConfig.after_revocation_seconds
        ),
        delta_interval_seconds=_typed(c, "crl", "delta_interval_seconds", int, CRLConfig.delta_interval_seconds),
        full_after_revocation=_typed(c, "crl", "full_after_revocation", bool, CRLConfig.full_after_revocation),
        shards=_typed(c, "crl", "shards", int, CRLConfig.shards),
        expired_grace_seconds=_typed(c, "crl", "expired_grace_seconds", int, CRLConfig.expired_grace_seconds),
        base_url=_typed(c, "crl", "base_url", str, CRLConfig.base_url),
        store=_crl_store(_section(c, "store")),
    )
    _positive(crl.validity_seconds, "crl.validity_seconds")
    _positive(crl.interval_seconds, "crl.interval_seconds")
    if crl.interval_seconds >= crl.validity_seconds:
        raise ConfigError("crl.interval_seconds must be below crl.validity_seconds, or CRLs expire before renewal")
    if crl.after_revocation_seconds < 0:
        raise ConfigError("crl.after_revocation_seconds must not be negative")
    if not 0 <= crl.delta_interval_seconds < crl.interval_seconds:
        raise ConfigError(
            f"crl.delta_interval_seconds must be 0 (no delta CRLs) or below crl.interval_seconds "
            f"({crl.interval_seconds}), got {crl.delta_interval_seconds}"
        )
    if not crl.full_after_revocation and crl.delta_interval_seconds == 0:
        raise ConfigError(
            "crl.full_after_revocation = false needs delta CRLs (crl.delta_interval_seconds > 0): without "
            "either, a revocation would reach no CRL before the next full one (crl.interval_seconds)"
        )
    if not 1 <= crl.shards <= MAX_SHARDS:
        raise ConfigError(f"crl.shards must be between 1 and {MAX_SHARDS}, got {crl.shards}")
    if crl.expired_grace_seconds < 0:
        raise ConfigError(f"crl.expired_grace_seconds must not be negative, got {crl.expired_grace_seconds}")
    if crl.base_url and (not crl.base_url.startswith(("http://", "https://")) or crl.base_url.endswith("/")):
        raise ConfigError(f"crl.base_url {crl.base_url!r} must be an http:// or https:// URL without a final /")

    scale = ScaleConfig(
        lease_seconds=_typed(sc, "scale", "lease_seconds", float, ScaleConfig.lease_seconds),
        heartbeat_seconds=_typed(sc, "scale", "heartbeat_seconds", float, ScaleConfig.heartbeat_seconds),
        responder_gone_seconds=_typed(sc, "scale", "responder_gone_seconds", float, ScaleConfig.responder_gone_seconds),
        slo_seconds=_typed(sc, "scale", "slo_seconds", float, ScaleConfig.slo_seconds),
    )
    for key in ("lease_seconds", "heartbeat_seconds", "responder_gone_seconds", "slo_seconds"):
        _positive(getattr(scale, key), f"scale.{key}")
    if scale.responder_gone_seconds < 2 * scale.heartbeat_seconds:
        raise ConfigError("scale.responder_gone_seconds must be at least twice scale.heartbeat_seconds")

    au = _section(data, "audit")
    audit = AuditConfig(*(_typed(au, "audit", k, int, getattr(AuditConfig, k)) for k in _AUDIT_KEYS))
    for key in _AUDIT_KEYS:
        _positive(getattr(audit, key), f"audit.{key}")

    cfg = Config(
        path=path,
        data_dir=data_dir,
        database=rel(_typed(paths, "paths", "database", str, str(data_dir / "pca.db"))),
        crl_dir=rel(_typed(paths, "paths", "crl_dir", str, str(data_dir / "crl"))),
        public_url=public_url,
        public_listen=public_listen,
        admin_url=admin_url,
        admin_listen=admin_listen,
        token_file=rel(_typed(admin, "admin", "token_file", str, "admin.token")),
        tokens_db=rel(_typed(admin, "admin", "tokens_file", str, "tokens.json")),
        default_issuer=_typed(ca, "ca", "default_issuer", str, "issuing-ca"),
        leaf_validity_days=_typed(ca, "ca", "leaf_validity_days", int, 90),
        key_algorithm=_typed(ca, "ca", "key_algorithm", str, "ec-p256"),
        max_body_bytes=_typed(admin, "admin", "max_body_bytes", int, 64 * 1024),
        ocsp=ocsp,
        crl=crl,
        database_url=_database_url(_section(data, "database"), env),
        scale=scale,
        admin_tls=admin_tls,
        audit=audit,
        limits=parse_limits(_section(data, "limits")),
        public_server=public_server,
        public_workers=public_workers,
    )
    listen_from_url(cfg.public_url)
    _positive(cfg.leaf_validity_days, "ca.leaf_validity_days")
    return cfg


_AUDIT_KEYS = ("checkpoint_every_events", "checkpoint_interval_seconds")
