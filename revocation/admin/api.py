"""The admin API (Starlette), served on the admin listener only.

Authentication: bearer tokens (hashed at rest, compared in constant time), with
roles admin, revoker, auditor, prober, recorder and agent. Every error is ``application/problem+json``
with a title and a detail saying what was wrong. A 2xx is sent only after the
event is committed.

Propagation: ``GET /v1/certificates/{serial}/propagation`` shows where a
revocation has got to (the tracker's timeline); a black-box prober reads
``/v1/events`` and ``/v1/issuers`` and reports what it saw over HTTP with
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
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from revocation.admin.http import (
    MAX_URL_LENGTH,
    BodyLimit,
    Problem,
    TooLarge,
    int_param,
    is_http_url,
    json_body,
    not_allowed,
    not_found,
    opt_str,
    problem_response,
    str_list,
)
from revocation.admin.installations import InstallationRecorder
from revocation.admin.recording import CertificateRecorder
from revocation.admin.tokens import Principal, TokenStore
from revocation.authority import Actor, Authority, IssueRequest, parse_serial
from revocation.clock import iso, parse_iso
from revocation.coordination import ProbeResult
from revocation.errors import ConflictError, IntegrityError, NotFoundError, PCAError, ValidationError
from revocation.eventlog import EventLog, RecordedEvent
from revocation.events import CertificateRevoked
from revocation.issuer_summary import PcaURLs, issuer_summaries
from revocation.projection import CertificateRecord, IssuerRecord, IssuerStats
from revocation.propagation.timeline import Timeline

log = logging.getLogger("pca.api")

# Permission -> the token roles holding it. A prober reads (events, issuers) and reports probes, nothing more.
ROLES_BY_PERMISSION: dict[str, tuple[str, ...]] = {
    "issue": ("admin",),
    "revoke": ("admin", "revoker"),
    "read": ("admin", "revoker", "auditor", "prober"),
    "probe": ("admin", "prober"),
    # An external CA's issuing core records what it issued (revocation.admin.recording), nothing more.
    "record": ("admin", "recorder"),
    # A relying party's CRL sync agent (``pca crl-sync``) reports the CRLs it installed, nothing more.
    "report installations": ("admin", "agent"),
}


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
        issuer_stats: tuple[IssuerStats, PcaURLs] | None = None,
        recorder: CertificateRecorder | None = None,
        installations: InstallationRecorder | None = None,
    ) -> None:
        """``issuer_stats`` (the projection and pca's URLs) adds counts, signer, CRL and URL survey to
        ``GET /v1/issuers`` (``revocation.issuer_summary``)."""
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
        self._requests = Counter("admin_requests_total", "Admin API requests", ["route", "status"], registry=registry)
        self._latency = Histogram("admin_request_seconds", "Admin API request time", ["route"], registry=registry)

    def app(self) -> ASGIApp:
        routes = [
            Route("/v1/certificates", self._wrap("issue", self.issue), methods=["POST"]),
            Route("/v1/certificates/import", self._wrap("record", self.record), methods=["POST"]),
            Route("/v1/certificates/{serial}", self._wrap("read", self.get_certificate), methods=["GET"]),
            Route("/v1/certificates/{serial}/revoke", self._wrap("revoke", self.revoke), methods=["POST"]),
            Route("/v1/certificates/{serial}/release-hold", self._wrap("revoke", self.release_hold), methods=["POST"]),
            Route("/v1/certificates/{serial}/propagation", self._wrap("read", self.propagation), methods=["GET"]),
            Route("/v1/issuers", self._wrap("read", self.issuers), methods=["GET"]),
            Route("/v1/propagation/probes", self._wrap("probe", self.record_probe), methods=["POST"]),
            Route(
                "/v1/propagation/crl-installations",
                self._wrap("report installations", self.record_installation),
                methods=["POST"],
            ),
            Route("/v1/events", self._wrap("read", self.events), methods=["GET"]),
            Route("/v1/audit/verify", self._wrap("read", self.audit_verify), methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
        ]
        app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})
        return BodyLimit(app, self._max_body)

    def _wrap(
        self, permission: str, handler: Callable[[Request, Actor], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        route = handler.__name__

        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            request_id = request.headers.get("x-request-id") or str(uuid.uuid4())
            try:
                principal = self._authenticate(request)
                if principal.role not in ROLES_BY_PERMISSION[permission]:
                    raise Problem(403, "Forbidden", f"role {principal.role!r} may not {permission}")
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
                response = problem_response(
                    413, "Payload Too Large", f"request bodies are limited to {self._max_body} bytes"
                )
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
            self._requests.labels(route, str(response.status_code)).inc()
            self._latency.labels(route).observe(time.perf_counter() - started)
            return response

        return endpoint

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
        principal = tokens.authenticate(token.strip())
        if principal is None:
            log.warning("rejected an unknown bearer token from %s", request.client.host if request.client else "?")
            raise Problem(401, "Unauthorized", "the bearer token is not valid", challenge)
        return principal

    # --- handlers -----------------------------------------------------------------

    async def issue(self, request: Request, actor: Actor) -> Response:
        body = await json_body(request)
        csr = body.get("csr")
        if csr is not None and not isinstance(csr, str):
            raise ValidationError("csr must be a PEM string")
        validity = body.get("validity_days")
        if validity is not None and (not isinstance(validity, int) or isinstance(validity, bool)):
            raise ValidationError(f"validity_days must be an integer, got {validity!r}")
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
        serial = parse_serial(request.path_params["serial"])
        rec = await self._authority.find(serial, request.query_params.get("issuer"))
        return JSONResponse(certificate_json(rec))

    async def revoke(self, request: Request, actor: Actor) -> Response:
        serial = parse_serial(request.path_params["serial"])
        body = await json_body(request)
        reason = body.get("reason")
        if not isinstance(reason, str):
            raise ValidationError("reason is required (a string such as keyCompromise)")
        invalidity = body.get("invalidity_date")
        inv = None
        if invalidity is not None:
            if not isinstance(invalidity, str):
                raise ValidationError("invalidity_date must be an ISO 8601 string")
            try:
                inv = parse_iso(invalidity)
            except ValueError as exc:
                raise ValidationError(f"invalidity_date {invalidity!r} is not an ISO 8601 time: {exc}") from exc
        outcome = await self._authority.revoke(
            serial, reason, actor, invalidity_date=inv, issuer_id=opt_str(body, "issuer")
        )
        return JSONResponse(_revocation_json(outcome.event), status_code=201 if outcome.created else 200)

    async def release_hold(self, request: Request, actor: Actor) -> Response:
        serial = parse_serial(request.path_params["serial"])
        body = await json_body(request, allow_empty=True)
        rec = await self._authority.release_hold(serial, actor, opt_str(body, "issuer"))
        return JSONResponse({"serial": f"{serial:x}", "status": "good", "event": rec.to_json()})

    async def events(self, request: Request, actor: Actor) -> Response:
        after = int_param(request, "after", 0, 0, 2**62)
        limit = int_param(request, "limit", 100, 1, 1000)
        events = await self._log.read(after, limit)
        return JSONResponse({"events": [e.to_json() for e in events], "head": await self._log.head()})

    async def propagation(self, request: Request, actor: Actor) -> Response:
        serial = parse_serial(request.path_params["serial"])
        if self._tracker is None:
            raise Problem(503, "Service Unavailable", "propagation tracking is not configured on this server")
        rec = await self._authority.find(serial, request.query_params.get("issuer"))
        timeline = await self._tracker.find_timeline(rec.issuer_id, rec.serial)
        if timeline is None:
            raise NotFoundError(f"certificate {rec.serial_hex} from {rec.issuer_id} was never revoked")
        return JSONResponse(timeline.to_json())

    async def issuers(self, request: Request, actor: Actor) -> Response:
        ocsp_url = self._authority.ocsp_url
        records = await self._authority.issuers()
        out = [issuer_json(i, ocsp_url) for i in records]
        if self._issuer_stats is not None:
            view, urls = self._issuer_stats
            summaries = {summary["issuer_id"]: summary for summary in await issuer_summaries(view, urls)}
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
        issuer_id = body.get("issuer_id")
        if not isinstance(issuer_id, str) or not issuer_id:
            raise ValidationError(f"issuer_id must be a non-empty string, got {issuer_id!r}")
        raw_serial = body.get("serial")
        if not isinstance(raw_serial, str):
            raise ValidationError(f"serial must be a hexadecimal string, got {raw_serial!r}")
        serial = parse_serial(raw_serial)
        seq = body.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= 2**62:
            raise ValidationError(f"seq must be a positive integer, got {seq!r}")
        url = body.get("responder_url")
        if not isinstance(url, str) or not is_http_url(url):
            raise ValidationError(f"responder_url must be an http(s) URL of at most {MAX_URL_LENGTH} characters")
        raw_seen = body.get("seen_at")
        if not isinstance(raw_seen, str):
            raise ValidationError(f"seen_at must be an ISO 8601 string, got {raw_seen!r}")
        try:
            seen_at = parse_iso(raw_seen).timestamp()
        except (ValueError, OverflowError) as exc:
            raise ValidationError(f"seen_at {raw_seen!r} is not an ISO 8601 time: {exc}") from exc
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
        try:
            count = await self._log.verify_chain()
        except IntegrityError as exc:
            return JSONResponse({"ok": False, "first_bad_seq": exc.seq, "detail": str(exc)}, status_code=409)
        return JSONResponse({"ok": True, "events": count})

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self._registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(self, request: Request) -> Response:
        report: dict[str, Any] = {"status": "ok"}
        if self._health is not None:
            report.update(await self._health())
        return JSONResponse(report, status_code=200 if report.get("status") == "ok" else 503)


def certificate_json(rec: CertificateRecord) -> dict[str, Any]:
    return {
        "serial": rec.serial_hex,
        "issuer": rec.issuer_id,
        "subject": rec.subject,
        "profile": rec.profile,
        "status": rec.status,
        "not_before": iso(rec.not_before),
        "not_after": iso(rec.not_after),
        "revoked_at": None if rec.revoked_at is None else iso(rec.revoked_at),
        "reason": rec.reason,
        "invalidity_date": None if rec.invalidity_date is None else iso(rec.invalidity_date),
    }


def issuer_json(rec: IssuerRecord, ocsp_url: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "issuer_id": rec.issuer_id,
        "kind": rec.kind,
        "parent_id": rec.parent_id,
        "certificate_pem": rec.cert.public_bytes(serialization.Encoding.PEM).decode(),
        "crl_url": rec.crl_url,
    }
    if rec.signer_cert is not None:  # only issuers with an OCSP signer have pre-signed OCSP responses
        out["ocsp_url"] = ocsp_url
    return out


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
