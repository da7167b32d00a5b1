"""Issuing CA certificates name the root's OCSP responder (Authority Information Access), so a relying party
that checks the whole chain by OCSP finds where to ask: ``openssl x509 -ocsp_uri`` prints it, and ``openssl ocsp``
against that URL says good, then revoked once the issuing CA is revoked, for ``pca init``'s issuing CA and for one
made by ``pca issuer create``."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from pca.cli import main as pca_main
from tests.pca.test_ca_revocation_e2e import pca
from tests.support.openssl_ca import openssl
from tests.support.ports import free_port
from tests.support.processes import running_server
from tests.support.scaled import wait_for


def ocsp_uri(cert: Path) -> str:
    return openssl("x509", "-in", cert, "-noout", "-ocsp_uri").strip()


def chain_status(root: Path, cert: Path, url: str) -> str | None:
    """good, revoked or unknown, as ``openssl ocsp`` says for ``cert`` at ``url``; None unless the answer verifies."""
    done = subprocess.run(
        ["openssl", "ocsp", "-issuer", root, "-cert", cert, "-url", url, "-CAfile", root, "-no_nonce"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    out = done.stdout + done.stderr
    match = re.search(rf"{re.escape(str(cert))}: (good|revoked|unknown)", out)
    return match.group(1) if match and "Response verify OK" in out else None


def test_issuing_cas_carry_the_roots_ocsp_url_and_openssl_follows_it_to_good_then_revoked(tmp_path: Path) -> None:
    with running_server(tmp_path / "ca") as srv:
        conf, d = srv.config_path, srv.config_path.parent
        root = d / "root-ca.pem"
        pca("issuer", "create", "--config", conf, "--id", "issuing-b", "--cn", "PCA Issuing CA B")

        def says(cert: Path, status: str) -> None:
            url = ocsp_uri(cert)
            assert url == f"{srv.public_url}/ocsp", f"{cert.name}: {url!r}"
            wait_for(f"{cert.name} {status} at its AIA OCSP URL", lambda: chain_status(root, cert, url) == status)

        for cert in (d / "issuing-ca.pem", d / "issuing-b.pem"):
            says(cert, "good")

        with srv.admin() as admin:  # the admin-only route
            resp = admin.post("/v1/issuers/issuing-ca/revoke", json={"reason": "cACompromise"})
            assert resp.status_code == 201, resp.text
        assert (
            "revoked (keyCompromise)"
            in pca("issuer", "revoke", "--config", conf, "issuing-b", "--reason", "keyCompromise").stdout
        )

        for cert in (d / "issuing-ca.pem", d / "issuing-b.pem"):
            says(cert, "revoked")


def test_the_issuing_cas_ocsp_url_follows_the_configured_public_url(tmp_path: Path) -> None:
    """Not a built-in host: a public URL with its own host and path prefix is the one the certificate names."""
    pca_main(["init", "--dir", str(tmp_path / "ca"), "--public-url", "https://pki.example.test:8443/pca",
              "--admin-listen", f"127.0.0.1:{free_port()}", "--no-admin-tls"])  # fmt: skip
    assert ocsp_uri(tmp_path / "ca" / "issuing-ca.pem") == "https://pki.example.test:8443/pca/ocsp"
    text = openssl("x509", "-in", tmp_path / "ca" / "issuing-ca.pem", "-noout", "-ext", "crlDistributionPoints")
    assert "https://pki.example.test:8443/pca/crl/root-ca.crl" in text
