"""``POST /v1/certificates/import``: the issuing core of an external CA records what it has just issued.

One certificate (``{"certificate": PEM}``) or a batch (``{"certificates": [...]}``), each a PEM
string or ``{"certificate": PEM, "revoked": {"revoked_at", "reason", "invalidity_date"}}``; the
issuer by id (``"issuer"``) or, when omitted, the recorded issuer whose subject the certificates
name. A request is all or nothing: every certificate is checked (signed by the issuer, serial not
recorded with other contents) before anything is appended, and the 2xx comes after the commit.
The decisions are ``pca import``'s (``revocation.importing.plan``).
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from revocation.admin.http import Problem, check_fields
from revocation.authority import Actor
from revocation.ca_status import CAStatusView, issuer_problem
from revocation.clock import Clock, SystemClock, parse_iso
from revocation.errors import ConcurrencyError, ConflictError, NotFoundError, ValidationError
from revocation.eventlog import EventLog
from revocation.importing.checks import Checked, check_chunk
from revocation.importing.plan import (
    ALREADY_PRESENT,
    CONFLICT,
    IMPORTED,
    ISSUER_ITSELF,
    REFUSED,
    REVOCATION_RECORDED,
    Outcome,
    Revocation,
    plan,
)
from revocation.projection import IssuerRecord

MAX_BATCH = 1000  # certificates per request
_SHOWN = 10  # refusals named in a problem's detail
_RETRIES = 5


def _time(value: object, what: str) -> datetime.datetime:
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be an ISO 8601 string, got {value!r}")
    try:
        return parse_iso(value).replace(microsecond=0)
    except (ValueError, OverflowError) as exc:
        raise ValidationError(f"{what} {value[:64]!r} is not an ISO 8601 time with a zone: {exc}") from None


def _revocation(value: object, where: str) -> Revocation | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValidationError(f"{where}.revoked must be an object with revoked_at and reason")
    check_fields(value, ("revoked_at", "reason", "invalidity_date"), f"{where}.revoked")
    reason = value.get("reason", "unspecified")
    if not isinstance(reason, str):
        raise ValidationError(f"{where}.revoked.reason must be a string such as keyCompromise")
    invalidity = value.get("invalidity_date")
    return Revocation(
        _time(value.get("revoked_at"), f"{where}.revoked.revoked_at"),
        reason,
        None if invalidity is None else _time(invalidity, f"{where}.revoked.invalidity_date"),
    )


def _entries(body: dict[str, Any]) -> list[tuple[str, x509.Certificate, Revocation | None]]:
    if ("certificate" in body) == ("certificates" in body):
        raise ValidationError('give either "certificate" (one PEM) or "certificates" (a list)')
    check_fields(body, ("issuer", "certificate", "revoked") if "certificate" in body else ("issuer", "certificates"))
    single = "certificate" in body
    raw = [body] if single else body["certificates"]
    if not isinstance(raw, list) or not raw:
        raise ValidationError("certificates must be a non-empty list")
    if len(raw) > MAX_BATCH:
        raise Problem(413, "Payload Too Large", f"at most {MAX_BATCH} certificates per request, got {len(raw)}")
    out = []
    for n, entry in enumerate(raw):
        where = "certificate" if single else f"certificates[{n}]"
        revoked: object = None
        if isinstance(entry, dict) and not single:
            check_fields(entry, ("certificate", "revoked"), where)
            revoked, entry = entry.get("revoked"), entry.get("certificate")
        elif single:
            revoked, entry = body.get("revoked"), body.get("certificate")
        if not isinstance(entry, str):
            raise ValidationError(f"{where} must be a PEM string (or, in a list, an object with certificate)")
        if "-----BEGIN CERTIFICATE-----" not in entry:
            raise ValidationError(f"{where} is not a PEM certificate: no '-----BEGIN CERTIFICATE-----' block")
        try:
            cert = x509.load_pem_x509_certificate(entry.encode())
        except ValueError as exc:
            # The library's own wording (and the help link it carries) means little to an API caller.
            reason = "its base64 or DER does not parse" if "parsing asn1" in str(exc) else "it does not parse"
            raise ValidationError(f"{where} is not a PEM certificate: {reason}") from exc
        out.append((where, cert, _revocation(revoked, where)))
    return out


def _issuer(issuers: list[IssuerRecord], issuer_id: object, first: x509.Certificate) -> IssuerRecord:
    if issuer_id is not None:
        if not isinstance(issuer_id, str):
            raise ValidationError(f"issuer must be a string, got {issuer_id!r}")
        for rec in issuers:
            if rec.issuer_id == issuer_id:
                return rec
        raise NotFoundError(f"unknown issuer {issuer_id!r}")
    named = [rec for rec in issuers if rec.cert.subject == first.issuer]
    if len(named) != 1:
        issuer_name = first.issuer.rfc4514_string()
        if not named:
            raise NotFoundError(f"no recorded issuer has the subject {issuer_name!r} the certificate names")
        raise ValidationError(f"several issuers have the subject {issuer_name!r}; name one with issuer")
    return named[0]


def _refusal(refusals: list[Outcome]) -> Problem:
    shown = "; ".join(str(o) for o in refusals[:_SHOWN])
    more = f"; and {len(refusals) - _SHOWN} more" if len(refusals) > _SHOWN else ""
    detail = f"nothing recorded: {shown}{more}"
    if any(o.kind == CONFLICT for o in refusals):
        return Problem(409, "Conflict", detail)
    return Problem(422, "Unprocessable Content", detail)


class CertificateRecorder:
    """Records certificates another CA issued, through the same decisions as ``pca import``."""

    def __init__(self, log: EventLog, view: CAStatusView, clock: Clock | None = None) -> None:
        self._log = log
        self._view = view
        self._clock = clock or SystemClock()

    async def record(self, body: dict[str, Any], actor: Actor) -> tuple[int, dict[str, Any]]:
        """The HTTP status and JSON body of recording ``body``; raises Problem or PCAError on refusal."""
        entries = _entries(body)
        issuer = _issuer(await self._view.issuers(), body.get("issuer"), entries[0][1])
        # A CA whose own certificate expired or was revoked issues nothing pca should vouch for.
        problem = await issuer_problem(self._view, issuer, self._clock.now())
        if problem is not None:
            raise Problem(422, "Unprocessable Content", f"nothing recorded: {problem}")
        issuer_der = issuer.cert.public_bytes(Encoding.DER)
        ders = [cert.public_bytes(Encoding.DER) for _, cert, _ in entries]
        # signature checks off the event loop: a full batch takes tens of milliseconds
        results = await asyncio.to_thread(check_chunk, issuer_der, ders)
        items: list[tuple[str, Checked, Revocation | None]] = []
        failed: list[Outcome] = []
        for (where, _, revocation), result in zip(entries, results, strict=True):
            if isinstance(result, Checked):
                items.append((where, result, revocation))
            else:
                failed.append(Outcome(where, None, REFUSED, result.message))
        if failed:
            raise _refusal(failed)
        for _ in range(_RETRIES):
            records = await self._view.recorded_certificates(issuer.issuer_id, [c.serial for _, c, _ in items])
            outcomes = plan(issuer.issuer_id, items, {r.serial: r for r in records}, actor, issuer_der)
            refusals = [o for o in outcomes if o.result == REFUSED]
            if refusals:
                raise _refusal(refusals)
            try:
                appended = await self._log.append([e for o in outcomes for e in o.events])
            except ConcurrencyError:
                continue  # recorded meanwhile (a retry of this very request, most likely): decide again
            break
        else:
            raise ConflictError(f"the certificates changed {_RETRIES} times while recording them; try again")
        last_seq = appended[-1].seq if appended else None
        results_json = [
            {"serial": f"{o.serial:x}", "result": o.result, "revoked": o.revoked, "where": o.where} for o in outcomes
        ]
        out: dict[str, Any] = {
            "issuer": issuer.issuer_id,
            "recorded": sum(o.result in (IMPORTED, REVOCATION_RECORDED) for o in outcomes),
            "already_present": sum(o.result == ALREADY_PRESENT for o in outcomes),
            "issuer_itself": sum(o.result == ISSUER_ITSELF for o in outcomes),
            "seq": last_seq,
            "results": results_json,
        }
        if "certificate" in body:
            out.update(serial=results_json[0]["serial"], result=results_json[0]["result"])
        return (201 if appended else 200), out
