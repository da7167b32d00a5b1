"""LISTEN on PostgreSQL: hear at once of appends (``pca_events``) and stored responses (``pca_responses``).

A ``PostgresListener`` holds one dedicated connection that LISTENs on a few
channels and calls the callbacks subscribed to a channel on each notification.
A notification says only "something changed, read now": followers still read
from their own position, so a lost notification costs latency, never data.

The connection is watched (asyncpg's termination callback and a periodic
``SELECT 1``); when it is lost the listener reconnects with exponential backoff
(0.2 s doubling to 5 s) and, once back, calls every callback, since
notifications sent meanwhile are gone. Warnings name the error, never the DSN.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from revocation.storage.postgres.db import CONNECT_TIMEOUT, PG_ERRORS, redact

log = logging.getLogger("pca.pg_notify")

_CHANNEL = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

Callback = Callable[[], None]


class PostgresListener:
    """One LISTEN connection to ``dsn`` for ``channels``; ``run()`` it as a task, ``close()`` to stop."""

    def __init__(
        self,
        dsn: str,
        channels: Sequence[str],
        *,
        min_backoff: float = 0.2,
        max_backoff: float = 5.0,
        check_interval: float = 5.0,
        connect_timeout: float = CONNECT_TIMEOUT,
        application_name: str = "pca-listener",
    ) -> None:
        for channel in channels:
            if not _CHANNEL.match(channel):
                raise ValueError(f"channel names are lowercase identifiers, got {channel!r}")
        if not 0 < min_backoff <= max_backoff:
            raise ValueError(f"backoff must satisfy 0 < min <= max, got {min_backoff}, {max_backoff}")
        if check_interval <= 0 or connect_timeout <= 0:
            raise ValueError(f"intervals must be positive, got {check_interval}, {connect_timeout}")
        self._dsn = dsn
        self._channels = list(dict.fromkeys(channels))
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._check_interval = check_interval
        self._connect_timeout = connect_timeout
        self._application_name = application_name  # names the connection in pg_stat_activity
        self._callbacks: dict[str, list[Callback]] = {channel: [] for channel in self._channels}
        self._conn: Any = None
        self._lost = asyncio.Event()
        self._closing = asyncio.Event()
        self._up = asyncio.Event()
        self.connected = False  # True while the LISTEN connection is up

    def subscribe(self, channel: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback`` on each notification on ``channel`` and after each reconnect; returns an unsubscribe."""
        if channel not in self._callbacks:
            raise ValueError(f"channel {channel!r} is not one this listener listens on ({', '.join(self._channels)})")
        self._callbacks[channel].append(callback)
        return lambda: self._callbacks[channel].remove(callback)

    async def wait_connected(self) -> None:
        """Return once the connection is up (bound it with ``asyncio.timeout``)."""
        await self._up.wait()

    async def run(self) -> None:
        """Listen until ``close()``: connect, watch the connection, reconnect with backoff when it is lost."""
        delay = self._min_backoff
        while not self._closing.is_set():
            try:
                await self._connect()
            except PG_ERRORS as exc:
                log.warning("LISTEN connection to PostgreSQL failed (%s); retrying in %.1f s", self._why(exc), delay)
                if await self._sleep(delay):
                    break
                delay = min(delay * 2, self._max_backoff)
                continue
            if self._closing.is_set():  # closed while connecting
                await self._disconnect()
                break
            delay = self._min_backoff
            self._set_connected(True)
            self._fire(self._channels)  # notifications sent while we were away are lost: read now
            reason = await self._watch()
            self._set_connected(False)
            await self._disconnect()
            if reason is not None:
                log.warning("LISTEN connection to PostgreSQL lost (%s); reconnecting", reason)

    async def close(self) -> None:
        """Stop listening and close the connection; ``run()`` returns."""
        self._closing.set()
        self._lost.set()
        await self._disconnect()
        self._set_connected(False)

    async def _connect(self) -> None:
        self._lost.clear()
        conn = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout,
            server_settings={"application_name": self._application_name},
        )
        try:
            conn.add_termination_listener(self._on_terminated)
            for channel in self._channels:
                await conn.add_listener(channel, self._on_notification)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn

    async def _watch(self) -> str | None:
        """Until the connection is lost (returns why) or the listener closes (returns None)."""
        while not self._closing.is_set():
            try:
                async with asyncio.timeout(self._check_interval):
                    await self._lost.wait()
            except TimeoutError:
                pass
            if self._closing.is_set():
                return None
            if self._lost.is_set():
                return "connection closed"
            try:
                async with asyncio.timeout(self._connect_timeout):
                    await self._conn.fetchval("SELECT 1")
            except PG_ERRORS as exc:
                return self._why(exc)
        return None

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            async with asyncio.timeout(1.0):
                await conn.close()
        except PG_ERRORS:
            conn.terminate()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, or return True early when the listener closes."""
        try:
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        except TimeoutError:
            return False
        return True

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        if up:
            self._up.set()
        else:
            self._up.clear()

    def _on_terminated(self, _conn: Any) -> None:
        self._lost.set()

    def _on_notification(self, _conn: Any, _pid: int, channel: str, _payload: str) -> None:
        self._fire([channel])

    def _fire(self, channels: Sequence[str]) -> None:
        for channel in channels:
            for callback in list(self._callbacks.get(channel, ())):
                try:
                    callback()
                except Exception:  # one follower's failure must not silence the others
                    log.exception("LISTEN callback for %s failed", channel)

    def _why(self, exc: BaseException) -> str:
        return redact(f"{type(exc).__name__}: {exc}", self._dsn)
