"""Checking the hash chain and reading rows back into events: written once for every backend.

Both backends store the same columns (``EVENT_COLUMNS``, in this order) as the same text, so
a row read from either, an sqlite3 tuple or an asyncpg Record, is checked and decoded here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from revocation.clock import parse_iso
from revocation.errors import IntegrityError
from revocation.eventlog import GENESIS_HASH, RecordedEvent, row_hash

EVENT_COLUMNS = "seq, stream, version, type, payload, actor, request_id, recorded_at, prev_hash, hash"


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
