"""What ``pca issuer list`` and ``GET /v1/issuers`` say about each issuer.

Kind, key, OCSP signer, certificate counts, the CRLs pca publishes for it (or why not), and
which OCSP (AIA) and CRL DP URLs its recorded certificates carry, from a sample of the
newest ones, each marked with whether it reaches pca.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections import Counter
from typing import Any, Protocol
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AuthorityInformationAccessOID

from revocation.ca_status import ca_problem, ca_record, is_self_signed
from revocation.clock import iso
from revocation.crl_layout import CRLLayout
from revocation.projection import CertificateLookup, IssuerRecord, IssuerStats

SAMPLE = 1000  # newest certificates read per issuer for the URL survey
NO_KEY = "not published: no key (pca cannot sign this issuer's CRLs; its own CA publishes them)"


@dataclasses.dataclass(frozen=True)
class PcaURLs:
    """Where pca answers: its OCSP URL, its CRL layout, and the public listener's base URL."""

    ocsp_url: str
    crl_layout: CRLLayout
    public_url: str

    def crl_urls(self, issuer: IssuerRecord) -> list[str]:
        """The URLs of the CRLs pca publishes for ``issuer`` (none without its key)."""
        if issuer.key_ref is None:
            return []
        layout = self.crl_layout
        urls = []
        for shard in layout.configured_shards(issuer.kind):
            if shard == 0 and issuer.kind == "external" and issuer.crl_url != layout.full_url(issuer.issuer_id):
                urls.append(issuer.crl_url)  # its certificates' CRL DP; also stored as {id}.crl
            urls.append(layout.full_url(issuer.issuer_id, shard))
            if layout.deltas:
                urls.append(layout.delta_url(issuer.issuer_id, shard))
        return urls

    def reaches_ocsp(self, url: str) -> bool:
        base = self.ocsp_url.rstrip("/")
        return url.rstrip("/") == base or url.startswith(base + "/")

    def reaches_crl(self, url: str, served: set[str]) -> bool:
        return url.startswith(self.crl_layout.base_url.rstrip("/") + "/") or url in served

    def serves_path(self, url: str) -> bool:
        """Whether ``url`` is on pca's public listener (same scheme, host and port), so it can serve it."""
        mine, theirs = urlsplit(self.public_url), urlsplit(url)
        return (mine.scheme, mine.netloc) == (theirs.scheme, theirs.netloc) and bool(theirs.path.strip("/"))


def certificate_urls(cert_der: bytes) -> tuple[list[str], list[str]]:
    """(OCSP URLs of its AIA, URIs of its CRL distribution points) of one certificate."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError:
        return [], []
    ocsp: list[str] = []
    crl: list[str] = []
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        ocsp = [
            d.access_location.value
            for d in aia
            if d.access_method == AuthorityInformationAccessOID.OCSP
            and isinstance(d.access_location, x509.UniformResourceIdentifier)
        ]
    except (x509.ExtensionNotFound, ValueError):
        pass
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        crl = [n.value for p in points for n in p.full_name or [] if isinstance(n, x509.UniformResourceIdentifier)]
    except (x509.ExtensionNotFound, ValueError):
        pass
    return ocsp, crl


def _signer(rec: IssuerRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"status": "none"}
    if rec.signer_cert is not None:
        out = {
            "status": "active",
            "subject": rec.signer_cert.subject.rfc4514_string(),
            "not_after": iso(rec.signer_cert.not_valid_after_utc),
        }
    if rec.pending_key_ref is not None:
        out["pending_csr"] = True  # a new key waits for its certificate (pca issuer set-signer)
        if rec.signer_cert is None:
            out["status"] = "pending CSR"
    return out


class SummaryView(IssuerStats, CertificateLookup, Protocol):
    """What the summaries read: counts, newest certificates, and the record of each CA's own certificate."""


async def _ca_certificate(
    view: SummaryView, rec: IssuerRecord, issuers: list[IssuerRecord], now: datetime.datetime
) -> dict[str, Any]:
    """The state of the issuer's own certificate: good, revoked (by the CA above it) or expired."""
    if is_self_signed(rec.cert):
        state: dict[str, Any] = {"status": "self-signed root"}
    else:
        record = await ca_record(view, rec, issuers)
        if record is None:
            state = {"status": "not recorded under any issuer pca knows"}
        else:
            state = {"status": record.status, "recorded_under": record.issuer_id}
            if record.status == "revoked":
                state.update(revoked_at=iso(record.revoked_at) if record.revoked_at else None, reason=record.reason)
    problem = ca_problem(rec, None, now)  # expiry alone
    if problem is not None:
        state["status"] = "expired"
    return state


async def issuer_summary(
    view: SummaryView,
    rec: IssuerRecord,
    urls: PcaURLs,
    served: set[str],
    now: datetime.datetime,
    issuers: list[IssuerRecord] | None = None,
) -> dict[str, Any]:
    """One issuer as JSON, its CA certificate judged at ``now``; ``served`` are the CRL URLs pca serves
    over all issuers."""
    total, revoked = await view.issuer_counts(rec.issuer_id)
    sample = await view.newest_certificates(rec.issuer_id, SAMPLE)
    ocsp_seen: Counter[str] = Counter()
    crl_seen: Counter[str] = Counter()
    for cert_der in sample:
        ocsp, crl = certificate_urls(cert_der)
        ocsp_seen.update(set(ocsp))
        crl_seen.update(set(crl))
    crl_urls = urls.crl_urls(rec)
    return {
        "issuer_id": rec.issuer_id,
        "kind": rec.kind,
        "origin": "external" if rec.kind == "external" else "own",
        "parent_id": rec.parent_id,
        "subject": rec.cert.subject.rfc4514_string(),
        "not_after": iso(rec.cert.not_valid_after_utc),
        "certificate_pem": rec.cert.public_bytes(serialization.Encoding.PEM).decode(),
        "key_held": rec.key_ref is not None,
        "ca_certificate": await _ca_certificate(
            view, rec, issuers if issuers is not None else await view.issuers(), now
        ),
        "crl_url": rec.crl_url,
        "ocsp_signer": _signer(rec),
        "certificates": {"total": total, "revoked": revoked},
        "crl": {"published": True, "urls": crl_urls} if crl_urls else {"published": False, "reason": NO_KEY},
        "certificate_urls": {
            "sampled": len(sample),
            "sample_limit": SAMPLE,
            "note": f"from the newest {SAMPLE} certificates at most",
            "ocsp": [
                {"url": u, "certificates": n, "reaches_pca": urls.reaches_ocsp(u)} for u, n in ocsp_seen.most_common()
            ],
            "crl": [
                {"url": u, "certificates": n, "reaches_pca": urls.reaches_crl(u, served)}
                for u, n in crl_seen.most_common()
            ],
        },
    }


def served_crl_urls(issuers: list[IssuerRecord], urls: PcaURLs) -> set[str]:
    """Every CRL URL pca publishes, over all issuers (an external issuer's own URL when pca's listener has it)."""
    served: set[str] = set()
    for rec in issuers:
        for url in urls.crl_urls(rec):
            if url.startswith(urls.crl_layout.base_url.rstrip("/") + "/") or urls.serves_path(url):
                served.add(url)
    return served


async def issuer_summaries(view: SummaryView, urls: PcaURLs, now: datetime.datetime) -> list[dict[str, Any]]:
    issuers = await view.issuers()
    served = served_crl_urls(issuers, urls)
    return [await issuer_summary(view, rec, urls, served, now, issuers) for rec in issuers]
