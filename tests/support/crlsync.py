"""Helpers of the ``pca crl-sync`` tests: an in-process CA that signs CRLs, a small HTTP server
the test controls (to serve hostile CRL answers, or to stand in for the admin API and record reports),
and the agent as a real process serving /metrics."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from publishers.crl_der import CRLEntry, build_crl, delta_crl_indicator, freshest_crl, issuing_distribution_point
from revocation import ca
from revocation.keys import FileKey, KeyRef, generate_private_key
from tests.support.ports import free_port

UTC = datetime.UTC


def now() -> datetime.datetime:
    return datetime.datetime.now(UTC).replace(microsecond=0)


@dataclasses.dataclass(frozen=True)
class SigningCA:
    """A self-signed CA held in memory, signing CRLs with ``build_crl`` as the publisher does."""

    cert: x509.Certificate
    key: FileKey

    @classmethod
    def make(cls, common_name: str = "PCA Issuing CA", *, crl_sign: bool = True) -> SigningCA:
        key = FileKey(KeyRef("file"), generate_private_key("ec-p256"))
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        if crl_sign:
            return cls(ca.create_root(key, name, now(), 30), key)
        # A CA certificate whose keyUsage allows certificate signing only.
        private = key.private_key_for_builder()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(private.public_key())
            .serial_number(ca.random_serial())
            .not_valid_before(now() - datetime.timedelta(days=1))
            .not_valid_after(now() + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, False, False, False), critical=True)
            .sign(private, hashes.SHA256())  # type: ignore[arg-type]
        )
        return cls(cert, key)

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def bundle(self, path: Path, *others: SigningCA) -> Path:
        path.write_bytes(b"".join(c.pem() for c in (self, *others)))
        return path

    def crl(
        self,
        number: int,
        *,
        idp: str | None = None,
        delta_base: int | None = None,
        freshest: str | None = None,
        serials: Sequence[int] = (),
        this_update: datetime.datetime | None = None,
        next_update: datetime.datetime | None = None,
    ) -> bytes:
        """A DER CRL; by default issued an hour ago, valid for a day."""
        this_update = this_update or now() - datetime.timedelta(hours=1)
        extensions = []
        if idp is not None:
            extensions.append(issuing_distribution_point(idp, only_user_certs=True, only_ca_certs=False))
        if delta_base is not None:
            extensions.append(delta_crl_indicator(delta_base))
        if freshest is not None:
            extensions.append(freshest_crl(freshest))
        return build_crl(
            self.cert,
            self.key,
            [CRLEntry(serial, this_update) for serial in serials],
            number=number,
            this_update=this_update,
            next_update=next_update or this_update + datetime.timedelta(days=1),
            extra_extensions=extensions,
        )


@dataclasses.dataclass
class Reply:
    """How the test server answers a path."""

    body: bytes = b""
    status: int = 200
    content_type: str = "application/pkix-crl"
    etag: str | None = None  # sent, and a matching If-None-Match gets 304
    truncate_at: int | None = None  # announce the whole body, send this many bytes, close
    hang: bool = False  # accept the request and never answer


@dataclasses.dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ControlledServer:
    """A threaded HTTP server on a free loopback port whose answers the test sets per path."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Reply] = {}
        self.seen: list[Seen] = []
        self._release = threading.Event()
        handler = _handler(self)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def requests(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._release.set()  # hanging handlers return
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler(server: ControlledServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            server.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            reply = server.routes.get(self.path, Reply(b"not found\n", 404, "text/plain"))
            if reply.hang:
                server._release.wait(120)
                return
            if reply.etag is not None and self.headers.get("if-none-match") == reply.etag:
                self.send_response(304)
                self.send_header("etag", reply.etag)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            self.send_response(reply.status)
            self.send_header("content-type", reply.content_type)
            self.send_header("content-length", str(len(reply.body)))
            if reply.etag is not None:
                self.send_header("etag", reply.etag)
            self.end_headers()
            if reply.truncate_at is not None:
                self.wfile.write(reply.body[: reply.truncate_at])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(reply.body)

        do_GET = _answer
        do_POST = _answer

    return Handler


@contextmanager
def controlled_server(tls: ssl.SSLContext | None = None) -> Iterator[ControlledServer]:
    srv = ControlledServer(tls)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def tls_server_context(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A TLS server context for 127.0.0.1 with a self-signed certificate; and that certificate's PEM file."""
    key = FileKey(KeyRef("file"), generate_private_key("ec-p256")).private_key_for_builder()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crl server")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(ca.random_serial())
        .not_valid_before(now() - datetime.timedelta(days=1))
        .not_valid_after(now() + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cert_file, key_file = directory / "tls.pem", directory / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


@dataclasses.dataclass
class AgentProcess:
    """``pca crl-sync --metrics-listen`` as a real process, its output in ``log_path``."""

    proc: subprocess.Popen[bytes]
    metrics_address: tuple[str, int]
    log_path: Path

    @property
    def metrics_url(self) -> str:
        return "http://{}:{}/metrics".format(*self.metrics_address)

    def log(self) -> str:
        return self.log_path.read_text()


@contextmanager
def running_agent(
    directory: Path, crl_server: ControlledServer, ca: SigningCA, config: str = ""
) -> Iterator[AgentProcess]:
    """An agent syncing ``ca``'s full CRL from ``crl_server`` every 0.2 s, with ``config`` (TOML) as its
    ``--config`` file, serving /metrics on a free port; stopped with SIGTERM, which must exit 0."""
    url = crl_server.url("/crl/issuing-ca.crl")
    crl_server.routes["/crl/issuing-ca.crl"] = Reply(ca.crl(10, idp=url))
    (directory / "crl-sync.toml").write_text(config)
    address = ("127.0.0.1", free_port())
    argv = [
        "crl-sync", "--config", str(directory / "crl-sync.toml"), "--url", url,
        "--ca-bundle", str(ca.bundle(directory / "chain.pem")), "--out", str(directory / "crl.pem"),
        "--interval", "0.2", "--metrics-listen", "{}:{}".format(*address),
    ]  # fmt: skip
    log_path = directory / "agent.log"
    env = {k: v for k, v in os.environ.items() if k != "PCA_TOKEN"}
    with open(log_path, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pca.cli", *argv], stdout=sink, stderr=subprocess.STDOUT, env=env
        )
    agent = AgentProcess(proc, address, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            with suppress(httpx.HTTPError):
                if "crl_sync_installs_total 1.0" in httpx.get(agent.metrics_url, timeout=2).text:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, agent.log()
            time.sleep(0.1)
        yield agent
    except BaseException:
        print(agent.log()[-6000:])
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, agent.log()
