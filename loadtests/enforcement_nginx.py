"""The nginx relying parties of the enforcement scenario, the CRL feed into one, and the TLS probe.

- ``ssl_crl``: nginx with ``ssl_verify_client on`` and ``ssl_crl`` pointing at the PEM bundle that
  ``pca crl-sync`` writes (the issuing CA's and the root's full CRLs); crl-sync reloads nginx when
  the bundle changes (``--on-change 'nginx -p PREFIX -c CONF -s reload'``).
- ``ssl_ocsp``: nginx (>= 1.19) with ``ssl_ocsp leaf`` asking the responder named in the client
  certificate's AIA; with ``ssl_ocsp_cache`` off (nginx's default: every handshake asks the
  responder) and, for comparison, with a shared cache (nginx keeps a status until the response's
  nextUpdate, or an hour if there is none, whatever the status).

A probe is a fresh TLS connection (full handshake, no session resumption: Python's client offers
none) presenting a client certificate, then ``GET /``. nginx completes the handshake whatever the
verification result and answers 400 ("The SSL certificate error") when the client certificate
failed it, so "refused" is a 400 or a TLS alert; "ok" is a 200.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import signal
import ssl
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from loadtests.common import Service, free_port
from loadtests.peers import nginx_conf

SERVER = """
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {server_cert};
    ssl_certificate_key {server_key};
    ssl_verify_client on;
    ssl_verify_depth 2;
    ssl_client_certificate {chain};
{checks}
    location / {{ return 200 "ok\\n"; }}
  }}
"""


def nginx_build() -> tuple[tuple[int, int, int] | None, str]:
    """This nginx's version and its ``nginx -V`` text (None, "" if there is no nginx)."""
    try:
        out = subprocess.run(["nginx", "-V"], capture_output=True, text=True, timeout=10, check=False).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None, ""
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    return ((int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None), out


def nginx_missing() -> str | None:
    """None if nginx is here with its SSL module, else why the nginx channels cannot run."""
    version, text = nginx_build()
    if version is None:
        return "nginx is not installed (Debian: apt-get install -y nginx)"
    if "--with-http_ssl_module" not in text:
        return "this nginx is built without http_ssl_module (nginx -V)"
    return None


def ssl_ocsp_supported() -> str | None:
    """None if this nginx has ``ssl_ocsp`` (1.19.0 and later), else why not."""
    version, _ = nginx_build()
    if version is None:
        return "nginx is not installed"
    if version < (1, 19, 0):
        return f"nginx {'.'.join(map(str, version))} has no ssl_ocsp (needs 1.19.0 or later)"
    return None


class Nginx:
    """An nginx of our own: a temporary prefix, 127.0.0.1 only, stopped (QUIT, then its group killed)."""

    def __init__(self, directory: Path, servers: dict[str, str], *, extra: str = "") -> None:
        """``servers``: name -> the revocation-checking lines of that server block."""
        self.directory = directory
        (directory / "tmp").mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port() for name in servers}
        self.conf = directory / "nginx.conf"
        self._servers = servers
        self._extra = extra
        self.service: Service | None = None

    def write(self, server_cert: Path, server_key: Path, chain: Path) -> None:
        blocks = "".join(
            SERVER.format(
                port=self.ports[name],
                server_cert=server_cert,
                server_key=server_key,
                chain=chain,
                checks="\n".join(f"    {line}" for line in checks.strip().splitlines()),
            )
            for name, checks in self._servers.items()
        )
        http = "  default_type text/plain;\n" + self._extra + "\n" + blocks
        self.conf.write_text(nginx_conf(self.directory, http, workers=1, connections=1024, log_level="info"))

    def command(self, *extra: str) -> list[str]:
        return ["nginx", "-p", str(self.directory), "-c", str(self.conf), "-e", str(self.error_log), *extra]

    @property
    def error_log(self) -> Path:
        return self.directory / "nginx-error.log"

    def reload_command(self) -> str:
        return shlex.join(self.command("-s", "reload"))

    def start(self) -> Nginx:
        test = subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30, check=False)
        if test.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{test.stderr}")
        self.service = Service(
            "nginx", self.command(), self.directory / "nginx.log", stop_signal=signal.SIGQUIT, grace=5.0
        )
        self.service.start()
        return self

    def check_alive(self) -> None:
        if self.service is not None:
            self.service.check_alive()

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()

    def log_lines(self, pattern: str) -> int:
        try:
            return sum(1 for line in self.error_log.read_text(errors="replace").splitlines() if pattern in line)
        except OSError:
            return 0


def client_context(chain: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A client context presenting ``cert``: it trusts our chain and checks the server's name (127.0.0.1)."""
    ctx = ssl.create_default_context(cafile=str(chain))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def probe(port: int, ctx: ssl.SSLContext, limit_s: float = 5.0) -> tuple[str, str]:
    """One fresh TLS connection and ``GET /``: ("ok" | "refused" | "error", detail)."""
    writer = None
    try:
        async with asyncio.timeout(limit_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            await writer.drain()
            head = await reader.read(4096)
    except ssl.SSLError as exc:
        # A TLS alert from nginx (a certificate it refused during the handshake) is a refusal too.
        return ("refused", f"TLS alert: {exc.reason or exc}") if "ALERT" in str(exc).upper() else ("error", str(exc))
    except (OSError, TimeoutError) as exc:
        return "error", f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if status.startswith("HTTP/1.1 200"):
        return "ok", status
    if status.startswith("HTTP/1.1 400") and b"SSL certificate" in head:
        return "refused", "400 The SSL certificate error"
    return "error", status or "empty answer"


# --- the CRL feed ------------------------------------------------------------------------------------


def pca_command() -> list[str]:
    """The product's ``pca`` from the virtualenv we run in (``.venv/bin/pca``)."""
    script = Path(sys.executable).parent / "pca"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pca.cli"]


def crl_sync_command(
    urls: Sequence[str], bundle: Path, out: Path, *, interval: float, on_change: str | None
) -> list[str]:
    """``pca crl-sync`` feeding nginx; ``--once`` if no ``on_change``."""
    cmd = [*pca_command(), "crl-sync"]
    for url in urls:
        cmd += ["--url", url]
    cmd += ["--ca-bundle", str(bundle), "--out", str(out), "--format", "pem"]
    if on_change is None:
        return [*cmd, "--once"]
    return [*cmd, "--interval", f"{interval:g}", "--on-change", on_change]
