"""Who may call what on the admin API: one table, which the routes enforce and the README shows.

Every route of ``AdminAPI.app()`` has exactly one rule here (the API refuses to build a route
without one, and ``tests/revocation/admin/test_access_matrix.py`` calls every route with every
role and compares this table with the README's). Least privilege: the event log and the audit
walk (actors, request ids, key references) are for ``admin`` and ``auditor``; a prober follows
revocations through ``GET /v1/revocations``, which carries none of those.
"""

from __future__ import annotations

import dataclasses

# The roles that read certificates, issuers, propagation timelines and the revocation feed.
READERS = ("admin", "revoker", "auditor", "prober")
PUBLIC: tuple[str, ...] = ()  # no token needed


@dataclasses.dataclass(frozen=True)
class Rule:
    method: str
    path: str  # as routed, with {placeholders}
    roles: tuple[str, ...]  # PUBLIC: no token needed
    action: str  # what a refused role may not do, in the 403's detail
    page: bool = False  # a page for a browser (HTML, a form): not part of the JSON API's OpenAPI document

    @property
    def public(self) -> bool:
        return not self.roles


ACCESS: tuple[Rule, ...] = (
    Rule("POST", "/v1/certificates", ("admin",), "issue"),
    Rule("POST", "/v1/certificates/import", ("admin", "recorder"), "record"),
    Rule("GET", "/v1/certificates/{serial}", READERS, "read"),
    Rule("POST", "/v1/certificates/{serial}/revoke", ("admin", "revoker"), "revoke"),
    Rule("POST", "/v1/certificates/{serial}/release-hold", ("admin", "revoker"), "revoke"),
    Rule("GET", "/v1/certificates/{serial}/propagation", READERS, "read"),
    Rule("GET", "/v1/issuers", READERS, "read"),
    Rule("GET", "/v1/revocations", READERS, "read"),
    # A CA's own certificate (revoke, release-hold): an explicit operation of its own, admin only.
    Rule("POST", "/v1/issuers/{id}/revoke", ("admin",), "revoke a CA"),
    Rule("POST", "/v1/issuers/{id}/release-hold", ("admin",), "release a CA from hold"),
    # Everything a CA issued (after its key was compromised): admin only, like the CA's own certificate.
    Rule("POST", "/v1/issuers/{id}/revoke-issued", ("admin",), "revoke what a CA issued"),
    Rule("POST", "/v1/propagation/probes", ("admin", "prober"), "probe"),
    Rule("POST", "/v1/propagation/crl-installations", ("admin", "agent"), "report installations"),
    Rule("GET", "/v1/events", ("admin", "auditor"), "read the event log"),
    Rule("GET", "/v1/audit/verify", ("admin", "auditor"), "verify the audit chain"),
    # The OpenAPI document of these routes: public, as this table is (it is in the README too).
    Rule("GET", "/v1/openapi.json", PUBLIC, "read the API description"),
    Rule("GET", "/metrics", PUBLIC, "read metrics"),
    Rule("GET", "/healthz", PUBLIC, "read health"),
    # The status page for a browser (revocation.admin.status_page): signing in exchanges a token for a cookie.
    Rule("GET", "/status", ("admin", "auditor"), "read the status page", page=True),
    Rule("POST", "/status/login", PUBLIC, "sign in", page=True),
    Rule("POST", "/status/logout", PUBLIC, "sign out", page=True),
)

API_RULES = tuple(r for r in ACCESS if not r.page)  # what the OpenAPI document describes

_BY_ROUTE = {(r.method, r.path): r for r in ACCESS}


def rule(method: str, path: str) -> Rule:
    """The rule of a route; a route without one is a programming error (KeyError at app build)."""
    try:
        return _BY_ROUTE[(method, path)]
    except KeyError:
        raise KeyError(f"no access rule for {method} {path}: add one to revocation.admin.access.ACCESS") from None
