"""What every PostgreSQL backend shares: the errors it may raise, timeouts, placeholders.

Every failure of the driver, the socket or a timeout becomes a ``StorageError``
whose message names what was being done and the driver's error, never the DSN
or its password (asyncpg does not put them in its messages; ``redact`` makes
sure of it for the ones we build).
"""

from __future__ import annotations

import functools
import re
import urllib.parse

import asyncpg

from revocation.errors import StorageError

# What a PostgreSQL call can raise when the server, the network or the statement fails.
PG_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)

CONNECT_TIMEOUT = 5.0  # seconds to open a connection: a server that is down is reported quickly
COMMAND_TIMEOUT = 60.0  # the pool's default bound on one statement (a full CRL read of a million rows fits)
# The server ends a session left idle inside a transaction this long: a client frozen or cut off while
# it holds a lock (the log's append lock, the response store's change lock) would otherwise keep every
# other writer out, and a standby that took over its lease from writing, until TCP noticed, hours later.
# Our transactions send their statements back to back.
IDLE_IN_TRANSACTION_TIMEOUT = 5.0

# The NOTIFY channels: every role that listens and every writer that notifies uses these names.
EVENTS_CHANNEL = "pca_events"  # payload: the last seq of a committed append
RESPONSES_CHANNEL = "pca_responses"  # payload: the last change_id of a response-store write


# The password of a libpq keyword DSN: password=secret or password='a secret'.
_KEYWORD_PASSWORD = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def _passwords(dsn: str) -> list[str]:
    found = [match.group(1).strip("'") for match in _KEYWORD_PASSWORD.finditer(dsn)]
    try:
        password = urllib.parse.urlsplit(dsn).password
    except ValueError:
        password = None
    if password:
        found += [password, urllib.parse.unquote(password)]
    return [p for p in found if p]


def redact(text: str, dsn: str | None) -> str:
    """``text`` without the DSN and without the password it carries (URL or keyword form)."""
    if not dsn:
        return text
    text = text.replace(dsn, "<dsn>")
    for password in _passwords(dsn):
        text = text.replace(password, "***")
    return text


def storage_error(doing: str, exc: BaseException, dsn: str | None = None) -> StorageError:
    """A StorageError saying what failed (``doing``) and why, safe to log."""
    reason = str(exc) or type(exc).__name__
    return StorageError(redact(f"{doing}: {type(exc).__name__}: {reason}", dsn))


@functools.lru_cache(maxsize=256)
def pg_sql(sql: str) -> str:
    """``sql`` with SQLite's ``?`` placeholders numbered as PostgreSQL wants (``$1``, ``$2`` ...).

    For the statements the two backends share; they contain no other ``?``.
    """
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], start=1))


def affected(status: str) -> int:
    """The row count of an asyncpg command status such as ``UPDATE 1`` or ``INSERT 0 1``."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0
