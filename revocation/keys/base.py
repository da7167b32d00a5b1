"""What every signing-key backend shares: the protocol, the reference, the signature helpers.

The backends (``file``, ``pkcs11``, ``kms``) import this module and nothing else of
the package, so the dispatch in ``revocation.keys`` can import them without a circle.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
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

# Signed and verified by check_key_matches: proves the key signs, not only that it is named.
_CHECK_MESSAGE = b"pca signing key check"


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

    def sign_many(self, data: Sequence[bytes]) -> list[bytes]:
        """Sign each item; the backend decides how (a loop, one session, concurrent requests)."""
        ...

    def private_key_for_builder(self) -> PrivateKey | None:
        """The key object itself when it lives in this process (file keys), else None.

        cryptography's X.509 builders need such an object; for a key that never
        leaves its token or KMS, ``revocation.ca`` assembles the certificate itself.
        """
        ...

    def close(self) -> None:
        """Release sessions, connections and threads; the key is unusable afterwards."""
        ...


@dataclasses.dataclass(frozen=True)
class KeyRef:
    """Where a key lives. Holds references only, never secrets.

    Fields by backend (empty strings are absent):

    - file: ``path``; ``passphrase_env`` or ``passphrase_file`` if encrypted;
    - pkcs11: ``module`` (the PKCS#11 library), ``token_label``, ``label`` and/or
      ``object_id`` (hex CKA_ID), and ``pin_env`` or ``pin_file``;
    - kms: ``key_id`` (key id, ARN or ``alias/...``), ``region``, optional ``endpoint_url``.
    """

    backend: str
    path: str = ""
    passphrase_env: str = ""
    passphrase_file: str = ""
    module: str = ""
    token_label: str = ""
    label: str = ""
    object_id: str = ""
    pin_env: str = ""
    pin_file: str = ""
    key_id: str = ""
    region: str = ""
    endpoint_url: str = ""

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
        bad = sorted(k for k, v in data.items() if not isinstance(v, str))
        if bad:
            raise ConfigError(f"key reference fields {bad} must be strings")
        return cls(**data)

    def describe(self) -> str:
        """A short, secret-free name for messages: ``file:/path``, ``pkcs11:token=T;object=L``, ``kms:...``."""
        if self.backend == "file":
            return f"file:{self.path}"
        if self.backend == "pkcs11":
            parts = [f"token={self.token_label}"]
            if self.label:
                parts.append(f"object={self.label}")
            if self.object_id:
                parts.append(f"id={self.object_id}")
            return "pkcs11:" + ";".join(parts)
        if self.backend == "kms":
            where = f" at {self.endpoint_url}" if self.endpoint_url else ""
            return f"kms:{self.region}:{self.key_id}{where}"
        return f"{self.backend}:{self.to_dict()}"

    def __str__(self) -> str:
        return self.describe()


def signature_parameters(public: PublicKey) -> tuple[hashes.HashAlgorithm, bytes]:
    """The hash and the AlgorithmIdentifier DER every backend uses for a key like ``public``."""
    if isinstance(public, ec.EllipticCurvePublicKey):
        if public.curve.name == "secp384r1":
            return hashes.SHA384(), _ECDSA_SHA384
        if public.curve.name == "secp256r1":
            return hashes.SHA256(), _ECDSA_SHA256
        raise KeyBackendError(f"EC curve {public.curve.name} is not supported (use P-256 or P-384)")
    return hashes.SHA256(), _RSA_SHA256


class ExternalKey:
    """Base of keys held outside this process (a token, a cloud KMS): they sign, they are never read.

    Subclasses set the reference and public key through ``__init__`` and implement
    :meth:`sign_many`; everything else the protocol asks follows from the public key.
    """

    def __init__(self, ref: KeyRef, public: PublicKey) -> None:
        self._ref = ref
        self._public = public
        self._hash, self._alg = signature_parameters(public)

    @property
    def ref(self) -> KeyRef:
        return self._ref

    def public_key(self) -> PublicKey:
        return self._public

    def signature_algorithm_der(self) -> bytes:
        return self._alg

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return self._hash

    def sign(self, data: bytes) -> bytes:
        return self.sign_many([data])[0]

    def sign_many(self, data: Sequence[bytes]) -> list[bytes]:
        raise NotImplementedError

    def private_key_for_builder(self) -> None:
        return None

    def close(self) -> None:
        """Release what the key holds; by default nothing."""


def verify_signature(public: PublicKey, signature: bytes, data: bytes, hash_algorithm: hashes.HashAlgorithm) -> None:
    """Raise InvalidSignature unless ``signature`` over ``data`` verifies with ``public``."""
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, data, ec.ECDSA(hash_algorithm))
    else:
        public.verify(signature, data, padding.PKCS1v15(), hash_algorithm)


def read_secret(env_name: str, file_path: str, what: str) -> bytes | None:
    """The secret named by an environment variable or a file, or None if neither is given.

    Errors name ``what``, the variable or the file, never the value.
    """
    if env_name:
        value = os.environ.get(env_name)
        if value is None:
            raise KeyBackendError(f"{what}: environment variable {env_name} is not set")
        return value.encode()
    if file_path:
        try:
            return Path(file_path).read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise KeyBackendError(f"{what}: cannot read {file_path}: {exc.strerror}") from exc
    return None


def _spki(public: PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_key_matches(key: SigningKey, public: PublicKey, what: str) -> None:
    """Stop with a clear error unless ``key`` is the private half of ``public`` and can sign.

    Besides comparing public keys it makes one signature and verifies it, so a key
    that is named correctly but cannot sign (wrong permissions, a PIN without the
    right role) is found at start, not at the first revocation.
    """
    if _spki(key.public_key()) != _spki(public):
        raise KeyBackendError(f"key {key.ref.describe()} does not match the certificate of {what}")
    signature = key.sign(_CHECK_MESSAGE)
    try:
        verify_signature(public, signature, _CHECK_MESSAGE, key.hash_algorithm())
    except InvalidSignature as exc:
        raise KeyBackendError(
            f"key {key.ref.describe()} made a signature that the certificate of {what} does not verify"
        ) from exc
