"""The status page on the admin listener: ``GET /status``, read-only, for ``auditor`` and ``admin``.

Authentication, for a browser: it cannot easily send a bearer header, and a token in the URL
would end up in logs and history, so the page offers a sign-in form (``POST /status/login``)
that takes the token in the request body, checks it like the API does, and answers with a
session cookie: 256 random bits, ``HttpOnly; Secure; SameSite=Strict; Path=/status``, valid
``SESSION_SECONDS``. The server keeps the session in memory only (a restart signs everyone
out) and re-checks the token behind it on every request, so revoking or expiring the token
ends its sessions at once. A client certificate (``admin.client_ca``) or an
``Authorization: Bearer`` header work too, as on the API. The form is refused from another
origin. A request without credentials gets the form with 401 when it asks for HTML, else a
problem+json 401 like every API route.

Every answer says ``Cache-Control: no-store`` and a strict Content-Security-Policy: nothing
may load from anywhere; the one inline style carries a fresh nonce.
"""

from __future__ import annotations

import logging
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from revocation.admin import access
from revocation.admin.http import Problem, not_allowed, not_found, problem_response
from revocation.admin.status_data import StatusSources, gather
from revocation.admin.status_html import login_page, page
from revocation.admin.tokens import Principal, TokenRefused, TokenStore
from revocation.clock import Clock, SystemClock
from revocation.errors import PCAError

log = logging.getLogger("pca.status")

COOKIE = "pca_status"
SESSION_SECONDS = 900
MAX_SESSIONS = 1000
MAX_FORM_BYTES = 4096


def _csp(nonce: str) -> str:
    return (
        f"default-src 'none'; style-src 'nonce-{nonce}'; img-src data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


class StatusPage:
    def __init__(
        self,
        sources: StatusSources,
        tokens: Callable[[], TokenStore],
        client_auth: Callable[[Request], Awaitable[Principal | None]] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._sources = sources
        self._tokens = tokens
        self._client_auth = client_auth
        self._clock = clock or SystemClock()
        self._sessions: dict[str, tuple[str, float]] = {}  # cookie -> (the token, expiry on the monotonic clock)

    def app(self) -> Starlette:
        routes = [
            Route("/status", self._guard(access.rule("GET", "/status"), self.status), methods=["GET"]),
            Route("/status/login", self._guard(access.rule("POST", "/status/login"), self.login), methods=["POST"]),
            Route("/status/logout", self._guard(access.rule("POST", "/status/logout"), self.logout), methods=["POST"]),
        ]
        return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})

    def _guard(
        self, rule: access.Rule, handler: Callable[[Request, str], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            nonce = secrets.token_urlsafe(16)
            try:
                response = await handler(request, nonce)
            except Problem as p:
                if _wants_html(request) and p.status in (401, 403):
                    response = HTMLResponse(login_page(p.detail, nonce=nonce), status_code=p.status)
                else:
                    response = problem_response(p.status, p.title, p.detail, p.headers)
            except PCAError as exc:  # a store out of reach: say so, as the API does
                log.error("the status page failed: %s", exc)
                response = problem_response(503, "Service Unavailable", "the status cannot be read; see the server log")
            except Exception:
                log.exception("the status page failed")
                response = problem_response(500, "Internal Server Error", "the status page failed; see the server log")
            response.headers["cache-control"] = "no-store"
            response.headers["content-security-policy"] = _csp(nonce)
            response.headers["x-content-type-options"] = "nosniff"
            response.headers["referrer-policy"] = "same-origin"  # no-referrer would make Origin: null
            return response

        endpoint.__name__ = handler.__name__
        return endpoint

    # --- who is asking ------------------------------------------------------------------------

    def _check(self, token: str) -> Principal:
        try:
            store = self._tokens()
        except PCAError as exc:
            log.error("cannot load the admin tokens: %s", exc)
            raise Problem(503, "Service Unavailable", "the token store cannot be read; see the server log") from exc
        try:
            return store.check(token, self._clock.now())
        except TokenRefused as exc:
            raise Problem(401, "Unauthorized", str(exc), {"WWW-Authenticate": 'Bearer realm="pca"'}) from None

    async def _principal(self, request: Request) -> Principal:
        session = self._sessions.get(request.cookies.get(COOKIE, ""))
        if session is not None and session[1] > self._clock.monotonic():
            return self._check(session[0])
        if self._client_auth is not None and "authorization" not in request.headers:
            found = await self._client_auth(request)
            if found is not None:
                return found
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            detail = "missing bearer token (Authorization: Bearer ...), or sign in"
            raise Problem(401, "Unauthorized", detail, {"WWW-Authenticate": 'Bearer realm="pca"'})
        return self._check(token.strip())

    @staticmethod
    def _allow(principal: Principal, rule: access.Rule) -> None:
        if principal.role not in rule.roles:
            raise Problem(403, "Forbidden", f"role {principal.role!r} may not {rule.action}")

    # --- routes ---------------------------------------------------------------------------------

    async def status(self, request: Request, nonce: str) -> Response:
        if request.query_params:
            raise Problem(400, "Bad Request", f"unknown query parameters: {', '.join(sorted(request.query_params))}")
        principal = await self._principal(request)
        self._allow(principal, access.rule("GET", "/status"))
        data = await gather(self._sources)
        return HTMLResponse(page(data, who=f"{principal.name} ({principal.role})", nonce=nonce))

    async def login(self, request: Request, nonce: str) -> Response:
        _same_origin(request)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise Problem(413, "Payload Too Large", f"the sign-in form is limited to {MAX_FORM_BYTES} bytes")
        try:
            form = urllib.parse.parse_qs(body.decode("ascii"), strict_parsing=True, max_num_fields=2)
        except (UnicodeDecodeError, ValueError):
            raise Problem(400, "Bad Request", "expected a form with one field, token") from None
        if set(form) != {"token"} or len(form["token"]) != 1:
            raise Problem(400, "Bad Request", "expected a form with one field, token")
        token = form["token"][0].strip()
        principal = self._check(token)
        self._allow(principal, access.rule("GET", "/status"))
        now = self._clock.monotonic()
        for key in [k for k, (_, expiry) in self._sessions.items() if expiry <= now]:
            del self._sessions[key]
        if len(self._sessions) >= MAX_SESSIONS:  # the oldest goes
            del self._sessions[min(self._sessions, key=lambda k: self._sessions[k][1])]
        session = secrets.token_urlsafe(32)
        self._sessions[session] = (token, now + SESSION_SECONDS)
        log.info("status page: %s (%s) signed in", principal.name, principal.role)
        response = RedirectResponse("/status", status_code=303)
        response.set_cookie(
            COOKIE, session, max_age=SESSION_SECONDS, path="/status", secure=True, httponly=True, samesite="strict"
        )
        return response

    async def logout(self, request: Request, nonce: str) -> Response:
        _same_origin(request)
        self._sessions.pop(request.cookies.get(COOKIE, ""), None)
        response = RedirectResponse("/status", status_code=303)
        response.delete_cookie(COOKIE, path="/status", secure=True, httponly=True, samesite="strict")
        return response


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _same_origin(request: Request) -> None:
    """A form posted from another site is refused (the cookie is SameSite=Strict as well)."""
    origin = request.headers.get("origin")
    site = request.headers.get("sec-fetch-site")
    own = f"{request.url.scheme}://{request.url.netloc}"
    if (origin is not None and origin != own) or (site is not None and site not in ("same-origin", "none")):
        raise Problem(403, "Forbidden", "the sign-in form is accepted from this page only")
