"""The peers we measure against, built from the same certificates and keys.

- ``openssl ocsp``: the reference live-signing responder, over an OpenSSL CA index file.
  OpenSSL 3.0's ``-port`` takes a number only and binds every interface, so it runs in a
  private network namespace that has nothing but a loopback interface (``unshare``),
  together with the wrk and the checks that talk to it. Where namespaces are not
  available it runs in the host's namespace (bound to all interfaces) and says so.
- nginx serving the same pre-signed responses as static files keyed by request path.
- ``openssl ca -gencrl`` over an index with the same revoked entries.
- ``openssl speed ecdsap256``.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from loadtests.answers import Probe
from loadtests.common import Service, free_port

REASON = "keyCompromise"


def _ossl_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%y%m%d%H%M%SZ")


def _ossl_serial(serial: int) -> str:
    text = f"{serial:X}"
    return text if len(text) % 2 == 0 else "0" + text


def write_index(path: Path, rows: Iterable[tuple[int, datetime.datetime, datetime.datetime | None, str | None]]) -> int:
    """An OpenSSL CA database: ``(serial, not_after, revoked_at or None, reason)`` per certificate."""
    count = 0
    with open(path, "w") as out:
        for serial, not_after, revoked_at, reason in rows:
            if revoked_at is None:
                out.write(f"V\t{_ossl_time(not_after)}\t\t{_ossl_serial(serial)}\tunknown\t/CN=c{serial:x}\n")
            else:
                revocation = f"{_ossl_time(revoked_at)},{reason or 'unspecified'}"
                out.write(
                    f"R\t{_ossl_time(not_after)}\t{revocation}\t{_ossl_serial(serial)}\tunknown\t/CN=c{serial:x}\n"
                )
            count += 1
    Path(str(path) + ".attr").write_text("unique_subject = no\n")
    return count


def pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


# --- a loopback-only network namespace ----------------------------------------------------------


class NetNS:
    """A network namespace holding only an up loopback interface, kept by a sleeping process."""

    def __init__(self, directory: Path) -> None:
        self._holder = Service("netns holder", ["unshare", "--net", "--", "sleep", "86400"], directory / "netns.log")

    @staticmethod
    def available() -> bool:
        return all(shutil.which(t) for t in ("unshare", "nsenter", "ip"))

    def start(self) -> NetNS:
        self._holder.start()
        assert self._holder.proc is not None
        pid = self._holder.proc.pid
        deadline = time.monotonic() + 5
        # unshare execs sleep once the namespace exists: wait until the namespace differs from ours.
        # (The links read like "net:[4026531992]"; compare them as text, not as paths.)
        while os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            self._holder.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("unshare did not create a network namespace")
            time.sleep(0.02)
        subprocess.run([*self.prefix, "ip", "link", "set", "lo", "up"], check=True, capture_output=True)
        return self

    @property
    def prefix(self) -> list[str]:
        assert self._holder.proc is not None
        return ["nsenter", f"--net=/proc/{self._holder.proc.pid}/ns/net", "--"]

    def stop(self) -> None:
        self._holder.stop()


def try_netns(directory: Path) -> NetNS | None:
    if not NetNS.available():
        return None
    ns = NetNS(directory)
    try:
        return ns.start()
    except (OSError, RuntimeError, subprocess.CalledProcessError):
        ns.stop()
        return None


# --- openssl ocsp -------------------------------------------------------------------------------


def openssl_ocsp(
    directory: Path,
    index: Path,
    signer: Path,
    signer_key: Path,
    issuer: Path,
    *,
    multi: int,
    prefix: Sequence[str] = (),
) -> tuple[Service, int]:
    """``openssl ocsp`` answering from ``index``; returns the (unstarted) service and its port.

    Its parent ignores SIGTERM while its children spin, so stopping kills the whole group.
    """
    port = free_port()
    cmd = [
        *prefix,
        "openssl",
        "ocsp",
        "-index",
        str(index),
        "-port",
        str(port),
        "-rsigner",
        str(signer),
        "-rkey",
        str(signer_key),
        "-CA",
        str(issuer),
        "-ndays",
        "1",
    ]
    if multi > 1:
        cmd += ["-multi", str(multi)]
    # -multi: the parent makes its own process group (and exits if it cannot: not in a new session).
    name = f"openssl ocsp -multi {multi}" if multi > 1 else "openssl ocsp"
    return Service(name, cmd, directory / "openssl-ocsp.log", grace=1.0, new_session=multi <= 1), port


# --- nginx ----------------------------------------------------------------------------------------

_NGINX_MAIN = """
{user}
worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log {log_level};
events {{ worker_connections {connections}; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp;
  proxy_temp_path {d}/tmp;
  fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp;
  scgi_temp_path {d}/tmp;
{http}
}}
"""


def nginx_conf(
    directory: Path, http: str, *, workers: int = 2, connections: int = 4096, log_level: str = "warn"
) -> str:
    """An nginx.conf running in the foreground out of ``directory`` (pid, logs, temp files) with ``http``
    as the body of its http block."""
    # As root, nginx would switch its workers to an unprivileged user that cannot read our 0700 scratch
    # directory; keep them as root (they serve loopback only). As another user it keeps that user.
    user = "user root;" if os.geteuid() == 0 else ""
    return _NGINX_MAIN.format(
        user=user, workers=workers, d=directory, log_level=log_level, connections=connections, http=http
    )


_NGINX_STATIC = """
  keepalive_requests 1000000;
  types {{ }}
  default_type application/ocsp-response;
  server {{
    listen 127.0.0.1:{port};
    root {d}/root;
    # The raw request path (percent-encoding kept) is the file name: one file per request.
    location /ocsp/ {{ try_files $request_uri =404; }}
  }}"""


def nginx(directory: Path, responses: Iterable[tuple[Probe, bytes]], get_prefix: str) -> tuple[Service, int]:
    """nginx (2 workers) serving each response at its request's GET path; returns service and port."""
    root = directory / "root"
    (directory / "tmp").mkdir(parents=True, exist_ok=True)
    for probe, der in responses:
        path = root / probe.get_path(get_prefix).lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(der)
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(nginx_conf(directory, _NGINX_STATIC.format(d=directory, port=port)))
    cmd = ["nginx", "-c", str(conf), "-p", str(directory), "-e", str(directory / "nginx-error.log")]
    return Service("nginx", cmd, directory / "nginx.log", stop_signal=signal.SIGQUIT, grace=5.0), port


# --- openssl ca -gencrl ---------------------------------------------------------------------------

CA_CNF = """
[ ca ]
default_ca = bench

[ bench ]
dir = {d}
database = $dir/index.txt
crlnumber = $dir/crlnumber
certificate = {cert}
private_key = {key}
new_certs_dir = $dir
serial = $dir/serial
default_crl_days = 1
default_md = sha256
unique_subject = no
policy = any
crl_extensions = crl_ext

[ any ]
commonName = supplied

[ crl_ext ]
authorityKeyIdentifier = keyid:always
"""


def openssl_gencrl(directory: Path, issuer_cert: Path, issuer_key: Path) -> tuple[float, int]:
    """Run ``openssl ca -gencrl`` over ``directory/index.txt``; returns (seconds, DER bytes)."""
    (directory / "crlnumber").write_text("1000\n")
    conf = directory / "ca.cnf"
    conf.write_text(CA_CNF.format(d=directory, cert=issuer_cert, key=issuer_key))
    out = directory / "crl.pem"
    started = time.perf_counter()
    subprocess.run(
        ["openssl", "ca", "-gencrl", "-config", str(conf), "-md", "sha256", "-out", str(out), "-batch"],
        check=True,
        capture_output=True,
    )
    seconds = time.perf_counter() - started
    crl = x509.load_pem_x509_crl(out.read_bytes())
    return seconds, len(crl.public_bytes(serialization.Encoding.DER))


# --- openssl speed --------------------------------------------------------------------------------


def openssl_speed_ecdsap256(seconds: int = 3) -> float:
    """ECDSA P-256 signatures per second on one core, as ``openssl speed`` measures them."""
    out = subprocess.run(
        ["openssl", "speed", "-seconds", str(seconds), "ecdsap256"],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds * 4 + 30,
    ).stdout
    m = re.search(r"^\s*256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)\s*$", out, re.M)
    if not m:
        raise RuntimeError(f"cannot read openssl speed output:\n{out}")
    return float(m.group(1))


def tool_version(cmd: Sequence[str]) -> str:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (proc.stdout + proc.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"
