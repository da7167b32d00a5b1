"""Signing-key backends.

Everything that signs (the issuing core, the OCSP pre-signer, the CRL publisher)
goes through :class:`SigningKey`. A key is named by a :class:`KeyRef`, which is
plain data: it can be written into the configuration, sent to a worker process
and reopened there, and it never contains the secret itself.

Only the ``file`` backend exists yet; PKCS#11 and KMS backends implement the same
protocol (``open_key`` dispatches on ``KeyRef.backend``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from revocation import der
from revocation.errors import ConfigError, KeyBackendError

KEY_ALGORITHMS = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# AlgorithmIdentifier DER for the signature algorithms we produce.
_ECDSA_SHA256 = der.sequence(der.oid("1.2.840.10045.4.3.2"))
_ECDSA_SHA384 = der.sequence(der.oid("1.2.840.10045.4.3.3"))
_RSA_SHA256 = der.sequence(der.oid("1.2.840.113549.1.1.11"), b"\x05\x00")


class SigningKey(Protocol):
    """A private key that can sign but need not be readable."""

    @property
    def ref(self) -> KeyRef: ...

    def public_key(self) -> PublicKey: ...

    def signature_algorithm_der(self) -> bytes:
        """The AlgorithmIdentifier (DER) of the signatures :meth:`sign` makes."""
        ...

    def hash_algorithm(self) -> hashes.HashAlgorithm: ...

    def sign(self, data: bytes) -> bytes:
        """Sign ``data``; returns the signature as it goes into a BIT STRING."""
        ...

    def private_key_for_builder(self) -> PrivateKey:
        """A key object that cryptography's X.509 builders accept.

        File keys return their key; hardware backends will return a proxy.
        """
        ...


@dataclasses.dataclass(frozen=True)
class KeyRef:
    """Where a key lives. Holds references only, never secrets."""

    backend: str
    path: str = ""
    passphrase_env: str = ""
    passphrase_file: str = ""

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> KeyRef:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown key reference fields: {sorted(unknown)}")
        if "backend" not in data:
            raise ConfigError("key reference lacks 'backend'")
        return cls(**data)


def generate_private_key(algorithm: str) -> PrivateKey:
    if algorithm == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if algorithm.startswith("rsa-") and algorithm in KEY_ALGORITHMS:
        return rsa.generate_private_key(public_exponent=65537, key_size=int(algorithm[4:]))
    raise ConfigError(f"unknown key algorithm {algorithm!r}; choose one of {', '.join(KEY_ALGORITHMS)}")


class FileKey:
    """A PEM private key on disk (mode 0600), optionally passphrase-encrypted."""

    def __init__(self, ref: KeyRef, key: PrivateKey) -> None:
        self._ref = ref
        self._key = key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if key.curve.name == "secp384r1":
                self._hash: hashes.HashAlgorithm = hashes.SHA384()
                self._alg = _ECDSA_SHA384
            else:
                self._hash = hashes.SHA256()
                self._alg = _ECDSA_SHA256
            self._ecdsa = ec.ECDSA(self._hash)
        else:
            self._hash = hashes.SHA256()
            self._alg = _RSA_SHA256

    @property
    def ref(self) -> KeyRef:
        return self._ref

    def public_key(self) -> PublicKey:
        return self._key.public_key()

    def signature_algorithm_der(self) -> bytes:
        return self._alg

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return self._hash

    def sign(self, data: bytes) -> bytes:
        key = self._key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, self._ecdsa)
        return key.sign(data, padding.PKCS1v15(), self._hash)

    def private_key_for_builder(self) -> PrivateKey:
        return self._key


def _passphrase(ref: KeyRef) -> bytes | None:
    if ref.passphrase_env:
        value = os.environ.get(ref.passphrase_env)
        if value is None:
            raise KeyBackendError(f"key {ref.path}: environment variable {ref.passphrase_env} is not set")
        return value.encode()
    if ref.passphrase_file:
        try:
            return Path(ref.passphrase_file).read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise KeyBackendError(
                f"key {ref.path}: cannot read passphrase file {ref.passphrase_file}: {exc.strerror}"
            ) from exc
    return None


def write_file_key(path: Path, key: PrivateKey, passphrase: bytes | None = None) -> None:
    """Write ``key`` as PEM with mode 0600, never readable by others even briefly."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def open_key(ref: KeyRef) -> SigningKey:
    """Open the key named by ``ref``; fails with a message naming the key."""
    if ref.backend != "file":
        raise ConfigError(f"key backend {ref.backend!r} is not available (supported: file)")
    path = Path(ref.path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyBackendError(f"cannot read key file {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=_passphrase(ref))
    except (ValueError, TypeError) as exc:
        # The message of cryptography's error never contains the passphrase.
        raise KeyBackendError(f"cannot load key file {path}: {exc}") from exc
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise KeyBackendError(f"key file {path} holds an unsupported key type {type(key).__name__}")
    return FileKey(ref, key)


def check_key_matches(key: SigningKey, public: PublicKey, what: str) -> None:
    """Stop with a clear error when ``key`` is not the private half of ``public``."""
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if key.public_key().public_bytes(enc, fmt) != public.public_bytes(enc, fmt):
        raise KeyBackendError(f"key {key.ref.path or key.ref} does not match the certificate of {what}")
