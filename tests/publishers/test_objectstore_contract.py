"""The ObjectStore contract, run against the directory store and the S3 store alike.

S3 is a real S3-speaking server (moto in server mode, started by the ``s3_server``
fixture on a free port); aioboto3 talks HTTP to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from publishers.objectstore import DirectoryStore, ObjectStore, PreconditionFailed
from publishers.storer import CRL_TYPE
from tests.support.moto import s3_store


@pytest.fixture(params=["directory", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    if request.param == "directory":
        yield DirectoryStore(tmp_path / "store")
        return
    s3 = s3_store(request.getfixturevalue("s3_server"))
    try:
        yield s3
    finally:
        await s3.close()


# --- the contract every object store keeps ---------------------------------------------------------------


async def test_objects_round_trip_with_their_headers_and_metadata(store: ObjectStore) -> None:
    expires = "Thu, 01 Jan 2099 00:00:00 GMT"
    etag = await store.put(
        "a/b.crl",
        b"first",
        content_type=CRL_TYPE,
        cache_control="public, max-age=60",
        expires=expires,
        metadata={"crl-number": "7", "log-position": "12"},
    )
    obj = await store.get("a/b.crl")
    assert obj is not None
    assert (obj.key, obj.data, obj.etag, obj.content_type, obj.cache_control) == (
        "a/b.crl",
        b"first",
        etag,
        CRL_TYPE,
        "public, max-age=60",
    )
    assert parsedate_to_datetime(obj.expires) == parsedate_to_datetime(expires)
    assert dict(obj.metadata) == {"crl-number": "7", "log-position": "12"}
    parsedate_to_datetime(obj.last_modified)
    head = await store.head("a/b.crl")
    assert head is not None and (head.etag, head.size, dict(head.metadata)) == (etag, 5, dict(obj.metadata))
    assert await store.get("a/missing.crl") is None
    assert await store.head("missing.crl") is None
    assert await store.get("nowhere/at/all.crl") is None


async def test_an_unconditional_write_replaces_the_object_and_its_etag(store: ObjectStore) -> None:
    first = await store.put("x.crl", b"one", content_type=CRL_TYPE, metadata={"crl-number": "1"})
    second = await store.put("x.crl", b"two" * 1000, content_type=CRL_TYPE)
    assert first != second
    obj = await store.get("x.crl")
    assert obj is not None and (obj.data, obj.etag, dict(obj.metadata)) == (b"two" * 1000, second, {})


async def test_conditional_writes(store: ObjectStore) -> None:
    first = await store.put("x.crl", b"one", content_type=CRL_TYPE, if_none_match=True)
    with pytest.raises(PreconditionFailed):
        await store.put("x.crl", b"two", content_type=CRL_TYPE, if_none_match=True)
    second = await store.put("x.crl", b"two", content_type=CRL_TYPE, if_match=first)
    assert second != first
    with pytest.raises(PreconditionFailed):
        await store.put("x.crl", b"three", content_type=CRL_TYPE, if_match=first)  # stale ETag
    with pytest.raises(PreconditionFailed):
        await store.put("new.crl", b"one", content_type=CRL_TYPE, if_match=first)  # nothing to match
    obj = await store.get("x.crl")
    assert obj is not None and (obj.data, obj.etag) == (b"two", second)
    assert await store.get("new.crl") is None


@pytest.mark.parametrize("key", ["../escape.crl", "/etc/passwd", "a//b.crl", "a/./b.crl", "a/..", "", "a/"])
async def test_keys_that_are_not_plain_relative_paths_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="not a plain relative path"):
        await store.put(key, b"x", content_type=CRL_TYPE)
    with pytest.raises(ValueError, match="not a plain relative path"):
        await store.get(key)
    with pytest.raises(ValueError, match="not a plain relative path"):
        await store.head(key)


@pytest.mark.parametrize("metadata", [{"Upper": "x"}, {"a b": "x"}, {"ok": "line\nbreak"}, {"ok": "é"}])
async def test_metadata_every_store_can_keep_is_enforced(store: ObjectStore, metadata: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="metadata"):
        await store.put("m.crl", b"x", content_type=CRL_TYPE, metadata=metadata)
    assert await store.head("m.crl") is None


async def test_a_large_object_round_trips(store: ObjectStore) -> None:
    body = bytes(range(256)) * 40_000  # 10 MB, a 250,000-entry CRL
    etag = await store.put("big.crl", body, content_type=CRL_TYPE, if_none_match=True)
    obj = await store.get("big.crl")
    assert obj is not None and obj.data == body and obj.etag == etag


async def test_of_concurrent_writers_with_the_same_if_match_exactly_one_wins(tmp_path: Path) -> None:
    # The directory store only: moto checks If-Match and then writes without a lock, so two
    # concurrent conditional writes can both succeed there (S3 itself answers one of them 412 or 409).
    store = DirectoryStore(tmp_path / "store")
    etag = await store.put("race.crl", b"base", content_type=CRL_TYPE)
    for round_ in range(10):
        bodies = [f"round {round_} writer {i}".encode() for i in range(4)]
        results = await asyncio.gather(
            *(store.put("race.crl", body, content_type=CRL_TYPE, if_match=etag) for body in bodies),
            return_exceptions=True,
        )
        winners = [(body, r) for body, r in zip(bodies, results, strict=True) if isinstance(r, str)]
        losers = [r for r in results if isinstance(r, PreconditionFailed)]
        assert len(winners) == 1 and len(losers) == len(bodies) - 1, results
        stored = await store.get("race.crl")
        assert stored is not None and (stored.data, stored.etag) == winners[0]
        etag = winners[0][1]
