"""Revoking everything an issuer issued (``revocation.issued_revocation``), on SQLite and on PostgreSQL: good
and held certificates are revoked for good, expired ones and sub-CAs are left (and counted), revocations made
before or meanwhile are kept, a run split by ``limit`` ends with everything revoked."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from pca.config import load_config
from pca.runtime import Runtime, connect_runtime
from pca.serve import build_authority
from revocation import ca
from revocation.authority import Actor, Authority, certificate_issued
from revocation.clock import FakeClock
from revocation.errors import NotFoundError, ValidationError
from revocation.eventlog import EventLog, NewEvent, RecordedEvent
from revocation.events import CertificateRevoked
from revocation.issued_revocation import IssuedRevocation, RevokeIssuedOptions
from revocation.keys import open_key
from tests.support.ca import ACTOR, ISSUING, ROOT, issue, issuer, now_utc
from tests.support.postgres import create_database, drop_database
from tests.support.processes import init_ca

DAY = datetime.timedelta(days=1)
OPERATOR = Actor("admin", "req-revoke-issued")


@pytest.fixture(params=["sqlite", "postgres"])
async def rt(request: pytest.FixtureRequest, tmp_path: Path, fake_clock: FakeClock) -> AsyncIterator[Runtime]:
    """The initialised CA on either backend, on ``fake_clock``."""
    server_dsn = request.getfixturevalue("postgres_dsn") if request.param == "postgres" else None
    dsn = None if server_dsn is None else await create_database(server_dsn)
    extra = () if dsn is None else ("--database-url", dsn)
    config = await asyncio.to_thread(init_ca, tmp_path / "ca", *extra)
    runtime = await connect_runtime(load_config(config), fake_clock)
    try:
        yield runtime
    finally:
        await runtime.aclose()
        if server_dsn is not None and dsn is not None:
            await drop_database(server_dsn, dsn)


async def statuses(rt: Runtime, issuer_id: str) -> dict[int, tuple[str, str | None]]:
    view: Any = rt.view  # issuer_certificates: a read of the concrete views
    return {c.serial: (c.status, c.reason) for c in await view.issuer_certificates(issuer_id)}


async def record_sub_ca(rt: Runtime, name: str) -> x509.Certificate:
    """A CA certificate the issuing CA signed, recorded under it as an imported certificate (its DER says CA)."""
    parent = await issuer(rt, ISSUING)
    assert parent.key_ref is not None
    key = open_key(parent.key_ref)
    try:
        public = ec.generate_private_key(ec.SECP256R1()).public_key()
        cert = ca.create_intermediate(
            parent.cert,
            key,
            public,
            ca.parse_subject(f"CN={name}"),
            now_utc(),
            30,
            "http://crl.invalid/x.crl",
            ocsp_url="http://ocsp.invalid/ocsp",
        )
    finally:
        key.close()
    await rt.log.append([NewEvent(certificate_issued(ISSUING, cert, "imported"), 0, "tester", "sub-ca")])
    return cert


async def revocations_by(rt: Runtime, request_id: str) -> list[RecordedEvent]:
    events = await rt.log.read(0, 10_000)
    return [e for e in events if e.type == CertificateRevoked.TYPE and e.request_id == request_id]


async def test_good_and_held_certificates_are_revoked_expired_and_sub_cas_left(
    rt: Runtime, fake_clock: FakeClock
) -> None:
    authority = build_authority(rt)
    good = [(await issue(authority, f"good-{n}")).serial_number for n in range(3)]
    held = (await issue(authority, "held")).serial_number
    compromised = (await issue(authority, "compromised")).serial_number
    expired = (await issue(authority, "expired", validity_days=1)).serial_number
    await authority.revoke(held, "certificateHold", ACTOR)
    await authority.revoke(compromised, "keyCompromise", ACTOR)
    sub_ca = (await record_sub_ca(rt, "Sub CA")).serial_number
    fake_clock.advance((2 * DAY).total_seconds())
    before = await statuses(rt, ISSUING)
    compromised_at = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)

    summary = await IssuedRevocation(rt.log, rt.view, rt.clock).revoke_issued(
        ISSUING, RevokeIssuedOptions(invalidity_date=compromised_at), OPERATOR
    )

    leaves = [s for s, (status, _) in before.items() if status == "good" and s not in (expired, sub_ca)]
    assert set(good) <= set(leaves)
    assert (summary.revoked, summary.already_revoked) == (len(leaves) + 1, 1)
    assert (summary.skipped_expired, summary.skipped_ca, summary.remaining) == (1, 1, 0)
    after = await statuses(rt, ISSUING)
    for serial in [*leaves, held]:
        assert after[serial] == ("revoked", "cACompromise"), serial
    assert after[compromised] == ("revoked", "keyCompromise")
    assert after[expired] == ("good", None)
    assert after[sub_ca] == ("good", None)
    events = await revocations_by(rt, OPERATOR.request_id)
    assert len(events) == summary.revoked
    assert {e.actor for e in events} == {"admin"}
    assert {e.payload["invalidity_date"] for e in events} == {"2026-01-01T00:00:00Z"}
    assert (summary.first_seq, summary.last_seq) == (events[0].seq, events[-1].seq)

    again = await IssuedRevocation(rt.log, rt.view, rt.clock).revoke_issued(
        ISSUING, RevokeIssuedOptions(include_expired=True), OPERATOR
    )
    assert (again.revoked, again.already_revoked, again.skipped_expired, again.skipped_ca) == (
        1,
        summary.revoked + 1,
        0,
        1,
    )
    assert (await statuses(rt, ISSUING))[expired] == ("revoked", "cACompromise")


async def test_the_root_leaves_the_issuing_ca_it_issued(rt: Runtime) -> None:
    summary = await IssuedRevocation(rt.log, rt.view, rt.clock).revoke_issued(ROOT, RevokeIssuedOptions(), OPERATOR)

    assert (summary.revoked, summary.skipped_ca, summary.remaining) == (0, 1, 0)
    assert set((await statuses(rt, ROOT)).values()) == {("good", None)}


class Interfering:
    """The event log, where another writer changes certificates just before the first append of a batch."""

    def __init__(self, log: EventLog, change: Callable[[], Awaitable[object]]) -> None:
        self._log = log
        self._change: Callable[[], Awaitable[object]] | None = change
        self.refused = 0

    async def append(self, events: Sequence[NewEvent]) -> list[RecordedEvent]:
        if self._change is not None and len(events) > 1:
            change, self._change = self._change, None
            await change()
            try:
                return await self._log.append(events)
            except Exception:
                self.refused += 1
                raise
        return await self._log.append(events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


async def test_a_certificate_changed_meanwhile_is_decided_again_alone(rt: Runtime) -> None:
    authority: Authority = build_authority(rt)
    serials = [(await issue(authority, f"c-{n}")).serial_number for n in range(6)]
    revoked_meanwhile, released_meanwhile = serials[1], serials[4]
    await authority.revoke(released_meanwhile, "certificateHold", ACTOR)

    async def change() -> None:
        await authority.revoke(revoked_meanwhile, "superseded", ACTOR)
        await authority.release_hold(released_meanwhile, ACTOR)

    log = Interfering(rt.log, change)
    summary = await IssuedRevocation(log, rt.view, rt.clock).revoke_issued(  # type: ignore[arg-type]
        ISSUING, RevokeIssuedOptions(reason="keyCompromise"), OPERATOR
    )

    assert log.refused == 1
    after = await statuses(rt, ISSUING)
    assert after[revoked_meanwhile] == ("revoked", "superseded")
    assert after[released_meanwhile] == ("revoked", "keyCompromise")
    assert all(after[s] == ("revoked", "keyCompromise") for s in serials if s != revoked_meanwhile)
    assert (summary.already_revoked, summary.remaining) == (1, 0)
    assert summary.revoked == len(after) - 1  # every certificate but the one revoked meanwhile
    assert len(await revocations_by(rt, OPERATOR.request_id)) == summary.revoked


async def test_a_run_split_by_limit_revokes_everything_over_several_calls(rt: Runtime) -> None:
    authority = build_authority(rt)
    for n in range(7):
        await issue(authority, f"s-{n}")
    await record_sub_ca(rt, "Sub CA")
    total = sum(status == "good" for status, _ in (await statuses(rt, ISSUING)).values()) - 1  # less the sub-CA
    revoker = IssuedRevocation(rt.log, rt.view, rt.clock, batch_size=2)

    calls = []
    while not calls or calls[-1].remaining:
        calls.append(await revoker.revoke_issued(ISSUING, RevokeIssuedOptions(limit=3), OPERATOR))
        assert len(calls) < 10

    assert [c.revoked for c in calls] == [3, 3, total - 6]
    # A sub-CA not met yet (serial order) counts as remaining until a call gets to it.
    assert [c.remaining - r for c, r in zip(calls, [total - 3, total - 6, 0], strict=True)] in (
        [0, 0, 0],
        [1, 0, 0],
        [1, 1, 0],
    )
    assert [c.already_revoked for c in calls] == [0, 3, 6]
    assert calls[-1].skipped_ca == 1
    after = await statuses(rt, ISSUING)
    assert sum(status == "revoked" for status, _ in after.values()) == total


async def test_bad_input_is_refused_before_anything_is_appended(rt: Runtime, fake_clock: FakeClock) -> None:
    revoker = IssuedRevocation(rt.log, rt.view, rt.clock)
    head = await rt.log.head()
    refusals: list[tuple[str, RevokeIssuedOptions, type[Exception], str]] = [
        (ISSUING, RevokeIssuedOptions(reason="certificateHold"), ValidationError, "certificateHold is temporary"),
        (ISSUING, RevokeIssuedOptions(reason="removeFromCRL"), ValidationError, "use one of unspecified"),
        (ISSUING, RevokeIssuedOptions(reason="nope"), ValidationError, "reason 'nope'"),
        (ISSUING, RevokeIssuedOptions(limit=0), ValidationError, "limit must be from 1"),
        (
            ISSUING,
            RevokeIssuedOptions(invalidity_date=fake_clock.now() + DAY),
            ValidationError,
            "is in the future",
        ),
        ("nope", RevokeIssuedOptions(), NotFoundError, "unknown issuer 'nope'"),
    ]
    for issuer_id, options, error, text in refusals:
        with pytest.raises(error, match=text):
            await revoker.revoke_issued(issuer_id, options, OPERATOR)
    assert await rt.log.head() == head
