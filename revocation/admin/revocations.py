"""``GET /v1/revocations``: the revocations in the log, for those who may not read the whole log.

A black-box prober (``pca probe``) needs to know which certificate was revoked by which event,
and when it was committed; the event log itself also names actors, request ids and key
references, which only ``admin`` and ``auditor`` read (``revocation.admin.access``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from revocation.admin.http import check_query, int_param
from revocation.clock import iso
from revocation.eventlog import EventLog
from revocation.events import CertificateRevoked


async def revocation_answer(request: Request, log: EventLog) -> dict[str, Any]:
    """``GET /v1/revocations?after=SEQ&limit=N``: unknown or repeated parameters are refused, as everywhere."""
    check_query(request, ("after", "limit"))
    return await revocation_page(
        log, int_param(request, "after", 0, 0, 2**62), int_param(request, "limit", 100, 1, 1000)
    )


async def revocation_page(log: EventLog, after: int, limit: int) -> dict[str, Any]:
    """The revocations among the ``limit`` events after seq ``after``.

    ``last_seq`` is the last seq read (``after`` when none): the next page starts there, and the
    reader has caught up when it reaches ``head``.
    """
    head = await log.head()
    events = await log.read(after, limit)
    revocations = [
        {
            "seq": e.seq,
            "issuer_id": e.payload.get("issuer_id"),
            "serial": e.payload.get("serial"),
            "reason": e.payload.get("reason"),
            "revoked_at": e.payload.get("revoked_at"),
            "recorded_at": iso(e.recorded_at),
        }
        for e in events
        if e.type == CertificateRevoked.TYPE
    ]
    last = events[-1].seq if events else after
    return {"revocations": revocations, "last_seq": last, "head": max(head, last)}
