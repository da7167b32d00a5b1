"""The wall time of ``Clock``, and that the responder's cache reads it from the clock it is given."""

from __future__ import annotations

import datetime
import time
from typing import cast

from responders.source import CachingSource, StoreSource
from responders.store import ResponseStore, StoredResponse
from revocation.clock import FakeClock, SystemClock

START = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)


def test_fake_wall_time_is_now_as_epoch_seconds_and_moves_with_advance() -> None:
    clock = FakeClock(START)
    assert clock.time() == START.timestamp()
    mono = clock.monotonic()

    clock.advance(2.5)

    assert clock.time() == START.timestamp() + 2.5
    assert clock.time() == clock.now().timestamp()
    assert clock.monotonic() == mono + 2.5


def test_system_wall_time_is_the_epoch_time() -> None:
    clock = SystemClock()
    before = time.time()
    read = clock.time()
    after = time.time()
    assert before <= read <= after
    assert abs(read - clock.now().timestamp()) < 5


class OneChangeStore:
    """A response store whose change feed holds one response."""

    def __init__(self) -> None:
        self.change = StoredResponse("ca", 7, b"der", "good", 100, 10**10, 50, 1, change_id=3)

    async def changes(self, after: int, limit: int) -> list[StoredResponse]:
        return [self.change] if after < self.change.change_id else []

    async def last_change(self) -> int:
        return self.change.change_id


async def test_the_cache_stamps_progress_and_syncs_with_the_clock_it_is_given() -> None:
    clock = FakeClock(START)
    store = cast(ResponseStore, OneChangeStore())
    cache = CachingSource(StoreSource(store), store, 10, clock=clock.time, monotonic=clock.monotonic)
    applied: list[tuple[int, float]] = []
    cache.on_applied = lambda position, at: applied.append((position, at))
    clock.advance(30)

    assert await cache.sync_once() == 1

    # The fake clock stands in 2026-03; the real one would stamp today.
    assert applied == [(3, START.timestamp() + 30)]
    assert cache.last_sync == clock.monotonic()
    clock.advance(4)
    assert await cache.sync_once() == 0
    assert applied == [(3, START.timestamp() + 30)]  # nothing new applied: nothing reported
    assert cache.last_sync == clock.monotonic()
