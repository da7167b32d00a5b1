"""One ``Operation`` per route of ``revocation.admin.access.ACCESS`` (``OPERATIONS``, keyed the same way;
``revocation.admin.openapi`` refuses to build a document when they differ): its parameters, body,
answers and links, naming the schemas of ``revocation.admin.schemas``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from revocation.admin.schemas import ISSUER_ID, MAX_SEQ, SERIAL, STRING, Schema


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    where: str  # "path" or "query"
    schema: Schema
    description: str


@dataclasses.dataclass(frozen=True)
class Operation:
    """One route: its parameters, body, answers (status -> (description, schema name or None)) and links."""

    operation_id: str
    summary: str
    params: tuple[Param, ...] = ()
    body: str | None = None  # a COMPONENTS name
    body_required: bool = True
    answers: dict[int, tuple[str, str | None]] = dataclasses.field(default_factory=dict)
    links: dict[int, dict[str, dict[str, Any]]] = dataclasses.field(default_factory=dict)
    media_type: str = "application/json"  # of the 2xx answers


SERIAL_PARAM = Param("serial", "path", SERIAL, "the certificate's serial in hexadecimal")
ISSUER_QUERY = Param("issuer", "query", STRING, "the issuer's id, when several issuers have the serial")
ID_PARAM = Param("id", "path", ISSUER_ID, "the issuer's id (as in GET /v1/issuers)")
AFTER = Param("after", "query", {"type": "integer", "minimum": 0, "maximum": MAX_SEQ}, "start after this seq")
LIMIT = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}, "at most this many events")
# Links from an answer to the routes of the same certificate (stateful tests follow them).
_BY_SERIAL = {"serial": "$response.body#/serial"}
_SERIAL_LINKS = {
    "GetCertificate": {"operationId": "getCertificate", "parameters": _BY_SERIAL},
    "Revoke": {"operationId": "revokeCertificate", "parameters": _BY_SERIAL},
    "ReleaseHold": {"operationId": "releaseHold", "parameters": _BY_SERIAL},
    "Propagation": {"operationId": "getPropagation", "parameters": _BY_SERIAL},
}
NOT_FOUND = "no such certificate or issuer"


def _changes(extra: dict[int, tuple[str, str | None]]) -> dict[int, tuple[str, str | None]]:
    return {409: ("in conflict with what is recorded (says which)", "Problem"), **extra}


OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/v1/certificates"): Operation(
        "issueCertificate",
        "Issue a certificate (pca generates the key unless a CSR is given)",
        body="IssueRequest",
        answers=_changes(
            {201: ("issued (after the event is committed)", "Issued"), 404: ("unknown issuer", "Problem")}
        ),
        links={201: _SERIAL_LINKS},
    ),
    ("POST", "/v1/certificates/import"): Operation(
        "recordCertificates",
        "Record certificates an external CA issued (all or nothing)",
        body="ImportRequest",
        answers=_changes(
            {
                200: ("every certificate was already recorded", "Imported"),
                201: ("recorded", "Imported"),
                404: ("unknown issuer", "Problem"),
                422: ("not issued by that issuer, or the issuer may not issue", "Problem"),
            }
        ),
    ),
    ("GET", "/v1/certificates/{serial}"): Operation(
        "getCertificate",
        "A certificate's status",
        params=(SERIAL_PARAM, ISSUER_QUERY),
        answers={200: ("the certificate", "Certificate"), 404: (NOT_FOUND, "Problem")},
    ),
    ("POST", "/v1/certificates/{serial}/revoke"): Operation(
        "revokeCertificate",
        "Revoke a certificate (a CA certificate: 403, use the issuer route)",
        params=(SERIAL_PARAM,),
        body="RevokeRequest",
        answers=_changes(
            {
                200: ("revoked before with this reason: the original event", "Revoked"),
                201: ("revoked", "Revoked"),
                404: (NOT_FOUND, "Problem"),
            }
        ),
        links={201: {k: v for k, v in _SERIAL_LINKS.items() if k != "Revoke"}},
    ),
    ("POST", "/v1/certificates/{serial}/release-hold"): Operation(
        "releaseHold",
        "Release a certificate from certificateHold",
        params=(SERIAL_PARAM,),
        body="ReleaseRequest",
        body_required=False,
        answers=_changes({200: ("released", "Released"), 404: (NOT_FOUND, "Problem")}),
    ),
    ("GET", "/v1/certificates/{serial}/propagation"): Operation(
        "getPropagation",
        "Where the certificate's latest revocation has got to",
        params=(SERIAL_PARAM, ISSUER_QUERY),
        answers={200: ("the timeline", "Timeline"), 404: (NOT_FOUND + ", or never revoked", "Problem")},
    ),
    ("GET", "/v1/issuers"): Operation("listIssuers", "Every issuer", answers={200: ("the issuers", "Issuers")}),
    ("GET", "/v1/revocations"): Operation(
        "listRevocations",
        "The revocations among the next events of the log (what pca probe follows)",
        params=(AFTER, LIMIT),
        answers={200: ("a page", "RevocationPage")},
    ),
    ("POST", "/v1/issuers/{id}/revoke"): Operation(
        "revokeIssuer",
        "Revoke an issuing CA's own certificate",
        params=(ID_PARAM,),
        body="CARevokeRequest",
        answers=_changes(
            {
                200: ("revoked before with this reason: the original event", "Revoked"),
                201: ("revoked", "Revoked"),
                404: ("no such issuer", "Problem"),
            }
        ),
    ),
    ("POST", "/v1/issuers/{id}/release-hold"): Operation(
        "releaseIssuerHold",
        "Release an issuing CA's certificate from certificateHold",
        params=(ID_PARAM,),
        body="Empty",
        body_required=False,
        answers=_changes({200: ("released", "Released"), 404: ("no such issuer", "Problem")}),
    ),
    ("POST", "/v1/issuers/{id}/revoke-issued"): Operation(
        "revokeIssued",
        "Revoke every certificate an issuer issued that is not revoked for good (not its sub-CAs), "
        "at most limit per call: call again until remaining is 0",
        params=(ID_PARAM,),
        body="RevokeIssuedRequest",
        body_required=False,
        answers=_changes(
            {200: ("what this call did, and what remains", "IssuedRevoked"), 404: ("no such issuer", "Problem")}
        ),
    ),
    ("POST", "/v1/propagation/probes"): Operation(
        "recordProbe",
        "What a black-box prober saw: a responder first answered revoked",
        body="ProbeRequest",
        answers={201: ("stored", "Probe")},
    ),
    ("POST", "/v1/propagation/crl-installations"): Operation(
        "recordCrlInstallation",
        "A CRL a relying party's sync agent installed",
        body="InstallationRequest",
        answers={
            200: ("reported before: the earliest installation", "Installation"),
            201: ("stored", "Installation"),
            404: ("a CRL pca did not publish", "Problem"),
            422: ("clock skew", "Problem"),
        },
    ),
    ("GET", "/v1/events"): Operation(
        "listEvents",
        "The event log, with actors and request ids",
        params=(AFTER, LIMIT),
        answers={200: ("a page of events", "EventPage")},
    ),
    ("GET", "/v1/audit/verify"): Operation(
        "verifyAudit",
        "Walk the hash chain, then compare the status projection with a replay of the log",
        answers={200: ("intact", "AuditReport"), 409: ("the first bad seq or the first differences", "AuditReport")},
    ),
    ("GET", "/v1/openapi.json"): Operation(
        "getOpenAPI", "This document", answers={200: ("the OpenAPI 3.1 document", None)}
    ),
    ("GET", "/metrics"): Operation(
        "getMetrics",
        "Prometheus metrics",
        answers={200: ("the text exposition format", None)},
        media_type="text/plain",
    ),
    ("GET", "/healthz"): Operation(
        "getHealth",
        "Roles' positions and lag",
        answers={200: ("healthy", "Health"), 503: ("something is wrong (says what)", "Health")},
    ),
}
