"""TLS on the admin listener: its certificate (issued by pca's own CA, or the operator's), the
uvicorn settings that serve it, its renewal while the server runs, and client certificates.

The certificate pca issues lives with its key and chain in one file, ``keys/admin-tls.pem``
(mode 0600, replaced atomically), so a reload never pairs a new certificate with an old key.
It is issued through the Authority like any certificate: an audited event in the log.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import secrets
import socket
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pca.config import Config
from revocation.authority import Actor, Authority, IssueRequest
from revocation.clock import Clock, SystemClock
from revocation.errors import ConfigError

log = logging.getLogger("pca.admin_tls")

SUBJECT = "pca admin API"
CHECK_SECONDS = 3600.0  # look at the certificate at least this often
RETRY_SECONDS = 60.0  # after a failed renewal
FILE_CHECK_SECONDS = 10.0  # an operator's certificate files are looked at this often


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plain_http(cfg: Config, insecure_admin_http: bool) -> None:
    """Refuse plain HTTP on an admin listener other hosts can reach: bearer tokens would cross in clear."""
    host, port = cfg.admin_listen
    if cfg.admin_tls.enabled or is_loopback(host) or insecure_admin_http:
        return
    raise ConfigError(
        f"admin.listen {host}:{port} is not a loopback address and admin.tls is false: bearer tokens would "
        "cross the network in clear. Set admin.tls = true (pca issues the certificate), listen on 127.0.0.1, "
        "or pass --insecure-admin-http to pca serve if something else (a TLS proxy on this host) protects it"
    )


def certificate_names(cfg: Config) -> tuple[list[str], list[str]]:
    """DNS names and IP addresses of the admin certificate: the listen host, the host of admin.url,
    localhost, 127.0.0.1 and ::1 (and the machine's name when listening on every address)."""
    hosts = [cfg.admin_listen[0], _url_host(cfg.admin_url), "localhost", "127.0.0.1", "::1"]
    if _unspecified(cfg.admin_listen[0]):
        hosts.append(socket.gethostname())
    dns: list[str] = []
    ips: list[str] = []
    for host in hosts:
        if not host:
            continue
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if host.lower() not in dns:
                dns.append(host.lower())
            continue
        if not ip.is_unspecified and str(ip) not in ips:
            ips.append(str(ip))
    return dns, ips


def _unspecified(host: str) -> bool:
    try:
        return not host or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _url_host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or ""


async def issue_certificate(cfg: Config, authority: Authority, actor: Actor) -> x509.Certificate:
    """Issue the admin listener a server certificate through the Authority (an audited event) and write
    key, certificate and issuing chain to ``keys/admin-tls.pem`` (0600)."""
    dns, ips = certificate_names(cfg)
    request = IssueRequest(
        subject=f"CN={SUBJECT}",
        dns=dns,
        ips=ips,
        profile="server",
        validity_days=cfg.admin_tls.validity_days,
    )
    issued = await authority.issue(request, actor)
    assert issued.private_key_pem is not None  # no CSR: the Authority made the key
    pem = serialization.Encoding.PEM
    chain = [issued.certificate.public_bytes(pem)]
    for issuer in await authority.issuers():
        if issuer.cert.subject == issued.certificate.issuer and issuer.kind != "root":
            chain.append(issuer.cert.public_bytes(pem))
    _write_secret(cfg.admin_tls.managed_file, issued.private_key_pem + b"".join(chain))
    log.info(
        "issued the admin listener's certificate (serial %x, until %s, event seq %d)",
        issued.certificate.serial_number,
        issued.certificate.not_valid_after_utc.isoformat(),
        issued.event.seq,
    )
    return issued.certificate


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_managed(cfg: Config) -> x509.Certificate | None:
    """The certificate in ``keys/admin-tls.pem`` if the file holds it with its matching key; else None."""
    try:
        data = cfg.admin_tls.managed_file.read_bytes()
        cert = x509.load_pem_x509_certificate(data)
        key = serialization.load_pem_private_key(data, None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return None
    if key.public_key().public_bytes(*_SPKI) != cert.public_key().public_bytes(*_SPKI):
        return None
    return cert


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def renew_at(cfg: Config, cert: x509.Certificate) -> datetime.datetime:
    return cert.not_valid_after_utc - datetime.timedelta(days=cfg.admin_tls.renew_before_days)


def _needs_issuing(cfg: Config, cert: x509.Certificate | None, now: datetime.datetime) -> str | None:
    """Why the managed certificate must be (re-)issued now, or None."""
    if cert is None:
        return "none usable"
    if now >= renew_at(cfg, cert):
        return f"it expires at {cert.not_valid_after_utc.isoformat()}"
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "it names no host"
    have = {n.lower() for n in sans.get_values_for_type(x509.DNSName)}
    have |= {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    dns, ips = certificate_names(cfg)
    missing = sorted((set(dns) | set(ips)) - have)
    return f"it does not name {', '.join(missing)}" if missing else None


def server_context(cfg: Config) -> ssl.SSLContext:
    """The admin listener's SSL context: its certificate, and client certificates when admin.client_ca."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, cfg)
    if cfg.admin_tls.client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(cfg.admin_tls.client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"admin.client_ca {cfg.admin_tls.client_ca}: cannot load the CA bundle: {exc}") from exc
        ctx.verify_mode = ssl.CERT_OPTIONAL  # a bearer token still works; a presented certificate must verify
    return ctx


def _load_chain(ctx: ssl.SSLContext, cfg: Config) -> None:
    tls = cfg.admin_tls
    cert, key = (tls.cert, tls.key) if tls.cert is not None else (tls.managed_file, tls.managed_file)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        what = "admin.tls_cert/admin.tls_key" if tls.cert is not None else "the admin certificate pca issued"
        raise ConfigError(f"{what} ({cert}, {key}): cannot load the certificate and key: {exc}") from exc


class _PeerCertificate:
    """Adds the ASGI ``tls`` extension (``client_cert_chain``) to every request of a connection whose
    client presented a certificate; this uvicorn does not expose it."""

    app: Any

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            self.app = _WithClientCert(self.app, ssl.DER_cert_to_PEM_cert(der))


class _WithClientCert:
    def __init__(self, app: Any, pem: str) -> None:
        self._app = app
        self._pem = pem

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        extensions = dict(scope.get("extensions") or {})
        extensions["tls"] = {"client_cert_chain": [self._pem]}
        await self._app({**scope, "extensions": extensions}, receive, send)


class AdminTLS:
    """The admin listener's TLS: the kwargs of its uvicorn Config and the task that keeps it valid."""

    def __init__(self, cfg: Config, authority: Authority, clock: Clock | None = None) -> None:
        self._cfg = cfg
        self._authority = authority
        self._clock = clock or SystemClock()
        self.context: ssl.SSLContext | None = None
        self._loaded: int | None = None  # serial of the certificate pca issued that the context holds

    async def prepare(self) -> dict[str, Any]:
        """Issue the certificate if none usable is there (an upgraded configuration, or one near its
        end), then build the context; the uvicorn kwargs."""
        if self._cfg.admin_tls.cert is None:
            reason = _needs_issuing(self._cfg, read_managed(self._cfg), self._clock.now())
            if reason is not None:
                log.info("issuing the admin listener's certificate: %s", reason)
                await issue_certificate(self._cfg, self._authority, _actor())
        self.context = context = server_context(self._cfg)
        self._loaded = cert.serial_number if (cert := read_managed(self._cfg)) is not None else None
        factory: Callable[[Any, Any], ssl.SSLContext] = lambda _config, _default: context  # noqa: E731
        # The listener's bounded protocol takes this mixin (pca.listener_protocol.listener_config).
        return {"ssl_context_factory": factory, "protocol_mixin": _PeerCertificate}

    async def run(self) -> None:
        """Re-issue pca's certificate before it expires and load it into the live context (new
        connections get it); reload an operator's files when they change."""
        mtimes = self._mtimes()
        while True:
            delay = FILE_CHECK_SECONDS
            try:
                if self._cfg.admin_tls.cert is None:
                    delay = await self._renew_if_due()
                elif self._mtimes() != mtimes:
                    changed = self._mtimes()
                    self._reload()
                    mtimes = changed  # a pair that does not load yet (one file replaced) is tried again
                    log.info("reloaded the admin certificate from %s", self._cfg.admin_tls.cert)
            except Exception:
                log.exception("admin certificate renewal or reload failed; retrying in %.0f s", RETRY_SECONDS)
                delay = RETRY_SECONDS if self._cfg.admin_tls.cert is None else FILE_CHECK_SECONDS
            await asyncio.sleep(delay)

    async def _renew_if_due(self) -> float:
        now = self._clock.now()
        cert = read_managed(self._cfg)
        reason = _needs_issuing(self._cfg, cert, now)
        if reason is not None:
            log.info("renewing the admin listener's certificate: %s", reason)
            cert = await issue_certificate(self._cfg, self._authority, _actor())
        assert cert is not None
        if cert.serial_number != self._loaded:  # renewed here, or by another process sharing the directory
            self._reload()
            self._loaded = cert.serial_number
        left = (renew_at(self._cfg, cert) - self._clock.now()).total_seconds()
        return min(CHECK_SECONDS, max(1.0, left))

    def _reload(self) -> None:
        """Load the files into the live context, after a scratch context has loaded them: a pair that
        fails halfway would leave the live one with a certificate and no key."""
        if self.context is not None:
            _load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), self._cfg)
            _load_chain(self.context, self._cfg)

    def _mtimes(self) -> tuple[float, ...]:
        tls = self._cfg.admin_tls
        paths = [p for p in (tls.cert, tls.key) if p is not None]
        try:
            return tuple(p.stat().st_mtime for p in paths)
        except OSError:
            return ()


def _actor() -> Actor:
    return Actor("system:admin-tls", f"admin-tls-{secrets.token_hex(8)}")


async def admin_listener_tls(
    cfg: Config, authority: Authority, insecure_admin_http: bool, clock: Clock | None = None
) -> tuple[dict[str, Any], Coroutine[Any, Any, None] | None]:
    """What ``pca serve`` needs for the admin listener: uvicorn kwargs and a background task (or None)."""
    check_plain_http(cfg, insecure_admin_http)
    if not cfg.admin_tls.enabled:
        return {}, None
    tls = AdminTLS(cfg, authority, clock)
    return await tls.prepare(), tls.run()
