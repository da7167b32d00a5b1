"""Helpers shared by the CRL tests (delta, shards, S3, key backends): CRL settings, a publisher, reading CRLs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID
from prometheus_client import CollectorRegistry

from pca.config import Config, load_config
from pca.runtime import Runtime
from publishers.publisher import Publisher
from publishers.storer import Storer
from revocation.clock import Clock
from tests.support.ca import openssl

CRL_VALIDITY = 86400


def make_publisher(rt: Runtime, store: Any, clock: Clock, registry: CollectorRegistry | None = None) -> Publisher:
    """A publisher of day-long CRLs, renewed hourly, a second after a revocation."""
    return Publisher(
        rt.view,
        Storer(store, rt.view),
        clock,
        registry or CollectorRegistry(),
        validity_seconds=CRL_VALIDITY,
        interval_seconds=3600,
        after_revocation_seconds=1.0,
    )


def with_crl_settings(config: Config, **settings: object) -> Config:
    """Rewrite keys of the [crl] section of an initialised CA's pca.toml and load it again."""
    text = config.path.read_text()
    for key, value in settings.items():  # [crl] keys come first in the file, then [crl.store]
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        else:
            rendered = f'"{value}"' if isinstance(value, str) else str(value)
        text, count = re.subn(rf"(?m)^{key} = [^#\n]*", f"{key} = {rendered} ", text, count=1)
        assert count == 1, f"no {key} in {config.path}"
    config.path.write_text(text)
    return load_config(config.path)


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def delta_base(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number
    except x509.ExtensionNotFound:
        return None


def extension(crl_or_cert: x509.CertificateRevocationList | x509.Certificate, oid: x509.ObjectIdentifier) -> Any:
    try:
        return crl_or_cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None


def dp_urls(cert: x509.Certificate, oid: x509.ObjectIdentifier = ExtensionOID.CRL_DISTRIBUTION_POINTS) -> list[str]:
    ext = extension(cert, oid)
    return [] if ext is None else [name.value for point in ext.value for name in point.full_name or []]


def idp_url(crl: x509.CertificateRevocationList) -> str | None:
    ext = extension(crl, ExtensionOID.ISSUING_DISTRIBUTION_POINT)
    if ext is None:
        return None
    assert ext.critical
    [name] = ext.value.full_name
    return str(name.value)


def listed(crl: x509.CertificateRevocationList) -> dict[int, x509.ReasonFlags | None]:
    """serial -> reason (None without a reasonCode)."""
    out = {}
    for entry in crl:
        reason = next((e.value.reason for e in entry.extensions if isinstance(e.value, x509.CRLReason)), None)
        out[entry.serial_number] = reason
    return out


def pem_file(path: Path, *items: x509.Certificate | x509.CertificateRevocationList) -> str:
    path.write_bytes(b"".join(item.public_bytes(serialization.Encoding.PEM) for item in items))
    return str(path)


async def openssl_crl_verifies(der: bytes, ca_file: Path, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.crl"
    path.write_bytes(der)
    code, output = await openssl("crl", "-inform", "DER", "-in", str(path), "-CAfile", str(ca_file), "-noout")
    assert code == 0 and "verify OK" in output, output
