"""The OpenAPI 3.1 document of the admin API, built from the code: the access table and the schemas.

Every route of ``revocation.admin.access.ACCESS`` becomes an operation, with the roles it admits as its
security requirements (a bearer token, or a client certificate naming the role: OpenAPI 3.1 lets a
requirement list role names), its parameters, body and answers from ``revocation.admin.operations``
and ``revocation.admin.schemas``, and the problem+json answers every route can give (400 and 413
from the body limit; 401 and 403 on every authenticated route). The API serves it at
``GET /v1/openapi.json``; ``docs/openapi.json`` is the same document, rewritten by::

    python -m revocation.admin.openapi --out docs/openapi.json

and a test fails when the two differ.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from revocation.admin import access
from revocation.admin.operations import OPERATIONS, Operation
from revocation.admin.schemas import COMPONENTS

PROBLEM = "application/problem+json"
TITLE = "pca admin API"
VERSION = "1"
ROLE_TEXT = {
    "admin": "everything",
    "revoker": "revoke, release holds, read",
    "auditor": "read, the event log and its audit",
    "prober": "read, and report what a black-box prober saw",
    "recorder": "record certificates an external CA issued, nothing else",
    "agent": "report the CRLs a relying party's sync agent installed, nothing else",
}
DESCRIPTION = (
    "The admin API of pca, on the admin listener only (HTTPS by default). Roles: "
    + "; ".join(f"`{role}` ({what})" for role, what in ROLE_TEXT.items())
    + ". Each operation lists the roles it admits in its security requirements and in `x-roles`. "
    "Errors are `application/problem+json`. Input is strict: unknown JSON fields and unknown or repeated "
    "query parameters are refused (400, naming them). A 2xx is sent only after the event is committed."
)
# Answers every route can give, and those of routes that need a token.
COMMON = {
    400: "bad input (says which field or parameter, and why)",
    413: "the body is over admin.max_body_bytes",
}
AUTHENTICATED = {
    401: "no token or client certificate, or one not valid (a revoked or expired token is told so)",
    403: "the caller's role may not do this",
}
HEADERS = {
    "X-Request-ID": {
        "description": "the request's id (the caller's X-Request-ID, or a generated one), as recorded in the log",
        "schema": {"type": "string"},
    },
    "Cache-Control": {"description": "always no-store", "schema": {"type": "string", "const": "no-store"}},
}
SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "an admin token (`pca token create --role ROLE`); the role is the token's",
    },
    "clientCertificate": {
        "type": "mutualTLS",
        "description": "with admin.client_ca set: a client certificate pca issued and holds as good; the role is "
        "the one subject OU that names a role",
    },
}


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if headers:
        out["headers"] = headers
    return out


def _answer(
    status: int, description: str, schema: str | None, op: Operation, headers: dict[str, Any]
) -> dict[str, Any]:
    if schema == "Problem":
        return _problem(description, headers)
    media = op.media_type if status < 300 else "application/json"
    out: dict[str, Any] = {
        "description": description,
        "content": {media: {"schema": {"$ref": f"#/components/schemas/{schema}"} if schema else {}}},
    }
    if headers:
        out["headers"] = headers
    if status in op.links:
        out["links"] = op.links[status]
    return out


def _operation(rule: access.Rule, op: Operation) -> dict[str, Any]:
    headers = {} if rule.public else HEADERS
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
    roles = list(rule.roles)
    if rule.public:
        out["security"] = []
        out["description"] = "Public: no token needed."
    else:
        out["security"] = [{"bearer": roles}, {"clientCertificate": roles}]
        out["description"] = f"Roles: {', '.join(roles)}."
    out["x-roles"] = roles
    if op.params:
        out["parameters"] = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.where == "path",
                "description": p.description,
                "schema": p.schema,
            }
            for p in op.params
        ]
    if op.body is not None:
        out["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{op.body}"}}},
        }
    answers = {status: _answer(status, *answer, op, headers) for status, answer in op.answers.items()}
    for status, text in {**COMMON, **({} if rule.public else AUTHENTICATED)}.items():
        answers.setdefault(status, _problem(text, headers))
    out["responses"] = {str(status): answers[status] for status in sorted(answers)}
    return out


def document() -> dict[str, Any]:
    """The document; a route of the access table without an operation (or the reverse) is a programming error."""
    table = {(r.method, r.path) for r in access.API_RULES}
    if table != set(OPERATIONS):
        missing = sorted(table - set(OPERATIONS))
        extra = sorted(set(OPERATIONS) - table)
        raise KeyError(f"revocation.admin.operations.OPERATIONS differs from the access table: {missing=} {extra=}")
    paths: dict[str, dict[str, Any]] = {}
    for rule in access.API_RULES:
        paths.setdefault(rule.path, {})[rule.method.lower()] = _operation(rule, OPERATIONS[(rule.method, rule.path)])
    # A copy each time: whoever holds a document (a test tool resolving references in place) may change it.
    return copy.deepcopy(
        {
            "openapi": "3.1.0",
            "info": {"title": TITLE, "version": VERSION, "description": DESCRIPTION},
            "paths": paths,
            "components": {"schemas": COMPONENTS, "securitySchemes": SECURITY_SCHEMES},
        }
    )


def render() -> str:
    """The document as ``docs/openapi.json`` holds it."""
    return json.dumps(document(), indent=2, sort_keys=False) + "\n"


async def serve(request: Request) -> Response:
    """``GET /v1/openapi.json``."""
    return Response(_rendered(), media_type="application/json")


@functools.cache
def _rendered() -> str:
    return render()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m revocation.admin.openapi", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the document here (default: standard output)")
    args = parser.parse_args(argv)
    text = render()
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
