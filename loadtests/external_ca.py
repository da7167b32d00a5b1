"""An external CA for the import scenarios: an RSA-2048 CA, leaf certificates it signed, written as
``openssl ca`` writes them (``index.txt``, ``newcerts/<SERIAL>.pem``), and its record in pca's log.

Leaves are signed in worker processes (RSA-2048 signs about 2,500/s per core), each with its own
serial and subject, as real as the importer needs: it checks every signature.
"""

from __future__ import annotations

import asyncio
import datetime
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from pca.config import Config
from revocation import ca
from revocation.authority import issuer_added
from revocation.eventlog import NewEvent
from revocation.events import ResponderCertRotated
from revocation.keys import KeyRef, generate_key, open_key

EXTERNAL = "legacy-ca"
FIRST_SERIAL = 0x1000
REVOKED_EVERY = 100
_PEM = serialization.Encoding.PEM


def make_external_ca(d: Path) -> None:
    """``d/ca.key`` (RSA-2048, PKCS#8) and ``d/ca.pem``, a self-signed CA certificate."""
    d.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Legacy Bench CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    pkcs8 = serialization.PrivateFormat.PKCS8
    (d / "ca.key").write_bytes(key.private_bytes(_PEM, pkcs8, serialization.NoEncryption()))
    (d / "ca.pem").write_bytes(cert.public_bytes(_PEM))


def _sign_range(d: str, first: int, count: int) -> list[str]:
    """Sign leaves ``first .. first + count - 1`` into ``d/newcerts``; returns their index lines."""
    root = Path(d)
    key = serialization.load_pem_private_key((root / "ca.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    issuer = x509.load_pem_x509_certificate((root / "ca.pem").read_bytes()).subject
    leaf = ec.generate_private_key(ec.SECP256R1()).public_key()
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    not_after = now + datetime.timedelta(days=365)
    lines = []
    for serial in range(first, first + count):
        cn = f"leaf-{serial:x}.example"
        cert = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(issuer).public_key(leaf).serial_number(serial)
            .not_valid_before(now).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        digits = f"{serial:X}"
        digits = "0" + digits if len(digits) % 2 else digits
        (root / "newcerts" / f"{digits}.pem").write_bytes(cert.public_bytes(_PEM))
        expiry = not_after.strftime("%y%m%d%H%M%SZ")
        if serial % REVOKED_EVERY == 0:
            lines.append(f"R\t{expiry}\t{now.strftime('%y%m%d%H%M%SZ')},keyCompromise\t{digits}\tunknown\t/CN={cn}\n")
        else:
            lines.append(f"V\t{expiry}\t\t{digits}\tunknown\t/CN={cn}\n")
    return lines


def write_openssl_ca(d: Path, count: int, workers: int | None = None) -> None:
    """``count`` leaves in ``d/newcerts`` and ``d/index.txt``, signed by the CA in ``d``."""
    (d / "newcerts").mkdir(exist_ok=True)
    workers = workers or os.cpu_count() or 1
    step = max(1, min(5000, count // (workers * 4) or 1))
    with ProcessPoolExecutor(workers) as pool, open(d / "index.txt", "w") as index:
        starts = range(FIRST_SERIAL, FIRST_SERIAL + count, step)
        for lines in pool.map(
            _sign_range, [str(d)] * len(starts), starts, [min(step, FIRST_SERIAL + count - s) for s in starts]
        ):
            index.writelines(lines)


async def _record_issuer(cfg: Config, d: Path, signer: bool) -> None:
    from pca.runtime import connect_runtime
    from revocation.clock import SystemClock

    rt = await connect_runtime(cfg, SystemClock())
    try:
        cert = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
        added = issuer_added(EXTERNAL, "external", None, cert, None, f"http://crl.invalid/{EXTERNAL}.crl")
        events = [NewEvent(added, 0, "bench", "external-ca")]
        if signer:
            issuer_key = open_key(KeyRef("file", path=str(d / "ca.key")))
            signer_key = generate_key(KeyRef("file"), f"{EXTERNAL}-ocsp", "ec-p256", cfg.data_dir / "keys")
            try:
                now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
                signer_cert = ca.create_ocsp_signer(cert, issuer_key, signer_key.public_key(), now, 30)
            finally:
                issuer_key.close()
                signer_key.close()
            rotated = ResponderCertRotated(
                EXTERNAL,
                signer_cert.public_bytes(serialization.Encoding.DER).hex(),
                signer_key.ref.to_dict(),
                signer_cert.not_valid_after_utc,
            )
            events.append(NewEvent(rotated, 1, "bench", "external-ca"))
        await rt.log.append(events)
    finally:
        await rt.aclose()


def record_external_issuer(cfg: Config, d: Path, signer: bool = False) -> None:
    """The external CA in ``d`` recorded as pca's issuer ``legacy-ca`` (with an OCSP signer if asked)."""
    asyncio.run(_record_issuer(cfg, d, signer))
