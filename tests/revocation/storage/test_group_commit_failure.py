"""A group commit that fails as a whole (the disk full, say) fails every append of it, saying why.

The revocations waiting on such a commit were never acknowledged: none of them may reach the log,
none may use up a seq, and the next commit works as if they had never been tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

from pca.runtime import Runtime
from revocation.errors import StorageError
from revocation.eventlog import RecordedEvent
from tests.support.events import issued, new

FAIL_COMMITS = (
    "CREATE TRIGGER no_space BEFORE UPDATE ON log_head BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
)


def raw(runtime: Runtime, sql: str) -> None:
    with contextlib.closing(sqlite3.connect(runtime.db.path)) as conn:
        conn.execute(sql)
        conn.commit()


async def test_a_failed_group_commit_fails_every_append_of_it_and_leaves_no_trace(runtime: Runtime) -> None:
    head = await runtime.log.head()
    batches: list[list[RecordedEvent]] = []
    runtime.on_commit(batches.append)
    raw(runtime, FAIL_COMMITS)

    results = await asyncio.gather(
        *(runtime.log.append([new(issued(0x5000 + i))]) for i in range(40)), return_exceptions=True
    )

    assert all(isinstance(r, StorageError) for r in results), results
    for r in results:
        assert f"writing to {runtime.db.path}" in str(r)
        assert "database or disk is full" in str(r)
    assert await runtime.log.head() == head
    assert await runtime.log.read(head, 100) == []
    assert batches == []  # nobody was told of events that are not in the log

    raw(runtime, "DROP TRIGGER no_space")
    again = await asyncio.gather(*(runtime.log.append([new(issued(0x5000 + i))]) for i in range(40)))

    assert sorted(rec.seq for batch in again for rec in batch) == list(range(head + 1, head + 41))
    assert await runtime.log.verify_chain() == head + 40
    assert sum(len(b) for b in batches) == 40
