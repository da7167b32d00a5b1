"""Full CRLs follow revocations: most relying parties (nginx, HAProxy, OpenVPN, Java in CRL mode)
read only full CRLs, so a revocation, hold or release rebuilds the full CRL of its shard soon after,
not only the delta; only changed shards are rebuilt, and a slow shard's rebuilds are spaced."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from pca.config import Config
from pca.runtime import Runtime, open_runtime
from pca.serve import build_authority
from publishers.objectstore import DirectoryStore
from publishers.publisher import Published, Publisher
from publishers.storer import Storer
from revocation import crl_layout
from revocation.authority import Authority
from revocation.clock import FakeClock
from revocation.errors import ConfigError
from tests.support.ca import ACTOR, ISSUING, issue
from tests.support.crl import listed, with_crl_settings

DEBOUNCE = 2.0


def publisher_for(rt: Runtime, store: Any, **options: Any) -> Publisher:
    """The publisher as ``pca serve`` builds it from the configuration, with ``options`` overriding it."""
    cfg = rt.config.crl
    settings: dict[str, Any] = {
        "validity_seconds": cfg.validity_seconds,
        "interval_seconds": cfg.interval_seconds,
        "after_revocation_seconds": cfg.after_revocation_seconds,
        "delta_interval_seconds": cfg.delta_interval_seconds,
        "full_after_revocation": cfg.full_after_revocation,
    }
    settings.update(options)
    layout = dataclasses.replace(rt.config.crl_layout, deltas=settings["delta_interval_seconds"] > 0)
    storer = Storer(store, rt.view, layout=layout, expired_grace_seconds=cfg.expired_grace_seconds)
    return Publisher(rt.view, storer, rt.clock, CollectorRegistry(), **settings)


async def stored(store: DirectoryStore, key: str) -> x509.CertificateRevocationList:
    obj = await store.get(key)
    assert obj is not None, f"nothing stored at {key}"
    return x509.load_der_x509_crl(obj.data)


async def after_debounce(publisher: Publisher, clock: FakeClock) -> list[Published]:
    assert 0 < publisher.seconds_until_due() <= DEBOUNCE
    clock.advance(publisher.seconds_until_due())
    return await publisher.tick()


def kinds(published: list[Published]) -> list[tuple[str, int, str]]:
    return sorted((p.issuer_id, p.shard, p.kind) for p in published)


async def test_a_burst_of_revocations_makes_one_full_crl_of_the_changed_issuer_after_the_debounce(
    rt: Runtime, authority: Authority, fake_clock: FakeClock, tmp_path: Path
) -> None:
    store = DirectoryStore(tmp_path / "crls")
    certs = [await issue(authority, f"burst{i}") for i in range(50)]
    publisher = publisher_for(rt, store)
    rt.on_commit(lambda events: publisher.revocation_happened() if events else None)
    await publisher.tick()  # the start: every full CRL and its first delta
    first_number = (await publisher.publish(await _issuer(rt, ISSUING))).number

    published: list[Published] = []
    for cert in certs:
        await authority.revoke(cert.serial_number, "keyCompromise", ACTOR)
        fake_clock.advance(0.01)
        published += await publisher.tick()
    assert published == []  # inside the debounce
    published = await after_debounce(publisher, fake_clock)

    # The issuing CA's full CRL (and a delta on it, empty); the root, unchanged, gets nothing.
    assert kinds(published) == [(ISSUING, 0, "delta"), (ISSUING, 0, "full")]
    full = await stored(store, crl_layout.full_key(ISSUING))
    assert listed(full).keys() == {c.serial_number for c in certs}
    assert all(reason == x509.ReasonFlags.key_compromise for reason in listed(full).values())
    [new_full] = [p for p in published if p.kind == "full"]
    assert new_full.number > first_number
    [delta] = [p for p in published if p.kind == "delta"]
    assert (delta.base_number, delta.entries) == (new_full.number, 0)
    assert await publisher.tick() == []  # nothing left to do until the delta interval


async def test_a_released_hold_leaves_the_full_crl_soon_after(
    rt: Runtime, authority: Authority, fake_clock: FakeClock, tmp_path: Path
) -> None:
    store = DirectoryStore(tmp_path / "crls")
    held, kept = await issue(authority, "held"), await issue(authority, "kept")
    publisher = publisher_for(rt, store)
    rt.on_commit(lambda events: publisher.revocation_happened() if events else None)
    await publisher.tick()
    await authority.revoke(held.serial_number, "certificateHold", ACTOR)
    await authority.revoke(kept.serial_number, "superseded", ACTOR)
    await after_debounce(publisher, fake_clock)
    assert listed(await stored(store, crl_layout.full_key(ISSUING))).keys() == {held.serial_number, kept.serial_number}

    await authority.release_hold(held.serial_number, ACTOR)
    published = await after_debounce(publisher, fake_clock)

    assert (ISSUING, 0, "full") in kinds(published)
    assert listed(await stored(store, crl_layout.full_key(ISSUING))).keys() == {kept.serial_number}


async def test_only_the_changed_shard_is_rebuilt(ca_config: Config, fake_clock: FakeClock, tmp_path: Path) -> None:
    cfg = with_crl_settings(ca_config, shards=4)
    rt = open_runtime(cfg, fake_clock)
    try:
        authority = build_authority(rt)
        store = DirectoryStore(tmp_path / "crls")
        cert = await issue(authority, "sharded")
        shard = cfg.crl_layout.shard_for(cert.serial_number)
        publisher = publisher_for(rt, store)
        rt.on_commit(lambda events: publisher.revocation_happened() if events else None)
        started = await publisher.tick()
        assert {p.shard for p in started if p.issuer_id == ISSUING and p.kind == "full"} == {1, 2, 3, 4}

        await authority.revoke(cert.serial_number, "keyCompromise", ACTOR)
        published = await after_debounce(publisher, fake_clock)

        assert kinds(published) == [(ISSUING, shard, "delta"), (ISSUING, shard, "full")]
        full = await stored(store, crl_layout.full_key(ISSUING, shard))
        assert listed(full).keys() == {cert.serial_number}
    finally:
        rt.close()


class SlowStore(DirectoryStore):
    """A store where writing a full CRL takes ``seconds`` on the fake clock (a large shard)."""

    def __init__(self, root: Path, clock: FakeClock, seconds: float) -> None:
        super().__init__(root)
        self._clock = clock
        self.seconds = seconds

    async def put(self, key: str, data: bytes, **kwargs: Any) -> str:
        if key.endswith(".crl") and "delta" not in key and "/" not in key:
            self._clock.advance(self.seconds)
        return await super().put(key, data, **kwargs)


async def test_a_slow_shard_gets_deltas_at_once_and_its_next_full_crl_after_a_spacing_as_long_as_its_last(
    rt: Runtime, authority: Authority, fake_clock: FakeClock, tmp_path: Path
) -> None:
    store = SlowStore(tmp_path / "crls", fake_clock, 0.0)
    first, second = await issue(authority, "first"), await issue(authority, "second")
    publisher = publisher_for(rt, store)
    rt.on_commit(lambda events: publisher.revocation_happened() if events else None)
    await publisher.tick()

    store.seconds = 30.0  # from now on the issuing CA's full CRL takes 30 s to store
    await authority.revoke(first.serial_number, "keyCompromise", ACTOR)
    assert (ISSUING, 0, "full") in kinds(await after_debounce(publisher, fake_clock))

    await authority.revoke(second.serial_number, "keyCompromise", ACTOR)
    published = await after_debounce(publisher, fake_clock)
    # The delta now; the full CRL waits until as long after the last one as it took (30 s).
    assert kinds(published) == [(ISSUING, 0, "delta")]
    assert listed(await stored(store, crl_layout.delta_key(ISSUING))).keys() == {second.serial_number}
    assert publisher.seconds_until_due() == pytest.approx(30.0 - DEBOUNCE, abs=0.01)
    fake_clock.advance(publisher.seconds_until_due())
    published = await publisher.tick()
    assert (ISSUING, 0, "full") in kinds(published)
    assert listed(await stored(store, crl_layout.full_key(ISSUING))).keys() == {
        first.serial_number,
        second.serial_number,
    }

    # A shard this slow gets its delta before its full CRL after a change: the change is out while it builds.
    fake_clock.advance(31.0)  # past the spacing
    third = await issue(authority, "third")
    await publisher.tick()  # the issuance woke it: nothing changed in the CRLs
    await authority.revoke(third.serial_number, "keyCompromise", ACTOR)
    published = await after_debounce(publisher, fake_clock)
    assert [(p.kind, p.entries) for p in published] == [("delta", 1), ("full", 3), ("delta", 0)]


async def test_with_full_after_revocation_off_a_revocation_makes_only_a_delta(
    rt: Runtime, authority: Authority, fake_clock: FakeClock, tmp_path: Path
) -> None:
    store = DirectoryStore(tmp_path / "crls")
    cert = await issue(authority, "delta-only")
    publisher = publisher_for(rt, store, full_after_revocation=False)
    rt.on_commit(lambda events: publisher.revocation_happened() if events else None)
    await publisher.tick()
    await authority.revoke(cert.serial_number, "keyCompromise", ACTOR)
    published = await after_debounce(publisher, fake_clock)
    assert kinds(published) == [(ISSUING, 0, "delta")]
    assert listed(await stored(store, crl_layout.full_key(ISSUING))) == {}


async def test_without_deltas_a_revocation_rebuilds_only_the_changed_issuers_full_crl(
    rt: Runtime, authority: Authority, fake_clock: FakeClock, tmp_path: Path
) -> None:
    store = DirectoryStore(tmp_path / "crls")
    cert = await issue(authority, "no-deltas")
    # Without deltas, full CRLs follow revocations whatever full_after_revocation says.
    publisher = publisher_for(rt, store, delta_interval_seconds=0, full_after_revocation=False)
    rt.on_commit(lambda events: publisher.revocation_happened() if events else None)
    await publisher.tick()
    await authority.revoke(cert.serial_number, "keyCompromise", ACTOR)
    published = await after_debounce(publisher, fake_clock)
    assert kinds(published) == [(ISSUING, 0, "full")]
    assert listed(await stored(store, crl_layout.full_key(ISSUING))).keys() == {cert.serial_number}


def test_turning_full_crls_after_revocations_off_needs_deltas(ca_config: Config) -> None:
    with pytest.raises(ConfigError, match="full_after_revocation = false needs delta CRLs"):
        with_crl_settings(ca_config, delta_interval_seconds=0, full_after_revocation=False)


async def _issuer(rt: Runtime, issuer_id: str) -> Any:
    for rec in await rt.view.issuers():
        if rec.issuer_id == issuer_id:
            return rec
    raise AssertionError(issuer_id)
