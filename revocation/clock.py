"""Clocks are passed in, never read from a global inside logic."""

from __future__ import annotations

import datetime
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime.datetime:
        """The current time, timezone-aware UTC."""
        ...

    def time(self) -> float:
        """The current wall time in epoch seconds: the same moment as ``now()``, as a number."""
        ...

    def monotonic(self) -> float:
        """Seconds for measuring intervals: never steps back, unrelated to the wall time."""
        ...


class SystemClock:
    def now(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC)

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock for tests: time moves only when told to."""

    def __init__(self, start: datetime.datetime | None = None) -> None:
        self._now = start or datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
        self._mono = 1000.0

    def now(self) -> datetime.datetime:
        return self._now

    def time(self) -> float:
        return self._now.timestamp()  # derived from now(), so advance() moves both alike

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += datetime.timedelta(seconds=seconds)
        self._mono += seconds


def to_epoch(moment: datetime.datetime) -> int:
    return int(moment.timestamp())


def from_epoch(seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def parse_iso(value: str) -> datetime.datetime:
    """Parse an ISO 8601 time; a time without zone is refused, not guessed."""
    moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time {value!r} has no timezone (add Z or +00:00)")
    try:
        return moment.astimezone(datetime.UTC)
    except OverflowError as exc:
        raise ValueError(f"time {value!r} is out of range") from exc


def iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")
