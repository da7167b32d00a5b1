"""Revoking an issuing CA against a real ``pca serve``: pca's own hierarchy and an imported (``openssl ca``) one.

The CA's certificate is listed by the CRL (own root) or the OCSP (external root with a signer) of the CA
above it, issuance (or recording, for an external CA) under it stops with a clear error, and ``/healthz``
names it.
"""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pca.config import load_config
from revocation.admin.tokens import add_token
from tests.support.openssl_ca import OpenSSLCA, load_pem, openssl
from tests.support.processes import ServerProcess, init_ca, running_server
from tests.support.scaled import wait_for


def pca(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "pca", *map(str, args)], capture_output=True, text=True, timeout=120)
    if ok:
        assert done.returncode == 0, f"pca {' '.join(map(str, args))}:\n{done.stdout}{done.stderr}"
    return done


def test_revoking_pcas_issuing_ca_lists_it_in_the_root_crl_and_stops_issuance(tmp_path: Path) -> None:
    with running_server(tmp_path / "ca") as srv:
        d = srv.config_path.parent
        ca_cert = load_pem(d / "issuing-ca.pem")
        serial = f"{ca_cert.serial_number:x}"
        revoker = add_token(srv.config.tokens_db, "ops", "revoker")
        with srv.admin() as admin:
            as_revoker = {"authorization": f"Bearer {revoker}"}
            refused = admin.post(
                f"/v1/certificates/{serial}/revoke", json={"reason": "keyCompromise"}, headers=as_revoker
            )
            assert refused.status_code == 403, refused.text

            resp = admin.post("/v1/issuers/issuing-ca/revoke", json={"reason": "cACompromise"})
            assert resp.status_code == 201, resp.text

            def root_crl_lists_it() -> bool:
                crl = x509.load_der_x509_crl(httpx.get(f"{srv.public_url}/crl/root-ca.crl", timeout=5).content)
                return crl.get_revoked_certificate_by_serial_number(ca_cert.serial_number) is not None

            wait_for("the root's CRL to list the issuing CA", root_crl_lists_it, timeout=60)
            crl_path = tmp_path / "root.crl"
            crl_path.write_bytes(httpx.get(f"{srv.public_url}/crl/root-ca.crl", timeout=5).content)
            text = openssl("crl", "-inform", "DER", "-in", crl_path, "-CAfile", d / "root-ca.pem", "-noout", "-text")
            assert "verify OK" in text and serial.upper() in text.replace(":", "")
            assert "CA Compromise" in text

            # The root's OCSP signer answers for the issuing CA's certificate.
            ocsp = openssl("ocsp", "-issuer", d / "root-ca.pem", "-cert", d / "issuing-ca.pem",
                           "-url", f"{srv.public_url}/ocsp", "-CAfile", d / "root-ca.pem", "-no_nonce")  # fmt: skip
            assert "Response verify OK" in ocsp and f"{d / 'issuing-ca.pem'}: revoked" in ocsp, ocsp
            assert "Reason: cACompromise" in ocsp

            health = httpx.get(f"{srv.admin_url}/healthz", timeout=5)
            assert health.status_code == 503
            assert health.json()["ca_certificates"]["issuers"] == ["issuing-ca"]

        issued = pca("issue", "--config", srv.config_path, "--subject", "CN=late", "--dns", "late.example",
                     "--out", tmp_path / "late.pem", "--key-out", tmp_path / "late.key", ok=False)  # fmt: skip
        assert issued.returncode != 0
        assert "the CA certificate of issuer issuing-ca" in issued.stderr and "was revoked" in issued.stderr
        assert "Traceback" not in issued.stderr


def leaf_of(ca: OpenSSLCA, cn: str, ca_name: str) -> str:
    """A leaf certificate signed by the key ``<ca_name>.key`` of ``ca``'s directory (an intermediate it issued)."""
    ca_cert = load_pem(ca.dir / f"{ca_name}.pem")
    ca_key = serialization.load_pem_private_key((ca.dir / f"{ca_name}.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string(f"CN={cn}"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_revoking_an_imported_intermediate_shows_in_the_external_roots_ocsp_and_stops_recording(
    tmp_path: Path,
) -> None:
    config = init_ca(tmp_path / "pca")
    cfg = load_config(config)
    root = OpenSSLCA(tmp_path / "legacy", "Legacy Root", ocsp_url=cfg.ocsp_url, crl_url="http://pki.legacy.test/r.crl")
    intermediate = root.issue("legacy-int", "ca_ext")
    # The external root, keyless, with an OCSP signer it certified; the intermediate, registered too.
    pca("issuer", "add", "--config", config, "--id", "legacy-root", "--cert", root.cert_path,
        "--ocsp-signer-csr", tmp_path / "root-signer.csr")  # fmt: skip
    signer = root.sign(tmp_path / "root-signer.csr", tmp_path / "root-signer.pem", "ocsp_signer")
    pca("issuer", "set-signer", "--config", config, "--id", "legacy-root", "--cert", signer)
    pca("issuer", "add", "--config", config, "--id", "legacy-int", "--cert", intermediate,
        "--ocsp-signer-csr", tmp_path / "int-signer.csr")  # fmt: skip
    # What the root issued, the intermediate's certificate included.
    pca("import", "--config", config, "--issuer", "legacy-root", "--openssl-index", root.dir / "index.txt",
        "--certs-dir", root.dir / "newcerts")  # fmt: skip
    recorder = add_token(cfg.tokens_db, "core", "recorder")
    revoker = add_token(cfg.tokens_db, "ops", "revoker")

    srv = ServerProcess(config)
    srv.start()
    try:
        serial = f"{load_pem(intermediate).serial_number:x}"
        as_recorder = {"authorization": f"Bearer {recorder}"}
        with srv.admin() as admin:
            before = admin.post(
                "/v1/certificates/import",
                json={"issuer": "legacy-int", "certificate": leaf_of(root, "before", "legacy-int")},
                headers=as_recorder,
            )
            assert before.status_code == 201, before.text
            by_revoker = admin.post(f"/v1/certificates/{serial}/revoke", json={"reason": "keyCompromise"},
                                    headers={"authorization": f"Bearer {revoker}"})  # fmt: skip
            assert by_revoker.status_code == 403, by_revoker.text
            assert "POST /v1/issuers/legacy-int/revoke" in by_revoker.json()["detail"]

            resp = admin.post("/v1/issuers/legacy-int/revoke", json={"reason": "cACompromise"})
            assert resp.status_code == 201, resp.text
            assert resp.json()["issuer"] == "legacy-root"

            def ocsp_status() -> str | None:
                done = subprocess.run(
                    ["openssl", "ocsp", "-issuer", root.cert_path, "-cert", intermediate, "-url",
                     f"{srv.public_url}/ocsp", "-CAfile", root.cert_path, "-no_nonce"],
                    capture_output=True, text=True, timeout=30,
                )  # fmt: skip
                out = done.stdout + done.stderr
                match = re.search(r": (good|revoked|unknown)", out)
                return match.group(1) if match and "Response verify OK" in out else None

            wait_for("the external root's OCSP to answer revoked", lambda: ocsp_status() == "revoked", timeout=60)

            late = admin.post(
                "/v1/certificates/import",
                json={"issuer": "legacy-int", "certificate": leaf_of(root, "late", "legacy-int")},
                headers=as_recorder,
            )
            assert late.status_code == 422, late.text
            assert "the CA certificate of issuer legacy-int" in late.json()["detail"]
            assert "was revoked by legacy-root" in late.json()["detail"]

            health = httpx.get(f"{srv.admin_url}/healthz", timeout=5)
            assert health.status_code == 503
            assert "legacy-int" in health.json()["ca_certificates"]["issuers"]
    finally:
        srv.stop()
