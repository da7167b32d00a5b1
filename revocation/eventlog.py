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
from collections.abc import Sequence
from typing import Any, Protocol

from revocation.events import DomainEvent, decode

GENESIS_HASH = "0" * 64


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
        from revocation.clock import iso

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


def canonical_payload(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


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
    fields = [prev_hash, str(seq), stream, str(version), type_, payload_json, actor, request_id, recorded_at]
    h = hashlib.sha256()
    for field in fields:
        data = field.encode()
        # Length-prefix each field so no two different rows hash the same.
        h.update(len(data).to_bytes(4, "big"))
        h.update(data)
    return h.hexdigest()


class EventLog(Protocol):
    async def append(self, events: Sequence[NewEvent]) -> list[RecordedEvent]:
        """Append atomically, all or none; committed durably before returning.

        Raises ConcurrencyError when a stream is not at its expected version.
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
