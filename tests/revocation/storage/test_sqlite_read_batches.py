"""Reads on SQLite go to the reader thread in batches; each keeps its own answer.

Reads that arrive while others run go together (one hand-off to the thread and back for all):
what a reader gets must not depend on which others shared its batch.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from revocation.errors import StorageError
from revocation.storage.sqlite.db import SQLiteDatabase


@pytest.fixture
def db(tmp_path: Path) -> SQLiteDatabase:
    database = SQLiteDatabase(tmp_path / "reads.db")

    def setup(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(k, f"v{k}") for k in range(100)])

    asyncio.run(database.write(setup))
    return database


def value(k: int) -> object:
    def q(conn: sqlite3.Connection) -> str | None:
        row = conn.execute("SELECT v FROM t WHERE k = ?", (k,)).fetchone()
        return None if row is None else str(row[0])

    return q


def bad_sql(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT x FROM nowhere")


def not_sqlite(conn: sqlite3.Connection) -> None:
    raise ValueError("a reader's own error")


async def test_concurrent_reads_each_get_their_own_answer_or_error(db: SQLiteDatabase) -> None:
    threads: set[str] = set()

    def where(conn: sqlite3.Connection) -> str:
        threads.add(threading.current_thread().name)
        return "here"

    reads = [db.read(value(k)) for k in range(100)]  # type: ignore[arg-type]
    reads.insert(10, db.read(bad_sql))
    reads.insert(50, db.read(not_sqlite))
    reads.insert(70, db.read(where))
    results = await asyncio.gather(*reads, return_exceptions=True)

    assert isinstance(results[10], StorageError)
    assert f"reading {db.path}: no such table: nowhere" == str(results[10])
    assert isinstance(results[50], ValueError)
    assert results[70] == "here"
    answers = [r for i, r in enumerate(results) if i not in (10, 50, 70)]
    assert answers == [f"v{k}" for k in range(100)]
    assert len(threads) == 1 and next(iter(threads)).startswith("sqlite-reader")
    # Nothing of those failures sticks: the next reads work.
    assert await db.read(value(7)) == "v7"  # type: ignore[arg-type]
    db.close()


async def test_a_cancelled_read_leaves_the_others_of_its_batch_alone(db: SQLiteDatabase) -> None:
    gate = threading.Event()

    def slow(conn: sqlite3.Connection) -> str:
        gate.wait(10)
        return "slow"

    first = asyncio.ensure_future(db.read(slow))
    await asyncio.sleep(0.05)  # on the thread: what follows queues for the next batch
    queued = [asyncio.ensure_future(db.read(value(k))) for k in range(5)]  # type: ignore[arg-type]
    await asyncio.sleep(0)
    queued[2].cancel()
    gate.set()

    assert await first == "slow"
    assert await asyncio.gather(queued[0], queued[1], queued[3], queued[4]) == ["v0", "v1", "v3", "v4"]
    assert queued[2].cancelled()
    assert await db.read(value(9)) == "v9"  # type: ignore[arg-type]
    db.close()


def test_one_database_serves_one_event_loop_after_another(db: SQLiteDatabase) -> None:
    async def some() -> list[object]:
        return list(await asyncio.gather(*(db.read(value(k)) for k in range(20))))  # type: ignore[arg-type]

    assert asyncio.run(some()) == [f"v{k}" for k in range(20)]
    assert asyncio.run(some()) == [f"v{k}" for k in range(20)]
    db.close()


async def test_a_read_after_close_fails_rather_than_waits(db: SQLiteDatabase) -> None:
    assert await db.read(value(1)) == "v1"  # type: ignore[arg-type]
    db.close()
    with pytest.raises(RuntimeError, match="shutdown"):
        async with asyncio.timeout(5):
            await db.read(value(1))  # type: ignore[arg-type]
