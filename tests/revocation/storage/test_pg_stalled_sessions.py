"""A process frozen in the middle of a statement, inside a transaction, with a lock held.

asyncpg prepares a statement (Parse, Describe, Flush) before it binds and runs it (Bind, Execute,
Sync); a client stopped between the two leaves its session "active", waiting to read, and
PostgreSQL's idle_in_transaction_session_timeout never fires. Found in the HA test: a pre-signer
frozen there kept the response store's lock, and the standby that took over could not write one
response until the frozen one woke. Here a client speaking the wire protocol by hand stops at
exactly that point, and the reaper every serving process runs ends its session.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from revocation.storage.postgres.db import APPLICATION_NAME, open_pg_pool, reap_stalled_sessions

LOCK_KEY = 4242


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _read_until(sock: socket.socket, kinds: set[bytes]) -> bytes:
    """Read server messages until one of ``kinds``; return its type. Fails on ErrorResponse."""
    buffer = b""
    while True:
        while len(buffer) < 5:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection"
            buffer += chunk
        kind, length = buffer[:1], struct.unpack("!I", buffer[1:5])[0]
        while len(buffer) < 1 + length:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection"
            buffer += chunk
        body, buffer = buffer[5 : 1 + length], buffer[1 + length :]
        assert kind != b"E", body
        if kind in kinds:
            return kind


@contextmanager
def frozen_mid_statement(dsn: str, application_name: str) -> Iterator[socket.socket]:
    """A session that took the advisory lock in a transaction, then sent Parse + Flush and nothing more."""
    url = urllib.parse.urlsplit(dsn)
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 5432), timeout=10)
    try:
        params = {
            "user": url.username or "postgres",
            "database": url.path.lstrip("/"),
            "application_name": application_name,
        }
        body = struct.pack("!I", 196608) + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items())
        sock.sendall(struct.pack("!I", len(body) + 5) + body + b"\0")
        _read_until(sock, {b"Z"})  # trust authentication, then ReadyForQuery
        sock.sendall(_message(b"Q", f"BEGIN; SELECT pg_advisory_xact_lock({LOCK_KEY})".encode() + b"\0"))
        _read_until(sock, {b"Z"})
        sock.sendall(_message(b"P", b"\0SELECT 1\0\0\0") + _message(b"H", b""))  # Parse, Flush: no Sync
        _read_until(sock, {b"1"})  # ParseComplete; the session now waits for Bind
        yield sock
    finally:
        sock.close()


async def _lock_taken(pool: asyncpg.Pool, within: float) -> bool:
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{int(within * 1000)}ms'")
                await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        except asyncpg.LockNotAvailableError:
            return False
    return True


async def test_a_session_frozen_mid_statement_holding_a_lock_is_ended(postgres_database: str) -> None:
    pool = await open_pg_pool(postgres_database, migrate=False)
    try:
        with frozen_mid_statement(postgres_database, APPLICATION_NAME) as sock:
            assert not await _lock_taken(pool, 0.5), "the frozen session should hold the lock"
            # Not yet frozen for long enough: left alone (a live client sends its next message at once).
            assert await reap_stalled_sessions(pool, older_than=60) == []
            assert not await _lock_taken(pool, 0.2)
            await asyncio.sleep(0.6)
            ended = await reap_stalled_sessions(pool, older_than=0.5)
            assert len(ended) == 1
            assert await _lock_taken(pool, 5), "the lock is free once the frozen session is ended"
            # The frozen client, when it wakes, finds its connection closed.
            sock.settimeout(5)
            assert _closed(sock)
    finally:
        await pool.close()


async def test_sessions_of_other_applications_are_left_alone(postgres_database: str) -> None:
    pool = await open_pg_pool(postgres_database, migrate=False)
    try:
        with frozen_mid_statement(postgres_database, "someone-else"):
            await asyncio.sleep(0.6)
            assert await reap_stalled_sessions(pool, older_than=0.5) == []
            assert not await _lock_taken(pool, 0.3)
    finally:
        await pool.close()


def _closed(sock: socket.socket) -> bool:
    """Whether the server ended the session: it sends an ErrorResponse (admin shutdown) and closes."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        return True
    return b"57P01" in data or data == b""


async def test_our_own_session_and_idle_ones_are_not_ended(postgres_database: str) -> None:
    """The reaper's own session is active too while it asks; idle sessions of ours are not stalled."""
    pool = await open_pg_pool(postgres_database, min_size=3, max_size=3, migrate=False)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SELECT 1")  # idle now, not in a transaction
            assert await reap_stalled_sessions(pool, older_than=0) == []
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await pool.close()
