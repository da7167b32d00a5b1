"""The admin API (Starlette), served on the admin listener only.

Authentication: bearer tokens (hashed at rest, compared in constant time, optionally expiring,
revocable), with roles admin, revoker, auditor, prober, recorder and agent; which role may call which
route is ``revocation.admin.access.ACCESS``. Every error is ``application/problem+json``
with a title and a detail saying what was wrong. A 2xx is sent only after the
event is committed.

Propagation: ``GET /v1/certificates/{serial}/propagation`` shows where a
revocation has got to (the tracker's timeline); a black-box prober reads
``/v1/revocations`` and ``/v1/issuers`` and reports what it saw over HTTP with
``POST /v1/propagation/probes``; a relying party's CRL sync agent reports each CRL it installed with
``POST /v1/propagation/crl-installations`` (``revocation.admin.installations``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from revocation.admin import access, openapi
from revocation.admin.answers import certificate_json, issuer_json
from revocation.admin.ca_revocation import ca_operation, leaf_only, revoke_issued
from revocation.admin.http import (
    MAX_URL_LENGTH,
    BodyLimit,
    Problem,
    TooLarge,
    check_fields,
    check_query,
    int_param,
    is_url,
    json_body,
    not_allowed,
    not_found,
    opt_int,
    opt_str,
    opt_time,
    problem_response,
    str_list,
)
from revocation.admin.installations import InstallationRecorder
from revocation.admin.metrics import NO_ROLE, ApiMetrics
from revocation.admin.recording import CertificateRecorder
from revocation.admin.revocations import revocation_answer
from revocation.admin.schemas import MAX_VALIDITY_DAYS
from revocation.admin.tokens import Principal, TokenRefused, TokenStore
from revocation.audit import audit_report
from revocation.authority import Actor, Authority, IssueRequest, parse_serial
from revocation.clock import Clock, SystemClock, iso, parse_iso
from revocation.coordination import ProbeResult
from revocation.errors import ConflictError, IntegrityError, NotFoundError, PCAError, ValidationError
from revocation.eventlog import EventLog, RecordedEvent
from revocation.events import CertificateRevoked
from revocation.issued_revocation import IssuedRevocation
from revocation.issuer_summary import PcaURLs, SummaryView, issuer_summaries
from revocation.projection import StatusView
from revocation.propagation.timeline import Timeline

log = logging.getLogger("pca.api")

ISSUE_FIELDS = ("subject", "dns", "ips", "emails", "uris", "profile", "validity_days", "csr", "key_algorithm", "issuer")


class Tracker(Protocol):
    """What the API needs of the propagation tracker."""

    async def find_timeline(self, issuer_id: str, serial: int) -> Timeline | None:
        """The timeline of the certificate's latest revocation, or None if it was never revoked.

        Served as ``Timeline.to_json`` gives it, so the API adds nothing to what the tracker found.
        """
        ...


class ProbeRecorder(Protocol):
    """What the API needs of the coordination store (a ``ProbeStore`` is one)."""

    async def record_probe(self, result: ProbeResult) -> None: ...


HealthCheck = Callable[[], Awaitable[dict[str, Any]]]


class AdminAPI:
    def __init__(
        self,
        authority: Authority,
        log_: EventLog,
        tokens: Callable[[], TokenStore],
        registry: CollectorRegistry,
        *,
        max_body_bytes: int = 64 * 1024,
        health: HealthCheck | None = None,
        tracker: Tracker | None = None,
        coordination: ProbeRecorder | None = None,
        issuer_stats: tuple[SummaryView, PcaURLs] | None = None,
        recorder: CertificateRecorder | None = None,
        installations: InstallationRecorder | None = None,
        client_auth: Callable[[Request], Awaitable[Principal | None]] | None = None,
        projection: StatusView | None = None,
        issued: IssuedRevocation | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``issuer_stats`` (the projection and pca's URLs) adds counts, signer, CRL and URL survey to
        ``GET /v1/issuers`` (``revocation.issuer_summary``). ``clock`` judges tokens' and CAs' expiry."""
        self._authority = authority
        self._log = log_
        self._tokens = tokens
        self._registry = registry
        self._max_body = max_body_bytes
        self._health = health
        self._tracker = tracker
        self._coordination = coordination
        self._issuer_stats = issuer_stats
        self._recorder = recorder
        self._installations = installations
        self._client_auth = client_auth  # admin.client_ca: a request without a token may present a certificate
        self._projection = projection  # audit verify compares it with a replay of the log
        self._issued = issued  # POST /v1/issuers/{id}/revoke-issued
        self._clock = clock or SystemClock()
        self._metrics = ApiMetrics(registry)

    def app(self) -> ASGIApp:
        # Each route's roles come from revocation.admin.access (one table, shown in the README).
        route = self._route
        routes = [
            route("POST", "/v1/certificates", self.issue),
            route("POST", "/v1/certificates/import", self.record),
            route("GET", "/v1/certificates/{serial}", self.get_certificate),
            route("POST", "/v1/certificates/{serial}/revoke", self.revoke),
            route("POST", "/v1/certificates/{serial}/release-hold", self.release_hold),
            route("GET", "/v1/certificates/{serial}/propagation", self.propagation),
            route("GET", "/v1/issuers", self.issuers),
            route("GET", "/v1/revocations", self.revocations),
            route("POST", "/v1/issuers/{id}/revoke", self.revoke_ca),
            route("POST", "/v1/issuers/{id}/release-hold", self.release_ca),
            route("POST", "/v1/issuers/{id}/revoke-issued", self.revoke_issued),
            route("POST", "/v1/propagation/probes", self.record_probe),
            route("POST", "/v1/propagation/crl-installations", self.record_installation),
            route("GET", "/v1/events", self.events),
            route("GET", "/v1/audit/verify", self.audit_verify),
            Route("/v1/openapi.json", openapi.serve, methods=[access.rule("GET", "/v1/openapi.json").method]),
            Route("/metrics", self.metrics, methods=[access.rule("GET", "/metrics").method]),
            Route("/healthz", self.healthz, methods=[access.rule("GET", "/healthz").method]),
        ]
        app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})
        return BodyLimit(app, self._max_body)

    def _route(self, method: str, path: str, handler: Callable[[Request, Actor], Awaitable[Response]]) -> Route:
        return Route(path, self._wrap(access.rule(method, path), handler), methods=[method])

    def _wrap(
        self, rule: access.Rule, handler: Callable[[Request, Actor], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        route = handler.__name__

        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            request_id, role = request.headers.get("x-request-id") or str(uuid.uuid4()), NO_ROLE
            try:
                principal = await self._principal(request)
                role = principal.role
                if principal.role not in rule.roles:
                    raise Problem(403, "Forbidden", f"role {principal.role!r} may not {rule.action}")
                response = await handler(request, Actor(principal.name, request_id[:128]))
            except Problem as p:
                response = problem_response(p.status, p.title, p.detail, p.headers)
            except ValidationError as exc:
                response = problem_response(400, "Bad Request", str(exc))
            except NotFoundError as exc:
                response = problem_response(404, "Not Found", str(exc))
            except ConflictError as exc:
                response = problem_response(409, "Conflict", str(exc))
            except ClientDisconnect:  # gone, or cut off at the body timeout (408 sent): nobody to answer
                log.info("request %s: the client left before its body arrived", request_id)
                response = problem_response(408, "Request Timeout", "the request body did not arrive")
            except TooLarge:
                response = problem_response(413, "Payload Too Large", f"bodies are limited to {self._max_body} bytes")
            except IntegrityError as exc:
                response = problem_response(500, "Integrity Error", str(exc))
            except PCAError as exc:
                log.error("request %s failed: %s", request_id, exc)
                response = problem_response(503, "Service Unavailable", str(exc))
            except Exception:
                log.exception("request %s failed", request_id)
                response = problem_response(500, "Internal Server Error", f"unexpected error; request id {request_id}")
            response.headers["x-request-id"] = request_id
            # Nothing an authenticated route answers (a private key included) may be kept by a cache.
            response.headers["cache-control"] = "no-store"
            self._metrics.observe(route, response.status_code, role, time.perf_counter() - started)
            return response

        return endpoint

    async def _principal(self, request: Request) -> Principal:
        if self._client_auth is not None and "authorization" not in request.headers:
            found = await self._client_auth(request)
            if found is not None:
                return found
        return self._authenticate(request)

    def _authenticate(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="pca"'}
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(401, "Unauthorized", "missing bearer token (Authorization: Bearer ...)", challenge)
        try:
            tokens = self._tokens()
        except PCAError as exc:  # say nothing about the server's files to an unauthenticated caller
            log.error("cannot load the admin tokens: %s", exc)
            raise Problem(503, "Service Unavailable", "the token store cannot be read; see the server log") from exc
        try:
            return tokens.check(token.strip(), self._clock.now())
        except TokenRefused as exc:  # unknown, revoked or expired: only a holder of the token learns which
            log.warning("rejected a bearer token from %s: %s", request.client.host if request.client else "?", exc)
            raise Problem(401, "Unauthorized", str(exc), challenge) from None

    # --- handlers -----------------------------------------------------------------

    async def issue(self, request: Request, actor: Actor) -> Response:
        body = await json_body(request)
        check_fields(body, ISSUE_FIELDS)
        csr = opt_str(body, "csr", max_length=32 * 1024)
        validity = opt_int(body, "validity_days", 1, MAX_VALIDITY_DAYS)
        req = IssueRequest(
            subject=opt_str(body, "subject"),
            dns=str_list(body, "dns"),
            ips=str_list(body, "ips"),
            emails=str_list(body, "emails"),
            uris=str_list(body, "uris"),
            profile=opt_str(body, "profile") or "server",
            validity_days=validity,
            csr=csr.encode() if csr else None,
            key_algorithm=opt_str(body, "key_algorithm"),
            issuer_id=opt_str(body, "issuer"),
        )
        issued = await self._authority.issue(req, actor)
        cert = issued.certificate
        out: dict[str, Any] = {
            "serial": f"{cert.serial_number:x}",
            "issuer": issued.event.payload["issuer_id"],
            "subject": cert.subject.rfc4514_string(),
            "not_before": iso(cert.not_valid_before_utc),
            "not_after": iso(cert.not_valid_after_utc),
            "certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "seq": issued.event.seq,
        }
        if issued.private_key_pem is not None:
            out["private_key"] = issued.private_key_pem.decode()
        return JSONResponse(out, status_code=201)

    async def record(self, request: Request, actor: Actor) -> Response:
        """Certificates an external CA issued, recorded as ``pca import`` records them."""
        if self._recorder is None:
            raise Problem(503, "Service Unavailable", "recording certificates is not configured on this server")
        status, out = await self._recorder.record(await json_body(request), actor)
        return JSONResponse(out, status_code=status)

    async def get_certificate(self, request: Request, actor: Actor) -> Response:
        check_query(request, ("issuer",))
        serial = parse_serial(request.path_params["serial"])
        rec = await self._authority.find(serial, request.query_params.get("issuer"))
        return JSONResponse(certificate_json(rec))

    async def revoke(self, request: Request, actor: Actor) -> Response:
        serial = parse_serial(request.path_params["serial"])
        body = await json_body(request)
        check_fields(body, ("reason", "invalidity_date", "issuer"))
        reason = body.get("reason")
        if not isinstance(reason, str):
            raise ValidationError("reason is required (a string such as keyCompromise)")
        inv = opt_time(body, "invalidity_date")
        issuer_id = opt_str(body, "issuer")
        outcome = await leaf_only(
            self._authority.revoke(serial, reason, actor, invalidity_date=inv, issuer_id=issuer_id)
        )
        return JSONResponse(_revocation_json(outcome.event), status_code=201 if outcome.created else 200)

    async def revoke_ca(self, request: Request, actor: Actor) -> Response:  # a CA's own certificate: admin only
        return await ca_operation(self._authority, request, actor, "revoke")

    async def release_ca(self, request: Request, actor: Actor) -> Response:
        return await ca_operation(self._authority, request, actor, "release-hold")

    async def revoke_issued(self, request: Request, actor: Actor) -> Response:  # what a CA issued: admin only
        return await revoke_issued(self._issued, request, actor)

    async def release_hold(self, request: Request, actor: Actor) -> Response:
        serial = parse_serial(request.path_params["serial"])
        body = await json_body(request, allow_empty=True)
        check_fields(body, ("issuer",))
        rec = await leaf_only(self._authority.release_hold(serial, actor, opt_str(body, "issuer")))
        return JSONResponse({"serial": f"{serial:x}", "status": "good", "event": rec.to_json()})

    async def events(self, request: Request, actor: Actor) -> Response:
        check_query(request, ("after", "limit"))
        after = int_param(request, "after", 0, 0, 2**62)
        limit = int_param(request, "limit", 100, 1, 1000)
        events = await self._log.read(after, limit)
        return JSONResponse({"events": [e.to_json() for e in events], "head": await self._log.head()})

    async def revocations(self, request: Request, actor: Actor) -> Response:
        """The revocations in the log, without actors, request ids or key references: what a prober follows."""
        return JSONResponse(await revocation_answer(request, self._log))

    async def propagation(self, request: Request, actor: Actor) -> Response:
        check_query(request, ("issuer",))
        serial = parse_serial(request.path_params["serial"])
        if self._tracker is None:
            raise Problem(503, "Service Unavailable", "propagation tracking is not configured on this server")
        rec = await self._authority.find(serial, request.query_params.get("issuer"))
        timeline = await self._tracker.find_timeline(rec.issuer_id, rec.serial)
        if timeline is None:
            raise NotFoundError(f"certificate {rec.serial_hex} from {rec.issuer_id} was never revoked")
        return JSONResponse(timeline.to_json())

    async def issuers(self, request: Request, actor: Actor) -> Response:
        check_query(request, ())
        ocsp_url = self._authority.ocsp_url
        records = await self._authority.issuers()
        out = [issuer_json(i, ocsp_url) for i in records]
        if self._issuer_stats is not None:
            view, urls = self._issuer_stats
            found = await issuer_summaries(view, urls, self._clock.now())
            summaries = {summary["issuer_id"]: summary for summary in found}
            for item in out:
                item.update({k: v for k, v in summaries.get(item["issuer_id"], {}).items() if k not in item})
        return JSONResponse({"issuers": out})

    async def record_probe(self, request: Request, actor: Actor) -> Response:
        """What a black-box prober saw: a responder first answered "revoked" at ``seen_at``.

        Probes are observations, not domain events: they are stored beside the
        tracker's figures, never in the log, so they are logged here, not audited.
        """
        if self._coordination is None:
            raise Problem(503, "Service Unavailable", "probe results cannot be stored: no coordination store")
        body = await json_body(request)
        check_fields(body, ("issuer_id", "serial", "seq", "responder_url", "seen_at"))
        issuer_id = body.get("issuer_id")
        if not isinstance(issuer_id, str) or not 0 < len(issuer_id) <= 64:
            raise ValidationError(f"issuer_id must be a string of 1 to 64 characters, got {issuer_id!r:.80}")
        raw_serial = body.get("serial")
        if not isinstance(raw_serial, str):
            raise ValidationError(f"serial must be a hexadecimal string, got {raw_serial!r}")
        serial = parse_serial(raw_serial)
        seq = body.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= 2**62:
            raise ValidationError(f"seq must be a positive integer, got {seq!r}")
        url = body.get("responder_url")
        if not isinstance(url, str) or not is_url(url):
            raise ValidationError(f"responder_url must be an http(s) URL of at most {MAX_URL_LENGTH} characters")
        raw_seen = body.get("seen_at")
        if not isinstance(raw_seen, str):
            raise ValidationError(f"seen_at must be an ISO 8601 string, got {raw_seen!r}")
        try:
            seen_at = parse_iso(raw_seen).timestamp()
        except (ValueError, OverflowError) as exc:
            raise ValidationError(f"seen_at {raw_seen[:64]!r} is not an ISO 8601 time: {exc}") from None
        await self._check_revocation(issuer_id, serial, seq)
        result = ProbeResult(issuer_id, serial, seq, url, seen_at)
        await self._coordination.record_probe(result)
        log.info(
            "probe by %s (request %s): %s saw %s/%x (seq %d) revoked at %s",
            actor.name,
            actor.request_id,
            url,
            issuer_id,
            serial,
            seq,
            raw_seen,
        )
        out = {"issuer_id": issuer_id, "serial": f"{serial:x}", "seq": seq, "responder_url": url, "seen_at": raw_seen}
        return JSONResponse(out, status_code=201)

    async def record_installation(self, request: Request, actor: Actor) -> Response:
        """A CRL a relying party's sync agent installed: an observation, logged there, not audited."""
        if self._installations is None:
            raise Problem(503, "Service Unavailable", "CRL installations cannot be stored: no coordination store")
        status, out = await self._installations.record(await json_body(request), actor)
        return JSONResponse(out, status_code=status)

    async def _check_revocation(self, issuer_id: str, serial: int, seq: int) -> None:
        """``seq`` must be the revocation of (issuer_id, serial): a probe of anything else is noise."""
        events = await self._log.read(seq - 1, 1)
        if not events or events[0].seq != seq:
            raise ValidationError(f"seq {seq} is not in the event log")
        event = events[0]
        if event.type != CertificateRevoked.TYPE:
            raise ValidationError(f"seq {seq} is a {event.type} event, not a CertificateRevoked")
        if event.payload.get("issuer_id") != issuer_id:
            raise ValidationError(f"seq {seq} revokes a certificate of another issuer than issuer_id {issuer_id!r}")
        if event.payload.get("serial") != f"{serial:x}":
            raise ValidationError(f"seq {seq} revokes serial {event.payload.get('serial')}, not serial {serial:x}")

    async def audit_verify(self, request: Request, actor: Actor) -> Response:
        check_query(request, ())
        body, status = await audit_report(self._log, self._projection)
        return JSONResponse(body, status_code=status)

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self._registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(self, request: Request) -> Response:
        report: dict[str, Any] = {"status": "ok"}
        if self._health is not None:
            report.update(await self._health())
        return JSONResponse(report, status_code=200 if report.get("status") == "ok" else 503)


def _revocation_json(event: RecordedEvent) -> dict[str, Any]:
    p = event.payload
    return {
        "serial": p["serial"],
        "issuer": p["issuer_id"],
        "status": "revoked",
        "reason": p["reason"],
        "revoked_at": p["revoked_at"],
        "invalidity_date": p.get("invalidity_date"),
        "event": event.to_json(),
    }
