"""The initialised test CA: its issuer ids, an actor, issuing a certificate, and the openssl command."""

from __future__ import annotations

import asyncio
import datetime

from cryptography import x509

from pca.runtime import Runtime
from revocation.authority import Actor, Authority, IssueRequest
from revocation.projection import IssuerRecord

ACTOR = Actor("tester", "r1")
ROOT = "root-ca"
ISSUING = "issuing-ca"


def now_utc() -> datetime.datetime:
    """Now, on a whole second (the CA certificates were made with the real time)."""
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


async def issue(authority: Authority, name: str = "x", validity_days: int | None = None) -> x509.Certificate:
    request = IssueRequest(subject=f"CN={name}", dns=[f"{name}.test"], validity_days=validity_days)
    return (await authority.issue(request, ACTOR)).certificate


async def issuer(rt: Runtime, issuer_id: str) -> IssuerRecord:
    for rec in await rt.view.issuers():
        if rec.issuer_id == issuer_id:
            return rec
    raise AssertionError(f"no issuer {issuer_id}")


async def openssl(*args: str) -> tuple[int, str]:
    """Run the openssl CLI; returns its exit status and its combined output."""
    proc = await asyncio.create_subprocess_exec(
        "openssl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()
