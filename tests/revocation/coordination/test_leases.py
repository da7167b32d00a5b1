"""LeaseKeeper on the real SQLite lease table: exactly one holder works, and it stops in time.

Each keeper gets its own handle on one SQLite file, as separate processes would. The
lease's time to live is short (renewals every 0.1 s) so that the tests run quickly;
where the outcome must not depend on the machine's speed, the wall clock is frozen
(a lease then never expires in the table by itself) or the keeper's own monotonic
clock is a fake that only the test moves. Waits are bounded with generous deadlines;
nothing asserts how long something took.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pca.schemas import SQLITE_SCHEMAS
from revocation.coordination.holders import holder_is_dead, lease_holder, parse_holder, this_machine
from revocation.coordination.leases import LeaseKeeper, LeaseLost
from revocation.errors import StorageError
from revocation.storage.sqlite.coordination import SQLiteCoordination
from revocation.storage.sqlite.db import SQLiteDatabase
from tests.support.processes import linux_proc, other_process

TTL = 0.3
NAME = "presigner"
WALL = 1_000_000.0  # a frozen wall clock: a lease taken at WALL never expires by itself
DEADLINE = 20.0  # seconds a bounded wait gives up after (never reached when things work)


class ManualClock:
    """A clock that moves only when the test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FlakyCoordination(SQLiteCoordination):
    """The real lease table behind a switch: ``broken`` makes every lease call fail as an
    unreachable database does; ``hold()`` makes the next attempts to take or renew it hang
    until ``let_go()``."""

    def __init__(self, db: SQLiteDatabase) -> None:
        super().__init__(db)
        self.broken = False
        self.attempts = 0
        self.refused = 0  # attempts that reached the table and were told someone else holds the lease
        self.failed = 0
        self.hanging = asyncio.Event()  # a lease call is waiting on the gate
        self._gate: asyncio.Event | None = None

    def hold(self) -> None:
        self._gate = asyncio.Event()
        self.hanging.clear()

    def let_go(self) -> None:
        if self._gate is not None:
            self._gate.set()
        self._gate = None

    def _pass(self) -> None:
        if self.broken:
            self.failed += 1
            raise StorageError("writing to the lease table: database is unreachable")

    async def try_lease(self, name: str, holder: str, ttl: float, now: float, *, replacing: str | None = None) -> bool:
        self.attempts += 1
        gate = self._gate
        if gate is not None:
            self.hanging.set()
            await gate.wait()
        self._pass()
        got = await super().try_lease(name, holder, ttl, now, replacing=replacing)
        if not got:
            self.refused += 1
        return got

    async def release_lease(self, name: str, holder: str) -> None:
        self._pass()
        await super().release_lease(name, holder)


class Work:
    """The work a lease protects: runs until ``finish`` is set (or it is cancelled)."""

    def __init__(self, fail: Exception | None = None, name: str = "", events: list[str] | None = None) -> None:
        self.name = name
        self.events = events if events is not None else []
        self.starts = 0
        self.stops = 0
        self.running = False
        self.finish = asyncio.Event()
        self._fail = fail

    async def __call__(self) -> None:
        self.starts += 1
        self.running = True
        self.events.append(f"{self.name} started")
        try:
            await self.finish.wait()
            if self._fail is not None:
                raise self._fail
        finally:
            self.running = False
            self.stops += 1
            self.events.append(f"{self.name} stopped")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "leases.db"
    db = SQLiteDatabase(path)
    db.migrate_sync(SQLITE_SCHEMAS)
    db.close()
    return path


@pytest.fixture
def handles(db_path: Path) -> Iterator[Callable[[], FlakyCoordination]]:
    """A new handle on the lease table for each process being simulated."""
    opened: list[SQLiteDatabase] = []

    def handle() -> FlakyCoordination:
        db = SQLiteDatabase(db_path)
        opened.append(db)
        return FlakyCoordination(db)

    try:
        yield handle
    finally:
        for db in opened:
            db.close()


def table(db_path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Read or change the lease table behind the keepers' backs."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        rows = conn.execute(sql, params).fetchall()
        conn.commit()
        return rows


def holder_in_table(db_path: Path) -> object:
    rows = table(db_path, "SELECT holder FROM leases WHERE name = ?", NAME)
    return rows[0][0] if rows else None


async def wait_until(what: str, check: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(*pairs: tuple[LeaseKeeper, Callable[[], Awaitable[None]]]) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run ``keeper.run(work)`` for each pair; cancel whatever is still running on the way out."""
    tasks = [asyncio.create_task(keeper.run(work)) for keeper, work in pairs]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def gauge(registry: CollectorRegistry, role: str = NAME) -> float | None:
    return registry.get_sample_value("role_lease_active", {"role": role})


def keeper(
    coord: FlakyCoordination,
    holder: str,
    *,
    monotonic: Callable[[], float] = time.monotonic,
    registry: CollectorRegistry | None = None,
) -> LeaseKeeper:
    """A keeper of the NAME lease whose wall clock is frozen at WALL."""
    return LeaseKeeper(
        coord, NAME, ttl=TTL, holder=holder, wall=ManualClock(WALL), monotonic=monotonic, registry=registry
    )


# --- tests ------------------------------------------------------------------------------------------------------


def test_a_lease_needs_a_positive_time_to_live(handles: Callable[[], FlakyCoordination]) -> None:
    for ttl in (0.0, -1.0):
        with pytest.raises(ValueError, match="positive"):
            LeaseKeeper(handles(), NAME, ttl=ttl)


async def test_of_two_keepers_on_one_lease_exactly_one_runs_its_work(
    handles: Callable[[], FlakyCoordination], db_path: Path
) -> None:
    coords = [handles(), handles()]
    registries = [CollectorRegistry(), CollectorRegistry()]
    keepers = [keeper(c, f"host:{i}", registry=r) for i, (c, r) in enumerate(zip(coords, registries, strict=True))]
    works = [Work(), Work()]
    async with running(*zip(keepers, works, strict=True)):
        await wait_until("one keeper to take the lease", lambda: any(k.active for k in keepers))
        winner = 0 if keepers[0].active else 1
        loser = 1 - winner
        # The standby keeps asking and keeps being refused while the holder renews.
        refused = coords[loser].refused
        await wait_until("five more refusals", lambda: coords[loser].refused >= refused + 5)
        assert [w.starts for w in works] == [1 if i == winner else 0 for i in range(2)]
        assert [k.active for k in keepers] == [i == winner for i in range(2)]
        assert [gauge(r) for r in registries] == [1.0 if i == winner else 0.0 for i in range(2)]
        assert holder_in_table(db_path) == keepers[winner].holder
        keepers[winner].check()
        with pytest.raises(LeaseLost, match="host:"):
            keepers[loser].check()


async def test_when_the_holders_work_ends_it_releases_and_the_standby_takes_over_at_once(
    handles: Callable[[], FlakyCoordination], db_path: Path
) -> None:
    # The wall clock is frozen: the first lease can never expire, so only a release lets the standby in.
    first, second = keeper(handles(), "host:1"), keeper(handles(), "host:2")
    first_work, second_work = Work(), Work()
    async with running((first, first_work)) as (first_run,):
        await wait_until("the first keeper to work", lambda: first_work.running)
        async with running((second, second_work)):
            first_work.finish.set()
            await first_run  # run() returns when the work ends by itself
            assert not first.active
            await wait_until("the standby to work", lambda: second_work.running)
            assert holder_in_table(db_path) == "host:2"
            assert first_work.starts == 1


async def test_work_that_fails_releases_the_lease_and_the_error_propagates(
    handles: Callable[[], FlakyCoordination], db_path: Path
) -> None:
    holder = keeper(handles(), "host:1")
    work = Work(fail=RuntimeError("the work broke"))
    async with running((holder, work)) as (task,):
        await wait_until("the work to start", lambda: work.running)
        assert holder_in_table(db_path) == "host:1"
        work.finish.set()
        with pytest.raises(RuntimeError, match="the work broke"):
            await task
    assert not holder.active
    assert holder_in_table(db_path) is None


async def test_a_keeper_stopped_from_outside_releases_the_lease(
    handles: Callable[[], FlakyCoordination], db_path: Path
) -> None:
    """A graceful stop (SIGTERM cancels the role's task) hands the lease over at once."""
    holder = keeper(handles(), "host:1")
    work = Work()
    async with running((holder, work)) as (task,):
        await wait_until("the work to start", lambda: work.running)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (work.running, work.stops, holder.active) == (False, 1, False)
    assert holder_in_table(db_path) is None


async def test_a_holder_that_cannot_renew_stops_when_its_lease_runs_out_by_its_own_clock_and_not_before(
    handles: Callable[[], FlakyCoordination], db_path: Path
) -> None:
    coord = handles()
    mono = ManualClock(100.0)
    registry = CollectorRegistry()
    holder = keeper(coord, "host:1", monotonic=mono, registry=registry)
    work = Work()
    async with running((holder, work)):
        await wait_until("the work to start", lambda: work.running)
        renewed = coord.attempts
        await wait_until("a renewal", lambda: coord.attempts > renewed)
        # Every renewal started at monotonic 100.0: by its own clock the lease is good until just before 100.3.
        coord.broken = True
        mono.now = 100.0 + TTL * 0.5
        failed = coord.failed
        await wait_until("three failed renewals", lambda: coord.failed >= failed + 3)
        assert work.running and holder.active and gauge(registry) == 1.0
        holder.check()  # still its lease by its own clock: it may write

        mono.now = 100.0 + TTL
        with pytest.raises(LeaseLost):
            holder.check()  # no write from here on, whether or not the work has stopped yet
        await wait_until("the work to stop", lambda: not work.running)
        assert (work.starts, work.stops, holder.active, gauge(registry)) == (1, 1, False, 0.0)

        # It never released (it could not), and when the database is back it carries on.
        assert holder_in_table(db_path) == "host:1"
        coord.broken = False
        await wait_until("the work to start again", lambda: work.running)
        assert work.starts == 2 and gauge(registry) == 1.0


async def test_a_holder_whose_renewal_hangs_stops_when_its_lease_runs_out_by_its_own_clock(
    handles: Callable[[], FlakyCoordination],
) -> None:
    """A database that does not answer (a network partition, a pool with no free connection)
    must not keep the holder working past its lease while it waits for the renewal."""
    coord = handles()
    mono = ManualClock(100.0)
    holder = keeper(coord, "host:1", monotonic=mono)
    work = Work()
    async with running((holder, work)):
        await wait_until("the work to start", lambda: work.running)
        coord.hold()
        await wait_until("a renewal to hang", coord.hanging.is_set)
        mono.now = 100.0 + TTL * 0.5
        await asyncio.sleep(TTL)  # a while, by the real clock, with the renewal hanging
        assert work.running and holder.active
        mono.now = 100.0 + TTL
        await wait_until("the work to stop", lambda: not work.running)
        assert not holder.active
        with pytest.raises(LeaseLost):
            holder.check()
        coord.let_go()


async def test_a_holder_whose_lease_was_taken_over_stops_at_its_next_renewal(
    handles: Callable[[], FlakyCoordination], db_path: Path
) -> None:
    """The holder was paused (its renewal held up) past its lease; meanwhile the lease expired in
    the table and a standby took it. By its own clock the holder still had time, so it learns of
    the loss at its next renewal, and stops then."""
    first_coord, second_coord = handles(), handles()
    first_registry, second_registry = CollectorRegistry(), CollectorRegistry()
    first = keeper(first_coord, "host:1", monotonic=ManualClock(100.0), registry=first_registry)
    second = keeper(second_coord, "host:2", registry=second_registry)
    first_work, second_work = Work(), Work()
    async with running((first, first_work)):
        await wait_until("the first keeper to work", lambda: first_work.running)
        first_coord.hold()
        await wait_until("its renewal to be held up", first_coord.hanging.is_set)
        table(db_path, "UPDATE leases SET expires_at = ? WHERE name = ?", WALL - 1, NAME)
        async with running((second, second_work)):
            await wait_until("the standby to take the expired lease", lambda: second_work.running)
            assert holder_in_table(db_path) == "host:2"

            first_coord.let_go()
            await wait_until("the first keeper to stop", lambda: not first_work.running)
            assert not first.active
            with pytest.raises(LeaseLost, match="host:1"):
                first.check()
            assert (gauge(first_registry), gauge(second_registry)) == (0.0, 1.0)

            # It stands by: asks again, is refused, and the new holder keeps working.
            refused = first_coord.refused
            await wait_until("the old holder to be refused twice", lambda: first_coord.refused >= refused + 2)
            assert (first_work.starts, second_work.starts) == (1, 1)
            assert second_work.running and second.active
            second.check()


async def test_a_standby_takes_over_only_once_a_dead_holders_lease_has_expired(
    handles: Callable[[], FlakyCoordination], db_path: Path
) -> None:
    """Real clocks: the holder stops answering (as a killed process would: no renewal, no release)."""
    dead_coord = handles()
    dead = LeaseKeeper(dead_coord, NAME, ttl=2.0, holder="host:1")
    standby = LeaseKeeper(handles(), NAME, ttl=2.0, holder="host:2")
    events: list[str] = []
    dead_work, standby_work = Work(name="holder", events=events), Work(name="standby", events=events)
    async with running((dead, dead_work)):
        await wait_until("the holder to work", lambda: dead_work.running)
        async with running((standby, standby_work)):
            dead_coord.broken = True
            rows = table(db_path, "SELECT expires_at FROM leases WHERE name = ?", NAME)
            expires_at = float(str(rows[0][0]))  # that of the last renewal that reached the table
            await wait_until("the standby to work", lambda: standby_work.running)
            acquired = table(db_path, "SELECT holder, acquired_at FROM leases WHERE name = ?", NAME)
            assert acquired[0][0] == "host:2"
            assert float(str(acquired[0][1])) >= expires_at
            # The holder stopped by its own clock before its lease could expire in the table.
            assert events == ["holder started", "holder stopped", "standby started"]


async def test_a_keeper_stopped_while_it_stands_its_work_down_stops(
    handles: Callable[[], FlakyCoordination], db_path: Path
) -> None:
    """The process is told to stop (its task is cancelled) just as the keeper, having lost the lease,
    waits for its work to wind down: the keeper ends there. It must not swallow the cancellation and
    go on to take the lease again, which would leave the process unable to exit while it holds the lease."""
    coord = handles()
    mono = ManualClock(100.0)
    holder = keeper(coord, "host:1", monotonic=mono)
    winding_down = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            winding_down.set()
            await asyncio.sleep(0.2)  # closing what it had open

    async with running((holder, work)) as (task,):
        await wait_until("the holder to work", lambda: holder.active)
        coord.broken = True
        mono.now = 100.0 + TTL  # its lease has run out by its own clock: it stands its work down
        await asyncio.wait_for(winding_down.wait(), DEADLINE)
        task.cancel()
        coord.broken = False  # the lease could be taken again at once: it must not be
        await wait_until("the keeper to end", task.done)
        assert task.cancelled()
        assert not holder.active and holder.takeovers == 1


async def test_work_that_swallows_a_cancellation_is_still_stood_down(
    handles: Callable[[], FlakyCoordination], db_path: Path
) -> None:
    """Work that swallows the first cancellation (as Python 3.11's ``asyncio.wait_for`` does when what it
    waits for completes at that moment) is cancelled again: the keeper that lost its lease stands by and
    takes the lease back later, instead of working on without it for ever (found in the HA test)."""
    coord = handles()
    mono = ManualClock(100.0)
    holder = keeper(coord, "host:1", monotonic=mono)
    cancels = 0

    async def stubborn() -> None:
        nonlocal cancels
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancels += 1
                if cancels > 1:
                    raise

    async with running((holder, stubborn)):
        await wait_until("the holder to work", lambda: holder.active)
        coord.broken = True
        mono.now = 100.0 + TTL  # its lease has run out by its own clock
        await wait_until("the work to be cancelled twice", lambda: cancels == 2)
        coord.broken = False
        table(db_path, "DELETE FROM leases WHERE name = ?", NAME)
        mono.now = 200.0
        await wait_until("the keeper to take the lease back", lambda: holder.takeovers == 2 and holder.active)


async def test_two_leases_in_one_registry_do_not_clash(handles: Callable[[], FlakyCoordination], db_path: Path) -> None:
    registry = CollectorRegistry()
    coord = handles()
    presigner = LeaseKeeper(coord, "presigner", ttl=TTL, holder="host:1", wall=ManualClock(WALL), registry=registry)
    publisher = LeaseKeeper(coord, "publisher", ttl=TTL, holder="host:1", wall=ManualClock(WALL), registry=registry)
    presign_work, publish_work = Work(), Work()
    async with running((presigner, presign_work), (publisher, publish_work)):
        await wait_until("both to work", lambda: presign_work.running and publish_work.running)
        assert (gauge(registry, "presigner"), gauge(registry, "publisher")) == (1.0, 1.0)
        rows = table(db_path, "SELECT name, holder FROM leases ORDER BY name")
        assert rows == [("presigner", "host:1"), ("publisher", "host:1")]

        publish_work.finish.set()
        await wait_until("the publisher to stand down", lambda: not publisher.active)
        assert (gauge(registry, "presigner"), gauge(registry, "publisher")) == (1.0, 0.0)
        assert presign_work.running
        presigner.check()
        assert table(db_path, "SELECT name FROM leases") == [("presigner",)]


# --- a holder that is dead for certain (same machine, process gone) is replaced at once -------------------------


def held_until_far_future(db_path: Path, holder: str) -> None:
    """``holder`` holds the lease well past the frozen wall clock: only a takeover can end it early."""
    table(
        db_path,
        "INSERT INTO leases (name, holder, expires_at, acquired_at) VALUES (?, ?, ?, ?)",
        NAME,
        holder,
        WALL + 1000,
        WALL - 1,
    )


@linux_proc
def test_a_lease_holder_names_its_host_pid_start_time_and_process_table() -> None:
    me = lease_holder()
    parsed = parse_holder(me)
    assert parsed is not None
    assert (parsed.host, parsed.pid, parsed.machine) == (socket.gethostname(), os.getpid(), this_machine())
    assert not holder_is_dead(me)
    # Names without the suffix (leases taken before this scheme, other systems) are never judged.
    assert parse_holder(f"{socket.gethostname()}:{os.getpid()}") is None


@linux_proc
@pytest.mark.parametrize("reaped", [False, True], ids=["zombie", "reaped"])
async def test_a_lease_held_by_a_killed_process_of_this_machine_is_taken_over_at_once(
    handles: Callable[[], FlakyCoordination], db_path: Path, reaped: bool
) -> None:
    """kill -9 leaves the lease in the table until it expires; the successor does not wait for that.
    Until its parent reaps it, the killed process is a zombie: it holds nothing either."""
    with other_process() as proc:
        dead = lease_holder(proc.pid)
        held_until_far_future(db_path, dead)
        proc.kill()
        if reaped:
            proc.wait()
        await wait_until("the signal to land", lambda: holder_is_dead(dead))
        coord = handles()
        successor, work = keeper(coord, lease_holder()), Work()
        async with running((successor, work)):
            await wait_until("the successor to work", lambda: work.running)
            assert holder_in_table(db_path) == successor.holder
            # At its first attempt: refused by the table, then the dead holder's lease taken over.
            assert (coord.attempts, coord.refused) == (2, 1)


@linux_proc
async def test_a_live_holder_on_this_machine_keeps_its_lease(
    handles: Callable[[], FlakyCoordination], db_path: Path
) -> None:
    with other_process() as proc:
        alive = lease_holder(proc.pid)
        held_until_far_future(db_path, alive)
        coord = handles()
        standby, work = keeper(coord, lease_holder()), Work()
        async with running((standby, work)):
            await wait_until("five refusals", lambda: coord.refused >= 5)
            assert work.starts == 0 and not standby.active
            assert holder_in_table(db_path) == alive
            report = await standby.health("pre-signs")
            assert "problem" not in report
            assert report["standby"] == f"standing by, lease held by {alive} until 1970-01-12T14:03:20Z"
            # Once it dies, the standby takes over at its next attempt, long before the lease would end.
            proc.kill()
            await wait_until("the standby to work", lambda: work.running)
            assert holder_in_table(db_path) == standby.holder


@linux_proc
async def test_a_reused_pid_does_not_keep_a_dead_holders_lease(
    handles: Callable[[], FlakyCoordination], db_path: Path
) -> None:
    """The pid now belongs to a live process that started at another time: not the holder."""
    with other_process() as proc:
        parsed = parse_holder(lease_holder(proc.pid))
        assert parsed is not None
        earlier = f"{parsed.host}:{parsed.pid}:{int(parsed.start) - 1}@{parsed.machine}"
        assert not holder_is_dead(lease_holder(proc.pid)) and holder_is_dead(earlier)
        held_until_far_future(db_path, earlier)
        successor, work = keeper(handles(), lease_holder()), Work()
        async with running((successor, work)):
            await wait_until("the successor to work", lambda: work.running)
            assert holder_in_table(db_path) == successor.holder


@linux_proc
@pytest.mark.parametrize("where", ["another host", "an old-style name"])
async def test_a_holder_this_machine_cannot_see_is_waited_out(
    handles: Callable[[], FlakyCoordination], db_path: Path, where: str
) -> None:
    """Its pid means nothing here (another host, container or boot), even a pid free on this machine."""
    with other_process() as proc:
        pass  # killed and reaped: its pid is free here
    other = f"elsewhere:{proc.pid}:12345@000000000000" if where == "another host" else f"elsewhere:{proc.pid}"
    assert not holder_is_dead(other)
    held_until_far_future(db_path, other)
    wall = ManualClock(WALL)
    coord = handles()
    standby = LeaseKeeper(coord, NAME, ttl=TTL, holder=lease_holder(), wall=wall)
    work = Work()
    async with running((standby, work)):
        await wait_until("five refusals", lambda: coord.refused >= 5)
        assert work.starts == 0
        assert (await standby.health("pre-signs"))["standby"].startswith(f"standing by, lease held by {other} until ")
        wall.now = WALL + 1000  # the lease runs out
        await wait_until("the standby to work", lambda: work.running)
        assert holder_in_table(db_path) == standby.holder


async def test_health_names_a_problem_while_nobody_holds_the_lease(
    handles: Callable[[], FlakyCoordination], db_path: Path
) -> None:
    wall = ManualClock(WALL)
    dead = {"host:dead"}
    coord = handles()
    standby = LeaseKeeper(coord, NAME, ttl=TTL, holder="host:me", wall=wall, is_dead=lambda h: h in dead)
    report = await standby.health("pre-signs")
    assert report["problem"] == "nothing pre-signs: no process holds the presigner lease"
    held_until_far_future(db_path, "host:dead")
    assert (await standby.health("pre-signs"))["problem"] == (
        "nothing pre-signs: the presigner lease is held by host:dead, a dead process on this machine, "
        "until 1970-01-12T14:03:20Z; taking it over"
    )
    dead.clear()
    assert "problem" not in await standby.health("pre-signs")
    wall.now = WALL + 1000
    assert (await standby.health("pre-signs"))["problem"] == (
        "nothing pre-signs: no process holds the presigner lease (host:dead's ran out at 1970-01-12T14:03:20Z)"
    )
    work = Work()
    async with running((standby, work)):
        await wait_until("the keeper to work", lambda: work.running)
        assert await standby.health("pre-signs") == {"lease": "active", "holder": "host:me"}
