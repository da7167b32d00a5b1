"""Bring your own CA, the whole keyless flow as the README walks it, every step a real command.

An ``openssl ca`` directory (its key never leaves it) has issued a good, a compromised and a held
certificate. Through ``pca`` commands only: the CA is added without its key, pca's signer CSR is
signed by ``openssl ca``, the signer is set, the database imported, ``pca serve`` started; then
``openssl ocsp`` (and GET/POST requests with SHA-1 and SHA-256 CertIDs) see the original reasons
and times; revocation, hold release, the recorder API, timelines, ``pca audit verify`` and
``pca rebuild`` work for these certificates as for pca's own.
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from pca.config import load_config
from tests.support.openssl_ca import OpenSSLCA, load_pem, openssl
from tests.support.processes import ServerProcess, init_ca
from tests.support.scaled import wait_for

pytestmark = pytest.mark.e2e

COMPROMISED_AT = "20261101093000Z"  # the -crl_compromise time: the invalidity date


def pca(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "pca", *map(str, args)], capture_output=True, text=True, timeout=120)
    if ok:
        assert done.returncode == 0, f"pca {' '.join(map(str, args))}:\n{done.stdout}{done.stderr}"
    return done


def openssl_ocsp(ext: OpenSSLCA, leaf: Path, url: str) -> str:
    done = subprocess.run(
        ["openssl", "ocsp", "-issuer", ext.cert_path, "-cert", leaf, "-url", url, "-CAfile", ext.cert_path],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return done.stdout + done.stderr


def verified_status(ext: OpenSSLCA, leaf: Path, url: str) -> str | None:
    """good / revoked / unknown when openssl verified the response's signature, else None."""
    out = openssl_ocsp(ext, leaf, url)
    match = re.search(rf"{re.escape(str(leaf))}: (good|revoked|unknown)", out)
    return match.group(1) if match and "Response verify OK" in out else None


def index_time(ext: OpenSSLCA, serial: int) -> datetime.datetime:
    """The revocation time ``openssl ca`` wrote in index.txt for ``serial``."""
    for line in (ext.dir / "index.txt").read_text().splitlines():
        fields = line.split("\t")
        if int(fields[3], 16) == serial:
            return datetime.datetime.strptime(fields[2].split(",")[0], "%y%m%d%H%M%SZ").replace(tzinfo=datetime.UTC)
    raise AssertionError(f"{serial:x} not in index.txt")


def ask(client: httpx.Client, url: str, leaf: x509.Certificate, issuer: x509.Certificate) -> set[tuple[str, str]]:
    """(method and hash, status) for GET and POST with SHA-1 and SHA-256 CertIDs, signatures checked."""
    answers = set()
    for algorithm in (hashes.SHA1(), hashes.SHA256()):
        der = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(leaf, issuer, algorithm)
            .build()
            .public_bytes(serialization.Encoding.DER)
        )
        get = client.get(f"{url}/" + quote(base64.b64encode(der).decode(), safe=""))
        post = client.post(url, content=der, headers={"content-type": "application/ocsp-request"})
        for method, resp in (("GET", get), ("POST", post)):
            assert resp.status_code == 200, (method, resp.status_code)
            parsed = ocsp.load_der_ocsp_response(resp.content)
            assert parsed.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, (method, parsed.response_status)
            signer = parsed.certificates[0]
            signer.verify_directly_issued_by(issuer)  # the delegated signer the external CA certified
            assert parsed.signature_hash_algorithm is not None
            key = signer.public_key()
            assert isinstance(key, ec.EllipticCurvePublicKey)  # pca's signer keys are P-256 by default
            key.verify(parsed.signature, parsed.tbs_response_bytes, ec.ECDSA(parsed.signature_hash_algorithm))
            single = next(s for s in parsed.responses if s.hash_algorithm.name == algorithm.name)
            answers.add((f"{method} {algorithm.name}", single.certificate_status.name.lower()))
    return answers


def test_the_keyless_flow_from_an_openssl_ca_directory_to_verified_ocsp_answers(tmp_path: Path) -> None:
    config = init_ca(tmp_path / "pca")
    cfg = load_config(config)
    # The CA writes pca's OCSP URL into its certificates (AIA), and its own CRL DP.
    ext = OpenSSLCA(tmp_path / "legacy", "Legacy CA", ocsp_url=cfg.ocsp_url, crl_url="http://pki.legacy.test/ca.crl")
    good, compromised, held = ext.issue("good"), ext.issue("compromised"), ext.issue("held")
    openssl("ca", "-config", ext.config, "-revoke", compromised, "-crl_compromise", COMPROMISED_AT)
    openssl("ca", "-config", ext.config, "-revoke", held, "-crl_hold", "holdInstructionReject")

    # 1. The CA, without its key; pca writes the CSR of the OCSP signer whose key it keeps.
    csr = tmp_path / "ocsp-signer.csr"
    pca("issuer", "add", "--config", config, "--id", "legacy", "--cert", ext.cert_path, "--ocsp-signer-csr", csr)
    # 2. The CA signs it (OCSPSigning EKU, id-pkix-ocsp-nocheck); pca checks and sets it.
    signer = ext.sign(csr, tmp_path / "ocsp-signer.pem", "ocsp_signer")
    pca("issuer", "set-signer", "--config", config, "--id", "legacy", "--cert", signer)
    # 3. What the CA has issued so far.
    imported = pca("import", "--config", config, "--issuer", "legacy", "--openssl-index", ext.dir / "index.txt",
                   "--certs-dir", ext.dir / "newcerts", "--json")  # fmt: skip
    summary = json.loads(imported.stdout)
    # index.txt also lists the signer certificate the CA just signed (recorded like any other) and the
    # CA's own self-signed certificate (not recorded: a CA's status is not given by itself).
    assert (summary["imported"], summary["already_present"], summary["refused"]) == (4, 0, 0), summary
    assert summary["issuer_itself"] == 1, summary
    rerun = pca("import", "--config", config, "--issuer", "legacy", "--openssl-index", ext.dir / "index.txt",
                "--certs-dir", ext.dir / "newcerts", "--json")  # fmt: skip
    again = json.loads(rerun.stdout)
    assert (again["imported"], again["already_present"], again["issuer_itself"]) == (0, 4, 1), again

    srv = ServerProcess(config)
    srv.start()
    url = f"{srv.public_url}/ocsp"
    issuer = ext.cert
    try:
        # 4. openssl ocsp, the way a relying party checks: verified against the external CA.
        wait_for("the good certificate answered", lambda: verified_status(ext, good, url) == "good")
        out = openssl_ocsp(ext, compromised, url)
        assert "Response verify OK" in out and "Reason: keyCompromise" in out, out
        when = index_time(ext, load_pem(compromised).serial_number)
        assert f"Revocation Time: {when.strftime('%b %e %H:%M:%S %Y GMT')}" in out, out
        out = openssl_ocsp(ext, held, url)
        assert "Reason: certificateHold" in out, out

        # GET and POST, SHA-1 and SHA-256 CertIDs: the same answer every way.
        with httpx.Client(timeout=10) as client:
            assert {s for _, s in ask(client, url, load_pem(good), issuer)} == {"good"}
            assert len(ask(client, url, load_pem(compromised), issuer)) == 4
            assert {s for _, s in ask(client, url, load_pem(compromised), issuer)} == {"revoked"}

        # The API shows the original revocation, invalidity date included.
        with srv.admin() as admin:
            rec = admin.get(f"/v1/certificates/{load_pem(compromised).serial_number:x}").json()
        assert rec["status"] == "revoked" and rec["reason"] == "keyCompromise"
        assert rec["invalidity_date"].startswith("2026-11-01T09:30:00"), rec

        # 5. Revocation and hold release through the CLI, as for pca's own certificates.
        good_serial = f"{load_pem(good).serial_number:x}"
        pca("revoke", "--config", config, good_serial, "--reason", "superseded", "--issuer", "legacy")
        wait_for("the revoked certificate answered revoked", lambda: verified_status(ext, good, url) == "revoked")
        pca("release-hold", "--config", config, f"{load_pem(held).serial_number:x}")
        wait_for("the released certificate answered good", lambda: verified_status(ext, held, url) == "good")
        timeline = json.loads(pca("propagation", "--config", config, good_serial, "--json").stdout)
        assert timeline["issuer_id"] == "legacy" and timeline["crl_published"] is False
        assert "not published by pca" in pca("propagation", "--config", config, good_serial).stdout
        wait_for(
            "the timeline to reach the OCSP responder",
            lambda: json.loads(pca("propagation", "--config", config, good_serial, "--json").stdout)[
                "ocsp_all_responders"
            ],
        )

        # 6. What the CA issues next: unauthorized until the issuing core records it (recorder role).
        later = ext.issue("later")
        assert "unauthorized" in openssl_ocsp(ext, later, url).lower()
        token = pca("token", "create", "--config", config, "--name", "issuing-core", "--role", "recorder")
        resp = httpx.post(
            f"{srv.admin_url}/v1/certificates/import",
            json={"issuer": "legacy", "certificate": later.read_text()},
            headers={"authorization": f"Bearer {token.stdout.strip()}"},
            timeout=10,
        )
        assert resp.status_code == 201, resp.text
        wait_for("the recorded certificate answered good", lambda: verified_status(ext, later, url) == "good")
    finally:
        srv.stop()

    # 7. The log verifies, and the projection rebuilt from it says the same.
    assert "OK" in pca("audit", "verify", "--config", config, "--local").stdout
    pca("rebuild", "--config", config)
    srv = ServerProcess(config)
    srv.start()
    try:
        with srv.admin() as admin:
            after = admin.get(f"/v1/certificates/{load_pem(compromised).serial_number:x}").json()
            held_now = admin.get(f"/v1/certificates/{load_pem(held).serial_number:x}").json()
        assert (after["status"], after["reason"], after["revoked_at"]) == (
            rec["status"],
            rec["reason"],
            rec["revoked_at"],
        )
        assert held_now["status"] == "good"
        wait_for(
            "the compromised certificate still revoked", lambda: verified_status(ext, compromised, url) == "revoked"
        )
    finally:
        srv.stop()
