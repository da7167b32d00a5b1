"""The S3 object store and CRLs published to S3 (the ObjectStore contract is in test_objectstore_contract.py).

S3 is a real S3-speaking server (moto in server mode, started by the ``s3_server``
fixture on a free port); aioboto3 talks HTTP to it. Faults are injected by a small
TCP proxy in front of it, never by mocking the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from pca.config import Config, load_config
from pca.roles.publisher import build_publisher, open_store
from pca.runtime import open_runtime
from pca.serve import build_authority
from publishers.crl_der import build_crl, issuing_distribution_point
from publishers.http import CRLApp
from publishers.objectstore import ObjectHead, ObjectStore, PreconditionFailed, StoredObject
from publishers.publisher import Publisher
from publishers.s3store import S3Store
from publishers.storer import CRL_TYPE
from revocation import crl_layout
from revocation.clock import FakeClock
from revocation.errors import StorageError
from revocation.keys import open_key
from tests.support.ca import ACTOR, ISSUING, ROOT, issue, openssl
from tests.support.crl import (
    crl_number,
    delta_base,
    listed,
    make_publisher,
    openssl_crl_verifies,
    pem_file,
    with_crl_settings,
)
from tests.support.moto import S3Server, s3_store
from tests.support.ports import free_port

# --- S3 specifics ---------------------------------------------------------------------------------------------


async def test_objects_live_under_the_prefix_with_http_headers_a_cdn_can_use(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    store = s3_store(s3_server, bucket)
    try:
        await store.put(
            "issuing-ca.crl",
            b"crl",
            content_type=CRL_TYPE,
            cache_control="public, max-age=300, no-transform",
            expires="Thu, 01 Jan 2099 00:00:00 GMT",
        )
    finally:
        await store.close()
    # What a CDN pointed at the bucket fetches (moto serves without auth): the object under the prefix.
    async with httpx.AsyncClient(base_url=f"{s3_server.endpoint_url}/{bucket}", timeout=10) as cdn:
        response = await cdn.get("/crl/issuing-ca.crl")
        outside_prefix = await cdn.get("/issuing-ca.crl")
    assert response.status_code == 200 and response.content == b"crl"
    assert response.headers["content-type"] == CRL_TYPE
    assert response.headers["cache-control"] == "public, max-age=300, no-transform"
    assert parsedate_to_datetime(response.headers["expires"]).year == 2099
    assert outside_prefix.status_code == 404


class FaultyProxy:
    """A TCP proxy in front of the S3 server; each new connection first takes the next fault, if any.

    ``reset`` closes the connection after reading the request, ``503`` answers an S3 SlowDown error,
    ``lost`` forwards the request and drops the server's answer (the write happened, its reply is lost),
    ``down`` refuses everything until ``down`` is cleared; without faults it forwards bytes both ways.
    """

    def __init__(self, target_port: int, faults: list[str]) -> None:
        self.target_port = target_port
        self.faults = faults
        self.down = False
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> FaultyProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._open:
            writer.transport.abort()  # every handler's reads end, so every handler returns
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> None:
        # Headers only: botocore sends PutObject with "Expect: 100-continue" and waits for an answer
        # before the body, so reading a body here would wait forever.
        await reader.readuntil(b"\r\n\r\n")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._open.add(writer)
        self.connections += 1
        fault = "down" if self.down else (self.faults.pop(0) if self.faults else None)
        try:
            if fault == "down":
                writer.transport.abort()
                return
            if fault == "lost":
                await self._lose_reply(reader, writer)
                return
            if fault is not None:
                await self._read_request(reader)
                if fault == "503":
                    body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    writer.write(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                    )
                    await writer.drain()
                writer.transport.abort()
                return
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._open.add(upstream_writer)

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(ConnectionError):
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                dst.close()

            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.transport.abort()
        finally:
            self._handlers.discard(task)

    async def _lose_reply(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward the request; pass "100 Continue" back, but cut the connection when the answer comes."""
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._open.add(upstream_writer)

        async def forward() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    upstream_writer.write(data)
                    await upstream_writer.drain()

        forwarding = asyncio.create_task(forward())
        try:
            while True:
                head = await upstream_reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 100"):
                    break  # the server has done the write and answers: that answer is lost
                writer.write(head)
                await writer.drain()
        finally:
            writer.transport.abort()
            upstream_writer.transport.abort()
            forwarding.cancel()
            await asyncio.gather(forwarding, return_exceptions=True)


class RecordingSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


async def test_transient_failures_are_retried_with_backoff_and_the_write_goes_through(s3_server: S3Server) -> None:
    sleep = RecordingSleep()
    bucket = s3_server.new_bucket()
    async with FaultyProxy(s3_server.port, ["503", "reset", "503", "503"]) as proxy:
        store = S3Store(
            bucket, endpoint_url=f"http://127.0.0.1:{proxy.port}", region=s3_server.region, sleep=sleep, attempts=5
        )
        try:
            etag = await store.put("x.crl", b"payload", content_type=CRL_TYPE, if_none_match=True)
            obj = await store.get("x.crl")
        finally:
            await store.close()
    assert obj is not None and (obj.data, obj.etag) == (b"payload", etag)
    # Each 503 is a retry; the client library may absorb a reset on its own before we see it.
    assert 3 <= len(sleep.delays) <= 4
    assert sleep.delays[0] < sleep.delays[2]  # exponential backoff (its jitter takes off at most half)


async def test_a_store_still_failing_after_the_last_attempt_raises_a_storage_error_naming_the_key(
    s3_server: S3Server,
) -> None:
    sleep = RecordingSleep()
    closed_port = free_port()  # nothing listens there
    store = S3Store("some-bucket", endpoint_url=f"http://127.0.0.1:{closed_port}", sleep=sleep, attempts=3)
    try:
        with pytest.raises(StorageError, match=r"writing s3://some-bucket/x\.crl: .*after 3 attempts"):
            await store.put("x.crl", b"payload", content_type=CRL_TYPE)
        with pytest.raises(StorageError, match=r"reading s3://some-bucket/x\.crl"):
            await store.get("x.crl")
    finally:
        await store.close()
    assert len(sleep.delays) == 4  # two retries per call


async def test_a_lost_condition_is_not_retried(s3_server: S3Server) -> None:
    sleep = RecordingSleep()
    store = s3_store(s3_server, sleep=sleep)
    missing_bucket = s3_store(s3_server, "no-such-bucket", sleep=sleep)
    try:
        await store.put("x.crl", b"one", content_type=CRL_TYPE)
        with pytest.raises(PreconditionFailed):
            await store.put("x.crl", b"two", content_type=CRL_TYPE, if_none_match=True)
        with pytest.raises(StorageError, match="NoSuchBucket"):
            await missing_bucket.put("y.crl", b"x", content_type=CRL_TYPE)
    finally:
        await store.close()
        await missing_bucket.close()
    assert sleep.delays == []


async def test_a_conditional_write_whose_reply_was_lost_is_recognised_as_our_own_when_retried(
    s3_server: S3Server,
) -> None:
    bucket = s3_server.new_bucket()
    direct = s3_store(s3_server, bucket)
    meta = {"crl-number": "7"}
    try:
        first = await direct.put("a.crl", b"one", content_type=CRL_TYPE)
        conditions: list[tuple[str, dict[str, Any]]] = [
            # New key: the retried If-None-Match: * meets the object the lost attempt stored.
            ("b.crl", {"if_none_match": True}),
            # Existing key: the retried If-Match meets the ETag the lost attempt changed.
            ("a.crl", {"if_match": first}),
        ]
        for key, condition in conditions:
            faults = ["lost"]
            sleep = RecordingSleep()
            async with FaultyProxy(s3_server.port, faults) as proxy:
                store = S3Store(
                    bucket, prefix="crl/", endpoint_url=f"http://127.0.0.1:{proxy.port}", region=s3_server.region,
                    sleep=sleep,
                )  # fmt: skip
                try:
                    etag = await store.put(key, b"two", content_type=CRL_TYPE, metadata=meta, **condition)
                finally:
                    await store.close()
            # The first reply was lost and the PUT was sent again (by aiohttp itself, or after our backoff).
            assert faults == [] and proxy.connections >= 2 and len(sleep.delays) <= 1
            stored = await direct.get(key)
            assert stored is not None and (stored.data, stored.etag, stored.metadata) == (b"two", etag, meta)
    finally:
        await direct.close()


async def test_a_retried_conditional_write_refused_for_someone_elses_object_still_fails(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    direct = s3_store(s3_server, bucket)
    try:
        await direct.put("c.crl", b"theirs", content_type=CRL_TYPE, metadata={"crl-number": "9"})
        # Our first attempt never reaches the server; the retry finds another writer's object.
        async with FaultyProxy(s3_server.port, ["reset"]) as proxy:
            store = S3Store(
                bucket, prefix="crl/", endpoint_url=f"http://127.0.0.1:{proxy.port}", region=s3_server.region,
                sleep=RecordingSleep(),
            )  # fmt: skip
            try:
                with pytest.raises(PreconditionFailed):
                    await store.put("c.crl", b"ours", content_type=CRL_TYPE, if_none_match=True)
                # The same bytes with other metadata are not ours either.
                proxy.faults.append("lost")
                await store.close()
                with pytest.raises(PreconditionFailed):
                    await store.put(
                        "c.crl", b"theirs", content_type=CRL_TYPE, metadata={"crl-number": "8"}, if_none_match=True
                    )
            finally:
                await store.close()
        stored = await direct.get("c.crl")
        assert stored is not None and (stored.data, stored.metadata) == (b"theirs", {"crl-number": "9"})
    finally:
        await direct.close()


# --- CRLs on S3 -----------------------------------------------------------------------------------------------


def s3_config(config: Config, server: S3Server, bucket: str, **crl: object) -> Config:
    text = config.path.read_text().replace(
        '[crl.store]\ntype = "directory"',
        f'[crl.store]\ntype = "s3"\nbucket = "{bucket}"\nprefix = "pki/crl/"\n'
        f'endpoint_url = "{server.endpoint_url}"\nregion = "{server.region}"\naddressing_style = "path"',
    )
    config.path.write_text(text)
    return with_crl_settings(load_config(config.path), **crl) if crl else load_config(config.path)


async def test_full_and_delta_crls_of_every_shard_are_published_to_s3_and_verify_with_openssl(
    ca_config: Config, s3_server: S3Server, fake_clock: FakeClock, tmp_path: Path
) -> None:
    bucket = s3_server.new_bucket()
    config = s3_config(
        ca_config, s3_server, bucket, shards=2, base_url="https://crl.example.test/pki/crl", full_after_revocation=False
    )
    rt = open_runtime(config, fake_clock)
    store = open_store(config)
    assert isinstance(store, S3Store)
    try:
        authority = build_authority(rt)
        certs = [await issue(authority, f"s3-{i}") for i in range(8)]
        publisher = build_publisher(rt, store)
        await publisher.tick()
        revoked = certs[:3]
        for cert in revoked:
            await authority.revoke(cert.serial_number, "keyCompromise", ACTOR)
        publisher.revocation_happened()
        fake_clock.advance(config.crl.after_revocation_seconds)
        deltas = [p for p in await publisher.tick() if p.kind == "delta"]
        assert publisher.last_error is None
        assert sum(p.entries for p in deltas) == 3

        chain = config.data_dir / "ca-chain.pem"
        layout = config.crl_layout
        for shard in (1, 2):
            full = await store.get(crl_layout.full_key(ISSUING, shard))
            delta = await store.get(crl_layout.delta_key(ISSUING, shard))
            assert full is not None and delta is not None
            await openssl_crl_verifies(full.data, chain, tmp_path, f"full{shard}")
            await openssl_crl_verifies(delta.data, chain, tmp_path, f"delta{shard}")
            base_crl, delta_crl = x509.load_der_x509_crl(full.data), x509.load_der_x509_crl(delta.data)
            assert delta_base(delta_crl) == crl_number(base_crl)
            members = [c for c in certs if layout.shard_for(c.serial_number) == shard]
            assert set(listed(delta_crl)) == {c.serial_number for c in revoked if c in members}
            crls = pem_file(tmp_path / f"crls{shard}.pem", base_crl, delta_crl)
            for cert in members:
                code, output = await openssl(
                    "verify", "-crl_check", "-use_deltas", "-CAfile", str(chain), "-CRLfile", crls,
                    pem_file(tmp_path / "cert.pem", cert),
                )  # fmt: skip
                if cert in revoked:
                    assert code != 0 and "certificate revoked" in output, output
                else:
                    assert code == 0, output
            # As a CDN in front of the bucket sees them (https://crl.example.test/pki/crl/ -> bucket/pki/crl/).
            async with httpx.AsyncClient(timeout=10) as cdn:
                response = await cdn.get(f"{s3_server.endpoint_url}/{bucket}/pki/crl/issuing-ca-{shard}-delta.crl")
            assert response.status_code == 200 and response.headers["content-type"] == CRL_TYPE
            assert "max-age=60" in response.headers["cache-control"]
            assert parsedate_to_datetime(response.headers["expires"]) == delta_crl.next_update_utc
            number = crl_number(delta_crl)
            assert await store.head(crl_layout.numbered_key(ISSUING, shard, number, delta=True)) is not None
        assert await store.get(crl_layout.full_key(ROOT)) is not None
        # The public listener serves the bucket's CRLs too (the CDN is the usual path).
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=CRLApp(store)), base_url="http://crl.test"
        ) as http:
            served = await http.get("/crl/issuing-ca-1.crl")
        assert served.status_code == 200 and served.headers["content-type"] == CRL_TYPE
    finally:
        await store.close()
        rt.close()


class CompetingStore:
    """Another publisher writes ``competitor`` at ``key`` right after the ``race_on_get``-th read of it answers."""

    def __init__(self, inner: S3Store, key: str, competitor: bytes, race_on_get: int) -> None:
        self.inner, self.key, self.competitor, self.race_on_get = inner, key, competitor, race_on_get
        self.gets = 0

    async def put(self, key: str, data: bytes, **kwargs: Any) -> str:
        return await self.inner.put(key, data, **kwargs)

    async def get(self, key: str) -> StoredObject | None:
        answer = await self.inner.get(key)
        if key == self.key:
            self.gets += 1
            if self.gets == self.race_on_get:
                await self.inner.put(key, self.competitor, content_type=CRL_TYPE)
        return answer

    async def head(self, key: str) -> ObjectHead | None:
        return await self.inner.head(key)


async def test_on_s3_the_conditional_write_keeps_a_racing_higher_number_and_an_outage_is_survived(
    ca_config: Config, s3_server: S3Server, fake_clock: FakeClock
) -> None:
    rt = open_runtime(ca_config, fake_clock)
    bucket = s3_server.new_bucket()
    sleep = RecordingSleep()
    key = crl_layout.full_key(ISSUING)
    try:
        issuing = next(i for i in await rt.view.issuers() if i.issuer_id == ISSUING)
        assert issuing.key_ref is not None
        now = fake_clock.now()
        competitor = build_crl(
            issuing.cert, open_key(issuing.key_ref), [], number=10**40, this_update=now,
            next_update=now + datetime.timedelta(days=1),
            extra_extensions=[issuing_distribution_point(issuing.crl_url, only_user_certs=True, only_ca_certs=False)],
        )  # fmt: skip
        async with FaultyProxy(s3_server.port, []) as proxy:
            store = S3Store(
                bucket, endpoint_url=f"http://127.0.0.1:{proxy.port}", region=s3_server.region, sleep=sleep, attempts=2
            )
            try:

                def publisher(on: ObjectStore, registry: CollectorRegistry | None = None) -> Publisher:
                    return make_publisher(rt, on, fake_clock, registry)

                steady = publisher(store)
                await steady.publish_all()
                numbers = [crl_number(x509.load_der_x509_crl(await data(store, key)))]

                proxy.down = True  # the endpoint is unreachable
                fake_clock.advance(60)
                assert await steady.publish_all() == []
                assert steady.last_error is not None and "after 2 attempts" in steady.last_error
                proxy.down = False
                fake_clock.advance(60)
                await steady.publish_all()
                assert steady.last_error is None
                numbers.append(crl_number(x509.load_der_x509_crl(await data(store, key))))
                assert all(a < b for a, b in itertools.pairwise(numbers))

                # Another publisher stores a higher number after the storer read the stable key: S3's
                # If-Match refuses our write, and nothing of ours is published.
                registry = CollectorRegistry()
                racing = publisher(CompetingStore(store, key, competitor, race_on_get=2), registry)
                assert [p.issuer_id for p in await racing.publish_all()] == [ROOT]
                assert racing.last_error is not None and ISSUING in racing.last_error
                labels = {"issuer": ISSUING, "kind": "full", "result": "refused"}
                assert registry.get_sample_value("crl_publishes_total", labels) == 1
                assert await data(store, key) == competitor
            finally:
                await store.close()
    finally:
        rt.close()


async def data(store: ObjectStore, key: str) -> bytes:
    obj = await store.get(key)
    assert obj is not None, key
    return obj.data
