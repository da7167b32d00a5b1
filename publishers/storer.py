"""The storer: the gatekeeper between a freshly signed CRL and the object store.

Before every upload it parses the CRL back and checks, in this order:

1. it parses, its issuer is the issuer's subject and its signature verifies
   with the issuer certificate's key;
2. it is the kind it claims (a delta has a critical Delta CRL Indicator, a
   full CRL none), its Issuing Distribution Point is critical and names exactly
   the shard's URL (only user certificates for an intermediate's CRL, only CA
   certificates for the root's), and a full CRL's Freshest CRL names the shard's
   delta URL when delta CRLs are on;
3. its entries equal the log's view at the position it claims, read again from
   the projection: every certificate of the shard not changed since that
   position is listed exactly when it should be, with its revocation time,
   reason and invalidity date (a delta: what changed since its base's position,
   with ``removeFromCRL`` for a released hold); entries for certificates that
   changed after the claimed position are the only ones left to judgement;
   a full CRL also answers to the log (``log_check``): refused while the log says a certificate of
   the shard is revoked and the projection, edited behind pca's back, does not (it would drop the entry);
4. its number is strictly above the numbers stored now for the shard, full and
   delta (one numbering sequence), read back from the store, not from memory
   (the CRL of the same kind is downloaded and parsed; the other kind's number
   comes from its object metadata on a HEAD, so a delta does not download a
   large full CRL); a delta's base is published (its number not above the
   stored full CRL's, and when it is that CRL, at the log position it claims);
5. the stable key is written conditionally on the ETag read in step 4 (or on
   the key being new), then the immutable numbered key on being new, so of two
   publishers racing, one wins and the other publishes nothing.

Whatever fails raises ``RefusedCRL`` (or ``PreconditionFailed`` for a lost
race, ``StorageError`` for the store); the publisher logs and counts it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from email.utils import formatdate

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from publishers.crl_der import REMOVE_FROM_CRL, EntryValues, read_entries, verify_crl
from publishers.objectstore import ObjectStore
from revocation import crl_layout
from revocation.chain import Drop
from revocation.clock import to_epoch
from revocation.crl_layout import CRLLayout
from revocation.digits import ascii_digits
from revocation.errors import IntegrityError, PCAError
from revocation.events import REASONS
from revocation.projection import CRLRecord, CRLSource, IssuerRecord

CRL_TYPE = "application/pkix-crl"

# Cache lifetimes of the stable keys: short, so a CDN does not hide a new CRL for long.
FULL_MAX_AGE = 300
DELTA_MAX_AGE = 60

# Object metadata written with every CRL (HEAD reads it without downloading a large CRL).
META_NUMBER = "crl-number"
META_BASE = "crl-base-number"
META_POSITION = "log-position"


class RefusedCRL(PCAError):
    """The storer refused a CRL that failed a check before upload."""


class ProjectionDisagrees(RefusedCRL):
    """The projection the CRL was made from does not hold as revoked a certificate the log revoked."""


# The log check: certificates the log says are revoked and the projection does not (``StoredEventLog``).
LogCheck = Callable[[str], Awaitable[Sequence[Drop]]]


class BaseNotPublished(RefusedCRL):
    """A delta CRL's base is not the full CRL in the store (lost, or never written): publish a full CRL."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A signed CRL on its way to the store, with what it claims to reflect."""

    issuer: IssuerRecord
    shard: int
    der: bytes
    log_position: int  # the entries are the log's view at this seq
    base_position: int | None = None  # delta CRLs: the log position of their base CRL

    @property
    def is_delta(self) -> bool:
        return self.base_position is not None


@dataclasses.dataclass(frozen=True)
class StoredCRL:
    number: int  # 0 when nothing is stored
    etag: str | None
    metadata: Mapping[str, str]


def layout_for(issuer: IssuerRecord, layout: CRLLayout | None, *, deltas: bool) -> CRLLayout:
    """The deployment's layout, or one derived from the issuer's recorded CRL URL."""
    return layout if layout is not None else crl_layout.layout_from_issuer_url(issuer.crl_url, deltas=deltas)


def scoped(issuer: IssuerRecord) -> bool:
    """Whether the issuer's CRLs carry an Issuing Distribution Point.

    An intermediate's (leaf) CRLs do: each names its shard's URL and covers only
    user certificates. The root's CRL covers every certificate the root issued
    (its intermediates) and no IDP, so a relying party that checks the whole chain
    (``openssl verify -crl_check_all``, which also asks about the root itself,
    a certificate without a CRL DP) finds it in scope.
    """
    return issuer.kind != "root"


def idp_url(issuer: IssuerRecord, layout: CRLLayout, shard: int) -> str:
    """The URL a CRL's Issuing Distribution Point names.

    The shard's URL in our layout; but an external issuer's unsharded CRL (shard 0, where every
    certificate that CA issued is listed) names the URL those certificates carry in their CRL DP
    (``pca issuer add --crl-url``): a relying party rejects a CRL whose IDP is not the DP it fetched.
    """
    if issuer.kind == "external" and shard == 0:
        return issuer.crl_url
    return layout.full_url(issuer.issuer_id, shard)


def user_certs_only(issuer: IssuerRecord) -> bool:
    """Our intermediates' CRLs cover leaves only; an external CA may have issued CA certificates too."""
    return issuer.kind != "external"


def expected_idp(issuer: IssuerRecord, layout: CRLLayout, shard: int) -> x509.IssuingDistributionPoint:
    return x509.IssuingDistributionPoint(
        full_name=[x509.UniformResourceIdentifier(idp_url(issuer, layout, shard))],
        relative_name=None,
        only_contains_user_certs=user_certs_only(issuer),
        only_contains_ca_certs=False,
        only_some_reasons=None,
        indirect_crl=False,
        only_contains_attribute_certs=False,
    )


# reason name -> the CRLReason an entry carries; unspecified is expressed by no reasonCode (RFC 5280 5.3.1).
_REASON_CODES: dict[str | None, int | None] = {name: code or None for name, code in REASONS.items()}
_REASON_CODES[None] = None


def _crl_number(der: bytes) -> int:
    crl = x509.load_der_x509_crl(der)
    number: int = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    return number


def reason_code(reason: str | None) -> int | None:
    """The CRLReason a CRL entry carries for a recorded reason (None: no reasonCode)."""
    try:
        return _REASON_CODES[reason]
    except KeyError:
        raise IntegrityError(f"recorded revocation reason {reason!r} is not a CRLReason") from None


def listed(record: CRLRecord, cutoff: int) -> bool:
    """Whether a revoked record belongs on a CRL whose expiry cutoff (thisUpdate - grace) is ``cutoff``."""
    return record.status == "revoked" and record.revoked_at is not None and record.not_after >= cutoff


class Storer:
    """Checks a CRL before it is written; refuses what would be wrong or backwards."""

    def __init__(
        self,
        store: ObjectStore,
        view: CRLSource,
        *,
        layout: CRLLayout | None = None,
        deltas: bool = False,
        expired_grace_seconds: int = 0,
        log_check: LogCheck | None = None,
    ) -> None:
        if expired_grace_seconds < 0:
            raise ValueError(f"expired_grace_seconds must not be negative, got {expired_grace_seconds}")
        self._store = store
        self._view = view
        self._layout = layout
        self._deltas = layout.deltas if layout is not None else deltas
        self._grace = expired_grace_seconds
        self._log_check = log_check

    def layout(self, issuer: IssuerRecord) -> CRLLayout:
        return layout_for(issuer, self._layout, deltas=self._deltas)

    @property
    def deltas(self) -> bool:
        """Whether delta CRLs are published next to the full ones."""
        return self._deltas

    @property
    def expired_grace_seconds(self) -> int:
        """How long an expired certificate's revocation stays listed."""
        return self._grace

    # --- what is stored now ------------------------------------------------------------------

    async def stored(self, key: str) -> StoredCRL:
        """The CRL at ``key``, its number read back from its content."""
        obj = await self._store.get(key)
        if obj is None:
            return StoredCRL(0, None, {})
        try:
            number = await asyncio.to_thread(_crl_number, obj.data)  # parsing 50 MB: off the event loop
        except (ValueError, x509.ExtensionNotFound) as exc:
            raise RefusedCRL(f"the stored CRL at {key} cannot be read back: {exc}") from exc
        return StoredCRL(number, obj.etag, obj.metadata)

    async def stored_number(self, key: str) -> tuple[int, Mapping[str, str]]:
        """The number and metadata of the CRL at ``key``: from a HEAD when its metadata names the number,
        else from its content (a large full CRL is not downloaded for every delta)."""
        head = await self._store.head(key)
        if head is None:
            return 0, {}
        value = head.metadata.get(META_NUMBER, "")
        if ascii_digits(value):
            return int(value), head.metadata
        stored = await self.stored(key)
        return stored.number, stored.metadata

    async def highest_number(self, issuer_id: str, shard: int, *, delta: bool) -> int:
        """The highest number stored for the shard, full or delta; the CRL of the kind asked is read whole."""
        same, other = crl_layout.full_key(issuer_id, shard), crl_layout.delta_key(issuer_id, shard)
        if delta:
            same, other = other, same
        return max((await self.stored(same)).number, (await self.stored_number(other))[0])

    # --- the gate ------------------------------------------------------------------------------

    async def store(self, candidate: Candidate) -> int:
        """Check ``candidate`` and write it; returns its number. Raises RefusedCRL."""
        issuer, shard = candidate.issuer, candidate.shard
        what = f"{'delta ' if candidate.is_delta else ''}CRL for {crl_layout.label(issuer.issuer_id, shard)}"
        try:
            crl = await asyncio.to_thread(verify_crl, candidate.der, issuer.cert)
        except ValueError as exc:
            raise RefusedCRL(f"{what} failed verification: {exc}") from exc
        try:
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound as exc:
            raise RefusedCRL(f"{what} has no CRL number") from exc
        what = f"{what} (number {number})"
        base_number = self._check_extensions(candidate, crl, what)
        try:
            got = await asyncio.to_thread(read_entries, candidate.der)  # a second or two for a million entries
        except ValueError as exc:
            raise RefusedCRL(f"{what}: entries cannot be read back: {exc}") from exc
        await self._check_entries(candidate, crl, got, what)
        if not candidate.is_delta:
            await self._check_log(candidate, what)

        full_key = crl_layout.full_key(issuer.issuer_id, shard)
        delta_key = crl_layout.delta_key(issuer.issuer_id, shard)
        stable_key = delta_key if candidate.is_delta else full_key
        current = await self.stored(stable_key)
        if candidate.is_delta:
            other, full_metadata = await self.stored_number(full_key)
            if base_number is None or other < base_number:
                raise BaseNotPublished(f"{what}: its base CRL {base_number} is not published (stored: {other})")
            base_position = full_metadata.get(META_POSITION, "")
            if other == base_number and ascii_digits(base_position) and int(base_position) != candidate.base_position:
                raise BaseNotPublished(
                    f"{what}: its base {base_number} was published at log position {base_position}, "
                    f"not {candidate.base_position}"
                )
        else:
            other, _ = await self.stored_number(delta_key)
        highest = max(current.number, other)
        if number <= highest:
            raise RefusedCRL(f"CRL number {number} for {issuer.issuer_id} is not above the stored {highest}")

        next_update = crl.next_update_utc
        if next_update is None:
            raise RefusedCRL(f"{what} has no nextUpdate")
        this_update = crl.last_update_utc
        left = max(0, int((next_update - this_update).total_seconds()))
        expires = formatdate(next_update.timestamp(), usegmt=True)
        metadata = {META_NUMBER: str(number), META_POSITION: str(candidate.log_position)}
        if base_number is not None:
            metadata[META_BASE] = str(base_number)
        max_age = min(DELTA_MAX_AGE if candidate.is_delta else FULL_MAX_AGE, left)
        # The stable key first, conditionally: a CRL that loses a race is not published anywhere.
        await self._store.put(
            stable_key,
            candidate.der,
            content_type=CRL_TYPE,
            cache_control=f"public, max-age={max_age}, no-transform",
            expires=expires,
            if_match=current.etag,
            if_none_match=current.etag is None,
            metadata=metadata,
        )
        await self._store.put(
            crl_layout.numbered_key(issuer.issuer_id, shard, number, delta=candidate.is_delta),
            candidate.der,
            content_type=CRL_TYPE,
            cache_control=f"public, max-age={left}, no-transform, immutable",
            expires=expires,
            if_none_match=True,
            metadata=metadata,
        )
        return number

    async def _check_log(self, candidate: Candidate, what: str) -> None:
        """Refuse a full CRL of a shard where the projection it was made from disagrees with the log."""
        if self._log_check is None:
            return
        issuer_id = candidate.issuer.issuer_id
        drops = await self._log_check(issuer_id)
        # A certificate without a projection row has no known shard: it holds back every shard's CRL.
        here = [d for d in drops if d.shard is None or d.shard == candidate.shard]
        if here:
            first = here[0]
            raise ProjectionDisagrees(
                f"{what} not published: the log revoked {len(here)} certificate(s) of the shard that the status "
                f"projection does not hold as revoked (e.g. serial {first.serial:x}, revoked by seq {first.seq}); "
                "the CRL would drop them. Check with pca audit verify, repair with pca rebuild"
            )

    def _check_extensions(self, candidate: Candidate, crl: x509.CertificateRevocationList, what: str) -> int | None:
        """Kind, IDP and Freshest CRL; returns the delta's base number (None for a full CRL)."""
        issuer, shard = candidate.issuer, candidate.shard
        layout = self.layout(issuer)
        extensions = crl.extensions
        try:
            indicator = extensions.get_extension_for_oid(ExtensionOID.DELTA_CRL_INDICATOR)
        except x509.ExtensionNotFound:
            indicator = None
        if (indicator is not None) != candidate.is_delta:
            raise RefusedCRL(f"{what}: {'a' if indicator is not None else 'no'} Delta CRL Indicator")
        base_number: int | None = None
        if indicator is not None:
            if not indicator.critical or not isinstance(indicator.value, x509.DeltaCRLIndicator):
                raise RefusedCRL(f"{what}: the Delta CRL Indicator is not critical")
            base_number = indicator.value.crl_number

        url = idp_url(issuer, layout, shard)
        try:
            idp: x509.Extension[x509.ExtensionType] | None = extensions.get_extension_for_oid(
                ExtensionOID.ISSUING_DISTRIBUTION_POINT
            )
        except x509.ExtensionNotFound:
            idp = None
        if not scoped(issuer):
            if idp is not None or shard != 0:
                raise RefusedCRL(f"{what}: the root's CRL is one unscoped CRL (shard 0, no IDP)")
        elif idp is None:
            raise RefusedCRL(f"{what}: no Issuing Distribution Point (expected {url})")
        elif not idp.critical or idp.value != expected_idp(issuer, layout, shard):
            raise RefusedCRL(f"{what}: its Issuing Distribution Point is not the shard's ({url}): {idp.value}")

        try:
            freshest: x509.Extension[x509.ExtensionType] | None = extensions.get_extension_for_oid(
                ExtensionOID.FRESHEST_CRL
            )
        except x509.ExtensionNotFound:
            freshest = None
        if candidate.is_delta or not layout.deltas:
            if freshest is not None:
                raise RefusedCRL(f"{what}: a Freshest CRL extension where none belongs")
        else:
            delta_url = layout.delta_url(issuer.issuer_id, shard)
            point = x509.DistributionPoint([x509.UniformResourceIdentifier(delta_url)], None, None, None)
            if freshest is None or freshest.critical or freshest.value != x509.FreshestCRL([point]):
                raise RefusedCRL(f"{what}: its Freshest CRL does not name the shard's delta CRL {delta_url}")
        return base_number

    async def _check_entries(
        self, candidate: Candidate, crl: x509.CertificateRevocationList, got: dict[int, EntryValues], what: str
    ) -> None:
        """The entries equal the log's view at the claimed position (see the module docstring)."""
        issuer_id, shard, position = candidate.issuer.issuer_id, candidate.shard, candidate.log_position
        if candidate.base_position is None:
            now_position, records = await self._view.crl_revoked(issuer_id, shard)
        else:
            if candidate.base_position > position:
                raise RefusedCRL(f"{what}: its base position {candidate.base_position} is after its own {position}")
            now_position, records = await self._view.crl_changes(issuer_id, shard, candidate.base_position)
        if position > now_position:
            raise RefusedCRL(f"{what} claims log position {position}, beyond the log's {now_position}")
        cutoff = to_epoch(crl.last_update_utc) - self._grace
        # A million records: compared in a thread, off the event loop.
        missing, wrong, unexplained = await asyncio.to_thread(
            _compare, records, got, position, cutoff, delta=candidate.is_delta
        )
        if unexplained and not missing and not wrong:
            # A certificate the read above did not return (released, or listed in another shard): allowed only
            # if it is this shard's and changed after the claimed position.
            later = {
                r.serial
                for r in await self._view.crl_records(issuer_id, unexplained)
                if r.shard == shard and r.updated_seq > position
            }
            unexplained = [serial for serial in unexplained if serial not in later]
        if missing or wrong or unexplained:
            sample = ", ".join(f"{s:x}" for s in [*missing, *wrong, *unexplained][:3])
            raise RefusedCRL(
                f"{what} does not list what the log says at position {position} "
                f"({len(unexplained)} unexpected, {len(missing)} missing, {len(wrong)} different entries; "
                f"e.g. {sample})"
            )


def _compare(
    records: list[CRLRecord], got: dict[int, EntryValues], position: int, cutoff: int, *, delta: bool
) -> tuple[list[int], list[int], list[int]]:
    """(missing, different, unexplained) serials of a CRL's entries against the log's records.

    Records changed after ``position`` are left to judgement: their state at the
    position is no longer in the projection.
    """
    want: dict[int, EntryValues] = {}
    changed_later: set[int] = set()
    for record in records:
        if record.updated_seq > position:
            changed_later.add(record.serial)
        elif listed(record, cutoff):
            assert record.revoked_at is not None  # listed() checked it
            want[record.serial] = (record.revoked_at, reason_code(record.reason), record.invalidity_date)
        elif record.status == "good" and delta:
            want[record.serial] = (0, REMOVE_FROM_CRL, None)  # a released hold; its date is not compared
    missing = [serial for serial in want if serial not in got]
    wrong = [serial for serial, values in want.items() if serial in got and not _same(values, got[serial])]
    unexplained = [serial for serial in got if serial not in want and serial not in changed_later]
    return missing, wrong, unexplained


def _same(want: EntryValues, got: EntryValues) -> bool:
    if want[1] == REMOVE_FROM_CRL:
        return got[1] == REMOVE_FROM_CRL
    return want == got
