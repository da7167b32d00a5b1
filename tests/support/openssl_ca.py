"""An external CA run by the real ``openssl ca`` in a directory: openssl.cnf, index.txt, newcerts/.

Extension sections: ``ca_ext`` (a CA), ``leaf`` (its AIA and CRL DP point where the test says),
``ocsp_signer`` (OCSPSigning EKU and id-pkix-ocsp-nocheck), ``no_eku`` (a signer certificate
lacking the EKU), ``ca_no_certsign`` (a CA certificate whose keyUsage lacks keyCertSign).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from cryptography import x509

TIMEOUT = 30

CNF = """\
[ca]
default_ca = testca
[testca]
database = {d}/index.txt
new_certs_dir = {d}/newcerts
serial = {d}/serial
certificate = {d}/ca.pem
private_key = {d}/ca.key
default_md = sha256
default_days = 30
policy = anything
unique_subject = no
copy_extensions = none
[anything]
commonName = supplied
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ca_no_certsign]
basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature
[leaf]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
authorityInfoAccess = OCSP;URI:{ocsp_url}
crlDistributionPoints = URI:{crl_url}
[ocsp_signer]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = OCSPSigning
noCheck = ignored
[no_eku]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
"""


def openssl(*args: str | Path) -> str:
    """Run the openssl CLI; fails the test with its output when it fails."""
    proc = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        raise AssertionError(f"openssl {' '.join(map(str, args))} failed: {proc.stdout}{proc.stderr}")
    return proc.stdout + proc.stderr


class OpenSSLCA:
    """A CA directory for ``openssl ca``; ``ca.pem`` and ``ca.key`` are its certificate and key."""

    def __init__(self, directory: Path, name: str, *, ocsp_url: str, crl_url: str) -> None:
        self.dir = directory
        directory.mkdir(parents=True)
        (directory / "newcerts").mkdir()
        (directory / "index.txt").write_text("")
        (directory / "serial").write_text("1000\n")
        self.config = directory / "openssl.cnf"
        self.config.write_text(CNF.format(d=directory, ocsp_url=ocsp_url, crl_url=crl_url))
        key = self._key("ca")
        openssl("req", "-new", "-key", key, "-out", directory / "ca.csr", "-subj", f"/CN={name}")
        self._sign(directory / "ca.csr", directory / "ca.pem", "ca_ext", "-selfsign", "-days", "365")

    @property
    def cert_path(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def key_path(self) -> Path:
        return self.dir / "ca.key"

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_path.read_bytes())

    def _key(self, name: str) -> Path:
        path = self.dir / f"{name}.key"
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
        return path

    def _sign(self, csr: Path, out: Path, extensions: str, *extra: str) -> None:
        openssl("ca", "-batch", "-config", self.config, "-extensions", extensions, "-in", csr, "-out", out, *extra)

    def sign(self, csr: Path, out: Path, extensions: str = "ocsp_signer", *extra: str) -> Path:
        """Sign a CSR (pca's signer CSR, typically) with an extension section of openssl.cnf."""
        self._sign(csr, out, extensions, *extra)
        return out

    def issue(self, cn: str, extensions: str = "leaf", *extra: str) -> Path:
        """A new key and a certificate for it; returns the certificate's path (the key is ``<cn>.key``)."""
        key = self._key(cn)
        csr = self.dir / f"{cn}.csr"
        openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={cn}")
        return self.sign(csr, self.dir / f"{cn}.pem", extensions, *extra)


def load_pem(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())
