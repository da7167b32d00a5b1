"""``pca crl-sync`` against a real ``pca serve``: a revocation reaches the relying party's CRL file.

The first test publishes full CRLs every 4 s as well (``crl.interval_seconds``), so that new full
CRLs keep arriving between the agent's fetches; the second runs with the settings ``pca init``
writes, where the full CRL follows the revocation within seconds.
``openssl verify -crl_check_all`` reads the installed bundle as nginx would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from pca.config import load_config
from publishers.crlsync.install import read_bundle
from publishers.crlsync.report import PATH
from tests.support.crl import crl_number, delta_base, with_crl_settings
from tests.support.crlsync import ControlledServer, Reply, controlled_server
from tests.support.processes import ServerProcess, init_ca, stop_process

pytestmark = pytest.mark.e2e

PCA = [sys.executable, "-m", "pca.cli"]


def pca(*args: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*PCA, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"pca {args} exited {done.returncode}: {done.stderr}"
    return done


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    path = init_ca(tmp_path / "ca")
    with_crl_settings(load_config(path), interval_seconds=4, delta_interval_seconds=2)
    srv = ServerProcess(path)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def admin() -> Iterator[ControlledServer]:
    with controlled_server() as srv:
        srv.routes[PATH] = Reply(b"{}", status=201, content_type="application/json")
        yield srv


def lists(crl: x509.CertificateRevocationList, serial: int) -> bool:
    return crl.get_revoked_certificate_by_serial_number(serial) is not None


def test_a_revocation_reaches_the_relying_partys_crl_bundle(
    tmp_path: Path, server: ServerProcess, admin: ControlledServer
) -> None:
    d = server.config_path.parent
    crl_base = f"{server.public_url}/crl"
    urls = [f"{crl_base}/root-ca.crl", f"{crl_base}/issuing-ca.crl", f"{crl_base}/issuing-ca-delta.crl"]
    out, changes, token = tmp_path / "rp" / "crl-bundle.pem", tmp_path / "changes", tmp_path / "agent.token"
    out.parent.mkdir()
    token.write_text("agent-token\n")
    argv = [*PCA, "crl-sync", *(a for u in urls for a in ("--url", u)), "--ca-bundle", d / "ca-chain.pem"]
    argv += ["--out", out, "--on-change", f"echo reload >> {changes}", "--agent-id", "web-1"]
    argv += ["--report-to", admin.base, "--token-file", token]
    argv = [str(a) for a in argv]

    for _ in range(3):
        first = subprocess.run([*argv, "--once"], capture_output=True, text=True, timeout=60, check=False)
        # A full CRL published between the fetches of the full CRL and of its delta refuses the delta
        # (delta-base-ahead) for one pass: the next pass installs both.
        if first.returncode == 0 or "delta-base-ahead" not in first.stderr:
            break
    assert first.returncode == 0, first.stderr
    assert len(read_bundle(out)) == 3
    assert changes.read_text().startswith("reload\n")

    cert, key = d / "web.pem", d / "web.key"
    issued = pca(
        "issue",
        "--config",
        server.config_path,
        "--subject",
        "CN=web",
        "--dns",
        "web.internal",
        "--out",
        cert,
        "--key-out",
        key,
    )
    serial_hex = issued.stdout.splitlines()[0].strip()
    serial = int(serial_hex, 16)
    pca("revoke", "--config", server.config_path, serial_hex, "--reason", "keyCompromise")

    log = tmp_path / "agent.log"
    with open(log, "wb") as sink:
        agent = subprocess.Popen([*argv, "--interval", "0.5"], stdout=sink, stderr=subprocess.STDOUT, env=os.environ)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            crls = read_bundle(out)
            if len(crls) == 3 and lists(crls[1], serial):
                break
            time.sleep(0.2)
        root, full, delta = read_bundle(out)
        assert lists(full, serial), log.read_text()
        assert not lists(root, serial) and delta_base(full) is None
        # The delta lists what changed since its base; its base is never newer than the full CRL installed.
        base = delta_base(delta)
        assert base is not None and base <= crl_number(full)
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=30)
        stop_process(agent)
    assert code == 0, log.read_text()

    # As nginx reads it: every CA of the chain has a CRL, and the leaf is revoked.
    verify = subprocess.run(
        ["openssl", "verify", "-crl_check_all", "-CAfile", d / "ca-chain.pem", "-CRLfile", out, d / "web.pem"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode != 0 and "certificate revoked" in verify.stdout + verify.stderr, verify
    full_pem = tmp_path / "full.pem"
    full_pem.write_bytes(out.read_bytes().split(b"-----END X509 CRL-----\n")[1] + b"-----END X509 CRL-----\n")
    text = subprocess.run(
        ["openssl", "crl", "-in", full_pem, "-noout", "-text"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    printed = f"{serial:X}"
    assert f"Serial Number: {'0' * (len(printed) % 2)}{printed}" in text, text

    assert int(changes.read_text().count("reload")) >= 2
    reported = [s.json() for s in admin.requests(PATH)]
    full_reports = [r for r in reported if r["crl_url"] == urls[1]]
    assert full_reports and full_reports[-1]["crl_number"] == crl_number(full)
    assert {r["agent"] for r in reported} == {"web-1"}
    assert all(s.headers["authorization"] == "Bearer agent-token" for s in admin.requests(PATH))


@pytest.fixture
def default_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """``pca serve`` with the settings ``pca init`` writes: full CRLs every 6 h, and after each revocation."""
    srv = ServerProcess(init_ca(tmp_path / "ca-default", tls=True))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_with_default_settings_the_agent_installs_the_revocation_and_pca_propagation_shows_it(
    tmp_path: Path, default_server: ServerProcess
) -> None:
    """The whole relying-party channel, real parts only: the full CRL follows the revocation, the agent
    installs it and reports it with an ``agent`` token, and the propagation timeline names the agent."""
    srv = default_server
    d = srv.config_path.parent
    token = tmp_path / "agent.token"
    token.write_text(pca("token", "create", "--config", srv.config_path, "--name", "edge", "--role", "agent").stdout)
    issued = pca(
        "issue", "--config", srv.config_path, "--subject", "CN=edge", "--dns", "edge.internal", "--key-out", d / "e.key"
    )
    serial_hex = issued.stdout.splitlines()[0].strip()
    out = tmp_path / "rp" / "crl-bundle.pem"
    out.parent.mkdir()
    argv = [
        *PCA,
        "crl-sync",
        "--url",
        f"{srv.public_url}/crl/root-ca.crl",
        "--url",
        f"{srv.public_url}/crl/issuing-ca.crl",
    ]
    argv += ["--ca-bundle", d / "ca-chain.pem", "--out", out, "--interval", "0.5", "--agent-id", "edge-proxy-1"]
    argv += ["--report-to", srv.admin_url, "--token-file", token, "--tls-ca", d / "ca-chain.pem"]
    log = tmp_path / "agent.log"
    with open(log, "wb") as sink:
        agent = subprocess.Popen([str(a) for a in argv], stdout=sink, stderr=subprocess.STDOUT)
    try:
        pca("revoke", "--config", srv.config_path, serial_hex, "--reason", "keyCompromise")
        deadline, shown = time.monotonic() + 60, ""
        while time.monotonic() < deadline:
            shown = pca("propagation", "--config", srv.config_path, serial_hex).stdout
            if "relying party edge-proxy-1: installed full CRL" in shown:
                break
            time.sleep(0.5)
        assert "relying party edge-proxy-1: installed full CRL" in shown, shown + log.read_text()
        [_, full] = read_bundle(out)
        assert lists(full, int(serial_hex, 16))
        assert f"number {crl_number(full)}" in shown
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
        stop_process(agent)
    assert "agent-token" not in log.read_text() and token.read_text().strip() not in log.read_text()
