"""The TLS keys of the ``[admin]`` table (the admin listener's certificate, the CLI's CA bundle,
client certificates); loaded by ``pca.config``, used by ``pca.admin_tls`` and the CLI."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from revocation.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class AdminTLSConfig:
    """``[admin]`` TLS keys: the admin listener's certificate, the CLI's CA bundle, client certificates."""

    enabled: bool = True  # admin.tls; false: plain HTTP, refused on a non-loopback admin.listen
    cert: Path | None = None  # admin.tls_cert / admin.tls_key: an operator's own; None: pca issues and renews
    key: Path | None = None
    managed_file: Path = Path("keys/admin-tls.pem")  # key and chain pca issued (0600), under paths.data_dir
    validity_days: int = 30  # admin.tls_validity_days of the certificate pca issues
    renew_before_days: float = 10.0  # admin.tls_renew_before_days: re-issued this long before it expires
    ca_file: Path | None = None  # admin.ca_file: the CLI verifies the server against it; None: system store
    client_ca: Path | None = None  # admin.client_ca: accept client certificates issued under it


def parse_admin_tls(
    admin: dict[str, Any], rel: Callable[[str], Path], data_dir: Path, typed: Callable[..., Any]
) -> AdminTLSConfig:
    """The TLS keys of ``[admin]``, checked; ``typed`` is the configuration's typed getter."""

    def path(key: str, default: str = "") -> Path | None:
        value: str = typed(admin, "admin", key, str, default)
        return rel(value) if value else None

    cfg = AdminTLSConfig(
        enabled=typed(admin, "admin", "tls", bool, True),
        cert=path("tls_cert"),
        key=path("tls_key"),
        managed_file=data_dir / "keys" / "admin-tls.pem",
        validity_days=typed(admin, "admin", "tls_validity_days", int, AdminTLSConfig.validity_days),
        renew_before_days=typed(admin, "admin", "tls_renew_before_days", float, AdminTLSConfig.renew_before_days),
        ca_file=path("ca_file", "ca-chain.pem"),
        client_ca=path("client_ca"),
    )
    if (cfg.cert is None) != (cfg.key is None):
        raise ConfigError("admin.tls_cert and admin.tls_key go together: give both (your own certificate) or neither")
    if not 0 < cfg.renew_before_days < cfg.validity_days:
        raise ConfigError("admin.tls_renew_before_days must be positive and below admin.tls_validity_days")
    if cfg.client_ca is not None and not cfg.enabled:
        raise ConfigError("admin.client_ca needs admin.tls = true: client certificates are part of the TLS handshake")
    return cfg


def default_admin_url(listen: tuple[str, int], tls: bool) -> str:
    """``https://`` (or ``http://`` without TLS) + the listen address; 0.0.0.0 and :: become loopback."""
    host = listen[0]
    if host in ("", "::") or host.replace("0", "").strip(".") == "":  # every address: the CLI asks loopback
        host = "::1" if ":" in host else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{host}:{listen[1]}"
