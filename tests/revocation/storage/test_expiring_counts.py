"""``expiring_counts``: the leaf certificates near expiry that ``certificates_expiring`` exports, per
issuer, read from the status projection on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pca.schemas import PG_SCHEMAS, SQLITE_SCHEMAS
from revocation.clock import FakeClock
from revocation.eventlog import EventLog
from revocation.projection import StatusView
from revocation.storage.postgres.log import PostgresEventLog
from revocation.storage.postgres.projection import PostgresStatusView, apply_pg, clear_pg
from revocation.storage.sqlite.db import SQLiteDatabase
from revocation.storage.sqlite.log import SQLiteEventLog
from revocation.storage.sqlite.projection import SQLiteStatusView, apply_sqlite, clear_sqlite
from tests.support.events import T0, issued, new, revoked
from tests.support.postgres import create_database, drop_database

DAY = datetime.timedelta(days=1)


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[EventLog, StatusView]]:
    clock = FakeClock(T0)
    if request.param == "sqlite":
        db = SQLiteDatabase(tmp_path / "log.db")
        db.migrate_sync(SQLITE_SCHEMAS)
        try:
            yield SQLiteEventLog(db, clock, project=apply_sqlite, clear=clear_sqlite), SQLiteStatusView(db)
        finally:
            db.close()
    else:
        server_dsn: str = request.getfixturevalue("postgres_dsn")
        dsn = await create_database(server_dsn)
        log = await PostgresEventLog.open(dsn, clock, project=apply_pg, clear=clear_pg, schemas=PG_SCHEMAS)
        try:
            yield log, PostgresStatusView(log.pool)
        finally:
            await log.close()
            await drop_database(server_dsn, dsn)


async def test_unrevoked_unexpired_certificates_are_counted_per_issuer_and_window(
    store: tuple[EventLog, StatusView],
) -> None:
    log, view = store
    await log.append(
        [
            new(issued(1, not_after=T0 - DAY)),  # expired: not counted
            new(issued(2, not_after=T0 + 2 * DAY)),  # within 7 days (and 30)
            new(issued(3, not_after=T0 + 7 * DAY)),  # on the 7-day bound: within it
            new(issued(4, not_after=T0 + 20 * DAY)),  # within 30 days only
            new(issued(5, not_after=T0 + 3 * DAY)),  # revoked below: not counted
            new(issued(6, not_after=T0 + 90 * DAY)),  # far off
            new(issued(7, issuer="other-ca", not_after=T0 + 29 * DAY)),
        ]
    )
    await log.append([new(revoked(5), expected_version=1)])
    now = int(T0.timestamp())
    counts = await view.expiring_counts(now, now + 7 * 86400, now + 30 * 86400)
    assert counts == {"test-ca": (2, 3), "other-ca": (0, 1)}
    # An issuer with nothing near expiry is simply absent (the exporter reports 0 for it).
    later = now + 100 * 86400
    assert await view.expiring_counts(later, later + 7 * 86400, later + 30 * 86400) == {}
