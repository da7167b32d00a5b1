"""The event log: the one source of truth.

Rows are append-only and ordered by ``seq``. Each row's ``hash`` covers its
content and the previous row's hash, so ``verify_chain`` finds an altered or
removed row and names the first bad ``seq``.

Ordering promise every consumer relies on: once a reader has seen ``seq = n``,
no event with ``seq <= n`` will ever commit later.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from revocation.clock import iso
from revocation.errors import ConcurrencyError
from revocation.events import DomainEvent, decode

GENESIS_HASH = "0" * 64

log = logging.getLogger("pca.eventlog")


@dataclasses.dataclass(frozen=True)
class NewEvent:
    """An event to append, decided on the stream at ``expected_version``.

    ``expected_version`` is the version of the stream's last event that the
    decision was based on (0 for a new stream); the append fails with
    ConcurrencyError if the stream has moved on.
    """

    event: DomainEvent
    expected_version: int
    actor: str
    request_id: str


@dataclasses.dataclass(frozen=True)
class RecordedEvent:
    seq: int
    stream: str
    version: int
    type: str
    payload: dict[str, Any]
    actor: str
    request_id: str
    recorded_at: datetime.datetime
    prev_hash: str
    hash: str

    @property
    def event(self) -> DomainEvent:
        return decode(self.type, self.payload)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "stream": self.stream,
            "version": self.version,
            "type": self.type,
            "payload": self.payload,
            "actor": self.actor,
            "request_id": self.request_id,
            "recorded_at": iso(self.recorded_at),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


# One encoder for every payload: ``json.dumps`` with these options would build a new one per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def canonical_payload(payload: dict[str, Any]) -> str:
    return _CANONICAL.encode(payload)


def row_hash(
    prev_hash: str,
    seq: int,
    stream: str,
    version: int,
    type_: str,
    payload_json: str,
    actor: str,
    request_id: str,
    recorded_at: str,
) -> str:
    """SHA-256 over the previous hash and every column of the row."""
    fields = (prev_hash, str(seq), stream, str(version), type_, payload_json, actor, request_id, recorded_at)
    parts = []
    for field in fields:
        data = field.encode()
        # Length-prefix each field so no two different rows hash the same.
        parts.append(len(data).to_bytes(4, "big"))
        parts.append(data)
    return hashlib.sha256(b"".join(parts)).hexdigest()


@dataclasses.dataclass(frozen=True)
class ChainedRow:
    """One event placed in the chain: the record to hand back and the column values to insert."""

    record: RecordedEvent
    event: DomainEvent
    columns: tuple[int, str, int, str, str, str, str, str, str, str]


def chain_events(
    events: Sequence[NewEvent], seq: int, prev: str, now: datetime.datetime, versions: dict[str, int]
) -> list[ChainedRow]:
    """Place ``events`` after (``seq``, ``prev``) in the hash chain; the part every backend shares.

    ``versions`` holds each stream's current version as stored (0 for a new stream); the
    backend reads it inside its append transaction. Raises ConcurrencyError when an event was
    decided on another version than its stream is at.
    """
    recorded_at = iso(now)
    current = dict(versions)
    out = []
    for new in events:
        stream = new.event.stream()
        version = current.get(stream, 0)
        if version != new.expected_version:
            raise ConcurrencyError(f"stream {stream} is at version {version}, expected {new.expected_version}")
        version += 1
        current[stream] = version
        seq += 1
        payload = new.event.to_payload()
        payload_json = canonical_payload(payload)
        type_ = new.event.TYPE
        digest = row_hash(prev, seq, stream, version, type_, payload_json, new.actor, new.request_id, recorded_at)
        record = RecordedEvent(seq, stream, version, type_, payload, new.actor, new.request_id, now, prev, digest)
        columns = (seq, stream, version, type_, payload_json, new.actor, new.request_id, recorded_at, prev, digest)
        out.append(ChainedRow(record, new.event, columns))
        prev = digest
    return out


Listener = Callable[[list["RecordedEvent"]], None]
RebuildProgress = Callable[[int, int], None]  # (events applied, events in the log) during rebuild_projection
AppendProgress = Callable[[int], None]  # events of one append written so far, inside its transaction


def call_listeners(listeners: Sequence[Listener], committed: list[RecordedEvent]) -> None:
    """Hand committed events to each in-process listener; one that fails does not stop the others."""
    for listener in listeners:
        try:
            listener(committed)
        except Exception:  # a listener must never stop the commits of others
            log.exception("event listener failed")


class EventLog(Protocol):
    async def append(self, events: Sequence[NewEvent], progress: AppendProgress | None = None) -> list[RecordedEvent]:
        """Append atomically, all or none; committed durably before returning.

        Raises ConcurrencyError when a stream is not at its expected version. ``progress(written)`` is called
        after each page of a long append is written, before the one commit (possibly from a worker thread).
        """
        ...

    async def read(self, after: int, limit: int) -> list[RecordedEvent]:
        """Events with ``seq > after`` in order, at most ``limit``."""
        ...

    async def read_stream(self, stream: str) -> list[RecordedEvent]: ...

    async def read_index(self, after: int, limit: int) -> list[tuple[int, str, str]]:
        """(seq, stream, type) of events with ``seq > after``, in order: a cheap way to follow the log
        for consumers that need only which streams changed."""
        ...

    async def head(self) -> int:
        """The highest committed seq (0 when empty)."""
        ...

    async def verify_chain(self) -> int:
        """Walk the whole chain; return the number of rows or raise IntegrityError."""
        ...


class StoredEventLog(EventLog, Protocol):
    """An event log on a database that also holds its projection: what a runtime runs on."""

    listeners: list[Listener]  # called after each append made through this object commits

    async def rebuild_projection(self, progress: RebuildProgress | None = None) -> int:
        """Recreate the status projection from the log alone; returns the number of events applied.

        ``progress(applied, total)`` is called after each page of events (possibly from a worker thread)."""
        ...

    async def projection_drops(self, issuer_id: str) -> list[Any]:
        """``revocation.chain.Drop``s: the issuer's certificates the log says are revoked and the projection
        does not."""
        ...


async def read_seqs(log: EventLog, seqs: Sequence[int]) -> list[RecordedEvent]:
    """The events at these seqs (ascending), one read per run of consecutive seqs."""
    out: list[RecordedEvent] = []
    i = 0
    while i < len(seqs):
        j = i
        while j + 1 < len(seqs) and seqs[j + 1] == seqs[j] + 1:
            j += 1
        out.extend(await log.read(seqs[i] - 1, j - i + 1))
        i = j + 1
    return out
