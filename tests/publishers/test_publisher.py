"""The CRL publisher, its gatekeeping storer, the directory object store and the CRL HTTP app.

CRLs are built from the CA's real log and keys, written to a real directory, read
back and checked with cryptography and the openssl CLI. Stores that misbehave on
purpose are small classes in this file; time moves only through a FakeClock.
The object-store contract (directory and S3) is in test_objectstore_contract.py; delta and
sharded CRLs are in test_crl_delta.py.
"""

from __future__ import annotations

import datetime
import itertools
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry

from pca.config import Config
from pca.runtime import Runtime
from publishers.crl_der import MAX_CRL_NUMBER, CRLEntry, build_crl, issuing_distribution_point, verify_crl
from publishers.http import CRLApp
from publishers.objectstore import DirectoryStore, ObjectHead, StoredObject
from publishers.publisher import CRL_TYPE, Publisher, RefusedCRL, numbered_key, stable_key
from publishers.storer import Candidate, Storer
from revocation.authority import Authority
from revocation.clock import FakeClock
from revocation.errors import StorageError
from revocation.keys import FileKey, KeyRef, open_key
from revocation.projection import IssuerRecord
from tests.support.ca import ACTOR, ISSUING, ROOT, issue, issuer, openssl
from tests.support.crl import CRL_VALIDITY, crl_number, make_publisher

# --- fixtures and helpers -------------------------------------------------------------------------------------


@pytest.fixture
def crl_store(tmp_path: Path) -> DirectoryStore:
    return DirectoryStore(tmp_path / "published")


async def stored_data(store: DirectoryStore, key: str) -> bytes:
    obj = await store.get(key)
    assert obj is not None, f"nothing stored at {key}"
    return obj.data


async def stored_crl(store: DirectoryStore, key: str) -> x509.CertificateRevocationList:
    obj = await store.get(key)
    assert obj is not None, f"nothing stored at {key}"
    return x509.load_der_x509_crl(obj.data)


def entries(crl: x509.CertificateRevocationList) -> dict[int, tuple[datetime.datetime, Any, Any]]:
    """serial -> (revocation date, reason or None, invalidity date or None)."""
    out = {}
    for entry in crl:
        exts = entry.extensions
        reason = next((e.value.reason for e in exts if isinstance(e.value, x509.CRLReason)), None)
        invalid = next((e.value.invalidity_date_utc for e in exts if isinstance(e.value, x509.InvalidityDate)), None)
        out[entry.serial_number] = (entry.revocation_date_utc, reason, invalid)
    return out


def idp(rec: IssuerRecord) -> list[bytes]:
    """The Issuing Distribution Point of the issuer's unsharded CRL as the publisher writes it (none for the root)."""
    if rec.kind == "root":
        return []
    return [issuing_distribution_point(rec.crl_url, only_user_certs=True, only_ca_certs=False)]


def signed_crl(rec: IssuerRecord, number: int, now: datetime.datetime, listed: list[CRLEntry]) -> bytes:
    """A CRL for the issuer's unsharded scope that passes every check but the ones a test breaks."""
    assert rec.key_ref is not None
    return build_crl(
        rec.cert,
        open_key(rec.key_ref),
        listed,
        number=number,
        this_update=now,
        next_update=now + datetime.timedelta(days=1),
        extra_extensions=idp(rec),
    )


def empty_crl(rec: IssuerRecord, number: int, now: datetime.datetime) -> bytes:
    return signed_crl(rec, number, now, [])


def count(registry: CollectorRegistry, issuer_id: str, result: str, kind: str = "full") -> float:
    labels = {"issuer": issuer_id, "kind": kind, "result": result}
    return registry.get_sample_value("crl_publishes_total", labels) or 0.0


# --- what gets published ----------------------------------------------------------------------------------------


async def test_publish_all_writes_verifiable_crls_listing_exactly_the_revoked_certificates(
    rt: Runtime, authority: Authority, crl_store: DirectoryStore, fake_clock: FakeClock, ca_config: Config
) -> None:
    compromised, ceased, good = [await issue(authority, n) for n in ("compromised", "ceased", "good")]
    fake_clock.advance(60)
    since = fake_clock.now() - datetime.timedelta(days=3)
    await authority.revoke(compromised.serial_number, "keyCompromise", ACTOR, invalidity_date=since)
    await authority.revoke(ceased.serial_number, "unspecified", ACTOR)
    intermediate = (await issuer(rt, ISSUING)).cert
    await authority.revoke_ca(ISSUING, "superseded", ACTOR)  # the explicit operation for a CA certificate
    registry = CollectorRegistry()
    publisher = make_publisher(rt, crl_store, fake_clock, registry)

    published = await publisher.publish_all()

    assert sorted(p.issuer_id for p in published) == [ISSUING, ROOT]
    assert publisher.last_error is None
    now = fake_clock.now()
    expected = {
        ISSUING: {
            compromised.serial_number: (now, x509.ReasonFlags.key_compromise, since),
            ceased.serial_number: (now, None, None),
        },
        ROOT: {intermediate.serial_number: (now, x509.ReasonFlags.superseded, None)},
    }
    for p in published:
        rec = await issuer(rt, p.issuer_id)
        obj = await crl_store.get(stable_key(p.issuer_id))
        assert obj is not None and obj.content_type == CRL_TYPE
        crl = verify_crl(obj.data, rec.cert)
        assert crl_number(crl) == p.number
        assert crl.last_update_utc == now
        assert crl.next_update_utc == now + datetime.timedelta(seconds=CRL_VALIDITY)
        assert entries(crl) == expected[p.issuer_id]
        assert good.serial_number not in entries(crl)
        numbered = await crl_store.get(numbered_key(p.issuer_id, p.number))
        assert numbered is not None and numbered.data == obj.data
        assert count(registry, p.issuer_id, "published") == 1

        returncode, output = await openssl(
            "crl",
            "-inform",
            "DER",
            "-in",
            str(crl_store.root / stable_key(p.issuer_id)),
            "-CAfile",
            str(ca_config.data_dir / "ca-chain.pem"),
            "-noout",
        )
        assert returncode == 0, output
        assert "verify OK" in output


async def test_openssl_verify_with_the_crls_rejects_revoked_certificates_and_accepts_good_ones(
    rt: Runtime,
    authority: Authority,
    crl_store: DirectoryStore,
    fake_clock: FakeClock,
    ca_config: Config,
    tmp_path: Path,
) -> None:
    good, revoked = await issue(authority, "good"), await issue(authority, "revoked")
    await authority.revoke(revoked.serial_number, "keyCompromise", ACTOR)
    publisher = make_publisher(rt, crl_store, fake_clock)
    chain = str(ca_config.data_dir / "ca-chain.pem")
    leaf_files = {}
    for name, cert in (("good", good), ("revoked", revoked)):
        leaf_files[name] = tmp_path / f"{name}.pem"
        leaf_files[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    async def crl_pems() -> tuple[str, str]:
        """The published CRLs as PEM: the issuing CA's alone, and both."""
        pems = {}
        for issuer_id in (ISSUING, ROOT):
            pems[issuer_id] = (await stored_crl(crl_store, stable_key(issuer_id))).public_bytes(
                serialization.Encoding.PEM
            )
        leaf_only, both = tmp_path / "issuing.crl.pem", tmp_path / "both.crl.pem"
        leaf_only.write_bytes(pems[ISSUING])
        both.write_bytes(pems[ISSUING] + pems[ROOT])
        return str(leaf_only), str(both)

    await publisher.publish_all()
    leaf_only, both = await crl_pems()

    returncode, output = await openssl(
        "verify", "-crl_check", "-CAfile", chain, "-CRLfile", leaf_only, str(leaf_files["good"])
    )
    assert returncode == 0, output
    assert f"{leaf_files['good']}: OK" in output
    returncode, output = await openssl(
        "verify", "-crl_check", "-CAfile", chain, "-CRLfile", leaf_only, str(leaf_files["revoked"])
    )
    assert returncode != 0
    assert "certificate revoked" in output
    returncode, output = await openssl(
        "verify", "-crl_check_all", "-CAfile", chain, "-CRLfile", both, str(leaf_files["good"])
    )
    assert returncode == 0, output

    # Revoking the intermediate in the root's CRL takes the whole chain down.
    fake_clock.advance(5)
    await authority.revoke_ca(ISSUING, "cACompromise", ACTOR)
    await publisher.publish_all()
    _, both = await crl_pems()
    returncode, output = await openssl(
        "verify", "-crl_check_all", "-CAfile", chain, "-CRLfile", both, str(leaf_files["good"])
    )
    assert returncode != 0
    assert "certificate revoked" in output


async def test_crl_numbers_strictly_increase_across_publishes_restarts_and_a_clock_going_back(
    rt: Runtime, authority: Authority, crl_store: DirectoryStore, fake_clock: FakeClock
) -> None:
    numbers: dict[str, list[int]] = {ROOT: [], ISSUING: []}

    async def publish(publisher: Publisher) -> None:
        done = await publisher.publish_all()
        assert publisher.last_error is None
        assert len(done) == 2
        for p in done:
            numbers[p.issuer_id].append(p.number)
            assert crl_number(await stored_crl(crl_store, stable_key(p.issuer_id))) == p.number

    first = make_publisher(rt, crl_store, fake_clock)
    await publish(first)
    await publish(first)  # same second: the clock alone would not move the number
    fake_clock.advance(30)
    await publish(first)
    await publish(make_publisher(rt, crl_store, fake_clock))  # a restart: nothing in memory
    fake_clock.advance(-86400)  # the clock is set back a day
    await publish(make_publisher(rt, crl_store, fake_clock))
    await publish(make_publisher(rt, crl_store, fake_clock))

    for issuer_id, seen in numbers.items():
        assert len(seen) == 6
        assert all(a < b for a, b in itertools.pairwise(seen)), seen
        for number in seen:
            assert await crl_store.head(numbered_key(issuer_id, number)) is not None


async def test_expired_certificates_leave_the_crl(
    rt: Runtime, authority: Authority, crl_store: DirectoryStore, fake_clock: FakeClock
) -> None:
    short = await issue(authority, "short", validity_days=1)
    long = await issue(authority, "long")
    await authority.revoke(short.serial_number, "superseded", ACTOR)
    await authority.revoke(long.serial_number, "superseded", ACTOR)
    publisher = make_publisher(rt, crl_store, fake_clock)
    await publisher.publish_all()
    assert set(entries(await stored_crl(crl_store, stable_key(ISSUING)))) == {short.serial_number, long.serial_number}

    fake_clock.advance((short.not_valid_after_utc - fake_clock.now()).total_seconds() + 1)
    await publisher.publish_all()

    assert set(entries(await stored_crl(crl_store, stable_key(ISSUING)))) == {long.serial_number}


async def test_a_stored_crl_with_a_huge_number_is_followed_by_a_higher_number_never_a_lower_one(
    rt: Runtime, crl_store: DirectoryStore, fake_clock: FakeClock
) -> None:
    huge = 10**40
    rec = await issuer(rt, ISSUING)
    await crl_store.put(stable_key(ISSUING), empty_crl(rec, huge, fake_clock.now()), content_type=CRL_TYPE)

    published = {p.issuer_id: p for p in await make_publisher(rt, crl_store, fake_clock).publish_all()}

    assert published[ISSUING].number == huge + 1
    assert crl_number(await stored_crl(crl_store, stable_key(ISSUING))) == huge + 1


async def test_an_issuer_at_the_highest_crl_number_is_refused_without_stopping_the_others(
    rt: Runtime, crl_store: DirectoryStore, fake_clock: FakeClock
) -> None:
    root = await issuer(rt, ROOT)
    at_max = empty_crl(root, MAX_CRL_NUMBER, fake_clock.now())
    await crl_store.put(stable_key(ROOT), at_max, content_type=CRL_TYPE)
    registry = CollectorRegistry()
    publisher = make_publisher(rt, crl_store, fake_clock, registry)

    published = await publisher.publish_all()

    assert [p.issuer_id for p in published] == [ISSUING]
    assert publisher.last_error is not None and ROOT in publisher.last_error
    assert count(registry, ROOT, "refused") == 1
    assert await stored_data(crl_store, stable_key(ROOT)) == at_max


# --- the gatekeeper -----------------------------------------------------------------------------------------------


class RacingStore:
    """A directory store where another publisher writes a higher-numbered CRL at a chosen moment.

    ``race_on_get`` counts reads of the stable key: on that read, the competitor's CRL
    is written just before the read answers (the reader sees it) or just after (it does not).
    """

    def __init__(self, inner: DirectoryStore, key: str, competitor: bytes, race_on_get: int, seen: bool) -> None:
        self.inner = inner
        self._key = key
        self._competitor = competitor
        self._race_on_get = race_on_get
        self._seen = seen
        self._gets = 0

    async def put(self, key: str, data: bytes, **kwargs: Any) -> str:
        return await self.inner.put(key, data, **kwargs)

    async def get(self, key: str) -> StoredObject | None:
        if key != self._key:
            return await self.inner.get(key)
        self._gets += 1
        if self._gets != self._race_on_get:
            return await self.inner.get(key)
        if self._seen:
            await self._compete()
            return await self.inner.get(key)
        answer = await self.inner.get(key)
        await self._compete()
        return answer

    async def head(self, key: str) -> ObjectHead | None:
        return await self.inner.head(key)

    async def _compete(self) -> None:
        current = await self.inner.head(self._key)
        await self.inner.put(
            self._key,
            self._competitor,
            content_type=CRL_TYPE,
            if_match=None if current is None else current.etag,
            if_none_match=current is None,
        )


async def test_a_crl_not_above_the_stored_number_is_refused_and_nothing_is_overwritten(
    rt: Runtime, crl_store: DirectoryStore, fake_clock: FakeClock
) -> None:
    rec = await issuer(rt, ISSUING)
    competitor = empty_crl(rec, 10**40, fake_clock.now())
    # The publisher picks its number, then another publisher stores a higher one before the storer checks.
    racing = RacingStore(crl_store, stable_key(ISSUING), competitor, race_on_get=1, seen=False)
    registry = CollectorRegistry()
    publisher = make_publisher(rt, racing, fake_clock, registry)

    published = await publisher.publish_all()

    assert [p.issuer_id for p in published] == [ROOT]
    assert publisher.last_error is not None
    assert ISSUING in publisher.last_error and "not above" in publisher.last_error
    assert count(registry, ISSUING, "refused") == 1
    assert count(registry, ISSUING, "published") == 0
    stored = await crl_store.get(stable_key(ISSUING))
    assert stored is not None and stored.data == competitor
    assert not (crl_store.root / ISSUING).exists()  # no numbered copy either

    with pytest.raises(RefusedCRL, match="not above"):
        candidate = Candidate(rec, 0, empty_crl(rec, 10**40, fake_clock.now()), await rt.view.position())
        await Storer(crl_store, rt.view).store(candidate)
    assert await stored_data(crl_store, stable_key(ISSUING)) == competitor


async def test_a_crl_that_loses_the_race_for_the_stable_key_leaves_no_published_object(
    rt: Runtime, crl_store: DirectoryStore, fake_clock: FakeClock
) -> None:
    rec = await issuer(rt, ISSUING)
    competitor = empty_crl(rec, 10**40, fake_clock.now())
    # Another publisher stores a higher number after the storer's check, before its writes.
    racing = RacingStore(crl_store, stable_key(ISSUING), competitor, race_on_get=2, seen=False)
    publisher = make_publisher(rt, racing, fake_clock)

    published = await publisher.publish_all()

    assert [p.issuer_id for p in published] == [ROOT]
    assert await stored_data(crl_store, stable_key(ISSUING)) == competitor
    leftovers = sorted(p.name for p in (crl_store.root / ISSUING).glob("*.crl"))
    assert leftovers == []


async def test_the_storer_refuses_a_crl_signed_by_another_key_or_for_another_issuer(
    rt: Runtime, crl_store: DirectoryStore, fake_clock: FakeClock
) -> None:
    rec = await issuer(rt, ISSUING)
    now = fake_clock.now()
    # An impostor: same subject as the issuing CA, another key.
    impostor_key = ec.generate_private_key(ec.SECP256R1())
    impostor = (
        x509.CertificateBuilder()
        .subject_name(rec.cert.subject)
        .issuer_name(rec.cert.subject)
        .public_key(impostor_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(impostor_key, hashes.SHA256())
    )
    forged = build_crl(
        impostor,
        FileKey(KeyRef("file", "impostor.key"), impostor_key),
        [],
        number=10**20,
        this_update=now,
        next_update=now + datetime.timedelta(days=1),
        extra_extensions=idp(rec),
    )
    storer = Storer(crl_store, rt.view)
    position = await rt.view.position()
    with pytest.raises(RefusedCRL, match="signature"):
        await storer.store(Candidate(rec, 0, forged, position))
    root_crl = empty_crl(await issuer(rt, ROOT), 10**20, now)
    with pytest.raises(RefusedCRL, match="issuer"):
        await storer.store(Candidate(rec, 0, root_crl, position))
    with pytest.raises(RefusedCRL):
        await storer.store(Candidate(rec, 0, b"not a CRL at all", position))
    assert await crl_store.get(stable_key(ISSUING)) is None
    assert not (crl_store.root / ISSUING).exists()


async def test_the_storer_refuses_a_crl_whose_entries_differ_from_the_log(
    rt: Runtime, authority: Authority, crl_store: DirectoryStore, fake_clock: FakeClock
) -> None:
    revoked, good = await issue(authority, "revoked"), await issue(authority, "good")
    await authority.revoke(revoked.serial_number, "keyCompromise", ACTOR)
    rec = await issuer(rt, ISSUING)
    now = fake_clock.now()
    position = await rt.view.position()
    listed = CRLEntry(revoked.serial_number, now, 1)
    storer = Storer(crl_store, rt.view)
    mismatches: list[list[CRLEntry]] = [
        [],  # the log has a revocation the CRL misses
        [listed, CRLEntry(good.serial_number, now, 1)],  # the CRL lists a certificate the log says is good
        [CRLEntry(revoked.serial_number, now - datetime.timedelta(hours=1), 1)],  # another revocation time
        [CRLEntry(revoked.serial_number, now, 4)],  # another reason
    ]
    for wrong in mismatches:
        with pytest.raises(RefusedCRL, match="does not list what the log says"):
            await storer.store(Candidate(rec, 0, signed_crl(rec, 10**20, now, wrong), position))
    assert await crl_store.get(stable_key(ISSUING)) is None

    crl = signed_crl(rec, 10**20, now, [listed])
    assert await storer.store(Candidate(rec, 0, crl, position)) == 10**20
    assert await stored_data(crl_store, stable_key(ISSUING)) == crl


class BrokenPutStore:
    """Reads work; every write fails as an unreachable bucket would."""

    def __init__(self, inner: DirectoryStore) -> None:
        self.inner = inner

    async def put(self, key: str, data: bytes, **kwargs: Any) -> str:
        raise StorageError(f"writing {key}: connection reset by peer")

    async def get(self, key: str) -> StoredObject | None:
        return await self.inner.get(key)

    async def head(self, key: str) -> ObjectHead | None:
        return await self.inner.head(key)


class StaleReadStore:
    """Writes go through; reads keep answering what the first read saw (a lagging replica)."""

    def __init__(self, inner: DirectoryStore) -> None:
        self.inner = inner
        self._first: dict[str, StoredObject | None] = {}

    async def put(self, key: str, data: bytes, **kwargs: Any) -> str:
        return await self.inner.put(key, data, **kwargs)

    async def get(self, key: str) -> StoredObject | None:
        if key not in self._first:
            self._first[key] = await self.inner.get(key)
        return self._first[key]

    async def head(self, key: str) -> ObjectHead | None:
        return await self.inner.head(key)


async def test_a_store_that_cannot_write_makes_publishing_fail_loudly(
    rt: Runtime, crl_store: DirectoryStore, fake_clock: FakeClock
) -> None:
    registry = CollectorRegistry()
    publisher = make_publisher(rt, BrokenPutStore(crl_store), fake_clock, registry)

    assert await publisher.publish_all() == []

    assert publisher.last_error is not None
    assert ROOT in publisher.last_error and ISSUING in publisher.last_error
    assert "connection reset by peer" in publisher.last_error
    assert count(registry, ISSUING, "published") == 0
    with pytest.raises(StorageError):
        await publisher.publish(await issuer(rt, ISSUING))
    assert await crl_store.get(stable_key(ISSUING)) is None


async def test_a_store_answering_stale_reads_makes_publishing_fail_loudly_never_go_backwards(
    rt: Runtime, authority: Authority, crl_store: DirectoryStore, fake_clock: FakeClock
) -> None:
    stale = StaleReadStore(crl_store)
    await make_publisher(rt, stale, fake_clock).publish_all()  # the first read saw nothing; stays so
    current = await crl_store.get(stable_key(ISSUING))
    assert current is not None

    revoked = await issue(authority, "revoked")
    await authority.revoke(revoked.serial_number, "keyCompromise", ACTOR)
    fake_clock.advance(-3600)  # and a restarted publisher's clock is behind
    publisher = make_publisher(rt, stale, fake_clock)

    assert await publisher.publish_all() == []

    assert publisher.last_error is not None and ISSUING in publisher.last_error
    assert await stored_data(crl_store, stable_key(ISSUING)) == current.data


# --- the CRL HTTP app ---------------------------------------------------------------------------------------------


async def call_asgi(app: CRLApp, method: str, path: str) -> tuple[int, bytes]:
    """Drive the app directly with a path no client library would normalise."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.fixture
async def published(rt: Runtime, authority: Authority, crl_store: DirectoryStore, fake_clock: FakeClock) -> CRLApp:
    revoked = await issue(authority, "revoked")
    await authority.revoke(revoked.serial_number, "keyCompromise", ACTOR)
    await make_publisher(rt, crl_store, fake_clock).publish_all()
    return CRLApp(crl_store)


def client(app: CRLApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://crl.test")


async def test_crl_app_serves_crls_with_caching_headers(published: CRLApp, crl_store: DirectoryStore) -> None:
    stored = await crl_store.get(stable_key(ISSUING))
    assert stored is not None
    number = crl_number(x509.load_der_x509_crl(stored.data))
    async with client(published) as http:
        response = await http.get(f"/crl/{ISSUING}.crl")
        numbered = await http.get(f"/crl/{ISSUING}/{number}.crl")
        head = await http.head(f"/crl/{ISSUING}.crl")

    assert response.status_code == 200
    assert response.content == stored.data
    assert response.headers["content-type"] == "application/pkix-crl"
    assert response.headers["etag"] == stored.etag
    assert "max-age=" in response.headers["cache-control"]
    parsedate_to_datetime(response.headers["last-modified"])
    expires = parsedate_to_datetime(response.headers["expires"])
    assert expires == x509.load_der_x509_crl(response.content).next_update_utc
    assert numbered.status_code == 200 and numbered.content == stored.data
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(stored.data)


async def test_crl_app_answers_304_to_a_matching_if_none_match(published: CRLApp) -> None:
    async with client(published) as http:
        first = await http.get(f"/crl/{ISSUING}.crl")
        again = await http.get(f"/crl/{ISSUING}.crl", headers={"if-none-match": first.headers["etag"]})
        other = await http.get(f"/crl/{ISSUING}.crl", headers={"if-none-match": '"not-it"'})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == first.headers["etag"]
    assert other.status_code == 200 and other.content == first.content


async def test_crl_app_304_does_not_relabel_the_crl(published: CRLApp) -> None:
    async with client(published) as http:
        first = await http.get(f"/crl/{ISSUING}.crl")
        again = await http.get(f"/crl/{ISSUING}.crl", headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.headers.get_list("content-type") in ([], ["application/pkix-crl"])
    assert again.headers.get("content-length") in (None, str(len(first.content)))


async def test_crl_app_refuses_unknown_keys_traversal_and_other_methods(
    published: CRLApp, crl_store: DirectoryStore
) -> None:
    # Files next to the store that must never be reachable, one of them named like a CRL.
    (crl_store.root.parent / "secret.crl").write_bytes(b"not for you")
    async with client(published) as http:
        for path in (
            "/crl/nope.crl",
            f"/crl/{ISSUING}.crl.meta",
            f"/crl/{ISSUING}",
            "/crl/",
            "/crl/%2e%2e/pca.db",
            "/crl/%2e%2e/secret.crl",
            "/crl/..%2fsecret.crl",
        ):
            response = await http.get(path)
            assert response.status_code == 404, path
            assert b"not for you" not in response.content
        post = await http.post(f"/crl/{ISSUING}.crl", content=b"x")
        assert post.status_code == 405
        assert "GET" in post.headers["allow"]
    for path in ("/crl/../pca.toml", "/crl/../secret.crl", "/crl/a/../../secret.crl", "/crl//etc/passwd.crl"):
        status, body = await call_asgi(published, "GET", path)
        assert status == 404, path
        assert body != b"not for you"


# --- configuration --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("validity", "interval"), [(3600, 3600), (3600, 7200), (0, 60), (3600, 0)])
async def test_a_publisher_whose_crls_would_expire_before_renewal_is_refused(
    rt: Runtime, crl_store: DirectoryStore, fake_clock: FakeClock, validity: int, interval: int
) -> None:
    with pytest.raises(ValueError, match="interval"):
        Publisher(
            rt.view,
            Storer(crl_store, rt.view),
            fake_clock,
            CollectorRegistry(),
            validity_seconds=validity,
            interval_seconds=interval,
            after_revocation_seconds=1.0,
        )
