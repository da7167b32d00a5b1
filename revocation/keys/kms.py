"""Signing keys in AWS KMS (asymmetric SIGN_VERIFY keys), through aioboto3.

The key never leaves KMS: ``kms.sign`` returns the signature, which goes into the
certificate, OCSP response or CRL unchanged (for ECDSA it is already the DER
``ECDSA-Sig-Value``; for RSA the PKCS#1 v1.5 signature).

Message type. KMS signs either a message (``MessageType=RAW``, at most 4096
bytes, hashed by KMS) or a digest computed by the caller (``MessageType=DIGEST``).
Both give the same signature on real KMS. We send RAW whenever the data fits
(OCSP response and certificate TBS always do) and DIGEST above that (the TBS of
a CRL with more than about a hundred entries). Test servers: moto's KMS ignores
``MessageType=DIGEST`` and hashes the digest again, so its DIGEST signatures are
over the wrong value. Production code does not work around that; against moto
only data up to 4096 bytes signs correctly, which covers everything the tests
sign through moto, and the DIGEST path is tested with a client that follows the
documented KMS semantics (``tests/test_keys_kms.py``).

Concurrency. Each key owns an event loop in a daemon thread; the synchronous
``sign``/``sign_many`` (called from pre-signer worker processes, the publisher,
the issuing core) submit coroutines to it. ``sign_many`` keeps up to
``DEFAULT_CONCURRENCY`` requests in flight. KMS has per-account request quotas
for asymmetric signing; throttled requests are retried with backoff by botocore.
A client is created per call (about 3 ms once the session has loaded the service
model), so no connection outlives a call and nothing needs closing but the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import weakref
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from revocation.errors import ConfigError, KeyBackendError
from revocation.keys.base import ExternalKey, KeyRef, PublicKey, signature_parameters

RAW_LIMIT = 4096  # bytes: the largest message KMS accepts with MessageType=RAW
DEFAULT_CONCURRENCY = 16
CALL_TIMEOUT = 120.0  # seconds for one synchronous call, a whole batch included

_KEY_SPECS = {
    "ec-p256": "ECC_NIST_P256",
    "ec-p384": "ECC_NIST_P384",
    "rsa-2048": "RSA_2048",
    "rsa-3072": "RSA_3072",
    "rsa-4096": "RSA_4096",
}

T = TypeVar("T")
# Returns an async context manager yielding a KMS client (aiobotocore's, or a test double
# with the same ``sign`` / ``get_public_key`` / ``create_key`` coroutines).
ClientFactory = Callable[[], contextlib.AbstractAsyncContextManager[Any]]


class _LoopThread:
    """An event loop running in a daemon thread; synchronous callers submit coroutines to it."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._stopped:
            coro.close()
            raise KeyBackendError("the KMS key is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(CALL_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise KeyBackendError(f"KMS did not answer within {CALL_TIMEOUT:.0f} s") from None

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)


def _client_factory(ref: KeyRef, concurrency: int) -> ClientFactory:
    if not ref.region:
        raise ConfigError(f"KMS key reference {ref.to_dict()} needs 'region'")
    session = aioboto3.Session()
    config = AioConfig(
        connect_timeout=10,
        read_timeout=30,
        max_pool_connections=concurrency,
        retries={"max_attempts": 3, "mode": "standard"},
    )

    def client() -> contextlib.AbstractAsyncContextManager[Any]:
        result: contextlib.AbstractAsyncContextManager[Any] = session.client(
            "kms", region_name=ref.region, endpoint_url=ref.endpoint_url or None, config=config
        )
        return result

    return client


def _failure(subject: str, action: str, exc: Exception) -> KeyBackendError:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        detail = f"{error.get('Code', 'error')}: {error.get('Message', '')}"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return KeyBackendError(f"{subject}: {action} failed: {detail}")


class KMSKey(ExternalKey):
    """An asymmetric KMS key; signs through the key's own event loop thread."""

    def __init__(
        self, ref: KeyRef, client_factory: ClientFactory | None = None, concurrency: int = DEFAULT_CONCURRENCY
    ) -> None:
        if not ref.key_id:
            raise ConfigError(f"KMS key reference {ref.to_dict()} needs 'key_id'")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._ref = ref  # _describe() names the key in its errors before the base class is set up
        self._client = client_factory or _client_factory(ref, concurrency)
        self._concurrency = concurrency
        self._loop = _LoopThread(f"pca-kms-{ref.key_id[-12:]}")
        try:
            public, self._algorithm = self._loop.run(self._describe())
        except BaseException:
            self._loop.stop()
            raise
        super().__init__(ref, public)
        self._digest = hashlib.sha384 if isinstance(self._hash, hashes.SHA384) else hashlib.sha256
        # A key dropped without close() still stops its thread when it is collected.
        weakref.finalize(self, self._loop.stop)

    async def _describe(self) -> tuple[PublicKey, str]:
        try:
            async with self._client() as kms:
                info = await kms.get_public_key(KeyId=self._ref.key_id)
        except (ClientError, BotoCoreError) as exc:
            raise _failure(f"KMS key {self._ref.describe()}", "reading the public key", exc) from exc
        if info.get("KeyUsage") != "SIGN_VERIFY":
            raise KeyBackendError(f"KMS key {self._ref.describe()} is not a SIGN_VERIFY key ({info.get('KeyUsage')})")
        try:
            public = serialization.load_der_public_key(bytes(info["PublicKey"]))
        except ValueError as exc:
            raise KeyBackendError(f"KMS key {self._ref.describe()} returned an unreadable public key: {exc}") from exc
        if isinstance(public, ec.EllipticCurvePublicKey):
            hash_algorithm, _ = signature_parameters(public)
            algorithm = f"ECDSA_SHA_{hash_algorithm.digest_size * 8}"
        elif isinstance(public, rsa.RSAPublicKey):
            algorithm = "RSASSA_PKCS1_V1_5_SHA_256"
        else:
            raise KeyBackendError(f"KMS key {self._ref.describe()} has an unsupported key type")
        offered = info.get("SigningAlgorithms") or [algorithm]
        if algorithm not in offered:
            raise KeyBackendError(f"KMS key {self._ref.describe()} does not offer {algorithm} (offers {offered})")
        return public, algorithm

    def sign_many(self, data: Sequence[bytes]) -> list[bytes]:
        if not data:
            return []
        return self._loop.run(self._sign_all(list(data)))

    async def _sign_all(self, data: list[bytes]) -> list[bytes]:
        gate = asyncio.Semaphore(self._concurrency)
        failed: list[KeyBackendError] = []

        async def one(kms: Any, item: bytes) -> bytes:
            async with gate:
                if failed:  # one failure fails the batch: do not send the rest
                    return b""
                try:
                    return await self._sign_one(kms, item)
                except (ClientError, BotoCoreError) as exc:
                    failed.append(_failure(f"KMS key {self._ref.describe()}", "signing", exc))
                    return b""

        async with self._client() as kms:
            signatures = await asyncio.gather(*(one(kms, item) for item in data))
        if failed:
            raise failed[0]
        return signatures

    async def _sign_one(self, kms: Any, item: bytes) -> bytes:
        if len(item) <= RAW_LIMIT:
            message, message_type = item, "RAW"
        else:
            message, message_type = self._digest(item).digest(), "DIGEST"
        answer = await kms.sign(
            KeyId=self._ref.key_id, Message=message, MessageType=message_type, SigningAlgorithm=self._algorithm
        )
        return bytes(answer["Signature"])

    def close(self) -> None:
        self._loop.stop()


def open_kms_key(ref: KeyRef, client_factory: ClientFactory | None = None) -> KMSKey:
    return KMSKey(ref, client_factory)


def generate_kms_key(
    template: KeyRef, name: str, algorithm: str, client_factory: ClientFactory | None = None
) -> KMSKey:
    """Create an asymmetric SIGN_VERIFY key in the region (and endpoint) of ``template``."""
    spec = _KEY_SPECS.get(algorithm)
    if spec is None:
        raise ConfigError(f"key algorithm {algorithm!r} is not supported by the KMS backend")
    location = KeyRef("kms", key_id="(new)", region=template.region, endpoint_url=template.endpoint_url)
    factory = client_factory or _client_factory(location, 1)
    where = f"KMS in {template.region}" + (f" at {template.endpoint_url}" if template.endpoint_url else "")

    async def create() -> str:
        try:
            async with factory() as kms:
                answer = await kms.create_key(
                    KeySpec=spec,
                    KeyUsage="SIGN_VERIFY",
                    Description=f"pca {name}",
                    Tags=[{"TagKey": "pca-name", "TagValue": name}],
                )
        except (ClientError, BotoCoreError) as exc:
            raise _failure(where, f"creating {spec} key {name}", exc) from exc
        return str(answer["KeyMetadata"]["Arn"])

    loop = _LoopThread("pca-kms-create")
    try:
        arn = loop.run(create())
    finally:
        loop.stop()
    return KMSKey(KeyRef("kms", key_id=arn, region=template.region, endpoint_url=template.endpoint_url), client_factory)


MIN_DELETION_DAYS = 7  # the shortest waiting period KMS accepts before it deletes a key


def destroy_kms_key(ref: KeyRef, client_factory: ClientFactory | None = None) -> None:
    """Schedule the deletion of the KMS key of ``ref`` with the shortest waiting period."""
    factory = client_factory or _client_factory(ref, 1)
    # The bare key id of an ARN (our keys are named by the ARN CreateKey returned, in the client's own
    # region and account): KMS takes either, and moto's ScheduleKeyDeletion only the bare id.
    key_id = ref.key_id.split(":key/", 1)[1] if ref.key_id.startswith("arn:") and ":key/" in ref.key_id else ref.key_id

    async def schedule() -> None:
        try:
            async with factory() as kms:
                await kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=MIN_DELETION_DAYS)
        except (ClientError, BotoCoreError) as exc:
            raise _failure(f"KMS key {ref.describe()}", "scheduling its deletion", exc) from exc

    loop = _LoopThread("pca-kms-destroy")
    try:
        loop.run(schedule())
    finally:
        loop.stop()
