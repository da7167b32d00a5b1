"""``pca issuer revoke-issued`` against a real ``pca serve``, checked with the real ``openssl``: after the issuing
CA is revoked, every leaf it issued answers revoked in OCSP with the reason and is listed by the issuer's next
CRL; an imported ``openssl ca`` issuer works the same way, its sub-CA left alone. On a terminal the command
asks first, and revokes nothing unless the issuer id is typed back.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.pca.test_bring_your_own_ca import openssl_ocsp, verified_status
from tests.pca.test_ca_revocation_e2e import pca
from tests.support.openssl_ca import OpenSSLCA, load_pem, openssl
from tests.support.processes import ServerProcess, init_ca, running_server
from tests.support.scaled import wait_for

pytestmark = pytest.mark.e2e


def ocsp_answer(issuer: Path, leaf: Path, url: str, ca_file: Path) -> str:
    done = subprocess.run(
        ["openssl", "ocsp", "-issuer", issuer, "-cert", leaf, "-url", url, "-CAfile", ca_file, "-no_nonce"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return done.stdout + done.stderr


def test_after_the_issuing_ca_is_revoked_its_leaves_answer_revoked_in_ocsp_and_its_crl(tmp_path: Path) -> None:
    with running_server(tmp_path / "ca") as srv:
        d, config = srv.config_path.parent, srv.config_path
        leaves = []
        for name in ("svc1", "svc2", "svc3"):
            pca("issue", "--config", config, "--subject", f"CN={name}", "--dns", f"{name}.internal",
                "--out", d / f"{name}.pem", "--key-out", d / f"{name}.key")  # fmt: skip
            leaves.append(d / f"{name}.pem")
        held = load_pem(leaves[2]).serial_number
        pca("revoke", "--config", config, f"{held:x}", "--reason", "certificateHold")
        pca("issuer", "revoke", "--config", config, "issuing-ca", "--reason", "cACompromise")

        unconfirmed = pca("issuer", "revoke-issued", "--config", config, "issuing-ca", "--reason", "cACompromise",
                          ok=False)  # fmt: skip
        assert unconfirmed.returncode == 1 and "give --yes" in unconfirmed.stderr, unconfirmed.stderr
        done = pca("issuer", "revoke-issued", "--config", config, "issuing-ca", "--reason", "cACompromise", "--yes")

        assert re.search(r"^revoked \d+ certificates of issuing-ca \(cACompromise\)", done.stdout), done.stdout
        assert "already revoked   0" in done.stdout and "skipped CA        0" in done.stdout, done.stdout
        assert "Traceback" not in done.stderr
        url, chain = f"{srv.public_url}/ocsp", d / "ca-chain.pem"
        for leaf in leaves:

            def revoked(leaf: Path = leaf) -> str:
                out = ocsp_answer(d / "issuing-ca.pem", leaf, url, chain)
                return out if f"{leaf}: revoked" in out else ""

            out = wait_for(f"OCSP to answer revoked for {leaf.name}", revoked)
            assert "Response verify OK" in out and "Reason: cACompromise" in out, out
        serials = {f"{load_pem(leaf).serial_number:X}" for leaf in leaves}
        crl = tmp_path / "issuing-ca.crl"

        def crl_lists_them() -> str:
            crl.write_bytes(httpx.get(f"{srv.public_url}/crl/issuing-ca.crl", timeout=5).content)
            text = openssl("crl", "-inform", "DER", "-in", crl, "-CAfile", chain, "-noout", "-text")
            listed = {m.lstrip("0") for m in re.findall(r"Serial Number: ([0-9A-F]+)", text)}
            return text if serials <= listed else ""

        text = wait_for("the issuing CA's CRL to list every leaf", crl_lists_them)
        assert "verify OK" in text
        assert text.count("CA Compromise") >= len(leaves), text
        # Run again: nothing left to do, and it says so.
        again = pca("issuer", "revoke-issued", "--config", config, "issuing-ca", "--reason", "cACompromise", "--yes")
        assert again.stdout.startswith("revoked 0 certificates"), again.stdout
        assert "already revoked   " in again.stdout and "already revoked   0" not in again.stdout


def test_an_imported_openssl_ca_issuer_has_its_leaves_revoked_and_its_sub_ca_left(tmp_path: Path) -> None:
    config = init_ca(tmp_path / "pca")
    srv = ServerProcess(config)
    ext = OpenSSLCA(
        tmp_path / "legacy", "Legacy CA", ocsp_url=f"{srv.public_url}/ocsp", crl_url="http://pki.test/l.crl"
    )
    good, held = ext.issue("good"), ext.issue("held")
    sub_ca = ext.issue("legacy-sub", "ca_ext")
    openssl("ca", "-config", ext.config, "-revoke", held, "-crl_hold", "holdInstructionReject")
    csr = tmp_path / "ocsp-signer.csr"
    pca("issuer", "add", "--config", config, "--id", "legacy", "--cert", ext.cert_path, "--ocsp-signer-csr", csr)
    pca("issuer", "set-signer", "--config", config, "--id", "legacy", "--cert", ext.sign(csr, tmp_path / "s.pem"))
    pca("import", "--config", config, "--issuer", "legacy", "--openssl-index", ext.dir / "index.txt",
        "--certs-dir", ext.dir / "newcerts")  # fmt: skip
    srv.start()
    url = f"{srv.public_url}/ocsp"
    try:
        wait_for("the good certificate answered", lambda: verified_status(ext, good, url) == "good")

        done = pca("issuer", "revoke-issued", "--config", config, "legacy", "--reason", "keyCompromise", "--yes",
                   "--invalidity-date", "2026-11-01T09:30:00Z")  # fmt: skip

        # the good one, the held one and the OCSP signer's certificate the CA signed (noCheck: it still signs)
        assert done.stdout.startswith("revoked 3 certificates of legacy (keyCompromise)"), done.stdout
        assert "skipped CA        1" in done.stdout, done.stdout
        for leaf in (good, held):
            wait_for(
                f"OCSP to answer revoked for {leaf.name}",
                lambda leaf=leaf: verified_status(ext, leaf, url) == "revoked",
            )
            out = openssl_ocsp(ext, leaf, url)
            assert "Reason: keyCompromise" in out, out
        assert verified_status(ext, sub_ca, url) == "good"
    finally:
        srv.stop()


def test_on_a_terminal_it_asks_and_revokes_nothing_unless_the_issuer_id_is_typed(tmp_path: Path) -> None:
    with running_server(tmp_path / "ca") as srv:
        d, config = srv.config_path.parent, srv.config_path
        pca("issue", "--config", config, "--subject", "CN=kept", "--dns", "kept.internal", "--out", d / "kept.pem",
            "--key-out", d / "kept.key")  # fmt: skip
        serial = f"{load_pem(d / 'kept.pem').serial_number:x}"

        def on_a_terminal(answer: str) -> str:
            controller, terminal = os.openpty()
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "pca", "issuer", "revoke-issued", "--config", str(config), "issuing-ca",
                     "--reason", "superseded"],
                    stdin=terminal, stderr=terminal, stdout=subprocess.PIPE,
                )  # fmt: skip
                os.write(controller, answer.encode() + b"\n")
                out, _ = proc.communicate(timeout=120)
                seen = b""
                os.set_blocking(controller, False)
                try:
                    while chunk := os.read(controller, 65536):
                        seen += chunk
                except (BlockingIOError, OSError):
                    pass
                return seen.decode(errors="replace") + out.decode()
            finally:
                os.close(controller)
                os.close(terminal)

        refused = on_a_terminal("issuing")
        assert "Type the issuer id to confirm" in refused and "certificates recorded" in refused, refused
        assert "not confirmed: nothing was revoked" in refused, refused
        status = pca("status", "--config", config, serial).stdout
        assert f"{serial} good" in status, status

        confirmed = on_a_terminal("issuing-ca")
        assert "revoked 1 certificate of issuing-ca (superseded)" in confirmed, confirmed
        status = pca("status", "--config", config, serial).stdout
        assert f"{serial} revoked reason=superseded" in status, status
