"""What the admin routes take and answer, as JSON Schema (2020-12, the dialect of OpenAPI 3.1).

``revocation.admin.operations`` says which route takes and answers which of these. The schemas say what the
handlers check and answer: unknown fields are refused (``additionalProperties: false``), limits are
the handlers' own constants. Who may call a route is the access table's, not repeated here.
"""

from __future__ import annotations

from typing import Any

from revocation.admin.http import MAX_STRING, MAX_URL_LENGTH
from revocation.admin.installations import AGENT_ID, KEY_ID, MAX_CRL_NUMBER
from revocation.admin.recording import MAX_BATCH
from revocation.ca import PROFILES
from revocation.events import REVOCATION_REASONS
from revocation.issued_revocation import DEFAULT_LIMIT, DEFAULT_REASON, MAX_LIMIT
from revocation.issued_revocation import REASONS as ISSUED_REASONS
from revocation.keys.base import KEY_ALGORITHMS

Schema = dict[str, Any]
MAX_SEQ = 2**62
MAX_VALIDITY_DAYS = 3650  # the longest validity POST /v1/certificates accepts


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: tuple[str, ...] = (), closed: bool = True, **properties: Schema) -> Schema:
    """An object with these properties; ``closed``: no other field (the API refuses unknown fields)."""
    out: Schema = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    if closed:
        out["additionalProperties"] = False
    return out


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


STRING: Schema = {"type": "string", "maxLength": MAX_STRING}
TIME: Schema = {"type": "string", "format": "date-time", "maxLength": 64}
SERIAL: Schema = {
    "type": "string",
    "pattern": "^0{0,39}[1-9A-Fa-f][0-9A-Fa-f]{0,39}$",
    "maxLength": 40,
    "description": "hexadecimal, at most 20 octets, not 0 (colons and a 0x prefix are accepted too)",
}
ISSUER_ID: Schema = {"type": "string", "minLength": 1, "maxLength": 64}
REASON: Schema = {"type": "string", "enum": list(REVOCATION_REASONS)}
SEQ: Schema = {"type": "integer", "minimum": 1, "maximum": MAX_SEQ}
URL: Schema = {"type": "string", "format": "uri", "maxLength": MAX_URL_LENGTH}
STRINGS: Schema = {"type": "array", "items": STRING, "maxItems": 100}

# Answers: open objects (a field added to an answer is not a breaking change), their fields typed.
EVENT = obj(
    ("seq", "stream", "version", "type", "payload", "actor", "request_id", "recorded_at", "prev_hash", "hash"),
    closed=False,
    seq=SEQ,
    stream={"type": "string"},
    version={"type": "integer"},
    type={"type": "string"},
    payload={"type": "object"},
    actor={"type": "string"},
    request_id={"type": "string"},
    recorded_at={"type": "string"},
    prev_hash={"type": "string"},
    hash={"type": "string"},
)
_OPT_TIME = nullable({"type": "string"})

EXAMPLES: dict[str, list[Schema]] = {  # shown to readers, and tried first by schemathesis
    "IssueRequest": [
        {"subject": "CN=svc1", "dns": ["svc1.internal"], "key_algorithm": "ec-p256"},
        {"subject": "CN=alice,OU=revoker", "profile": "client", "validity_days": 30},
    ],
    "RevokeRequest": [{"reason": "keyCompromise"}, {"reason": "certificateHold"}],
    "CARevokeRequest": [{"reason": "cACompromise"}],
    "RevokeIssuedRequest": [{"reason": "cACompromise"}, {"reason": "keyCompromise", "include_expired": True}],
    "ReleaseRequest": [{}],
}

COMPONENTS: dict[str, Schema] = {
    "Problem": obj(
        ("type", "title", "status", "detail"),
        closed=False,
        type={"type": "string"},
        title={"type": "string"},
        status={"type": "integer", "minimum": 400, "maximum": 599},
        detail={"type": "string"},
    ),
    "Event": EVENT,
    "IssueRequest": obj(
        subject=nullable(STRING),
        dns=STRINGS,
        ips=STRINGS,
        emails=STRINGS,
        uris=STRINGS,
        profile=nullable({"type": "string", "enum": ["", *PROFILES]}),
        validity_days=nullable({"type": "integer", "minimum": 1, "maximum": MAX_VALIDITY_DAYS}),
        csr=nullable({"type": "string", "maxLength": 32 * 1024, "description": "a PEM certificate request"}),
        key_algorithm=nullable({"type": "string", "enum": list(KEY_ALGORITHMS)}),
        issuer=nullable(STRING),
    ),
    "Issued": obj(
        ("serial", "issuer", "subject", "not_before", "not_after", "certificate", "seq"),
        closed=False,
        serial=SERIAL,
        issuer={"type": "string"},
        subject={"type": "string"},
        not_before={"type": "string"},
        not_after={"type": "string"},
        certificate={"type": "string"},
        private_key={"type": "string", "description": "PEM, only when pca generated the key (no csr)"},
        seq=SEQ,
    ),
    "Certificate": obj(
        ("serial", "issuer", "subject", "profile", "status", "not_before", "not_after", "revoked_at", "reason"),
        closed=False,
        serial=SERIAL,
        issuer={"type": "string"},
        subject={"type": "string"},
        profile={"type": "string"},
        status={"type": "string"},
        not_before={"type": "string"},
        not_after={"type": "string"},
        revoked_at=_OPT_TIME,
        reason=nullable({"type": "string"}),
        invalidity_date=_OPT_TIME,
    ),
    "RevokeRequest": obj(("reason",), reason=REASON, invalidity_date=nullable(TIME), issuer=nullable(STRING)),
    "CARevokeRequest": obj(("reason",), reason=REASON, invalidity_date=nullable(TIME)),
    "ReleaseRequest": obj(issuer=nullable(STRING)),
    "RevokeIssuedRequest": obj(
        reason={"type": "string", "enum": list(ISSUED_REASONS), "default": DEFAULT_REASON},
        invalidity_date=nullable(TIME),
        include_expired={"type": "boolean", "default": False},
        limit={"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    ),
    "IssuedRevoked": obj(
        ("issuer_id", "reason", "revoked", "already_revoked", "skipped_expired", "skipped_ca", "remaining"),
        closed=False,
        issuer_id={"type": "string"},
        reason={"type": "string"},
        revoked_at={"type": "string"},
        revoked={"type": "integer", "minimum": 0, "description": "by this call"},
        already_revoked={"type": "integer", "minimum": 0, "description": "revoked for good before (or during) it"},
        skipped_expired={"type": "integer", "minimum": 0},
        skipped_ca={"type": "integer", "minimum": 0, "description": "the issuer's sub-CAs met so far"},
        remaining={"type": "integer", "minimum": 0, "description": "what a further call would look at"},
        first_seq=nullable(SEQ),
        last_seq=nullable(SEQ),
    ),
    "Empty": obj(),
    "Revoked": obj(
        ("serial", "issuer", "status", "reason", "revoked_at", "event"),
        closed=False,
        serial=SERIAL,
        issuer={"type": "string"},
        issuer_id={"type": "string", "description": "the CA whose certificate this is (issuer routes)"},
        status={"const": "revoked"},
        reason={"type": "string"},
        revoked_at={"type": "string"},
        invalidity_date=_OPT_TIME,
        event=ref("Event"),
    ),
    "Released": obj(
        ("serial", "status", "event"),
        closed=False,
        serial=SERIAL,
        issuer={"type": "string"},
        issuer_id={"type": "string"},
        status={"const": "good"},
        event=ref("Event"),
    ),
    "ImportRequest": {
        "oneOf": [
            obj(
                ("certificate",),
                issuer=nullable(STRING),
                certificate={"type": "string"},
                revoked=ref("ImportedRevocation"),
            ),
            obj(
                ("certificates",),
                issuer=nullable(STRING),
                certificates={
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BATCH,
                    "items": {
                        "anyOf": [
                            {"type": "string", "description": "a PEM certificate"},
                            obj(("certificate",), certificate={"type": "string"}, revoked=ref("ImportedRevocation")),
                        ]
                    },
                },
            ),
        ]
    },
    "ImportedRevocation": nullable(
        obj(("revoked_at",), revoked_at=TIME, reason={"type": "string"}, invalidity_date=nullable(TIME))
    ),
    "Imported": obj(
        ("issuer", "recorded", "already_present", "issuer_itself", "seq", "results"),
        closed=False,
        issuer={"type": "string"},
        recorded={"type": "integer"},
        already_present={"type": "integer"},
        issuer_itself={"type": "integer"},
        seq=nullable(SEQ),
        results={"type": "array", "items": {"type": "object"}},
    ),
    "Timeline": obj(
        ("issuer_id", "serial", "seq", "committed_at", "responders", "pending", "slo_seconds"),
        closed=False,
        issuer_id={"type": "string"},
        serial=SERIAL,
        seq=SEQ,
        committed_at={"type": "string"},
        responders={"type": "array", "items": {"type": "object"}},
        pending={"type": "array", "items": {"type": "string"}},
        slo_seconds={"type": "number"},
    ),
    "Issuers": obj(
        ("issuers",),
        closed=False,
        issuers={
            "type": "array",
            "items": obj(
                ("issuer_id", "kind", "certificate_pem"),
                closed=False,
                issuer_id={"type": "string"},
                kind={"type": "string"},
                parent_id=nullable({"type": "string"}),
                certificate_pem={"type": "string"},
                crl_url=nullable({"type": "string"}),
            ),
        },
    ),
    "RevocationPage": obj(
        ("revocations", "last_seq", "head"),
        closed=False,
        revocations={
            "type": "array",
            "items": obj(
                ("seq", "issuer_id", "serial", "reason", "revoked_at", "recorded_at"),
                closed=False,
                seq=SEQ,
                issuer_id={"type": "string"},
                serial={"type": "string"},
                reason={"type": "string"},
                revoked_at={"type": "string"},
                recorded_at={"type": "string"},
            ),
        },
        last_seq={"type": "integer", "minimum": 0},
        head={"type": "integer", "minimum": 0},
    ),
    "EventPage": obj(
        ("events", "head"),
        closed=False,
        events={"type": "array", "items": ref("Event")},
        head={"type": "integer", "minimum": 0},
    ),
    "AuditReport": obj(
        ("ok",),
        closed=False,
        ok={"type": "boolean"},
        events={"type": "integer"},
        first_bad_seq={"type": "integer"},
        projection=nullable({"type": "object"}),
        detail={"type": "string"},
    ),
    "ProbeRequest": obj(
        ("issuer_id", "serial", "seq", "responder_url", "seen_at"),
        issuer_id=ISSUER_ID,
        serial=SERIAL,
        seq=SEQ,
        responder_url=URL,
        seen_at=TIME,
    ),
    "Probe": obj(
        ("issuer_id", "serial", "seq", "responder_url", "seen_at"),
        closed=False,
        issuer_id={"type": "string"},
        serial=SERIAL,
        seq=SEQ,
        responder_url={"type": "string"},
        seen_at={"type": "string"},
    ),
    "InstallationRequest": obj(
        ("agent", "crl_url", "issuer_key_id", "crl_number", "delta", "idp_url", "this_update", "installed_at"),
        agent={"type": "string", "pattern": f"^{AGENT_ID.pattern}$"},
        crl_url=URL,
        issuer_key_id=nullable({"type": "string", "pattern": f"^{KEY_ID.pattern}$"}),
        crl_number={"type": "integer", "minimum": 0, "maximum": MAX_CRL_NUMBER - 1},
        delta={"type": "boolean"},
        idp_url=nullable(URL),
        this_update=TIME,
        installed_at={**TIME, "description": "in UTC (Z or +00:00)"},
    ),
    "Installation": obj(
        ("agent", "issuer_id", "shard", "kind", "number", "position", "installed_at"),
        closed=False,
        agent={"type": "string"},
        issuer_id={"type": "string"},
        shard={"type": "integer"},
        kind={"type": "string", "enum": ["full", "delta"]},
        number={"type": "integer"},
        position={"type": "integer"},
        installed_at={"type": "string"},
    ),
    "Health": obj(("status",), closed=False, status={"type": "string"}),
}
for _name, _examples in EXAMPLES.items():
    COMPONENTS[_name]["examples"] = _examples
