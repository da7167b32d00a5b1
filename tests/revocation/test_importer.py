"""Importing a real ``openssl ca`` database into the log: statuses, idempotency, refusals, both backends."""

from __future__ import annotations

import asyncio
import datetime
import shutil
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from pca.config import load_config
from pca.runtime import Runtime, connect_runtime
from revocation.authority import Actor
from revocation.clock import SystemClock
from revocation.importing.importer import Importer, ImportSummary, Item, file_candidates, index_candidates
from revocation.importing.openssl_index import newcerts_filename
from revocation.importing.plan import Outcome
from revocation.projection import IssuerRecord
from tests.support.ca import issuer
from tests.support.external import EXTERNAL, add_external_issuer
from tests.support.openssl_index_ca import issue, make_ca, openssl, revoke
from tests.support.processes import init_ca

UTC = datetime.UTC
COMPROMISED_AT = datetime.datetime(2026, 1, 1, tzinfo=UTC)
VALID, COMPROMISED, HELD, EXPIRED = 0xFF, 0x100, 0x101, 0x102
ACTOR = Actor("cli:tester", "import-1")


def _now() -> datetime.datetime:
    return datetime.datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, tuple[datetime.datetime, ...]]]:
    """An openssl ca with a valid, a compromised (with a compromise time), a held and an expired certificate.

    Returns its directory and, per revoked serial, the times around the openssl call (it stamps its own clock).
    """
    d = tmp_path_factory.mktemp("legacy") / "ca"
    make_ca(d, "Legacy CA")
    for cn in ("valid", "compromised", "held"):
        issue(d, cn)
    issue(d, "expired", enddate="20210101000000Z", startdate="20200101000000Z")
    openssl("ca", "-config", d / "openssl.cnf", "-updatedb")
    between = {}
    options = {COMPROMISED: ("-crl_compromise", "20260101000000Z"), HELD: ("-crl_hold", "holdInstructionReject")}
    for serial, option in options.items():
        before = _now()
        revoke(d, d / "newcerts" / newcerts_filename(serial), *option)
        between[serial] = (before, _now())
    return d, between


@pytest.fixture
def pca_config(tmp_path: Path) -> Path:
    return init_ca(tmp_path / "pca")


@pytest.fixture
async def sqlite_rt(pca_config: Path) -> AsyncIterator[Runtime]:
    rt = await connect_runtime(load_config(pca_config), SystemClock())
    try:
        yield rt
    finally:
        await rt.aclose()


async def _import(
    rt: Runtime, items: list[Item] | object, *, stop: bool = True, pool: ProcessPoolExecutor | None = None
) -> tuple[ImportSummary, list[Outcome]]:
    refusals: list[Outcome] = []
    record: IssuerRecord = await issuer(rt, EXTERNAL)
    importer = Importer(rt.log, rt.view, record, ACTOR, stop_on_error=stop, pool=pool, on_refused=refusals.append)
    return await importer.run(items), refusals  # type: ignore[arg-type]


async def _check_statuses(rt: Runtime, legacy_dir: Path, between: dict[int, tuple[datetime.datetime, ...]]) -> None:
    view = rt.view
    records = {c.serial: c for c in await view.issuer_certificates(EXTERNAL)}
    assert sorted(records) == [VALID, COMPROMISED, HELD, EXPIRED]
    assert {s: (c.status, c.reason, c.profile) for s, c in records.items()} == {
        VALID: ("good", None, "imported"),
        COMPROMISED: ("revoked", "keyCompromise", "imported"),
        HELD: ("revoked", "certificateHold", "imported"),
        EXPIRED: ("good", None, "imported"),
    }
    for serial in (COMPROMISED, HELD):
        revoked_at = records[serial].revoked_at
        assert revoked_at is not None and between[serial][0] <= revoked_at <= between[serial][1]
    assert records[COMPROMISED].invalidity_date == COMPROMISED_AT
    assert records[HELD].invalidity_date is None
    assert records[EXPIRED].not_after == datetime.datetime(2021, 1, 1, tzinfo=UTC)
    # The recorded certificate is the very file openssl ca wrote.
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = (legacy_dir / "newcerts" / newcerts_filename(VALID)).read_bytes()
    assert await _der(rt, VALID) == x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


async def _der(rt: Runtime, serial: int) -> bytes:
    [record] = await rt.view.recorded_certificates(EXTERNAL, [serial])
    return record.cert_der


async def _import_twice(rt: Runtime, legacy: tuple[Path, dict[int, tuple[datetime.datetime, ...]]]) -> None:
    d, between = legacy
    await add_external_issuer(rt.log, d / "ca.pem")
    summary, refusals = await _import(rt, index_candidates(d / "index.txt", d / "newcerts"))
    assert refusals == []
    assert (summary.imported, summary.already_present, summary.revocations, summary.refused) == (4, 0, 2, 0)
    assert summary.events == 6
    await _check_statuses(rt, d, between)
    head = await rt.log.head()
    events = await rt.log.read(head - 6, 6)
    assert {(e.actor, e.request_id) for e in events} == {(ACTOR.name, ACTOR.request_id)}

    again, refusals = await _import(rt, index_candidates(d / "index.txt", d / "newcerts"))
    assert refusals == []
    assert (again.imported, again.already_present, again.revocations, again.events) == (0, 4, 0, 0)
    assert await rt.log.head() == head


async def test_an_openssl_ca_database_is_imported_once(sqlite_rt: Runtime, legacy: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    await _import_twice(sqlite_rt, legacy)


async def test_the_same_import_on_postgresql(tmp_path: Path, postgres_database: str, legacy: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    cfg = load_config(await asyncio.to_thread(init_ca, tmp_path / "pca", "--database-url", postgres_database))
    rt = await connect_runtime(cfg, SystemClock())
    try:
        await _import_twice(rt, legacy)
        # a serial recorded with other contents is refused there too
        other = tmp_path / "other"
        make_ca(other, "Legacy CA")  # the same name, another key: a forged twin
        issue(other, "forged")
        summary, refusals = await _import(rt, file_candidates([other / "newcerts"]))
        assert summary.refused == 1 and "not issued by" in refusals[0].message
    finally:
        await rt.aclose()


async def test_signature_checks_in_worker_processes(sqlite_rt: Runtime, legacy: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    d, between = legacy
    await add_external_issuer(sqlite_rt.log, d / "ca.pem")
    with ProcessPoolExecutor(2) as pool:
        summary, _ = await _import(sqlite_rt, index_candidates(d / "index.txt", d / "newcerts"), pool=pool)
    assert (summary.imported, summary.refused) == (4, 0)
    await _check_statuses(sqlite_rt, d, between)


async def test_a_revocation_in_the_source_is_added_to_a_certificate_recorded_good(
    sqlite_rt: Runtime,
    legacy: tuple[Path, dict],  # type: ignore[type-arg]
) -> None:
    d, between = legacy
    await add_external_issuer(sqlite_rt.log, d / "ca.pem")
    # first the files alone (no revocation known), then the database that says revoked
    first, _ = await _import(sqlite_rt, file_candidates([d / "newcerts"]))
    assert (first.imported, first.revocations) == (4, 0)
    second, refusals = await _import(sqlite_rt, index_candidates(d / "index.txt", d / "newcerts"))
    assert refusals == []
    assert (second.imported, second.already_present, second.known_revoked, second.revocations) == (0, 2, 2, 2)
    await _check_statuses(sqlite_rt, d, between)


async def test_a_serial_known_with_other_contents_is_refused_and_the_record_kept(
    sqlite_rt: Runtime,
    legacy: tuple[Path, dict],
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    d, _ = legacy
    await add_external_issuer(sqlite_rt.log, d / "ca.pem")
    await _import(sqlite_rt, index_candidates(d / "index.txt", d / "newcerts"))
    original = await _der(sqlite_rt, VALID)
    # the same CA (a copy of its directory) issues serial 0xFF again, to another subject
    twin = tmp_path / "twin"
    shutil.copytree(d, twin)
    (twin / "openssl.cnf").write_text((d / "openssl.cnf").read_text().replace(str(d), str(twin)))
    (twin / "index.txt").write_text("")
    (twin / "serial").write_text("FF\n")
    shutil.rmtree(twin / "newcerts")
    (twin / "newcerts").mkdir()
    issue(twin, "impostor")
    head = await sqlite_rt.log.head()

    summary, refusals = await _import(sqlite_rt, index_candidates(twin / "index.txt", twin / "newcerts"))

    assert (summary.refused, summary.conflicts, summary.imported) == (1, 1, 0)
    assert summary.stopped_at is not None and summary.stopped_at.where == f"{twin / 'index.txt'}:1"
    assert "ff is already recorded for legacy-ca with different contents" in refusals[0].message
    assert await _der(sqlite_rt, VALID) == original
    assert await sqlite_rt.log.head() == head


async def test_a_broken_line_stops_after_recording_what_came_before_or_is_skipped(
    sqlite_rt: Runtime,
    legacy: tuple[Path, dict],
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    d, _ = legacy
    await add_external_issuer(sqlite_rt.log, d / "ca.pem")
    lines = (d / "index.txt").read_text().splitlines()
    index = tmp_path / "index.txt"
    index.write_text("\n".join([lines[0], "V\tnot a date", *lines[1:]]) + "\n")

    stopped, refusals = await _import(sqlite_rt, index_candidates(index, d / "newcerts"))
    assert (stopped.imported, stopped.refused) == (1, 1)
    assert str(stopped.stopped_at).startswith(f"{index}:2: expected 6 tab-separated fields")

    went_on, refusals = await _import(sqlite_rt, index_candidates(index, d / "newcerts"), stop=False)
    assert (went_on.imported, went_on.already_present, went_on.refused, went_on.stopped_at) == (3, 1, 1, None)
    assert [r.where for r in refusals] == [f"{index}:2"]


async def test_a_missing_newcerts_file_and_a_foreign_certificate_are_refused(
    sqlite_rt: Runtime,
    legacy: tuple[Path, dict],
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    d, _ = legacy
    await add_external_issuer(sqlite_rt.log, d / "ca.pem")
    newcerts = tmp_path / "newcerts"
    shutil.copytree(d / "newcerts", newcerts)
    (newcerts / newcerts_filename(HELD)).unlink()
    other = tmp_path / "other"
    make_ca(other, "Legacy CA")
    issue(other, "stranger")
    shutil.copy(other / "newcerts" / "FF.pem", newcerts / "FF.pem")  # signed by the twin's key

    summary, refusals = await _import(sqlite_rt, index_candidates(d / "index.txt", newcerts), stop=False)

    assert (summary.imported, summary.refused) == (2, 2)
    assert "not issued by 'CN=Legacy CA': the signature does not verify" in refusals[0].message
    assert f"{newcerts / '0101.pem'} does not exist" in refusals[1].message
    assert {c.serial for c in await sqlite_rt.view.issuer_certificates(EXTERNAL)} == {COMPROMISED, EXPIRED}
