"""The admin API over TLS: the certificate ``pca init`` issues, what the CLI accepts, renewal by the
running server, an operator's own certificate, client certificates checked against pca's own
revocation status, and plain HTTP refused on a non-loopback address. Real servers, real
``openssl s_client``, Python's ssl."""

from __future__ import annotations

import dataclasses
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from pca.config import load_config
from tests.support.admin import assert_problem
from tests.support.openssl_ca import openssl
from tests.support.ports import free_port
from tests.support.processes import ServerProcess, init_ca, stop_process
from tests.support.scaled import wait_for


def pca(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pca.cli", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def set_admin(config: Path, **settings: str) -> None:
    """Replace ``key = ...`` lines of the [admin] table (pca init writes every key)."""
    lines = config.read_text().splitlines()
    for i, line in enumerate(lines):
        key = line.split("=")[0].strip()
        if key in settings:
            lines[i] = f"{key} = {settings[key]}"
    config.write_text("\n".join(lines) + "\n")


def served_certificate(port: int, ca_file: Path) -> x509.Certificate:
    """The certificate a new TLS connection to the admin listener gets, verified against ``ca_file``."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def events(srv: ServerProcess) -> list[dict[str, object]]:
    with srv.admin() as admin:
        resp = admin.get("/v1/events", params={"limit": 1000})
    assert resp.status_code == 200, resp.text
    found: list[dict[str, object]] = resp.json()["events"]
    return found


@pytest.fixture
def tls_server(tmp_path: Path) -> ServerProcess:
    return ServerProcess(init_ca(tmp_path / "ca", tls=True))


def test_init_issues_the_admin_certificate_and_the_cli_verifies_it(tls_server: ServerProcess) -> None:
    cfg = tls_server.config
    assert cfg.admin_url.startswith("https://127.0.0.1:")
    pem = cfg.admin_tls.managed_file
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600 and pem.parent.name == "keys"
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert "localhost" in sans.get_values_for_type(x509.DNSName)

    tls_server.start()
    try:
        port = cfg.admin_listen[1]
        out = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", cfg.data_dir / "root-ca.pem",
             "-verify_return_error", "-verify_ip", "127.0.0.1"],
            input="", capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
        assert "Verify return code: 0 (ok)" in out
        assert served_certificate(port, cfg.data_dir / "ca-chain.pem").serial_number == cert.serial_number

        # The CLI follows admin.url (https) and verifies against admin.ca_file (ca-chain.pem).
        done = pca("status", "--config", tls_server.config_path, f"{cert.serial_number:x}")
        assert done.returncode == 0, done.stderr
        assert "good" in done.stdout
        issued = [e for e in events(tls_server) if e["type"] == "CertificateIssued" and e["actor"] == "system:init"]
        assert any(int(str(e["payload"]["serial"]), 16) == cert.serial_number for e in issued)  # type: ignore[index]
        assert "audit OK" in pca("audit", "verify", "--config", tls_server.config_path).stdout

        # Plain HTTP on the TLS port gets nothing useful; the CLI never turns verification off.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        tls_server.stop()


def test_the_cli_refuses_a_server_its_ca_bundle_did_not_issue(tls_server: ServerProcess, tmp_path: Path) -> None:
    other = init_ca(tmp_path / "other", tls=True)
    tls_server.start()
    try:
        args = ["events", "--config", tls_server.config_path]
        refused = pca(*args, "--ca-file", other.parent / "ca-chain.pem")
        assert refused.returncode != 0
        assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr and "--ca-file" in refused.stderr
        assert tls_server.token not in refused.stderr + refused.stdout
        # Without any bundle (no configuration) the system's store is used: refused as well.
        bare = pca("events", "--admin-url", tls_server.admin_url, "--token", tls_server.token)
        assert bare.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in bare.stderr
        assert pca(*args, "--ca-file", tls_server.config.data_dir / "ca-chain.pem").returncode == 0
        # pca probe reads the log and the issuers from the admin API through the same verification.
        probe = ["probe", "--config", tls_server.config_path, "--responder", f"{tls_server.public_url}/ocsp"]
        assert pca(*probe, "--duration", "0.5").returncode == 0
        wrong = pca(*probe, "--duration", "0.5", "--ca-file", other.parent / "ca-chain.pem")
        assert wrong.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in wrong.stderr
    finally:
        tls_server.stop()


def test_the_running_server_renews_its_certificate(tls_server: ServerProcess) -> None:
    cfg = tls_server.config
    # One day of validity, renewed when less than a day minus 5 s is left: 5 s after each issue.
    set_admin(tls_server.config_path, tls_validity_days="1", tls_renew_before_days=str(1 - 5 / 86400))
    first_issue = x509.load_pem_x509_certificate(cfg.admin_tls.managed_file.read_bytes())
    cfg.admin_tls.managed_file.unlink()  # as after an upgrade: serve issues one at start
    tls_server.start()
    try:
        port, ca_file = cfg.admin_listen[1], cfg.data_dir / "ca-chain.pem"
        at_start = served_certificate(port, ca_file)
        assert at_start.serial_number != first_issue.serial_number
        assert (at_start.not_valid_after_utc - at_start.not_valid_before_utc).days <= 1
        with tls_server.admin() as kept_alive:
            assert kept_alive.get("/v1/events", params={"limit": 1}).status_code == 200
            renewed = wait_for(
                "a renewed admin certificate",
                lambda: (c := served_certificate(port, ca_file)).serial_number != at_start.serial_number and c,
                timeout=90,
                interval=0.5,
            )
            assert kept_alive.get("/v1/events", params={"limit": 1}).status_code == 200
        on_disk = x509.load_pem_x509_certificate(cfg.admin_tls.managed_file.read_bytes())
        by_renewal = [
            int(str(e["payload"]["serial"]), 16)  # type: ignore[index]
            for e in events(tls_server)
            if e["type"] == "CertificateIssued" and e["actor"] == "system:admin-tls"
        ]
        assert {at_start.serial_number, renewed.serial_number, on_disk.serial_number} <= set(by_renewal)
        assert pca("audit", "verify", "--config", tls_server.config_path).returncode == 0
    finally:
        tls_server.stop()


def test_an_operators_own_certificate(tmp_path: Path) -> None:
    ext = tmp_path / "ext"
    ext.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-subj", "/CN=Corp CA", "-days", "2", "-keyout", ext / "ca.key",
            "-out", ext / "ca.pem", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign")  # fmt: skip
    openssl("req", "-x509", *ec, "-subj", "/CN=admin.corp", "-days", "2", "-CA", ext / "ca.pem",
            "-CAkey", ext / "ca.key", "-keyout", ext / "admin.key", "-out", ext / "admin.pem",
            "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=CA:FALSE")  # fmt: skip
    config = init_ca(tmp_path / "ca", tls=True)
    set_admin(
        config, tls_cert=f'"{ext / "admin.pem"}"', tls_key=f'"{ext / "admin.key"}"', ca_file=f'"{ext / "ca.pem"}"'
    )
    srv = ServerProcess(config)
    srv.start()
    try:
        port = srv.config.admin_listen[1]
        assert served_certificate(port, ext / "ca.pem").subject.rfc4514_string() == "CN=admin.corp"
        assert pca("events", "--config", config).returncode == 0
        # The operator renews the files (key first, then certificate): the server loads the pair.
        openssl("req", "-x509", *ec, "-subj", "/CN=renewed.corp", "-days", "2", "-CA", ext / "ca.pem",
                "-CAkey", ext / "ca.key", "-keyout", ext / "new.key", "-out", ext / "new.pem",
                "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=CA:FALSE")  # fmt: skip
        os.replace(ext / "new.key", ext / "admin.key")
        time.sleep(0.5)
        os.replace(ext / "new.pem", ext / "admin.pem")
        wait_for(
            "the operator's renewed certificate",
            lambda: served_certificate(port, ext / "ca.pem").subject.rfc4514_string() == "CN=renewed.corp",
            timeout=90,
            interval=1,
        )
    finally:
        srv.stop()
    set_admin(config, tls_key='""')
    refused = pca("serve", "--config", config)
    assert refused.returncode != 0 and "admin.tls_cert and admin.tls_key go together" in refused.stderr


def test_client_certificates_checked_against_pcas_own_revocation_status(tmp_path: Path) -> None:
    config = init_ca(tmp_path / "ca", tls=True)
    set_admin(config, client_ca='"ca-chain.pem"')
    srv = ServerProcess(config)
    srv.start()
    try:
        d = srv.config.data_dir

        def issue(name: str, subject: str) -> tuple[Path, Path, str]:
            cert, key = d / f"{name}.pem", d / f"{name}.key"
            done = pca("issue", "--config", config, "--profile", "client", "--subject", subject,
                       "--out", cert, "--key-out", key)  # fmt: skip
            assert done.returncode == 0, done.stderr
            return cert, key, done.stdout.splitlines()[0]

        alice = issue("alice", "CN=alice,OU=revoker")
        nobody = issue("nobody", "CN=nobody")
        target = issue("target", "CN=target")

        def client(cert: Path, key: Path) -> httpx.Client:
            ctx = ssl.create_default_context(cafile=str(d / "ca-chain.pem"))
            ctx.load_cert_chain(cert, key)
            return httpx.Client(base_url=srv.admin_url, verify=ctx, timeout=30)

        with client(alice[0], alice[1]) as as_alice:
            assert as_alice.get(f"/v1/certificates/{target[2]}").status_code == 200
            resp = as_alice.post(f"/v1/certificates/{target[2]}/revoke", json={"reason": "superseded"})
            assert resp.status_code == 201, resp.text
            issued = as_alice.post("/v1/certificates", json={"subject": "CN=x", "dns": ["x"]})
            assert_problem(issued, 403, "role 'revoker' may not issue")

            # The CLI presents the certificate instead of a token.
            by_cli = pca("status", "--config", config, target[2], "--client-cert", alice[0], "--client-key", alice[1])
            assert by_cli.returncode == 0 and "revoked" in by_cli.stdout, by_cli.stderr

            # Revoked with the admin token: alice's next request (same kept-alive connection) is refused.
            with srv.admin() as admin:
                assert (
                    admin.post(f"/v1/certificates/{alice[2]}/revoke", json={"reason": "keyCompromise"}).status_code
                    == 201
                )
            assert_problem(as_alice.get(f"/v1/certificates/{target[2]}"), 401, "is revoked (keyCompromise)")
            again = pca("status", "--config", config, target[2], "--client-cert", alice[0], "--client-key", alice[1])
            assert again.returncode != 0 and "is revoked" in again.stderr

        with client(nobody[0], nobody[1]) as as_nobody:
            assert_problem(as_nobody.get(f"/v1/certificates/{target[2]}"), 401, "names no role")
            # A bearer token still authenticates beside a certificate.
            headers = {"authorization": f"Bearer {srv.token}"}
            assert as_nobody.get(f"/v1/certificates/{target[2]}", headers=headers).status_code == 200

        revocation = next(e for e in events(srv) if e["type"] == "CertificateRevoked")
        assert revocation["actor"] == "cert:CN=alice,OU=revoker"

        # A certificate from a CA the listener does not trust fails the handshake.
        other = init_ca(tmp_path / "other", "--root-cn", "Other Root", "--issuing-cn", "Other CA", tls=True).parent
        foreign = ssl.create_default_context(cafile=str(d / "ca-chain.pem"))
        foreign.load_cert_chain(other / "keys" / "admin-tls.pem")
        with pytest.raises(httpx.HTTPError), httpx.Client(base_url=srv.admin_url, verify=foreign) as c:
            c.get(f"/v1/certificates/{target[2]}")
    finally:
        srv.stop()


def test_plain_http_on_a_non_loopback_address_is_refused(tmp_path: Path) -> None:
    config = init_ca(tmp_path / "ca")  # admin.tls = false
    text = config.read_text()
    listen = load_config(config).admin_listen
    config.write_text(text.replace(f'listen = "127.0.0.1:{listen[1]}"', f'listen = "0.0.0.0:{listen[1]}"'))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pca.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ},
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        stop_process(proc)  # type: ignore[arg-type]
    assert proc.returncode != 0
    assert f"admin.listen 0.0.0.0:{listen[1]} is not a loopback address" in out
    assert "--insecure-admin-http" in out and "Traceback" not in out


def test_plain_http_is_allowed_on_loopback_and_with_the_flag(tmp_path: Path) -> None:
    from pca.admin_tls import check_plain_http

    cfg = load_config(init_ca(tmp_path / "ca"))
    assert cfg.admin_url.startswith("http://") and not cfg.admin_tls.enabled
    check_plain_http(cfg, insecure_admin_http=False)  # loopback
    exposed = dataclasses.replace(cfg, admin_listen=("0.0.0.0", free_port()))
    check_plain_http(exposed, insecure_admin_http=True)


def test_init_names_the_admin_url_host_in_the_certificate(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    base = ["init", "--public-url", f"http://127.0.0.1:{free_port()}", "--admin-listen", listen]
    refused = pca(*base, "--dir", tmp_path / "a", "--admin-url", f"http://{listen}")
    assert refused.returncode != 0 and "must be a https:// URL" in refused.stderr
    assert not (tmp_path / "a" / "pca.toml").exists()
    done = pca(*base, "--dir", tmp_path / "b", "--admin-url", "https://admin.internal:8443")
    assert done.returncode == 0, done.stderr
    cfg = load_config(tmp_path / "b" / "pca.toml")
    assert cfg.admin_url == "https://admin.internal:8443"
    cert = x509.load_pem_x509_certificate(cfg.admin_tls.managed_file.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"admin.internal", "localhost"} <= set(names.get_values_for_type(x509.DNSName))
