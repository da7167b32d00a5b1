"""Where CRLs live: shard choice, object keys and the URLs certificates carry.

Shared by the issuing core (which writes a shard's URL into each certificate's
CRL distribution point and its delta's URL into Freshest CRL) and the publisher
(which names the same URL in each CRL's Issuing Distribution Point and stores
the CRL under the matching key). One scheme, so the two cannot drift:

- shard 0 is an issuer's unsharded CRL: ``{issuer}.crl``. With ``shards = 1``
  (the default) every certificate is in shard 0.
- with ``shards = K > 1`` a new certificate goes to shard ``1 + serial % K``
  (1..K): ``{issuer}-{shard}.crl``. Shard 0 keeps its own URL, so raising K
  later never moves a certificate issued before.
- a delta CRL sits next to its base: ``{label}-delta.crl``.
- every CRL is also stored immutably under its number: ``{label}/{number}.crl``
  and ``{label}-delta/{number}.crl``.

A certificate's shard is read back from the CRL distribution point it carries
(``shard_from_url``) when it is recorded, and never recomputed: changing K
changes where new certificates go, not where old ones are listed.
"""

from __future__ import annotations

import dataclasses
import re

from cryptography import x509

MAX_SHARDS = 256
_CRL_DP_OID = b"\x06\x03\x55\x1d\x1f"  # DER of OID 2.5.29.31, cRLDistributionPoints
_SHARD_KEY = re.compile(r"-([1-9][0-9]{0,5})\.crl")


def label(issuer_id: str, shard: int) -> str:
    """The name shared by a shard's keys and URLs: ``issuing-ca`` or ``issuing-ca-3``."""
    if shard < 0:
        raise ValueError(f"shard {shard} is negative")
    return issuer_id if shard == 0 else f"{issuer_id}-{shard}"


def full_key(issuer_id: str, shard: int = 0) -> str:
    return f"{label(issuer_id, shard)}.crl"


def delta_key(issuer_id: str, shard: int = 0) -> str:
    return f"{label(issuer_id, shard)}-delta.crl"


def numbered_key(issuer_id: str, shard: int, number: int, *, delta: bool = False) -> str:
    return f"{label(issuer_id, shard)}{'-delta' if delta else ''}/{number}.crl"


def shard_from_url(issuer_id: str, url: str) -> int | None:
    """The shard a CRL URL of ``issuer_id`` names, or None when the URL is not one of ours."""
    name = url.rstrip().rsplit("/", 1)[-1]
    if name == f"{issuer_id}.crl":
        return 0
    if not name.startswith(issuer_id):
        return None
    match = _SHARD_KEY.fullmatch(name, len(issuer_id))
    return int(match.group(1)) if match else None


def shard_from_certificate(issuer_id: str, cert_der: bytes) -> int:
    """The shard of a recorded certificate, read from the CRL distribution point it carries.

    A certificate without a CRL DP, or whose CRL DP is not one of ``issuer_id``'s
    CRL URLs (an imported certificate pointing elsewhere), is listed in shard 0,
    the issuer's unsharded CRL, so that its revocation is still published.
    """
    if _CRL_DP_OID not in cert_der or (issuer_id.isascii() and issuer_id.encode() not in cert_der):
        # Without the extension's OID, or without the issuer id (which every URL of ours carries,
        # in ASCII as IA5String holds it), there is nothing to find: skip the parse (imports of
        # certificates with no CRL DP, or one of another CA, record many of these).
        return 0
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except (ValueError, x509.ExtensionNotFound):
        return 0
    for point in points:
        for name in point.full_name or []:
            if isinstance(name, x509.UniformResourceIdentifier):
                shard = shard_from_url(issuer_id, name.value)
                if shard is not None:
                    return shard
    return 0


@dataclasses.dataclass(frozen=True)
class CRLLayout:
    """The CRL URL scheme of a deployment: a base URL, K shards, deltas or not."""

    base_url: str
    shards: int = 1
    deltas: bool = False

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"CRL base URL {self.base_url!r} must be an http:// or https:// URL")
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ValueError(f"CRL shards must be between 1 and {MAX_SHARDS}, got {self.shards}")

    def shard_for(self, serial: int) -> int:
        """The shard of a new certificate, from its (random) serial: 0 when unsharded, else 1..K."""
        if serial <= 0:
            raise ValueError(f"serial {serial} is not positive")
        return 0 if self.shards == 1 else 1 + serial % self.shards

    def configured_shards(self, issuer_kind: str) -> list[int]:
        """The shards new certificates of this issuer go to. Only leaf issuers are sharded."""
        if self.shards == 1 or issuer_kind != "intermediate":
            return [0]
        return list(range(1, self.shards + 1))

    def full_url(self, issuer_id: str, shard: int = 0) -> str:
        return f"{self.base_url.rstrip('/')}/{full_key(issuer_id, shard)}"

    def delta_url(self, issuer_id: str, shard: int = 0) -> str:
        return f"{self.base_url.rstrip('/')}/{delta_key(issuer_id, shard)}"


def layout_from_issuer_url(crl_url: str, *, deltas: bool = False) -> CRLLayout:
    """An unsharded layout whose base is that of an issuer's recorded CRL URL."""
    return CRLLayout(crl_url.rsplit("/", 1)[0], 1, deltas)
