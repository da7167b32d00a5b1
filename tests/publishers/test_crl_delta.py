"""Delta CRLs, sharded CRLs and the publish schedule, on the CA's real log and keys.

CRLs go to a real directory store and are checked with cryptography and the
openssl command (``openssl crl`` for signatures, ``openssl verify -crl_check
-use_deltas`` for what a relying party concludes). Time moves only through a
FakeClock; the publisher is driven by ``tick()``, never by sleeping.
"""

from __future__ import annotations

import datetime
import itertools
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID
from prometheus_client import CollectorRegistry

from pca.config import Config
from pca.roles.publisher import build_publisher, open_store
from pca.runtime import Runtime, open_runtime
from pca.serve import build_authority
from publishers.crl_der import CRLEntry, build_crl, delta_crl_indicator, issuing_distribution_point
from publishers.objectstore import DirectoryStore, ObjectHead, StoredObject
from publishers.publisher import Published, Publisher, RefusedCRL
from publishers.storer import Candidate, Storer
from revocation import crl_layout
from revocation.authority import Authority
from revocation.clock import FakeClock
from revocation.errors import ConfigError, StorageError
from revocation.keys import open_key
from revocation.projection import CRLRecord, StatusView
from tests.support.ca import ACTOR, ISSUING, ROOT, issue, issuer, openssl
from tests.support.crl import (
    crl_number,
    delta_base,
    dp_urls,
    extension,
    idp_url,
    listed,
    openssl_crl_verifies,
    pem_file,
    with_crl_settings,
)

DELTA_INTERVAL = 300
DEBOUNCE = 2.0


@pytest.fixture
def store(tmp_path: Path) -> DirectoryStore:
    return DirectoryStore(tmp_path / "published")


def publisher_for(
    rt: Runtime,
    store: Any,
    registry: CollectorRegistry | None = None,
    view: StatusView | None = None,
    *,
    full_after_revocation: bool = False,
) -> Publisher:
    """The publisher as ``pca serve`` builds it from the configuration (deltas every 300 s, 2 s debounce),
    deltas only unless asked: these tests are about the delta CRLs (full CRLs following: test_crl_follow.py)."""
    cfg = rt.config.crl
    view = view or rt.view
    return Publisher(
        view,
        Storer(store, view, layout=rt.config.crl_layout, expired_grace_seconds=cfg.expired_grace_seconds),
        rt.clock,
        registry or CollectorRegistry(),
        validity_seconds=cfg.validity_seconds,
        interval_seconds=cfg.interval_seconds,
        after_revocation_seconds=cfg.after_revocation_seconds,
        delta_interval_seconds=cfg.delta_interval_seconds,
        full_after_revocation=full_after_revocation,
    )


async def stored(store: DirectoryStore, key: str) -> x509.CertificateRevocationList:
    obj = await store.get(key)
    assert obj is not None, f"nothing stored at {key}"
    return x509.load_der_x509_crl(obj.data)


def only(published: Sequence[Published], issuer_id: str, kind: str, shard: int = 0) -> Published:
    [match] = [p for p in published if (p.issuer_id, p.kind, p.shard) == (issuer_id, kind, shard)]
    return match


# --- delta CRLs -----------------------------------------------------------------------------------------------


async def test_full_crls_and_certificates_point_at_the_delta_and_the_delta_lists_what_changed_since_the_base(
    rt: Runtime, authority: Authority, store: DirectoryStore, fake_clock: FakeClock, ca_config: Config, tmp_path: Path
) -> None:
    layout = ca_config.crl_layout
    before, good, later = [await issue(authority, n) for n in ("before", "good", "later")]
    assert dp_urls(good) == [layout.full_url(ISSUING)]
    assert dp_urls(good, ExtensionOID.FRESHEST_CRL) == [layout.delta_url(ISSUING)]
    await authority.revoke(before.serial_number, "superseded", ACTOR)
    publisher = publisher_for(rt, store)

    first = await publisher.publish_all()

    base = only(first, ISSUING, "full")
    empty_delta = only(first, ISSUING, "delta")
    assert (empty_delta.base_number, empty_delta.entries) == (base.number, 0)
    assert empty_delta.number > base.number
    full = await stored(store, crl_layout.full_key(ISSUING))
    assert crl_number(full) == base.number and delta_base(full) is None
    assert idp_url(full) == layout.full_url(ISSUING)
    freshest = extension(full, ExtensionOID.FRESHEST_CRL)
    assert not freshest.critical
    assert [n.value for p in freshest.value for n in p.full_name] == [layout.delta_url(ISSUING)]
    assert set(listed(full)) == {before.serial_number}

    fake_clock.advance(60)
    await authority.revoke(later.serial_number, "keyCompromise", ACTOR)
    [delta_published] = [p for p in await publisher.publish_changes(refresh=True) if p.issuer_id == ISSUING]

    delta = await stored(store, crl_layout.delta_key(ISSUING))
    assert crl_number(delta) == delta_published.number > empty_delta.number
    indicator = extension(delta, ExtensionOID.DELTA_CRL_INDICATOR)
    assert indicator.critical and indicator.value.crl_number == base.number
    assert idp_url(delta) == layout.full_url(ISSUING)  # the same scope as its base
    assert extension(delta, ExtensionOID.FRESHEST_CRL) is None
    assert listed(delta) == {later.serial_number: x509.ReasonFlags.key_compromise}
    assert await store.get(crl_layout.numbered_key(ISSUING, 0, delta_published.number, delta=True)) is not None
    assert await store.get(crl_layout.numbered_key(ISSUING, 0, base.number)) is not None

    chain = ca_config.data_dir / "ca-chain.pem"
    for name, key in (("full", crl_layout.full_key(ISSUING)), ("delta", crl_layout.delta_key(ISSUING))):
        obj = await store.get(key)
        assert obj is not None
        await openssl_crl_verifies(obj.data, chain, tmp_path, name)
    both = pem_file(tmp_path / "base+delta.pem", full, delta)
    base_only = pem_file(tmp_path / "base.pem", full)
    certs = {name: pem_file(tmp_path / f"{name}.pem", cert) for name, cert in (("good", good), ("later", later))}

    code, output = await openssl(
        "verify", "-crl_check", "-use_deltas", "-CAfile", str(chain), "-CRLfile", both, certs["later"]
    )
    assert code != 0 and "certificate revoked" in output, output
    code, output = await openssl(
        "verify", "-crl_check", "-use_deltas", "-CAfile", str(chain), "-CRLfile", both, certs["good"]
    )
    assert code == 0 and f"{certs['good']}: OK" in output, output
    # The base alone does not know yet: the delta is what carries the news.
    code, output = await openssl("verify", "-crl_check", "-CAfile", str(chain), "-CRLfile", base_only, certs["later"])
    assert code == 0, output


async def test_a_released_hold_is_remove_from_crl_in_the_next_delta_and_gone_from_the_next_full_crl(
    rt: Runtime, authority: Authority, store: DirectoryStore, fake_clock: FakeClock, ca_config: Config, tmp_path: Path
) -> None:
    held = await issue(authority, "held")
    await authority.revoke(held.serial_number, "certificateHold", ACTOR)
    publisher = publisher_for(rt, store)
    await publisher.publish_all()
    base = await stored(store, crl_layout.full_key(ISSUING))
    assert listed(base) == {held.serial_number: x509.ReasonFlags.certificate_hold}

    fake_clock.advance(30)
    await authority.release_hold(held.serial_number, ACTOR)
    await publisher.publish_changes()

    delta = await stored(store, crl_layout.delta_key(ISSUING))
    assert listed(delta) == {held.serial_number: x509.ReasonFlags.remove_from_crl}
    chain = str(ca_config.data_dir / "ca-chain.pem")
    cert = pem_file(tmp_path / "held.pem", held)
    code, output = await openssl(
        "verify", "-crl_check", "-use_deltas", "-CAfile", chain, "-CRLfile", pem_file(tmp_path / "b.pem", base), cert
    )
    assert code != 0 and "certificate revoked" in output, output  # on hold, per the base alone
    code, output = await openssl(
        "verify",
        "-crl_check",
        "-use_deltas",
        "-CAfile",
        chain,
        "-CRLfile",
        pem_file(tmp_path / "bd.pem", base, delta),
        cert,
    )
    assert code == 0, output  # the delta takes it off

    fake_clock.advance(30)
    await publisher.publish_all()
    assert listed(await stored(store, crl_layout.full_key(ISSUING))) == {}
    assert listed(await stored(store, crl_layout.delta_key(ISSUING))) == {}  # a new base: nothing since


async def test_a_hold_made_permanent_after_the_base_is_listed_in_the_delta_with_its_new_reason(
    rt: Runtime, authority: Authority, store: DirectoryStore, fake_clock: FakeClock
) -> None:
    cert = await issue(authority, "held")
    await authority.revoke(cert.serial_number, "certificateHold", ACTOR)
    publisher = publisher_for(rt, store)
    await publisher.publish_all()
    fake_clock.advance(10)
    await authority.revoke(cert.serial_number, "keyCompromise", ACTOR)

    await publisher.publish_changes(refresh=True)

    assert listed(await stored(store, crl_layout.delta_key(ISSUING))) == {
        cert.serial_number: x509.ReasonFlags.key_compromise
    }


class CountingView:
    """The real view, counting the records each CRL query hands back."""

    def __init__(self, inner: StatusView) -> None:
        self.inner = inner
        self.rows: dict[str, int] = {"crl_revoked": 0, "crl_changes": 0}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def crl_revoked(self, issuer_id: str, shard: int) -> tuple[int, list[CRLRecord]]:
        position, records = await self.inner.crl_revoked(issuer_id, shard)
        self.rows["crl_revoked"] += len(records)
        return position, records

    async def crl_changes(self, issuer_id: str, shard: int, after: int) -> tuple[int, list[CRLRecord]]:
        position, records = await self.inner.crl_changes(issuer_id, shard, after)
        self.rows["crl_changes"] += len(records)
        return position, records


async def test_a_delta_reads_only_what_changed_since_its_base(
    rt: Runtime, authority: Authority, store: DirectoryStore, fake_clock: FakeClock
) -> None:
    certs = [await issue(authority, f"c{i}") for i in range(30)]
    for cert in certs[:25]:
        await authority.revoke(cert.serial_number, "superseded", ACTOR)
    view = CountingView(rt.view)
    publisher = publisher_for(rt, store, view=view)  # type: ignore[arg-type]
    await publisher.publish_all()
    fake_clock.advance(5)
    for cert in certs[25:28]:
        await authority.revoke(cert.serial_number, "keyCompromise", ACTOR)
    view.rows = {"crl_revoked": 0, "crl_changes": 0}

    [delta] = [p for p in await publisher.publish_changes() if p.issuer_id == ISSUING]

    assert delta.entries == 3
    # The publisher's read and the storer's check: the three changes each time, never the 25 of the base.
    assert view.rows == {"crl_revoked": 0, "crl_changes": 6}


# --- the schedule -------------------------------------------------------------------------------------------------


async def test_a_burst_of_200_revocations_makes_one_delta_after_the_debounce(
    rt: Runtime, authority: Authority, store: DirectoryStore, fake_clock: FakeClock
) -> None:
    certs = [await issue(authority, f"burst{i}") for i in range(200)]
    # Only the delta: with full_after_revocation (the default) the full CRL follows too (test_crl_follow.py).
    publisher = publisher_for(rt, store)
    rt.on_commit(lambda events: publisher.revocation_happened() if events else None)
    started = await publisher.tick()  # the first tick publishes every full CRL (and its first delta)
    assert {p.kind for p in started} == {"full", "delta"}
    assert await publisher.tick() == []
    assert publisher.seconds_until_due() == DELTA_INTERVAL

    published: list[Published] = []
    for cert in certs:  # 200 revocations within one second, the publisher ticking all along
        await authority.revoke(cert.serial_number, "keyCompromise", ACTOR)
        fake_clock.advance(0.005)
        published += await publisher.tick()
    assert published == []  # still inside the debounce
    assert 0 < publisher.seconds_until_due() <= DEBOUNCE

    fake_clock.advance(publisher.seconds_until_due())
    published += await publisher.tick()
    published += await publisher.tick()

    deltas = [p for p in published if p.kind == "delta"]
    assert [(p.issuer_id, p.entries) for p in deltas] == [(ISSUING, 200)]  # the root had nothing new
    assert listed(await stored(store, crl_layout.delta_key(ISSUING))).keys() == {c.serial_number for c in certs}
    assert publisher.seconds_until_due() == pytest.approx(DELTA_INTERVAL - DEBOUNCE, abs=0.1)


async def test_deltas_follow_their_interval_and_full_crls_theirs(
    rt: Runtime, store: DirectoryStore, fake_clock: FakeClock, ca_config: Config
) -> None:
    publisher = publisher_for(rt, store)
    kinds: list[tuple[str, str]] = []
    for _ in range(ca_config.crl.interval_seconds // DELTA_INTERVAL + 1):
        kinds += [(p.issuer_id, p.kind) for p in await publisher.tick()]
        fake_clock.advance(publisher.seconds_until_due())
    fulls = [k for k in kinds if k[1] == "full"]
    deltas = [k for k in kinds if k[1] == "delta"]
    assert sorted(fulls) == sorted([(ROOT, "full"), (ISSUING, "full")] * 2)  # at start and after 6 hours
    assert len(deltas) == 2 * (ca_config.crl.interval_seconds // DELTA_INTERVAL + 1)  # every 5 min, both issuers


async def test_crl_numbers_increase_across_full_and_delta_crls_restarts_and_a_clock_set_back(
    rt: Runtime, authority: Authority, store: DirectoryStore, fake_clock: FakeClock
) -> None:
    numbers: list[int] = []

    async def run(publisher: Publisher, *, deltas: int) -> None:
        numbers.extend(p.number for p in await publisher.tick() if p.issuer_id == ISSUING)
        for _ in range(deltas):
            cert = await issue(authority, f"n{len(numbers)}")
            await authority.revoke(cert.serial_number, "superseded", ACTOR)
            numbers.extend(p.number for p in await publisher.publish_changes(refresh=True) if p.issuer_id == ISSUING)
        assert publisher.last_error is None

    await run(publisher_for(rt, store), deltas=3)
    await run(publisher_for(rt, store), deltas=2)  # a restart: a full CRL first, nothing in memory
    fake_clock.advance(-86400)
    await run(publisher_for(rt, store), deltas=2)

    assert len(numbers) == 3 * 2 + 7
    assert all(a < b for a, b in itertools.pairwise(numbers)), numbers


# --- sharding -------------------------------------------------------------------------------------------------------


async def sharded_runtime(config: Config, clock: FakeClock, shards: int) -> Runtime:
    return open_runtime(with_crl_settings(config, shards=shards), clock)


async def test_each_shard_crl_lists_exactly_its_own_certificates_under_its_own_idp(
    ca_config: Config, store: DirectoryStore, fake_clock: FakeClock, tmp_path: Path
) -> None:
    rt = await sharded_runtime(ca_config, fake_clock, 4)
    try:
        authority = build_authority(rt)
        layout = rt.config.crl_layout
        # Random serials choose the shard: issue until each of the four has two certificates.
        certs: list[x509.Certificate] = []
        while len(certs) < 400:
            counts = [layout.shard_for(c.serial_number) for c in certs]
            if all(counts.count(shard) >= 2 for shard in (1, 2, 3, 4)):
                break
            certs.append(await issue(authority, f"s{len(certs)}"))
        by_shard: dict[int, list[x509.Certificate]] = {}
        for cert in certs:
            shard = layout.shard_for(cert.serial_number)
            assert dp_urls(cert) == [layout.full_url(ISSUING, shard)]
            assert dp_urls(cert, ExtensionOID.FRESHEST_CRL) == [layout.delta_url(ISSUING, shard)]
            by_shard.setdefault(shard, []).append(cert)
        assert set(by_shard) == {1, 2, 3, 4}
        revoked = {shard: members[0] for shard, members in by_shard.items()}
        for cert in revoked.values():
            await authority.revoke(cert.serial_number, "keyCompromise", ACTOR)

        published = await publisher_for(rt, store).publish_all()

        assert sorted((p.issuer_id, p.shard) for p in published if p.kind == "full") == [
            (ISSUING, 1), (ISSUING, 2), (ISSUING, 3), (ISSUING, 4), (ROOT, 0),
        ]  # fmt: skip
        chain = str(rt.config.data_dir / "ca-chain.pem")
        for shard, cert in revoked.items():
            crl = await stored(store, f"{ISSUING}-{shard}.crl")
            assert set(listed(crl)) == {cert.serial_number}
            idp = extension(crl, ExtensionOID.ISSUING_DISTRIBUTION_POINT)
            assert idp.critical and idp.value.only_contains_user_certs and not idp.value.only_contains_ca_certs
            assert idp_url(crl) == layout.full_url(ISSUING, shard)
            crl_pem = pem_file(tmp_path / f"shard{shard}.pem", crl)
            code, output = await openssl(
                "verify", "-crl_check", "-CAfile", chain, "-CRLfile", crl_pem, pem_file(tmp_path / "c.pem", cert)
            )
            assert code != 0 and "certificate revoked" in output, output
            good = by_shard[shard][1]
            code, output = await openssl(
                "verify", "-crl_check", "-CAfile", chain, "-CRLfile", crl_pem, pem_file(tmp_path / "g.pem", good)
            )
            assert code == 0, output
            # Another shard's CRL is out of this certificate's scope: a relying party cannot be fooled by it.
            other = await stored(store, f"{ISSUING}-{shard % 4 + 1}.crl")
            code, output = await openssl(
                "verify", "-crl_check", "-CAfile", chain, "-CRLfile", pem_file(tmp_path / "o.pem", other),
                pem_file(tmp_path / "c.pem", cert),
            )  # fmt: skip
            assert code != 0 and "certificate revoked" not in output, output
        root_crl = await stored(store, crl_layout.full_key(ROOT))
        assert idp_url(root_crl) is None  # the root's one CRL covers all it issued
        assert await store.get(crl_layout.full_key(ISSUING)) is None  # no certificate in shard 0, none configured
    finally:
        rt.close()


async def test_changing_the_shard_count_keeps_every_certificate_in_the_shard_its_crl_dp_names(
    ca_config: Config, store: DirectoryStore, fake_clock: FakeClock
) -> None:
    unsharded = await issue(build_authority(rt1 := open_runtime(ca_config, fake_clock)), "k1")
    rt1.close()
    rt4 = await sharded_runtime(ca_config, fake_clock, 4)
    try:
        authority4 = build_authority(rt4)
        four: list[x509.Certificate] = []
        # Random serials choose the shard: issue until one lands in shard 3 or 4 (the ones K=2 drops).
        while not any(rt4.config.crl_layout.shard_for(c.serial_number) > 2 for c in four) and len(four) < 400:
            four.append(await issue(authority4, f"k4-{len(four)}"))
    finally:
        rt4.close()
    rt2 = await sharded_runtime(ca_config, fake_clock, 2)
    try:
        authority = build_authority(rt2)
        two = await issue(authority, "k2")
        assert crl_layout.shard_from_url(ISSUING, dp_urls(two)[0]) in (1, 2)
        old_shards = {c.serial_number: crl_layout.shard_from_url(ISSUING, dp_urls(c)[0]) for c in four}
        high = next(c for c in four if old_shards[c.serial_number] in (3, 4))
        for cert in (unsharded, high, two):
            await authority.revoke(cert.serial_number, "superseded", ACTOR)

        publisher = publisher_for(rt2, store)
        published = await publisher.publish_all()

        shards = sorted(p.shard for p in published if p.issuer_id == ISSUING and p.kind == "full")
        # The configured shards 1-2, plus 0 and every old shard while it holds live certificates
        # (which of 3 and 4 the random serials reached is up to chance).
        assert shards == sorted({0, 1, 2} | set(old_shards.values()))
        assert {3, 4} & set(shards)
        homes = {
            unsharded.serial_number: 0,
            high.serial_number: old_shards[high.serial_number],
            two.serial_number: crl_layout.shard_from_url(ISSUING, dp_urls(two)[0]),
        }
        for serial, shard in homes.items():
            crl = await stored(store, crl_layout.full_key(ISSUING, shard))
            assert serial in listed(crl), shard
        # The shard is read from the certificate, so a rebuild from the log lands every certificate where it was.
        before = await rt2.view.crl_shards(ISSUING)
        await rt2.log.rebuild_projection()
        assert await rt2.view.crl_shards(ISSUING) == before
    finally:
        rt2.close()


async def test_a_shard_whose_certificates_have_all_expired_is_no_longer_published(
    ca_config: Config, store: DirectoryStore, fake_clock: FakeClock
) -> None:
    rt4 = await sharded_runtime(ca_config, fake_clock, 4)
    try:
        await issue(build_authority(rt4), "short", validity_days=1)
    finally:
        rt4.close()
    rt = await sharded_runtime(ca_config, fake_clock, 1)
    try:
        publisher = publisher_for(rt, store)
        assert len({p.shard for p in await publisher.publish_all() if p.issuer_id == ISSUING}) == 2
        fake_clock.advance(2 * 86400)
        assert {p.shard for p in await publisher.publish_all() if p.issuer_id == ISSUING} == {0}
    finally:
        rt.close()


async def test_expired_entries_leave_the_crl_after_the_grace(
    ca_config: Config, store: DirectoryStore, fake_clock: FakeClock
) -> None:
    rt = open_runtime(with_crl_settings(ca_config, expired_grace_seconds=3600), fake_clock)
    try:
        authority = build_authority(rt)
        short = await issue(authority, "short", validity_days=1)
        await authority.revoke(short.serial_number, "superseded", ACTOR)
        publisher = publisher_for(rt, store)
        fake_clock.advance((short.not_valid_after_utc - fake_clock.now()).total_seconds() + 1)
        await publisher.publish_all()
        assert short.serial_number in listed(await stored(store, crl_layout.full_key(ISSUING)))
        fake_clock.advance(3600)
        await publisher.publish_all()
        assert short.serial_number not in listed(await stored(store, crl_layout.full_key(ISSUING)))
    finally:
        rt.close()


# --- the gatekeeper on deltas and shards ----------------------------------------------------------------------


async def test_the_storer_refuses_deltas_and_shards_that_do_not_match_the_log_or_the_layout(
    rt: Runtime, authority: Authority, store: DirectoryStore, fake_clock: FakeClock
) -> None:
    cert = await issue(authority, "victim")
    publisher = publisher_for(rt, store)
    await publisher.publish_all()
    base = await stored(store, crl_layout.full_key(ISSUING))
    base_position = await rt.view.position()
    await authority.revoke(cert.serial_number, "keyCompromise", ACTOR)
    position = await rt.view.position()
    rec = await issuer(rt, ISSUING)
    assert rec.key_ref is not None
    key = open_key(rec.key_ref)
    layout = rt.config.crl_layout
    now = fake_clock.now()
    storer = Storer(store, rt.view, layout=layout)
    right_idp = issuing_distribution_point(layout.full_url(ISSUING), only_user_certs=True, only_ca_certs=False)
    revoked_entry = [CRLEntry(cert.serial_number, now, 1)]

    def delta(number: int, base_number: int, entries: list[Any], idp: bytes = right_idp) -> bytes:
        return build_crl(
            rec.cert, key, entries, number=number, this_update=now, next_update=now + datetime.timedelta(days=1),
            extra_extensions=[idp, delta_crl_indicator(base_number)],
        )  # fmt: skip

    top = crl_number(base) + 10**6
    refusals = {
        "not published": Candidate(rec, 0, delta(top, top - 1, revoked_entry), position, base_position),
        "does not list": Candidate(rec, 0, delta(top, crl_number(base), []), position, base_position),
        "beyond the log": Candidate(rec, 0, delta(top, crl_number(base), revoked_entry), position + 5, base_position),
        "Issuing Distribution Point": Candidate(
            rec, 0,
            delta(top, crl_number(base), revoked_entry, issuing_distribution_point(
                layout.full_url(ISSUING, 2), only_user_certs=True, only_ca_certs=False
            )),
            position, base_position,
        ),
        "Delta CRL Indicator": Candidate(rec, 0, delta(top, crl_number(base), revoked_entry), position),
        # The same entries, but not the position its base was published at (read from the stored base).
        "published at log position": Candidate(
            rec, 0, delta(top, crl_number(base), revoked_entry), position, base_position - 1
        ),
    }  # fmt: skip
    before = await store.get(crl_layout.delta_key(ISSUING))
    for expected, candidate in refusals.items():
        with pytest.raises(RefusedCRL, match=expected):
            await storer.store(candidate)
    after = await store.get(crl_layout.delta_key(ISSUING))
    assert before is not None and after is not None and after.data == before.data

    accepted = Candidate(rec, 0, delta(top, crl_number(base), revoked_entry), position, base_position)
    assert await storer.store(accepted) == top


class FlakyStore:
    """A store that is down (every call fails) while ``down`` is set: an outage of the bucket."""

    def __init__(self, inner: DirectoryStore) -> None:
        self.inner = inner
        self.down = False

    def _check(self, key: str) -> None:
        if self.down:
            raise StorageError(f"reading {key}: 503 Service Unavailable")

    async def put(self, key: str, data: bytes, **kwargs: Any) -> str:
        self._check(key)
        return await self.inner.put(key, data, **kwargs)

    async def get(self, key: str) -> StoredObject | None:
        self._check(key)
        return await self.inner.get(key)

    async def head(self, key: str) -> ObjectHead | None:
        self._check(key)
        return await self.inner.head(key)


async def test_after_an_outage_publishing_resumes_and_numbers_still_only_increase(
    rt: Runtime, authority: Authority, store: DirectoryStore, fake_clock: FakeClock
) -> None:
    flaky = FlakyStore(store)
    registry = CollectorRegistry()
    publisher = build_publisher(rt, flaky)  # as the publisher role builds it, then with a registry of our own
    publisher = publisher_for(rt, flaky, registry)  # what deltas do
    await publisher.tick()
    before = crl_number(await stored(store, crl_layout.delta_key(ISSUING)))

    flaky.down = True
    cert = await issue(authority, "during-outage")
    await authority.revoke(cert.serial_number, "keyCompromise", ACTOR)
    publisher.revocation_happened()
    fake_clock.advance(DEBOUNCE)
    assert await publisher.tick() == []
    assert publisher.last_error is not None and "503" in publisher.last_error
    errors = registry.get_sample_value("crl_publishes_total", {"issuer": ISSUING, "kind": "delta", "result": "error"})
    assert errors == 1
    fake_clock.advance(publisher.seconds_until_due())
    assert await publisher.tick() == []  # still down: retried, still failing

    flaky.down = False
    fake_clock.advance(publisher.seconds_until_due())
    resumed = await publisher.tick()

    assert publisher.last_error is None
    delta = await stored(store, crl_layout.delta_key(ISSUING))
    assert cert.serial_number in listed(delta)
    assert crl_number(delta) > before
    assert next(p.number for p in resumed if p.issuer_id == ISSUING) == crl_number(delta)


# --- configuration and the URL scheme ---------------------------------------------------------------------------


def test_the_default_configuration_publishes_deltas_unsharded_to_the_directory(ca_config: Config) -> None:
    layout = ca_config.crl_layout
    assert (layout.base_url, layout.shards, layout.deltas) == (ca_config.public_url + "/crl", 1, True)
    assert (ca_config.crl.interval_seconds, ca_config.crl.delta_interval_seconds) == (6 * 3600, 300)
    assert ca_config.crl_url(ISSUING) == ca_config.public_url + "/crl/issuing-ca.crl"
    assert isinstance(open_store(ca_config), DirectoryStore)
    s3 = with_crl_settings(ca_config, base_url="https://crl.example.test")
    assert s3.crl_url(ISSUING, 3) == "https://crl.example.test/issuing-ca-3.crl"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"shards": 0}, "crl.shards"),
        ({"shards": 257}, "crl.shards"),
        ({"delta_interval_seconds": 21600}, "crl.delta_interval_seconds"),
        ({"delta_interval_seconds": -1}, "crl.delta_interval_seconds"),
        ({"expired_grace_seconds": -5}, "crl.expired_grace_seconds"),
        ({"base_url": "https://crl.example.test/"}, "crl.base_url"),
        ({"base_url": "ftp://crl.example.test"}, "crl.base_url"),
        ({"type": "ftp"}, "crl.store.type"),
        ({"type": "s3"}, "crl.store.bucket"),
    ],
)
def test_bad_crl_settings_are_refused_naming_the_key(
    ca_config: Config, settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        with_crl_settings(ca_config, **settings)


def test_the_layout_names_shards_keys_and_urls_one_way() -> None:
    layout = crl_layout.CRLLayout("https://crl.example.test/pki", shards=4, deltas=True)
    assert {layout.shard_for(serial) for serial in range(1, 200)} == {1, 2, 3, 4}
    assert crl_layout.CRLLayout("https://x.test").shard_for(12345) == 0
    assert layout.configured_shards("intermediate") == [1, 2, 3, 4]
    assert layout.configured_shards("root") == [0]
    assert layout.full_url("issuing-ca", 3) == "https://crl.example.test/pki/issuing-ca-3.crl"
    assert layout.delta_url("issuing-ca", 0) == "https://crl.example.test/pki/issuing-ca-delta.crl"
    assert crl_layout.numbered_key("issuing-ca", 3, 17) == "issuing-ca-3/17.crl"
    assert crl_layout.numbered_key("issuing-ca", 0, 17, delta=True) == "issuing-ca-delta/17.crl"
    for url, shard in [
        ("https://crl.example.test/pki/issuing-ca.crl", 0),
        ("http://old.example/crl/issuing-ca-12.crl", 12),
        ("http://old.example/crl/issuing-ca-0.crl", None),
        ("http://old.example/crl/issuing-ca-delta.crl", None),
        ("http://old.example/crl/issuing-ca-3-delta.crl", None),
        ("http://old.example/crl/other-ca-3.crl", None),
        ("http://old.example/crl/issuing-ca-x.crl", None),
    ]:
        assert crl_layout.shard_from_url("issuing-ca", url) == shard, url
    with pytest.raises(ValueError, match="shards"):
        crl_layout.CRLLayout("https://x.test", shards=0)


async def test_a_delta_whose_base_the_store_lost_is_refused_and_a_new_full_crl_follows(
    rt: Runtime, authority: Authority, store: DirectoryStore, fake_clock: FakeClock
) -> None:
    publisher = publisher_for(rt, store)  # a delta, not a full CRL, finds the loss
    await publisher.tick()
    cert = await issue(authority, "after-loss")
    (store.root / crl_layout.full_key(ISSUING)).unlink()  # someone emptied the bucket
    (store.root / (crl_layout.full_key(ISSUING) + ".meta")).unlink()
    await authority.revoke(cert.serial_number, "keyCompromise", ACTOR)
    publisher.revocation_happened()
    fake_clock.advance(DEBOUNCE)

    assert [p for p in await publisher.tick() if p.issuer_id == ISSUING] == []
    assert publisher.last_error is not None and "is not published" in publisher.last_error

    fake_clock.advance(publisher.seconds_until_due())
    again = [(p.kind, p.entries) for p in await publisher.tick() if p.issuer_id == ISSUING]

    assert again == [("full", 1), ("delta", 0)]
    assert publisher.last_error is None
    assert cert.serial_number in listed(await stored(store, crl_layout.full_key(ISSUING)))


@pytest.mark.e2e
def test_the_delta_benchmark_runs_at_smoke_size() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.crl_delta", "--smoke"], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    assert result["delta"]["entries"] == result["params"]["changes"]
    assert result["full"]["entries"] == result["params"]["base"] + result["params"]["changes"]
    assert 0 < result["delta_x_full_time"] < 1
