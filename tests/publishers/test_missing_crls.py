"""CRLs that disappear from the store (an emptied bucket) are noticed, reported and republished, and
the audit checkpoint published beside them is written back.

S3 is a real S3-speaking server (moto in server mode); the bucket is emptied with the S3 API.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aioboto3
import httpx
import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from pca.runtime import Runtime
from publishers.checkpointer import LATEST_KEY, Checkpointer, numbered_key
from publishers.objectstore import DirectoryStore, ObjectHead, StoredObject
from publishers.publisher import Publisher
from publishers.s3store import S3Store
from publishers.storer import CRL_TYPE, Storer
from revocation import crl_layout
from revocation.clock import FakeClock
from revocation.errors import StorageError
from tests.support.ca import ISSUING, ROOT
from tests.support.crl import crl_number
from tests.support.moto import S3Server, s3_store


class WritesFailing:
    """The S3 store, with writes failing while ``failing`` is set (an outage of the write path)."""

    def __init__(self, inner: S3Store) -> None:
        self.inner = inner
        self.failing = False

    async def put(self, key: str, data: bytes, **kwargs: Any) -> str:
        if self.failing:
            raise StorageError(f"writing {key}: HTTP 503 ServiceUnavailable (after 5 attempts)")
        return await self.inner.put(key, data, **kwargs)

    async def get(self, key: str) -> StoredObject | None:
        return await self.inner.get(key)

    async def head(self, key: str) -> ObjectHead | None:
        return await self.inner.head(key)


CHECK = 60.0  # seconds between the publisher's checks of the store, below every other interval here


def publisher_for(rt: Runtime, store: Any, *, deltas: bool, restore_also: Any = None) -> Publisher:
    layout = dataclasses.replace(rt.config.crl_layout, deltas=deltas)
    return Publisher(
        rt.view,
        Storer(store, rt.view, layout=layout),
        rt.clock,
        CollectorRegistry(),
        validity_seconds=86400,
        interval_seconds=6 * 3600,
        after_revocation_seconds=2.0,
        delta_interval_seconds=900 if deltas else 0,
        check_seconds=CHECK,
        restore_also=restore_also,
    )


async def empty_bucket(server: S3Server, bucket: str) -> int:
    async with aioboto3.Session().client("s3", endpoint_url=server.endpoint_url, region_name=server.region) as s3:
        listing = await s3.list_objects_v2(Bucket=bucket)
        keys = [obj["Key"] for obj in listing.get("Contents", [])]
        for key in keys:
            await s3.delete_object(Bucket=bucket, Key=key)
    return len(keys)


async def fetch(server: S3Server, bucket: str, key: str) -> httpx.Response:
    """What a CDN in front of the bucket gets."""
    async with httpx.AsyncClient(timeout=10) as cdn:
        return await cdn.get(f"{server.endpoint_url}/{bucket}/crl/{key}")


@pytest.mark.parametrize("deltas", [True, False])
async def test_after_the_bucket_is_emptied_every_issuers_crls_come_back_the_roots_included(
    rt: Runtime, s3_server: S3Server, fake_clock: FakeClock, deltas: bool
) -> None:
    bucket = s3_server.new_bucket()
    s3 = s3_store(s3_server, bucket)
    store = WritesFailing(s3)
    keys = [crl_layout.full_key(ROOT), crl_layout.full_key(ISSUING)]
    if deltas:
        keys += [crl_layout.delta_key(ROOT), crl_layout.delta_key(ISSUING)]
    try:
        publisher = publisher_for(rt, store, deltas=deltas)
        await publisher.tick()
        assert publisher.last_error is None
        before: Mapping[str, int] = {}
        for key in keys:
            response = await fetch(s3_server, bucket, key)
            assert response.status_code == 200, key
            before = {**before, key: crl_number(x509.load_der_x509_crl(response.content))}

        assert await empty_bucket(s3_server, bucket) >= len(keys)
        store.failing = True  # the CRLs cannot be written back yet
        fake_clock.advance(CHECK)
        await publisher.tick()
        # Reported as long as they are missing (pca serve's /healthz shows this as the publisher's problem).
        assert publisher.last_error is not None
        for key in keys:
            assert f"{key}" in publisher.last_error and "missing from the store" in publisher.last_error
            assert (await fetch(s3_server, bucket, key)).status_code == 404

        store.failing = False
        fake_clock.advance(CHECK)
        await publisher.tick()
        assert publisher.last_error is None
        for key in keys:
            response = await fetch(s3_server, bucket, key)
            assert response.status_code == 200 and response.headers["content-type"] == CRL_TYPE, key
            assert crl_number(x509.load_der_x509_crl(response.content)) > before[key]
    finally:
        await s3.close()


async def test_while_every_crl_is_in_place_the_check_publishes_nothing(
    rt: Runtime, s3_server: S3Server, fake_clock: FakeClock
) -> None:
    store = s3_store(s3_server)
    try:
        publisher = publisher_for(rt, store, deltas=True)
        assert {p.issuer_id for p in await publisher.tick()} == {ROOT, ISSUING}
        fake_clock.advance(CHECK)
        assert await publisher.tick() == []
        assert publisher.last_error is None
    finally:
        await store.close()


@pytest.mark.parametrize("where", ["directory", "s3"])
async def test_after_the_store_is_emptied_the_last_audit_checkpoint_is_written_back_without_waiting_for_the_log(
    rt: Runtime, fake_clock: FakeClock, tmp_path: Path, request: pytest.FixtureRequest, where: str
) -> None:
    store: Any
    if where == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        bucket = server.new_bucket()
        store = s3_store(server, bucket)

        async def read(key: str) -> bytes | None:
            response = await fetch(server, bucket, key)
            return response.content if response.status_code == 200 else None

        async def empty() -> None:
            await empty_bucket(server, bucket)
    else:
        store = DirectoryStore(tmp_path / "crl")

        async def read(key: str) -> bytes | None:
            path = tmp_path / "crl" / key
            return path.read_bytes() if path.is_file() else None

        async def empty() -> None:
            shutil.rmtree(tmp_path / "crl")

    checkpointer = Checkpointer(rt.log, rt.view, store, rt.clock, CollectorRegistry(),
                                key_dir=rt.config.data_dir / "keys", key_algorithm=rt.config.key_algorithm,
                                every_events=1000, interval_seconds=3600)  # fmt: skip
    try:
        publisher = publisher_for(rt, store, deltas=False, restore_also=checkpointer.restore_missing)
        await publisher.tick()
        checkpoint = await checkpointer.tick()
        assert checkpoint is not None
        written = await read(LATEST_KEY)
        assert written is not None and await read(numbered_key(checkpoint.seq)) == written

        await empty()
        fake_clock.advance(CHECK)
        assert await checkpointer.tick() is None  # the log has not moved: no new checkpoint is due
        await publisher.tick()
        # Auditors fetching latest.json find the last checkpoint again, and the CRLs are back beside it.
        assert await read(LATEST_KEY) == written
        assert await read(numbered_key(checkpoint.seq)) == written
        assert await read(crl_layout.full_key(ISSUING)) is not None and publisher.last_error is None
    finally:
        if where == "s3":
            await store.close()
