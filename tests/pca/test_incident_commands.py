"""The commands of docs/runbooks.md's incidents, against a real ``pca serve``: ``pca issuer revoke``, ``create``,
``rotate-signer --now``, and ``pca replay`` refusing an archive that is not of this log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from tests.support.processes import running_server
from tests.support.scaled import wait_for


def pca(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "pca", *map(str, args)], capture_output=True, text=True, timeout=120)
    if ok:
        assert done.returncode == 0, f"pca {' '.join(map(str, args))}:\n{done.stdout}{done.stderr}"
    assert "Traceback" not in done.stderr
    return done


def ocsp_response(public_url: str, issuer: Path, cert: Path) -> ocsp.OCSPResponse:
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    ca = x509.load_pem_x509_certificate(issuer.read_bytes())
    req = ocsp.OCSPRequestBuilder().add_certificate(leaf, ca, hashes.SHA256()).build()
    resp = httpx.post(
        f"{public_url}/ocsp",
        content=req.public_bytes(serialization.Encoding.DER),
        headers={"content-type": "application/ocsp-request"},
        timeout=10,
    )
    return ocsp.load_der_ocsp_response(resp.content)


def good(public_url: str, issuer: Path, cert: Path) -> bool:
    resp = ocsp_response(public_url, issuer, cert)
    successful = resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    return successful and all(r.certificate_status == ocsp.OCSPCertStatus.GOOD for r in resp.responses)


def test_a_replaced_issuing_ca_leaves_healthz_ok_and_an_emergency_rotation_resigns_its_responses(
    tmp_path: Path,
) -> None:
    with running_server(tmp_path / "ca", tls=True) as srv:
        conf, d = srv.config_path, srv.config_path.parent
        pca("issue", "--config", conf, "--subject", "CN=svc1", "--dns", "svc1.internal",
            "--out", tmp_path / "svc1.pem", "--key-out", tmp_path / "svc1.key")  # fmt: skip

        # An emergency rotation: a new signer at once, and every response of the issuer re-signed with it.
        assert "not due for rotation" in pca("issuer", "rotate-signer", "--config", conf, "--id", "issuing-ca").stdout
        rotated = pca("issuer", "rotate-signer", "--config", conf, "--id", "issuing-ca", "--now").stdout
        new_serial = int(rotated.split("serial ")[1].split(",")[0], 16)

        def signed_by_new_signer() -> bool:
            resp = ocsp_response(srv.public_url, d / "issuing-ca.pem", tmp_path / "svc1.pem")
            return resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL and any(
                c.serial_number == new_serial for c in resp.certificates
            )

        wait_for("the response re-signed by the new signer", signed_by_new_signer)

        # The issuing CA's key compromised: revoked (503 while nothing replaces it), then replaced (200).
        revoked = pca("issuer", "revoke", "--config", conf, "issuing-ca", "--reason", "cACompromise").stdout
        assert "revoked (cACompromise)" in revoked
        health = httpx.get(f"{srv.public_url}/healthz", timeout=10)
        assert health.status_code == 503 and "issuing-ca" in health.json()["ca_certificates"]["problem"]
        again = pca("issuer", "create", "--config", conf, "--id", "issuing-ca", "--cn", "X", ok=False)
        assert again.returncode == 1 and "issuing-ca.pem exists already" in again.stderr
        pca("issuer", "create", "--config", conf, "--id", "issuing-b", "--cn", "PCA Issuing CA B")
        health = httpx.get(f"{srv.public_url}/healthz", timeout=10)
        assert health.status_code == 200, health.text
        assert "replaced by issuer issuing-b" in health.json()["ca_certificates"]["replaced"]["issuing-ca"]

        pca("issue", "--config", conf, "--issuer", "issuing-b", "--subject", "CN=svc1", "--dns", "svc1.internal",
            "--out", tmp_path / "svc1-b.pem", "--key-out", tmp_path / "svc1-b.key")  # fmt: skip
        chain = x509.load_pem_x509_certificates((d / "issuing-b-chain.pem").read_bytes())
        assert chain[0].subject.rfc4514_string() == "CN=PCA Issuing CA B"
        wait_for(
            "the new CA's leaf answered good",
            lambda: good(srv.public_url, d / "issuing-b.pem", tmp_path / "svc1-b.pem"),
        )
        refused = pca("issue", "--config", conf, "--subject", "CN=late", "--dns", "late.internal",
                      "--out", tmp_path / "late.pem", "--key-out", tmp_path / "late.key", ok=False)  # fmt: skip
        assert refused.returncode == 1 and "issuing-ca" in refused.stderr

        # pca replay refuses an archive of another log, appending nothing.
        head = pca("events", "--config", conf, "--limit", "1000").stdout.splitlines()
        forged = [json.loads(line) for line in head]
        forged[0]["hash"] = "0" * 64
        archive = tmp_path / "forged.jsonl"
        archive.write_text("".join(json.dumps(e) + "\n" for e in forged))
        srv.stop()
        out = pca("replay", "--config", conf, "--from", archive, ok=False)
        assert out.returncode == 1 and "seq 1 of" in out.stderr and "nothing replayed" in out.stderr
        (tmp_path / "bad.jsonl").write_text('{"seq": 1}\n')
        out = pca("replay", "--config", conf, "--from", tmp_path / "bad.jsonl", ok=False)
        assert out.returncode == 1 and "bad.jsonl:1: not an event" in out.stderr
        srv.start()
