"""Client-certificate authentication of the admin API (``admin.client_ca``).

The TLS handshake has verified the certificate against the configured CA bundle; here it
must also be one pca knows and holds as good: issued by (or imported under) an issuer pca
tracks, recorded with these exact bytes, and neither revoked nor on hold in the status
projection. A revocation therefore takes effect on the next request, kept-alive
connections included. The role is the subject's organizational unit (``OU=revoker``);
the actor recorded with each event is ``cert:`` and the subject.
"""

from __future__ import annotations

import logging

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from starlette.requests import Request

from revocation.admin.http import Problem
from revocation.admin.tokens import ROLES, Principal
from revocation.projection import RecordedCertificates

log = logging.getLogger("revocation.admin.client_certs")


def peer_certificate(request: Request) -> x509.Certificate | None:
    """The client's certificate from the ASGI ``tls`` extension, if it presented one."""
    tls = (request.scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    return x509.load_pem_x509_certificate(chain[0].encode("ascii"))


def certificate_role(cert: x509.Certificate) -> str | None:
    """The one role named by an OU of the subject, or None (no role, or several)."""
    units = {str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)}
    roles = units & set(ROLES)
    return roles.pop() if len(roles) == 1 else None


class ClientCertAuth:
    def __init__(self, view: RecordedCertificates) -> None:
        self._view = view

    async def __call__(self, request: Request) -> Principal | None:
        """The principal of the request's client certificate; None without one; 401 for one pca does
        not hold as good or that names no role."""
        cert = peer_certificate(request)
        if cert is None:
            return None
        subject = cert.subject.rfc4514_string()
        problem = await self._refusal(cert)
        role = certificate_role(cert)
        if problem is None and role is None:
            problem = f"names no role: put exactly one of {', '.join(ROLES)} in the subject's OU"
        if problem is not None:
            log.warning("refused the client certificate %s (serial %x): %s", subject, cert.serial_number, problem)
            raise Problem(401, "Unauthorized", f"the client certificate {subject} {problem}")
        assert role is not None
        return Principal(f"cert:{subject}"[:200], role)

    async def _refusal(self, cert: x509.Certificate) -> str | None:
        for issuer in await self._view.issuers():
            if issuer.cert.subject != cert.issuer:
                continue
            try:
                cert.verify_directly_issued_by(issuer.cert)
            except (ValueError, TypeError, InvalidSignature):
                continue
            found = await self._view.recorded_certificates(issuer.issuer_id, [cert.serial_number])
            if not found or found[0].cert_der != cert.public_bytes(Encoding.DER):
                return f"is not recorded by pca under issuer {issuer.issuer_id}"
            if found[0].status != "good":
                return f"is revoked ({found[0].reason or 'unspecified'})"
            return None
        return "was not issued by an issuer pca tracks, so its revocation status cannot be checked"
