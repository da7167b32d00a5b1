"""The ``file`` backend: a PEM private key on disk, optionally passphrase-encrypted."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from revocation.errors import ConfigError, KeyBackendError
from revocation.files import write_file
from revocation.keys.base import KEY_ALGORITHMS, KeyRef, PrivateKey, PublicKey, read_secret, signature_parameters


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
        self._hash, self._alg = signature_parameters(key.public_key())
        self._ecdsa = ec.ECDSA(self._hash)
        self._pkcs1 = padding.PKCS1v15()

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
        return key.sign(data, self._pkcs1, self._hash)

    def sign_many(self, data: Sequence[bytes]) -> list[bytes]:
        key = self._key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            ecdsa = self._ecdsa
            return [key.sign(item, ecdsa) for item in data]
        pkcs1, hash_algorithm = self._pkcs1, self._hash
        return [key.sign(item, pkcs1, hash_algorithm) for item in data]

    def private_key_for_builder(self) -> PrivateKey:
        return self._key

    def close(self) -> None:
        pass


def write_file_key(path: Path, key: PrivateKey, passphrase: bytes | None = None) -> None:
    """Write ``key`` as PEM with mode 0600, never readable by others even briefly."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, pem, mode=0o600)


def open_file_key(ref: KeyRef) -> FileKey:
    if not ref.path:
        raise ConfigError(f"file key reference {ref.to_dict()} lacks 'path'")
    path = Path(ref.path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyBackendError(f"cannot read key file {path}: {exc.strerror}") from exc
    passphrase = read_secret(ref.passphrase_env, ref.passphrase_file, f"passphrase of key {path}")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except (ValueError, TypeError) as exc:
        # cryptography's messages never contain the passphrase.
        source = ref.passphrase_env or ref.passphrase_file
        hint = f" (passphrase from {source})" if source else ""
        raise KeyBackendError(f"cannot load key file {path}{hint}: {exc}") from exc
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise KeyBackendError(f"key file {path} holds an unsupported key type {type(key).__name__}")
    return FileKey(ref, key)


def generate_file_key(template: KeyRef, name: str, algorithm: str, key_dir: Path) -> FileKey:
    path = key_dir / f"{name}.key"
    ref = KeyRef("file", str(path), passphrase_env=template.passphrase_env, passphrase_file=template.passphrase_file)
    passphrase = read_secret(ref.passphrase_env, ref.passphrase_file, f"passphrase of key {path}")
    private = generate_private_key(algorithm)
    write_file_key(path, private, passphrase)
    return FileKey(ref, private)
