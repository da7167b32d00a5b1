"""Signatures and signing failures are counted per role and key backend (the CA key access events)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from revocation.errors import KeyBackendError
from revocation.keys import generate_key
from revocation.keys.base import KeyRef, SigningKey
from revocation.keys.usage import CountedKey, SigningUsage


class _Broken:
    """A key whose token went away: every signature fails."""

    def __init__(self, ref: KeyRef) -> None:
        self.ref = ref

    def sign(self, data: bytes) -> bytes:
        raise KeyBackendError("CKR_DEVICE_REMOVED")

    def sign_many(self, data: Sequence[bytes]) -> list[bytes]:
        raise KeyBackendError("CKR_DEVICE_REMOVED")


def _value(registry: CollectorRegistry, name: str, role: str, backend: str) -> float:
    return registry.get_sample_value(name, {"role": role, "backend": backend}) or 0.0


def test_signatures_and_failures_are_counted_per_role_and_backend(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    registry.register(SigningUsage())
    key = generate_key(KeyRef(backend="file"), "test-usage", "ec-p256", tmp_path)
    counted = CountedKey(key, "test-signer")
    before = _value(registry, "signing_operations_total", "test-signer", "file")
    counted.sign(b"one")
    counted.sign_many([b"two", b"three"])
    assert _value(registry, "signing_operations_total", "test-signer", "file") - before == 3
    assert counted.public_key() == key.public_key() and counted.ref == key.ref

    broken: SigningKey = CountedKey(_Broken(KeyRef(backend="pkcs11", label="x")), "test-signer")  # type: ignore[arg-type]
    errors = _value(registry, "signing_errors_total", "test-signer", "pkcs11")
    with pytest.raises(KeyBackendError):
        broken.sign(b"four")
    with pytest.raises(KeyBackendError):
        broken.sign_many([b"five"])
    assert _value(registry, "signing_errors_total", "test-signer", "pkcs11") - errors == 2
