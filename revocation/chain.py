"""Checking the hash chain and reading rows back into events: written once for every backend.

Both backends store the same columns (``EVENT_COLUMNS``, in this order) as the same text, so
a row read from either, an sqlite3 tuple or an asyncpg Record, is checked and decoded here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from revocation.clock import parse_iso
from revocation.errors import IntegrityError
from revocation.eventlog import GENESIS_HASH, RecordedEvent, row_hash

EVENT_COLUMNS = "seq, stream, version, type, payload, actor, request_id, recorded_at, prev_hash, hash"

# The events that change a certificate's status, indexed (migration 2 of the log) so that the storer can
# ask, in one statement, which certificates the log says are revoked and the projection does not.
_STATUS_TYPES = "('CertificateRevoked', 'CertificateHoldReleased')"
STATUS_CHANGES_INDEX = (
    f"CREATE INDEX events_status_changes ON events (stream, version, type) WHERE type IN {_STATUS_TYPES}"
)


def projection_drops_sql(issuer_of_stream: str, serial_of_stream: str, of_issuer: str) -> str:
    """An issuer's certificates whose last status event in the log is a revocation, but which the projection
    does not hold as revoked (no row, or another status): (stream, seq of that revocation, crl_shard or NULL).

    The expressions, in the backend's dialect: the issuer id and the hex serial taken out of ``e.stream``
    ("cert/ISSUER/SERIAL"), and the condition that ``e.stream`` is one of the issuer's (its parameters).
    Reads only the issuer's status events (a partial index) and one projection row each.
    """
    return (
        "SELECT e.stream, e.seq, c.crl_shard FROM events e LEFT JOIN certificates c "
        f"ON c.issuer_id = {issuer_of_stream} AND c.serial = {serial_of_stream} "
        f"WHERE e.type IN {_STATUS_TYPES} AND {of_issuer} AND e.type = 'CertificateRevoked' "
        "AND (c.status IS NULL OR c.status <> 'revoked') "
        "AND NOT EXISTS (SELECT 1 FROM events l "
        f"WHERE l.type IN {_STATUS_TYPES} AND l.stream = e.stream AND l.version > e.version)"
    )  # no ORDER BY: SQLite would then scan the whole table by seq instead of the partial index


class Drop(NamedTuple):
    """A certificate the log says is revoked and the projection does not (``projection_drops``)."""

    issuer_id: str
    serial: int
    seq: int  # the revocation's seq
    shard: int | None  # its CRL shard, None when the projection has no row for it


def drop_rows(rows: Iterable[Sequence[Any]]) -> list[Drop]:
    """Drops from rows of ``projection_drops_sql``, in seq order."""
    out = []
    for stream, seq, shard in rows:
        _, issuer_id, serial = str(stream).split("/", 2)
        out.append(Drop(issuer_id, int(serial, 16), int(seq), None if shard is None else int(shard)))
    return sorted(out, key=lambda drop: drop.seq)


def recorded_event(row: Sequence[Any]) -> RecordedEvent:
    """The RecordedEvent of a row of ``EVENT_COLUMNS``."""
    seq, stream, version, type_, payload, actor, request_id, recorded_at, prev_hash, hash_ = row
    return RecordedEvent(
        seq=int(str(seq)),
        stream=str(stream),
        version=int(str(version)),
        type=str(type_),
        payload=json.loads(str(payload)),
        actor=str(actor),
        request_id=str(request_id),
        recorded_at=parse_iso(str(recorded_at)),
        prev_hash=str(prev_hash),
        hash=str(hash_),
    )


class ChainCheck:
    """Walks the rows of ``EVENT_COLUMNS`` in seq order (``add``), then the log head (``finish``).

    Raises IntegrityError naming the first bad seq: a missing row, a row whose prev_hash does
    not follow, a row whose content does not match its hash, or a head that says the chain is
    longer or ends elsewhere (rows removed from the end).
    """

    def __init__(self) -> None:
        self.prev = GENESIS_HASH
        self.count = 0

    def add(self, row: Sequence[Any]) -> None:
        seq_value, stream, version, type_, payload, actor, request_id, recorded_at, prev_hash, hash_ = row
        seq, expected = int(seq_value), self.count + 1
        if seq != expected:
            raise IntegrityError(f"event log broken at seq {expected}: row missing (next row is {seq})", expected)
        if prev_hash != self.prev:
            raise IntegrityError(f"event log broken at seq {seq}: prev_hash does not match the previous row", seq)
        digest = row_hash(
            self.prev,
            seq,
            str(stream),
            int(version),
            str(type_),
            str(payload),
            str(actor),
            str(request_id),
            str(recorded_at),
        )
        if digest != hash_:
            raise IntegrityError(f"event log broken at seq {seq}: row content does not match its hash", seq)
        self.prev = digest
        self.count = seq

    def finish(self, head: Sequence[Any] | None) -> int:
        """Check the log head, a (seq, hash) row or None when there is none; returns the rows checked."""
        head_seq, head_hash = (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)
        if head_seq != self.count or head_hash != self.prev:
            raise IntegrityError(
                f"event log broken at seq {self.count + 1}: the log head records seq {head_seq}, "
                f"but the chain ends at seq {self.count} (rows removed from the end?)",
                self.count + 1,
            )
        return self.count


def verify_rows(rows: Iterable[Sequence[Any]], head: Sequence[Any] | None) -> int:
    """Check a whole chain at once; returns its length or raises IntegrityError."""
    check = ChainCheck()
    for row in rows:
        check.add(row)
    return check.finish(head)
