"""``POST /v1/issuers/{issuer_id}/revoke`` and ``.../release-hold``: an issuing CA's own certificate (admin only).

Body ``{"reason": "cACompromise", "invalidity_date"?: ISO 8601}``. The CA's certificate, as recorded
under the CA above it (pca's root, or the external CA it was imported under), is revoked: that CA's
CRL and OCSP list it, issuance under the revoked CA stops with a 409, ``/healthz`` names it. A
repeat answers 200 with the original event. ``release-hold`` (no body) releases a CA put on
``certificateHold``. The routes for leaves refuse CA certificates (403) so that a revoker, or a slip
of the serial, cannot stop a CA or restart one.
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

log = logging.getLogger("pca.api")

T = TypeVar("T")


async def leaf_only(operation: Awaitable[T]) -> T:
    """Run a change of a certificate's status by a route for leaves: a CA certificate is a 403 there,
    whatever the role (``CACertificateError`` names the issuer route to use)."""
    try:
        return await operation
    except CACertificateError as exc:
        raise Problem(403, "Forbidden", str(exc)) from exc


async def ca_operation(authority: Authority, request: Request, actor: Actor, operation: str) -> Response:
    issuer_id = request.path_params["id"]
    if not 0 < len(issuer_id) <= 64:
        raise ValidationError("issuer id must be 1 to 64 characters")
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
