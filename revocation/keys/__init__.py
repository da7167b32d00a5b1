"""Signing-key backends.

Everything that signs (the issuing core, the OCSP pre-signer, the CRL publisher)
goes through :class:`SigningKey`. A key is named by a :class:`KeyRef`, which is
plain data: it can be written into the event log, sent to a worker process and
reopened there, and it never contains a secret, only where to find one (the name
of an environment variable, the path of a file).

Backends, chosen by ``KeyRef.backend``:

- ``file``: a PEM file (mode 0600), optionally encrypted with a passphrase;
- ``pkcs11``: a key generated inside a PKCS#11 token (``revocation.keys.pkcs11``);
- ``kms``: an AWS KMS asymmetric key (``revocation.keys.kms``).

The hardware and cloud modules are imported only when such a key is opened, so a
process that never signs (a responder) never loads them. What the backends share
lives in ``revocation.keys.base``, which they import instead of this package:
this package dispatches to them, so they must not depend on it. The names callers
use are re-exported here.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from revocation.errors import ConfigError, KeyBackendError
from revocation.keys.base import (
    KEY_ALGORITHMS,
    ExternalKey,
    KeyRef,
    PrivateKey,
    PublicKey,
    SigningKey,
    check_key_matches,
    read_secret,
    signature_parameters,
    verify_signature,
)
from revocation.keys.file import FileKey, generate_file_key, generate_private_key, open_file_key, write_file_key

__all__ = [
    "BACKENDS",
    "KEY_ALGORITHMS",
    "ExternalKey",
    "FileKey",
    "KeyRef",
    "PrivateKey",
    "PublicKey",
    "SigningKey",
    "check_key_for_certificate",
    "check_key_matches",
    "destroy_key",
    "generate_key",
    "generate_private_key",
    "open_key",
    "read_secret",
    "signature_parameters",
    "verify_signature",
    "write_file_key",
]

BACKENDS = ("file", "pkcs11", "kms")


def open_key(ref: KeyRef) -> SigningKey:
    """Open the key named by ``ref``; fails with a message naming the key."""
    if ref.backend == "file":
        return open_file_key(ref)
    if ref.backend == "pkcs11":
        from revocation.keys import pkcs11 as keys_pkcs11

        return keys_pkcs11.open_pkcs11_key(ref)
    if ref.backend == "kms":
        from revocation.keys import kms as keys_kms

        return keys_kms.open_kms_key(ref)
    raise ConfigError(f"key backend {ref.backend!r} is not available (supported: {', '.join(BACKENDS)})")


def generate_key(template: KeyRef, name: str, algorithm: str, key_dir: Path) -> SigningKey:
    """A new key named ``name`` in the same place as ``template`` (backend, token or region, secrets).

    ``template`` is typically the reference of the key that will certify the new
    one; only its location fields are used. File keys are written under ``key_dir``.
    """
    if algorithm not in KEY_ALGORITHMS:
        raise ConfigError(f"unknown key algorithm {algorithm!r}; choose one of {', '.join(KEY_ALGORITHMS)}")
    if template.backend == "file":
        return generate_file_key(template, name, algorithm, key_dir)
    if template.backend == "pkcs11":
        from revocation.keys import pkcs11 as keys_pkcs11

        return keys_pkcs11.generate_pkcs11_key(template, name, algorithm)
    if template.backend == "kms":
        from revocation.keys import kms as keys_kms

        return keys_kms.generate_kms_key(template, name, algorithm)
    raise ConfigError(f"key backend {template.backend!r} is not available (supported: {', '.join(BACKENDS)})")


def destroy_key(ref: KeyRef) -> None:
    """Destroy a key this process generated and nothing refers to (a rotation that lost its race):
    a file key's file is removed, a PKCS#11 key pair destroyed (C_DestroyObject), a KMS key scheduled
    for deletion with the shortest waiting period KMS allows (7 days; it can be cancelled meanwhile)."""
    if ref.backend == "file":
        try:
            Path(ref.path).unlink(missing_ok=True)
        except OSError as exc:
            raise KeyBackendError(f"cannot remove key file {ref.path}: {exc.strerror}") from exc
    elif ref.backend == "pkcs11":
        from revocation.keys import pkcs11 as keys_pkcs11

        keys_pkcs11.destroy_pkcs11_key(ref)
    elif ref.backend == "kms":
        from revocation.keys import kms as keys_kms

        keys_kms.destroy_kms_key(ref)
    else:
        raise ConfigError(f"key backend {ref.backend!r} is not available (supported: {', '.join(BACKENDS)})")


def check_key_for_certificate(ref: KeyRef, cert: x509.Certificate, what: str) -> None:
    """Open ``ref``, check it signs for ``cert``, close it; errors name the key and the certificate."""
    subject = cert.subject.rfc4514_string()
    public = cert.public_key()
    if not isinstance(public, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise KeyBackendError(f"the certificate of {what} ({subject}) has an unsupported key type")
    try:
        key = open_key(ref)
    except KeyBackendError as exc:
        raise KeyBackendError(
            f"{what}: key {ref.describe()} for certificate {subject!r} (serial {cert.serial_number:x}) "
            f"is not usable: {exc}"
        ) from exc
    try:
        check_key_matches(key, public, f"{what} ({subject!r}, serial {cert.serial_number:x})")
    finally:
        key.close()
