"""KMS keys against a KMS-speaking local server (moto in server mode) over HTTP, through aioboto3.

moto's KMS ignores ``MessageType=DIGEST`` (it hashes the digest again), so the
backend's DIGEST path, used for data over 4096 bytes, cannot be checked against
it; ``test_large_crls_are_signed_as_digests`` checks it with a client that
follows the documented KMS semantics instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aioboto3
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from prometheus_client import CollectorRegistry

from pca.config import Config, load_config
from pca.runtime import Runtime, open_runtime
from pca.serve import build_authority
from publishers.checkpointer import LATEST_KEY, Checkpointer
from publishers.crl_der import CRLEntry, build_crl, verify_crl
from publishers.objectstore import DirectoryStore
from revocation import ca
from revocation.authority import Actor, IssueRequest
from revocation.checkpoints import SIGNER_RENEW_BEFORE, current_signer, ensure_signer
from revocation.clock import SystemClock
from revocation.errors import KeyBackendError
from revocation.keys import KeyRef, check_key_for_certificate, open_key, verify_signature
from revocation.keys.kms import RAW_LIMIT, KMSKey
from tests.support.crl import make_publisher
from tests.support.environ import environ
from tests.support.moto import moto_server
from tests.support.ports import free_port
from tests.support.processes import init_ca
from tests.support.signing_backends import checkpoint_signer_race, exercise, have_openssl, rotation_race

REGION = "us-east-1"
ACTOR = Actor("test", "kms")
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}

pytestmark = pytest.mark.skipif(not have_openssl(), reason="needs the openssl command")


@pytest.fixture(scope="module")
def kms_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's server on a free port, with dummy AWS credentials in the environment."""
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with environ(**AWS_ENV), moto_server(log_path, timeout=30) as port:
        yield f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def kms_client(endpoint: str) -> AsyncIterator[Any]:
    async with aioboto3.Session().client("kms", region_name=REGION, endpoint_url=endpoint) as client:
        yield client


async def init_kms_ca(directory: Path, endpoint: str, *extra: str) -> Config:
    path = await asyncio.to_thread(
        init_ca, directory, "--key-backend", "kms", "--kms-region", REGION, "--kms-endpoint-url", endpoint, *extra
    )
    return load_config(path)


async def test_a_kms_ca_signs_what_openssl_verifies(kms_endpoint: str, tmp_path: Path) -> None:
    cfg = await init_kms_ca(tmp_path / "ca", kms_endpoint)
    done = await exercise(cfg, tmp_path / "work")

    assert {r.backend for r in done.key_refs} == {"kms"}
    assert len({r.key_id for r in done.key_refs}) == 4
    assert all(r.key_id.startswith("arn:aws:kms:") and r.endpoint_url == kms_endpoint for r in done.key_refs)
    assert not (cfg.data_dir / "keys").exists(), "no key material is written to disk"
    async with kms_client(kms_endpoint) as kms:
        for ref in done.key_refs:
            meta = (await kms.describe_key(KeyId=ref.key_id))["KeyMetadata"]
            assert (meta["KeyUsage"], meta["KeySpec"], meta["Origin"]) == ("SIGN_VERIFY", "ECC_NIST_P256", "AWS_KMS")


async def test_rsa_kms_keys_sign_too(kms_endpoint: str, tmp_path: Path) -> None:
    cfg = await init_kms_ca(tmp_path / "ca", kms_endpoint, "--key-algorithm", "rsa-2048")
    done = await exercise(cfg, tmp_path / "work")
    assert {r.backend for r in done.key_refs} == {"kms"}


async def test_sign_many_keeps_the_order_of_concurrent_requests(kms_endpoint: str, tmp_path: Path) -> None:
    async with kms_client(kms_endpoint) as kms:
        arn = (await kms.create_key(KeySpec="ECC_NIST_P384", KeyUsage="SIGN_VERIFY"))["KeyMetadata"]["Arn"]
    key = await asyncio.to_thread(open_key, KeyRef("kms", key_id=arn, region=REGION, endpoint_url=kms_endpoint))
    try:
        messages = [f"message {i}".encode() * (i + 1) for i in range(40)]
        signatures = await asyncio.to_thread(key.sign_many, messages)
        assert isinstance(key.hash_algorithm(), hashes.SHA384)
        for message, signature in zip(messages, signatures, strict=True):
            verify_signature(key.public_key(), signature, message, key.hash_algorithm())
    finally:
        key.close()


@pytest.mark.parametrize("wrong", ["another key", "a missing alias"])
async def test_a_wrong_or_missing_key_stops_start_naming_key_and_certificate(
    kms_endpoint: str, tmp_path: Path, wrong: str
) -> None:
    cfg = await init_kms_ca(tmp_path / "ca", kms_endpoint)
    from pca.runtime import open_runtime
    from revocation.clock import SystemClock

    rt = open_runtime(cfg, SystemClock())
    try:
        issuers = {i.issuer_id: i for i in await rt.view.issuers()}
    finally:
        rt.close()
    signer_ref, signer_cert = issuers["issuing-ca"].signer_key_ref, issuers["issuing-ca"].signer_cert
    root_ref = issuers["root-ca"].key_ref
    assert signer_ref is not None and signer_cert is not None and root_ref is not None
    # What a misconfigured reference looks like: the wrong key, or one that does not exist (deleted, mistyped).
    key_id = root_ref.key_id if wrong == "another key" else "alias/pca-no-such-key"
    ref = KeyRef("kms", key_id=key_id, region=REGION, endpoint_url=kms_endpoint)
    with pytest.raises(KeyBackendError) as failure:
        await asyncio.to_thread(check_key_for_certificate, ref, signer_cert, "the OCSP signer of issuing-ca")
    message = str(failure.value)
    assert f"kms:{REGION}:{key_id}" in message
    assert "CN=PCA Issuing CA OCSP Responder" in message
    assert "the OCSP signer of issuing-ca" in message
    assert ("does not match" if wrong == "another key" else "NotFoundException") in message


async def test_an_unreachable_endpoint_fails_init_clearly(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit):
        await init_kms_ca(tmp_path / "ca", endpoint)
    assert not (tmp_path / "ca" / "pca.toml").exists()


@pytest.mark.parametrize(
    ("race", "what"),
    [(rotation_race, "OCSP signer key"), (checkpoint_signer_race, "audit checkpoint signer key")],
    ids=["ocsp-signer-rotation", "checkpoint-signer"],
)
async def test_the_kms_key_that_lost_a_race_is_scheduled_for_deletion(
    race: Callable[[Runtime], Awaitable[tuple[KeyRef, KeyRef]]],
    what: str,
    kms_endpoint: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = await init_kms_ca(tmp_path / "ca", kms_endpoint)
    rt = open_runtime(cfg, SystemClock())
    try:
        won, lost = await race(rt)
    finally:
        rt.close()
    async with kms_client(kms_endpoint) as kms:
        kept = (await kms.describe_key(KeyId=won.key_id))["KeyMetadata"]
        dropped = (await kms.describe_key(KeyId=lost.key_id))["KeyMetadata"]
    assert kept["KeyState"] == "Enabled"
    assert dropped["KeyState"] == "PendingDeletion"
    # The shortest waiting period KMS allows: 7 days (a mistaken deletion can still be cancelled).
    waiting = dropped["DeletionDate"] - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=6) < waiting <= datetime.timedelta(days=7, minutes=1)
    assert f"{what} kms:{REGION}:{lost.key_id}" in caplog.text and "destroyed" in caplog.text


# --- a slow KMS and the event loop ----------------------------------------------------------------------


class SlowSigning:
    """A TCP proxy in front of the KMS server, on threads of its own (the event loop under test may not
    serve it): every Sign request waits ``delay`` seconds before it is forwarded."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay = 0.0
        self.signs = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self._sockets: list[socket.socket] = []
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        try:
            while data := src.recv(65536):
                if requests and b"TrentService.Sign\r\n" in data:
                    self.signs += 1
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._server.close()
        for sock in self._sockets:
            sock.close()


class LoopLag:
    """The longest time the event loop failed to wake a coroutine sleeping 10 ms, while measuring."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def _watch(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.monotonic() - started - 0.01)

    @contextlib.asynccontextmanager
    async def measuring(self) -> AsyncIterator[None]:
        watcher = asyncio.create_task(self._watch())
        try:
            yield
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)


async def test_a_slow_kms_signature_does_not_stall_the_event_loop_of_the_api_and_publisher(
    kms_endpoint: str, tmp_path: Path
) -> None:
    delay = 2.0  # seconds per Sign: far above what the loop may lose to anything else (a GC pass)
    proxy = SlowSigning(int(kms_endpoint.rsplit(":", 1)[1]))
    try:
        cfg = await init_kms_ca(tmp_path / "ca", f"http://127.0.0.1:{proxy.port}")
        rt = open_runtime(cfg, SystemClock())
        try:
            authority = build_authority(rt)
            publisher = make_publisher(rt, DirectoryStore(cfg.crl_dir), rt.clock)
            await authority.issue(IssueRequest(subject="CN=warm", dns=["warm.test"]), ACTOR)  # keys opened
            proxy.delay, signs, lag, started = delay, proxy.signs, LoopLag(), time.monotonic()
            async with lag.measuring():
                issued = await authority.issue(IssueRequest(subject="CN=slow", dns=["slow.test"]), ACTOR)
                assert await authority.rotate_signers(ACTOR, force=True)
                published = await publisher.publish_all()
            elapsed = time.monotonic() - started
        finally:
            rt.close()
    finally:
        proxy.close()
    assert issued.certificate.subject.rfc4514_string() == "CN=slow" and len(published) == 2
    # A leaf, a signer certificate, two CRLs: each signature took the KMS 2 s...
    assert proxy.signs - signs >= 4 and elapsed >= 4 * delay
    # ...and meanwhile the loop kept serving its other coroutines (requests, responders, the publisher): a
    # signature made on the loop would stall it for a whole round trip; a loaded machine loses it less.
    assert lag.worst < delay, f"the event loop stalled for {lag.worst:.2f} s"


async def test_a_slow_kms_signature_does_not_stall_the_event_loop_of_the_audit_checkpoints(
    kms_endpoint: str, tmp_path: Path
) -> None:
    """The publisher's checkpoint tick signs with the checkpoint signer's key, and a renewal of that signer
    has the CA's key certify a new one: with KMS keys both are round trips, made off the loop."""
    delay = 2.0
    proxy = SlowSigning(int(kms_endpoint.rsplit(":", 1)[1]))
    try:
        cfg = await init_kms_ca(tmp_path / "ca", f"http://127.0.0.1:{proxy.port}")
        rt = open_runtime(cfg, SystemClock())
        try:
            await build_authority(rt).issue(IssueRequest(subject="CN=logged", dns=["logged.test"]), ACTOR)
            keys = cfg.data_dir / "keys"
            checkpointer = Checkpointer(rt.log, rt.view, DirectoryStore(cfg.crl_dir), rt.clock, CollectorRegistry(),
                                        key_dir=keys, key_algorithm=cfg.key_algorithm, every_events=1,
                                        interval_seconds=300)  # fmt: skip
            first = await current_signer(rt.log)
            assert first is not None
            renew_at = first.not_after - SIGNER_RENEW_BEFORE + datetime.timedelta(seconds=1)
            proxy.delay, signs, lag = delay, proxy.signs, LoopLag()
            async with lag.measuring():
                checkpoint = await checkpointer.tick()
                renewed = await ensure_signer(rt.log, rt.view, keys, cfg.key_algorithm, renew_at, "test", "renew")
        finally:
            rt.close()
    finally:
        proxy.close()
    assert checkpoint is not None and (cfg.crl_dir / LATEST_KEY).is_file()
    assert renewed.key_ref != first.key_ref and renewed.key_ref["backend"] == "kms"
    assert proxy.signs - signs >= 2  # the checkpoint, the new signer's certificate: 2 s each
    assert lag.worst < delay, f"the event loop stalled for {lag.worst:.2f} s"


# --- the DIGEST path, against a client with the documented KMS semantics ---------------------------------


class DocumentedKMS:
    """The three KMS operations the backend uses, as AWS documents them (RAW up to 4096 bytes, DIGEST prehashed)."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.requests: list[tuple[str, int]] = []

    async def __aenter__(self) -> DocumentedKMS:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def get_public_key(self, KeyId: str) -> dict[str, Any]:
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {"KeyId": KeyId, "PublicKey": der, "KeyUsage": "SIGN_VERIFY", "SigningAlgorithms": ["ECDSA_SHA_256"]}

    async def sign(self, KeyId: str, Message: bytes, MessageType: str, SigningAlgorithm: str) -> dict[str, Any]:
        assert SigningAlgorithm == "ECDSA_SHA_256"
        self.requests.append((MessageType, len(Message)))
        if MessageType == "RAW":
            assert len(Message) <= RAW_LIMIT, "KMS refuses RAW messages over 4096 bytes"
            return {"Signature": self.private.sign(Message, ec.ECDSA(hashes.SHA256()))}
        assert MessageType == "DIGEST" and len(Message) == 32
        return {"Signature": self.private.sign(Message, ec.ECDSA(Prehashed(hashes.SHA256())))}


async def test_large_crls_are_signed_as_digests_and_small_data_as_raw_messages() -> None:
    fake = DocumentedKMS()
    key = KMSKey(KeyRef("kms", key_id="alias/documented", region=REGION), client_factory=lambda: fake)
    try:
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        root = await asyncio.to_thread(ca.create_root, key, ca.parse_subject("CN=KMS Root"), now, 365)
        entries = [CRLEntry(1000 + i, now, 1) for i in range(400)]
        crl = await asyncio.to_thread(
            build_crl, root, key, entries, number=1, this_update=now, next_update=now + datetime.timedelta(days=1)
        )
    finally:
        key.close()
    assert len(crl) > RAW_LIMIT
    assert len(list(verify_crl(crl, root))) == 400
    # The certificate's TBS went as a message, the CRL's TBS (over 4096 bytes) as a digest.
    assert [kind for kind, _ in fake.requests] == ["RAW", "DIGEST"]
