"""Helpers of the storage contract suites, the same for SQLite and PostgreSQL.

SQL behind a backend's back: statements use SQLite's ``?`` placeholders; on PostgreSQL they are numbered as the
backends' shared statements are (``revocation.storage.postgres.db.pg_sql``). Each call opens its
own connection and commits, as an intruder or an operator's manual edit would.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from revocation.storage.postgres.db import pg_sql

Raw = Callable[..., Awaitable[list[tuple[Any, ...]]]]
RawMany = Callable[[str, list[tuple[Any, ...]]], Awaitable[None]]


def sqlite_raw(path: Path) -> Raw:
    async def raw(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            rows = conn.execute(sql, params).fetchall()
            conn.commit()
            return rows

    return raw


def sqlite_raw_many(path: Path) -> RawMany:
    """Like ``sqlite_raw``, the statement once per row of parameters."""

    async def raw_many(sql: str, rows: list[tuple[Any, ...]]) -> None:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.executemany(sql, rows)
            conn.commit()

    return raw_many


def pg_raw(dsn: str) -> Raw:
    async def raw(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [tuple(r) for r in await conn.fetch(pg_sql(sql), *params)]
        finally:
            await conn.close()

    return raw


def pg_raw_many(dsn: str) -> RawMany:
    """Like ``pg_raw``, the statement once per row of parameters."""

    async def raw_many(sql: str, rows: list[tuple[Any, ...]]) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.executemany(pg_sql(sql), rows)
        finally:
            await conn.close()

    return raw_many


async def follow_while_writing(
    writers: Sequence[Coroutine[Any, Any, None]], read_after: Callable[[int], Awaitable[list[int]]]
) -> list[int]:
    """Run ``writers`` concurrently while a follower polls ``read_after(last)`` (the positions after
    ``last``, in order, a few at a time); returns every position the follower saw.

    Gap safety: each position must be the very next one. If position 8 could commit before 7,
    the follower would move past 7 and never see it.
    """
    done = asyncio.Event()
    seen: list[int] = []

    async def follower() -> None:
        last = 0
        while True:
            finished = done.is_set()
            batch = await read_after(last)
            for position in batch:
                assert position == last + 1, f"follower at {last} got {position}"
                seen.append(position)
                last = position
            if finished and not batch:
                return
            await asyncio.sleep(0)

    follow = asyncio.create_task(follower())
    await asyncio.wait_for(asyncio.gather(*writers), timeout=60)
    done.set()
    await asyncio.wait_for(follow, timeout=30)
    return seen
