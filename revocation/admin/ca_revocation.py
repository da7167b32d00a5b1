"""``POST /v1/issuers/{issuer_id}/revoke`` and ``.../release-hold``: an issuing CA's own certificate (admin only).

Body ``{"reason": "cACompromise", "invalidity_date"?: ISO 8601}``. The CA's certificate, as recorded
under the CA above it (pca's root, or the external CA it was imported under), is revoked: that CA's
CRL and OCSP list it, issuance under the revoked CA stops with a 409, ``/healthz`` names it. A
repeat answers 200 with the original event. ``release-hold`` (no body) releases a CA put on
``certificateHold``. The routes for leaves refuse CA certificates (403) so that a revoker, or a slip
of the serial, cannot stop a CA or restart one.

``POST /v1/issuers/{issuer_id}/revoke-issued`` revokes what the CA issued (``revocation.issued_revocation``):
body ``{"reason"?: "cACompromise", "invalidity_date"?, "include_expired"?: false, "limit"?: 10000}`` (or none),
answer ``{revoked, already_revoked, skipped_expired, skipped_ca, remaining, ...}``; call again until
``remaining`` is 0.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from revocation.admin.http import Problem, check_fields, json_body, opt_time
from revocation.authority import Actor, Authority
from revocation.ca_status import CACertificateError
from revocation.errors import ValidationError
from revocation.issued_revocation import DEFAULT_LIMIT, DEFAULT_REASON, MAX_LIMIT, IssuedRevocation, RevokeIssuedOptions

log = logging.getLogger("pca.api")

T = TypeVar("T")


async def leaf_only(operation: Awaitable[T]) -> T:
    """Run a change of a certificate's status by a route for leaves: a CA certificate is a 403 there,
    whatever the role (``CACertificateError`` names the issuer route to use)."""
    try:
        return await operation
    except CACertificateError as exc:
        raise Problem(403, "Forbidden", str(exc)) from exc


def _issuer_id(request: Request) -> str:
    issuer_id = str(request.path_params["id"])
    if not 0 < len(issuer_id) <= 64:
        raise ValidationError("issuer id must be 1 to 64 characters")
    return issuer_id


async def ca_operation(authority: Authority, request: Request, actor: Actor, operation: str) -> Response:
    issuer_id = _issuer_id(request)
    if operation == "release-hold":
        check_fields(await json_body(request, allow_empty=True), ())
        event = await authority.release_ca_hold(issuer_id, actor)
        log.warning("CA certificate of issuer %s released by %s (request %s)", issuer_id, actor.name, actor.request_id)
        released = event.payload
        out = {"issuer_id": issuer_id, "serial": released["serial"], "issuer": released["issuer_id"], "status": "good"}
        return JSONResponse({**out, "event": event.to_json()})
    body = await json_body(request)
    check_fields(body, ("reason", "invalidity_date"))
    reason = body.get("reason")
    if not isinstance(reason, str):
        raise ValidationError("reason is required (a string such as cACompromise)")
    outcome = await authority.revoke_ca(issuer_id, reason, actor, invalidity_date=opt_time(body, "invalidity_date"))
    p = outcome.event.payload
    log.warning(
        "CA certificate of issuer %s revoked by %s (request %s): %s", issuer_id, actor.name, actor.request_id, reason
    )
    out = {
        "issuer_id": issuer_id,
        "serial": p["serial"],
        "issuer": p["issuer_id"],
        "status": "revoked",
        "reason": p["reason"],
        "revoked_at": p["revoked_at"],
        "invalidity_date": p.get("invalidity_date"),
        "event": outcome.event.to_json(),
    }
    return JSONResponse(out, status_code=201 if outcome.created else 200)


ISSUED_FIELDS = ("reason", "invalidity_date", "include_expired", "limit")


async def revoke_issued(revoker: IssuedRevocation | None, request: Request, actor: Actor) -> Response:
    """Revoke what issuer ``id`` issued, at most ``limit`` certificates of it per call (admin only)."""
    if revoker is None:
        raise Problem(503, "Service Unavailable", "revoking what an issuer issued is not configured on this server")
    issuer_id = _issuer_id(request)
    body = await json_body(request, allow_empty=True)
    check_fields(body, ISSUED_FIELDS)
    reason = body.get("reason", DEFAULT_REASON)
    if not isinstance(reason, str):
        raise ValidationError(f"reason must be a string such as {DEFAULT_REASON}")
    include_expired = body.get("include_expired", False)
    if not isinstance(include_expired, bool):
        raise ValidationError("include_expired must be true or false")
    limit = body.get("limit", DEFAULT_LIMIT)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit must be an integer from 1 to {MAX_LIMIT}")
    options = RevokeIssuedOptions(reason, opt_time(body, "invalidity_date"), include_expired, limit)
    summary = await revoker.revoke_issued(issuer_id, options, actor)
    return JSONResponse(summary.to_json())
