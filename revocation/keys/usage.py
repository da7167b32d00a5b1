"""How often each role signs with each key backend, and how often a key fails: the CA key access events.

Signing roles count here (``record``); ``SigningUsage`` exports the counts as
``signing_operations_total{role,backend}`` and ``signing_errors_total{role,backend}``.
The counts are per process and plain integers (a signature costs far more than an
increment), so a process's registry may export them whichever role counted.
Labels name a role and a backend only: a few series, whatever is signed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from cryptography.hazmat.primitives import hashes
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from revocation.keys.base import KeyRef, PrivateKey, PublicKey, SigningKey

_lock = threading.Lock()  # keys sign in threads (the API, the CRL builder)
_operations: dict[tuple[str, str], int] = {}
_errors: dict[tuple[str, str], int] = {}


def record(role: str, backend: str, signatures: int = 1, *, failed: bool = False) -> None:
    """Count ``signatures`` made by ``role`` with a key of ``backend``, or one failure to sign."""
    with _lock:
        counts = _errors if failed else _operations
        counts[(role, backend)] = counts.get((role, backend), 0) + (1 if failed else signatures)


class CountedKey:
    """A signing key whose signatures (and failures) are counted for ``role``."""

    def __init__(self, key: SigningKey, role: str) -> None:
        self._key = key
        self._role = role

    @property
    def ref(self) -> KeyRef:
        return self._key.ref

    def public_key(self) -> PublicKey:
        return self._key.public_key()

    def signature_algorithm_der(self) -> bytes:
        return self._key.signature_algorithm_der()

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return self._key.hash_algorithm()

    def sign(self, data: bytes) -> bytes:
        try:
            signature = self._key.sign(data)
        except Exception:
            record(self._role, self._key.ref.backend, failed=True)
            raise
        record(self._role, self._key.ref.backend)
        return signature

    def sign_many(self, data: Sequence[bytes]) -> list[bytes]:
        try:
            signatures = self._key.sign_many(data)
        except Exception:
            record(self._role, self._key.ref.backend, failed=True)
            raise
        record(self._role, self._key.ref.backend, len(signatures))
        return signatures

    def private_key_for_builder(self) -> PrivateKey | None:
        return self._key.private_key_for_builder()

    def close(self) -> None:
        self._key.close()


class SigningUsage(Collector):
    def collect(self) -> Iterator[CounterMetricFamily]:
        with _lock:
            ops, errors = dict(_operations), dict(_errors)
        done = CounterMetricFamily(
            "signing_operations", "Signatures made, by signing role and key backend", labels=["role", "backend"]
        )
        for (role, backend), n in sorted(ops.items()):
            done.add_metric([role, backend], n)
        failed = CounterMetricFamily(
            "signing_errors", "Failed signing attempts, by role and key backend", labels=["role", "backend"]
        )
        for (role, backend), n in sorted(errors.items()):
            failed.add_metric([role, backend], n)
        yield done
        yield failed

    def describe(self) -> Iterator[CounterMetricFamily]:
        return self.collect()
