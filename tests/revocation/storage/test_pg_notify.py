"""LISTEN/NOTIFY on PostgreSQL: appends and response writes wake followers in other processes.

A real cluster; the listener's connection is killed from the server side, and pointed
at a port where nothing listens, to see it come back and say so without its DSN.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from pca.schemas import PG_SCHEMAS
from responders.store import StoredResponse
from responders.store.postgres import PostgresResponseStore
from revocation.clock import FakeClock
from revocation.errors import IntegrityError
from revocation.eventlog import NewEvent
from revocation.events import CertificateRevoked
from revocation.storage.postgres.db import EVENTS_CHANNEL, RESPONSES_CHANNEL
from revocation.storage.postgres.log import PostgresEventLog
from revocation.storage.postgres.notify import PostgresListener
from revocation.storage.postgres.projection import apply_pg, clear_pg
from tests.support import events
from tests.support.ports import free_port

T0 = datetime.datetime(2026, 3, 1, 12, tzinfo=datetime.UTC)
CA = "test-ca"


def issued(serial: int) -> NewEvent:
    event = events.issued(serial, CA, subject=f"CN={serial:x}", not_before=T0, not_after=T0)
    return events.new(event, 0, "tester", "r")


def response(serial: int, source_seq: int) -> StoredResponse:
    return StoredResponse(CA, serial, b"der", "good", 1000, 4600, 2800, source_seq)


class Heard:
    """Counts a channel's wake-ups and lets a test wait for the next one."""

    def __init__(self) -> None:
        self.count = 0
        self._event = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self._event.set()

    async def next(self, within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            await self._event.wait()
        self._event.clear()

    async def nothing_within(self, seconds: float) -> bool:
        self._event.clear()
        await asyncio.sleep(seconds)
        return not self._event.is_set()


@pytest.fixture
async def log(postgres_database: str) -> AsyncIterator[PostgresEventLog]:
    log = await PostgresEventLog.open(
        postgres_database, FakeClock(T0), project=apply_pg, clear=clear_pg, schemas=PG_SCHEMAS
    )
    try:
        yield log
    finally:
        await log.close()


async def started(listener: PostgresListener) -> asyncio.Task[None]:
    task = asyncio.create_task(listener.run())
    async with asyncio.timeout(5):
        await listener.wait_connected()
    return task


async def stop(listener: PostgresListener, task: asyncio.Task[None]) -> None:
    await listener.close()
    await asyncio.wait_for(task, timeout=5)
    assert not listener.connected


async def test_appends_and_response_writes_notify_with_their_last_position(
    postgres_database: str, log: PostgresEventLog
) -> None:
    # A plain LISTEN of our own sees the payloads; the listener wakes its subscribers.
    payloads: list[tuple[str, str]] = []
    spy = await asyncpg.connect(postgres_database)
    for channel in (EVENTS_CHANNEL, RESPONSES_CHANNEL):
        await spy.add_listener(channel, lambda _c, _p, ch, payload: payloads.append((ch, payload)))
    listener = PostgresListener(postgres_database, [EVENTS_CHANNEL, RESPONSES_CHANNEL])
    events, responses = Heard(), Heard()
    listener.subscribe(EVENTS_CHANNEL, events)
    listener.subscribe(RESPONSES_CHANNEL, responses)
    task = await started(listener)
    store = PostgresResponseStore(log.pool)
    try:
        await log.append([issued(1), issued(2)])
        await events.next()
        await store.put([response(1, 2), response(2, 2)], "presigner", 2, "t")
        await responses.next()
        # Nothing committed, nothing said: a failed append, a put that wrote nothing.
        bad = NewEvent(CertificateRevoked(CA, "99", "keyCompromise", T0), 0, "tester", "r")
        with pytest.raises(IntegrityError):
            await log.append([bad])
        await store.put([response(1, 1)], "stale", 1, "t")
        assert await events.nothing_within(0.3)
        assert await responses.nothing_within(0.01)
        await log.append([issued(3)])
        await events.next()
        await asyncio.sleep(0.1)
        assert payloads == [(EVENTS_CHANNEL, "2"), (RESPONSES_CHANNEL, "2"), (EVENTS_CHANNEL, "3")]
    finally:
        await spy.close()
        await stop(listener, task)


async def test_a_failing_callback_does_not_silence_the_others(postgres_database: str, log: PostgresEventLog) -> None:
    listener = PostgresListener(postgres_database, [EVENTS_CHANNEL])

    def broken() -> None:
        raise RuntimeError("follower bug")

    heard = Heard()
    listener.subscribe(EVENTS_CHANNEL, broken)
    listener.subscribe(EVENTS_CHANNEL, heard)
    task = await started(listener)
    try:
        await heard.next()  # the wake-up every subscriber gets on connecting
        await log.append([issued(1)])
        await heard.next()
    finally:
        await stop(listener, task)


async def test_the_listener_reconnects_when_its_connection_is_killed_and_wakes_followers(
    postgres_database: str, log: PostgresEventLog, caplog: pytest.LogCaptureFixture
) -> None:
    listener = PostgresListener(postgres_database, [EVENTS_CHANNEL], application_name="pca-listener-test")
    heard = Heard()
    listener.subscribe(EVENTS_CHANNEL, heard)
    task = await started(listener)
    try:
        await heard.next()
        admin = await asyncpg.connect(postgres_database)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                "pca-listener-test",
            )
        finally:
            await admin.close()
        assert killed == 1
        # Back within the first backoff step; it wakes followers, since notifications meanwhile are lost.
        await heard.next(within=5)
        async with asyncio.timeout(5):
            await listener.wait_connected()
        await log.append([issued(1)])
        await heard.next()
        assert any("LISTEN connection to PostgreSQL lost" in r.getMessage() for r in caplog.records)
    finally:
        await stop(listener, task)


async def test_an_unreachable_server_is_retried_with_backoff_and_the_warnings_hide_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    password = "s3cret-Pa55"
    listener = PostgresListener(f"postgresql://u:{password}@127.0.0.1:{free_port()}/x", [EVENTS_CHANNEL])
    caplog.set_level(logging.WARNING, logger="pca.pg_notify")
    task = asyncio.create_task(listener.run())
    await asyncio.sleep(1.6)  # attempts at about 0, 0.2, 0.6 and 1.4 s
    assert not listener.connected
    warnings = [r.getMessage() for r in caplog.records if r.name == "pca.pg_notify"]
    assert len(warnings) >= 3
    assert [w.rsplit("retrying in ", 1)[1] for w in warnings[:3]] == ["0.2 s", "0.4 s", "0.8 s"]
    assert all(password not in w and "postgresql://" not in w for w in warnings)
    started_close = time.monotonic()
    await stop(listener, task)
    assert time.monotonic() - started_close < 1


def test_a_listener_refuses_unknown_channels_and_bad_settings() -> None:
    listener = PostgresListener("postgresql://127.0.0.1/x", [EVENTS_CHANNEL])
    with pytest.raises(ValueError, match="pca_responses"):
        listener.subscribe(RESPONSES_CHANNEL, lambda: None)
    with pytest.raises(ValueError, match="channel"):
        PostgresListener("postgresql://127.0.0.1/x", ["Bad Channel; DROP"])
    with pytest.raises(ValueError, match="backoff"):
        PostgresListener("postgresql://127.0.0.1/x", [EVENTS_CHANNEL], min_backoff=0)
