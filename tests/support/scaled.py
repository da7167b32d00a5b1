"""The scaled shape as real processes: PostgreSQL, and each role started on its own by ``pca serve``."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from asn1crypto import keys as asn1_keys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from pca.cli import main as pca_main
from tests.support.ports import free_port
from tests.support.postgres import PostgresCluster
from tests.support.processes import stop_process


def pca(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pca.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


UVICORN = ("--server", "uvicorn")


class RoleProcess:
    """One ``pca serve --roles ...`` process, ready when its health URL answers.

    Its public listener runs under uvicorn, in the process, unless ``extra`` names ``--server``: the
    scaled tests follow each responder by the id they give it (granian's workers report ``ID/<pid>``)."""

    def __init__(self, name: str, config: Path, roles: str, health_url: str, *extra: str) -> None:
        self.name = name
        self.config = config
        self.roles = roles
        self.health_url = health_url
        self.extra = extra
        self.log_path = config.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> None:
        with open(self.log_path, "ab") as log:
            command = [sys.executable, "-m", "pca.cli", "serve", "--config", str(self.config)]
            self.proc = subprocess.Popen(
                [*command, "--roles", self.roles, *self.extra, *(() if "--server" in self.extra else UVICORN)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_path.read_text()[-5000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.health_url, timeout=2).status_code in (200, 503):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become ready:\n{self.log_path.read_text()[-5000:]}")

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(self.health_url, timeout=5).json()
        return result

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        stop_process(self.proc)

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


def set_options(config: Path, **sections: dict[str, Any]) -> None:
    """Rewrite ``key = value`` lines of ``pca.toml`` in the named sections."""
    text = config.read_text()
    for section, values in sections.items():
        head = f"[{section}]\n"
        start = text.index(head) + len(head)
        end = text.find("\n[", start)
        end = len(text) if end < 0 else end
        body = text[start:end]
        for key, value in values.items():
            if isinstance(value, str):
                rendered = f'"{value}"'
            else:
                rendered = str(value).lower() if isinstance(value, bool) else str(value)
            body, n = re.subn(rf"^{key} = [^\n#]*", f"{key} = {rendered} ", body, flags=re.MULTILINE)
            if n == 0:
                body = f"{key} = {rendered}\n" + body
        text = text[:start] + body + text[end:]
    config.write_text(text)


class Deployment:
    """A CA initialised on PostgreSQL, and its roles as separate processes on loopback ports."""

    def __init__(self, directory: Path, pg: PostgresCluster, *, database_url: str | None = None) -> None:
        self.pg = pg
        self.dir = directory
        self.crl_port = free_port()
        self.admin_port = free_port()
        pca_main(
            [
                "init",
                "--dir",
                str(directory),
                "--public-url",
                f"http://127.0.0.1:{self.crl_port}",
                "--admin-listen",
                f"127.0.0.1:{self.admin_port}",
                "--no-admin-tls",  # plain HTTP on loopback
                "--database-url",
                database_url or pg.dsn,
            ]
        )
        self.config = directory / "pca.toml"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.token = (directory / "admin.token").read_text().strip()
        self.issuer = x509.load_pem_x509_certificate((directory / "issuing-ca.pem").read_bytes())
        self.procs: list[RoleProcess] = []

    def role(self, name: str, roles: str, *extra: str, port: int | None = None) -> RoleProcess:
        """A process running ``roles``; unless it runs the API, it answers /healthz on its own port."""
        if "api" in roles.split(","):
            health = f"{self.admin_url}/healthz"
            args = list(extra)
        else:
            port = port or free_port()
            health = f"http://127.0.0.1:{port}/healthz"
            args = ["--public-listen", f"127.0.0.1:{port}", *extra]
        proc = RoleProcess(name, self.config, roles, health, *args)
        proc.port = port  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def responder(self, name: str, port: int | None = None) -> RoleProcess:
        port = port or free_port()
        url = f"http://127.0.0.1:{port}/ocsp"
        return self.role(name, "responder", "--responder-id", name, "--responder-url", url, port=port)

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.admin_url, headers={"authorization": f"Bearer {self.token}"}, timeout=30)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def print_logs(self, tail: int = 6000) -> None:
        """The end of every process's log, for a test that failed (pytest shows what it printed)."""
        for proc in self.procs:
            print(f"\n===== {proc.name} ({proc.roles}) log, last {tail} characters =====\n{proc.log_text()[-tail:]}")


def ocsp_get_url(responder_url: str, cert: x509.Certificate, issuer: x509.Certificate) -> str:
    req = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    der = req.public_bytes(serialization.Encoding.DER)
    return f"{responder_url}/" + quote(base64.b64encode(der).decode(), safe="")


def ocsp_get_url_for_serial(responder_url: str, issuer: x509.Certificate, serial: int) -> str:
    """A GET URL asking about ``serial`` under ``issuer``, whether or not such a certificate exists."""
    name_hash = hashes.Hash(hashes.SHA1())
    name_hash.update(issuer.subject.public_bytes())
    spki = issuer.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    bits = asn1_keys.PublicKeyInfo.load(spki)["public_key"].contents[1:]  # the key's bits, without the unused-bits byte
    key_hash = hashes.Hash(hashes.SHA1())
    key_hash.update(bits)
    req = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(name_hash.finalize(), key_hash.finalize(), serial, hashes.SHA1())
        .build()
    )
    der = req.public_bytes(serialization.Encoding.DER)
    return f"{responder_url}/" + quote(base64.b64encode(der).decode(), safe="")


def ocsp_answer(client: httpx.Client, url: str) -> tuple[int, str]:
    """(HTTP status, OCSP answer): "good", "revoked", "unknown", or the response status name."""
    resp = client.get(url)
    if resp.status_code != 200:
        return resp.status_code, ""
    parsed = ocsp.load_der_ocsp_response(resp.content)
    if parsed.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return 200, parsed.response_status.name
    # Our responses carry two SingleResponses for the certificate (SHA-1 and SHA-256 CertIDs).
    statuses = {single.certificate_status.name.lower() for single in parsed.responses}
    return 200, statuses.pop() if len(statuses) == 1 else f"inconsistent {sorted(statuses)}"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1) -> Any:
    """Call ``check`` until it returns something true (and return that); fail naming ``what`` and
    the last result after ``timeout`` seconds. HTTP and parsing errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def metric(text: str, name: str, **labels: str) -> float | None:
    """A sample's value from Prometheus text, or None."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == name and not labels:
            return float(value)
        if key.startswith(name + "{"):
            got = ",".join(sorted(key[len(name) + 1 : -1].split(",")))
            if got == want:
                return float(value)
    return None


@contextlib.contextmanager
def running(deployment: Deployment) -> Iterator[Deployment]:
    try:
        yield deployment
    finally:
        deployment.stop_all()
