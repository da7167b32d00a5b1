"""``POST /v1/propagation/crl-installations``: a relying party's CRL sync agent reports a CRL it installed.

The body is exactly what the agent (``pca crl-sync``) sends::

    {"agent": "nginx-1", "crl_url": "https://crl.example.com/issuing-ca-3.crl",
     "issuer_key_id": "<lowercase hex of the CRL's AuthorityKeyIdentifier>" | null,
     "crl_number": 17, "delta": false, "idp_url": "<the CRL's IDP URL>" | null,
     "this_update": "<ISO 8601>", "installed_at": "<ISO 8601, UTC>"}

Every field is required (the nullable ones as null) and no other is accepted (400). The CRL is resolved
to one pca published: the issuer whose certificate's key identifier is ``issuer_key_id``, the shard
its IDP URL names (else its URL, else 0), the kind, the number; then the publication the CRL
publisher recorded (``crl_publications``). A CRL pca never published (an unknown key, an external
CA's own CRL, a number pca never used) is a 404 saying which; an ``installed_at`` in the future or
before the CRL's publication is a 422 (clock skew). A report is an observation, not an event: it is
stored beside the tracker's figures and logged (actor, request id), not audited. The same
(agent, CRL) reported again answers 200 and keeps the earliest ``installed_at``.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

from cryptography import x509

from revocation.admin.http import MAX_URL_LENGTH, Problem, is_url
from revocation.authority import Actor
from revocation.coordination import CRLInstallation, CRLPublication
from revocation.crl_layout import shard_from_url
from revocation.errors import ValidationError
from revocation.projection import IssuerDirectory, IssuerRecord
from revocation.propagation.timeline import epoch_iso

log = logging.getLogger("pca.api")

FIELDS = ("agent", "crl_url", "issuer_key_id", "crl_number", "delta", "idp_url", "this_update", "installed_at")
AGENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
KEY_ID = re.compile(r"(?:[0-9a-f]{2}){1,64}")
MAX_CRL_NUMBER = 2**159  # RFC 5280 5.2.3: at most 20 octets
MAX_FUTURE = 300.0  # seconds an installed_at may lie ahead of this server's clock
# An agent may fetch a CRL a moment before the publisher records it (it records after storing it).
PUBLICATION_TOLERANCE = 1.0


class InstallationStore(Protocol):
    """What the endpoint needs of the coordination store (an ``InstallationLog`` is one)."""

    async def crl_publication(self, issuer_id: str, shard: int, kind: str, number: int) -> CRLPublication | None: ...

    async def record_crl_installation(self, installation: CRLInstallation) -> tuple[CRLInstallation, bool]: ...


@dataclasses.dataclass(frozen=True)
class Report:
    agent: str
    crl_url: str
    issuer_key_id: str | None
    number: int
    delta: bool
    idp_url: str | None
    this_update: str
    installed_at: float


def _time(body: dict[str, Any], key: str, *, utc: bool) -> float:
    value = body[key]
    if not isinstance(value, str):
        raise ValidationError(f"{key} must be an ISO 8601 string, got {value!r}")
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        offset = moment.utcoffset()
        if offset is None:
            raise ValueError("no timezone (add Z or +00:00)")
        if utc and offset:
            raise ValueError("not in UTC (Z or +00:00)")
        return moment.timestamp()
    except (ValueError, OverflowError) as exc:
        raise ValidationError(f"{key} {value!r} is not an ISO 8601 time: {exc}") from exc


def parse_report(body: dict[str, Any]) -> Report:
    """The report, every field checked (a ``ValidationError``, a 400, names the first bad one)."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ValidationError(f"unknown fields {', '.join(unknown)}; a report has {', '.join(FIELDS)}")
    missing = [key for key in FIELDS if key not in body]
    if missing:
        raise ValidationError(f"missing fields {', '.join(missing)} (give null where there is none)")
    agent = body["agent"]
    if not isinstance(agent, str) or not AGENT_ID.fullmatch(agent):
        raise ValidationError(f"agent must be 1 to 64 characters of A-Z a-z 0-9 . _ -, got {agent!r}")
    crl_url = body["crl_url"]
    if not isinstance(crl_url, str) or not is_url(crl_url):
        raise ValidationError(f"crl_url must be an http(s) URL of at most {MAX_URL_LENGTH} characters")
    key_id = body["issuer_key_id"]
    if key_id is not None and (not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id)):
        raise ValidationError(f"issuer_key_id must be lowercase hexadecimal (whole bytes) or null, got {key_id!r}")
    number = body["crl_number"]
    if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < MAX_CRL_NUMBER:
        raise ValidationError(f"crl_number must be an integer from 0 to 2**159 - 1, got {number!r}")
    delta = body["delta"]
    if not isinstance(delta, bool):
        raise ValidationError(f"delta must be true or false, got {delta!r}")
    idp_url = body["idp_url"]
    if idp_url is not None and (not isinstance(idp_url, str) or not is_url(idp_url, any_scheme=True)):
        raise ValidationError(f"idp_url must be a URL of at most {MAX_URL_LENGTH} characters or null")
    _time(body, "this_update", utc=False)
    installed_at = _time(body, "installed_at", utc=True)
    return Report(agent, crl_url, key_id, number, delta, idp_url, body["this_update"], installed_at)


def key_identifier(cert: x509.Certificate) -> str:
    """The certificate's SubjectKeyIdentifier (what a CRL's AuthorityKeyIdentifier names), in hex;
    computed from its public key when it carries none (as pca's CRLs then do)."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest.hex()


def shard_of(issuer_id: str, report: Report) -> int:
    """The shard the CRL's IDP URL names, else its URL (a delta's named as its base's), else 0."""
    urls = [report.idp_url, report.crl_url, report.crl_url.replace("-delta.crl", ".crl")]
    for url in urls:
        shard = None if url is None else shard_from_url(issuer_id, url)
        if shard is not None:
            return shard
    return 0


class InstallationRecorder:
    def __init__(
        self, issuers: IssuerDirectory, store: InstallationStore, *, now: Callable[[], float] = time.time
    ) -> None:
        self._issuers = issuers
        self._store = store
        self._now = now

    async def record(self, body: dict[str, Any], actor: Actor) -> tuple[int, dict[str, Any]]:
        """The status (201 new, 200 reported before) and the installation as stored."""
        report = parse_report(body)
        issuer, publication = await self._resolve(report)
        now = self._now()
        if report.installed_at > now + MAX_FUTURE:
            ahead = report.installed_at - now
            raise Problem(
                422,
                "Unprocessable Content",
                f"installed_at {body['installed_at']} is {ahead:.0f} s ahead of this server's clock: "
                "clock skew (is the agent's host running NTP?)",
            )
        if report.installed_at < publication.published_at - PUBLICATION_TOLERANCE:
            raise Problem(
                422,
                "Unprocessable Content",
                f"installed_at {body['installed_at']} is before {publication.kind} CRL {publication.number} of "
                f"{issuer.issuer_id} was published ({epoch_iso(publication.published_at)}): clock skew "
                "(is the agent's host running NTP?)",
            )
        stored, created = await self._store.record_crl_installation(
            CRLInstallation(
                report.agent,
                publication.issuer_id,
                publication.shard,
                publication.kind,
                publication.number,
                publication.position,
                report.installed_at,
            )
        )
        log.info(
            "CRL installation reported by %s (request %s): agent %s installed %s CRL %d of %s shard %d at %s%s",
            actor.name,
            actor.request_id,
            stored.agent,
            stored.kind,
            stored.number,
            stored.issuer_id,
            stored.shard,
            body["installed_at"],
            "" if created else " (reported before)",
        )
        out = {
            "agent": stored.agent,
            "issuer_id": stored.issuer_id,
            "shard": stored.shard,
            "kind": stored.kind,
            "number": stored.number,
            "position": stored.position,
            "installed_at": epoch_iso(stored.installed_at),
        }
        return (201 if created else 200), out

    async def _resolve(self, report: Report) -> tuple[IssuerRecord, CRLPublication]:
        if report.issuer_key_id is None:
            raise Problem(
                404,
                "Not Found",
                "the CRL has no AuthorityKeyIdentifier (issuer_key_id is null); every CRL pca publishes has one, "
                "so pca did not publish this CRL",
            )
        issuers = [i for i in await self._issuers.issuers() if key_identifier(i.cert) == report.issuer_key_id]
        if not issuers:
            raise Problem(
                404, "Not Found", f"no issuer pca knows has the key identifier {report.issuer_key_id} (issuer_key_id)"
            )
        kind = "delta" if report.delta else "full"
        tried = []
        for issuer in issuers:
            shard = shard_of(issuer.issuer_id, report)
            publication = await self._store.crl_publication(issuer.issuer_id, shard, kind, report.number)
            if publication is not None:
                return issuer, publication
            keyless = " (pca does not publish its CRLs: it does not hold its key)" if issuer.key_ref is None else ""
            tried.append(f"{issuer.issuer_id} shard {shard}{keyless}")
        raise Problem(
            404,
            "Not Found",
            f"pca never published {kind} CRL number {report.number} of {'; '.join(tried)}",
        )
