"""The pre-signer and the response store: what ends up signed, when, and by whom.

Real SQLite (the CA's database), real keys from ``pca init``, and the openssl CLI
as an independent verifier. Time moves only through a FakeClock.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from asn1crypto import ocsp as asn1_ocsp  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from prometheus_client import CollectorRegistry

from pca.config import Config
from pca.runtime import Runtime
from responders.presigner import PreSigner, signing_pool
from responders.store.sqlite import SQLiteResponseStore
from revocation.authority import Actor, Authority
from revocation.clock import FakeClock, to_epoch
from tests.support.ca import ACTOR, ISSUING, ROOT, issue, openssl

VALIDITY = 3600


# --- fixtures and helpers -------------------------------------------------------------------------------------


@pytest.fixture
def executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    pool = concurrent.futures.ThreadPoolExecutor(2)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True)


@pytest.fixture
def store(rt: Runtime) -> SQLiteResponseStore:
    return SQLiteResponseStore(rt.db)


def make_presigner(
    rt: Runtime,
    store: SQLiteResponseStore,
    clock: FakeClock,
    executor: concurrent.futures.Executor,
    *,
    validity: int = VALIDITY,
    registry: CollectorRegistry | None = None,
) -> PreSigner:
    return PreSigner(
        rt.log,
        rt.view,
        store,
        clock,
        executor,
        validity_seconds=validity,
        refresh_fraction=0.5,
        registry=registry or CollectorRegistry(),
    )


async def issuer_cert(rt: Runtime, issuer_id: str = ISSUING) -> x509.Certificate:
    for rec in await rt.view.issuers():
        if rec.issuer_id == issuer_id:
            return rec.cert
    raise AssertionError(f"no issuer {issuer_id}")


async def signer_cert(rt: Runtime, issuer_id: str = ISSUING) -> x509.Certificate:
    for rec in await rt.view.issuers():
        if rec.issuer_id == issuer_id:
            assert rec.signer_cert is not None
            return rec.signer_cert
    raise AssertionError(f"no issuer {issuer_id}")


async def stored_response(store: SQLiteResponseStore, serial: int) -> ocsp.OCSPResponse:
    stored = await store.get(ISSUING, serial)
    assert stored is not None, f"no response stored for serial {serial:x}"
    return ocsp.load_der_ocsp_response(stored.der)


async def change_id(store: SQLiteResponseStore, serial: int) -> int:
    stored = await store.get(ISSUING, serial)
    assert stored is not None
    return stored.change_id


def verify_signature(resp: ocsp.OCSPResponse, signer: x509.Certificate) -> None:
    """Raises InvalidSignature unless ``signer``'s key signed the response."""
    public = signer.public_key()
    algorithm = resp.signature_hash_algorithm
    assert algorithm is not None
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(algorithm))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), algorithm)


def check_cert_ids(resp: ocsp.OCSPResponse, leaf: x509.Certificate, issuer: x509.Certificate) -> None:
    """Two SingleResponses: the SHA-1 CertID first, then SHA-256, both naming ``leaf`` as a client would."""
    singles = list(resp.responses)
    assert [s.hash_algorithm.name for s in singles] == ["sha1", "sha256"]
    for single, algorithm in zip(singles, (hashes.SHA1(), hashes.SHA256()), strict=True):
        request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, algorithm).build()
        assert single.issuer_name_hash == request.issuer_name_hash
        assert single.issuer_key_hash == request.issuer_key_hash
        assert single.serial_number == leaf.serial_number


def single_extensions(der: bytes) -> list[dict[str, object]]:
    """singleExtensions of every SingleResponse, as {extension name: native value}."""
    parsed = asn1_ocsp.OCSPResponse.load(der)
    basic = parsed["response_bytes"]["response"].parsed
    out = []
    for single in basic["tbs_response_data"]["responses"]:
        out.append({ext["extn_id"].native: ext["extn_value"].native for ext in single["single_extensions"]})
    return out


# --- what gets signed -----------------------------------------------------------------------------------------


async def test_catch_up_signs_a_good_response_for_every_issued_certificate(
    rt: Runtime,
    authority: Authority,
    store: SQLiteResponseStore,
    fake_clock: FakeClock,
    executor: concurrent.futures.Executor,
) -> None:
    leaves = [await issue(authority, f"leaf{i}") for i in range(3)]
    registry = CollectorRegistry()
    presigner = make_presigner(rt, store, fake_clock, executor, registry=registry)

    await presigner.catch_up()

    issuer = await issuer_cert(rt)
    signer = await signer_cert(rt)
    now = fake_clock.now()
    for leaf in leaves:
        resp = await stored_response(store, leaf.serial_number)
        assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        check_cert_ids(resp, leaf, issuer)
        for single in resp.responses:
            assert single.certificate_status == ocsp.OCSPCertStatus.GOOD
            assert single.this_update_utc == now
            assert single.next_update_utc == now + datetime.timedelta(seconds=VALIDITY)
        assert resp.certificates == [signer]
        verify_signature(resp, signer)
        assert resp.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(signer.public_key()).digest
        stored = await store.get(ISSUING, leaf.serial_number)
        assert stored is not None
        assert (stored.status, stored.this_update, stored.next_update) == (
            "good",
            to_epoch(now),
            to_epoch(now) + VALIDITY,
        )
    # and the intermediate's, by the root's signer
    assert registry.get_sample_value("ocsp_presigned_responses_total", {"status": "good"}) == len(leaves) + 1


async def test_revoked_certificate_gets_a_revoked_response_with_reason_time_and_invalidity_date(
    rt: Runtime,
    authority: Authority,
    store: SQLiteResponseStore,
    fake_clock: FakeClock,
    executor: concurrent.futures.Executor,
) -> None:
    leaf = await issue(authority)
    good = await issue(authority, "other")
    presigner = make_presigner(rt, store, fake_clock, executor)
    await presigner.catch_up()
    fake_clock.advance(90)
    compromised_since = fake_clock.now() - datetime.timedelta(days=2)
    await authority.revoke(leaf.serial_number, "keyCompromise", ACTOR, invalidity_date=compromised_since)

    await presigner.catch_up()

    resp = await stored_response(store, leaf.serial_number)
    check_cert_ids(resp, leaf, await issuer_cert(rt))
    for single in resp.responses:
        assert single.certificate_status == ocsp.OCSPCertStatus.REVOKED
        assert single.revocation_time_utc == fake_clock.now()
        assert single.revocation_reason == x509.ReasonFlags.key_compromise
        assert single.this_update_utc == fake_clock.now()
    verify_signature(resp, await signer_cert(rt))
    stored = await store.get(ISSUING, leaf.serial_number)
    assert stored is not None and stored.status == "revoked"
    assert single_extensions(stored.der) == [{"invalidity_date": compromised_since}] * 2
    # The other certificate is untouched.
    assert [s.certificate_status for s in (await stored_response(store, good.serial_number)).responses] == [
        ocsp.OCSPCertStatus.GOOD
    ] * 2


async def test_unspecified_reason_is_omitted_and_no_invalidity_date_means_no_extension(
    rt: Runtime,
    authority: Authority,
    store: SQLiteResponseStore,
    fake_clock: FakeClock,
    executor: concurrent.futures.Executor,
) -> None:
    leaf = await issue(authority)
    await authority.revoke(leaf.serial_number, "unspecified", ACTOR)
    await make_presigner(rt, store, fake_clock, executor).catch_up()

    resp = await stored_response(store, leaf.serial_number)
    for single in resp.responses:
        assert single.certificate_status == ocsp.OCSPCertStatus.REVOKED
        assert single.revocation_reason is None
    stored = await store.get(ISSUING, leaf.serial_number)
    assert stored is not None
    assert single_extensions(stored.der) == [{}, {}]


async def test_released_hold_makes_the_response_good_again(
    rt: Runtime,
    authority: Authority,
    store: SQLiteResponseStore,
    fake_clock: FakeClock,
    executor: concurrent.futures.Executor,
) -> None:
    leaf = await issue(authority)
    presigner = make_presigner(rt, store, fake_clock, executor)
    await authority.revoke(leaf.serial_number, "certificateHold", ACTOR)
    await presigner.catch_up()
    held = await stored_response(store, leaf.serial_number)
    assert [(s.certificate_status, s.revocation_reason) for s in held.responses] == [
        (ocsp.OCSPCertStatus.REVOKED, x509.ReasonFlags.certificate_hold)
    ] * 2

    fake_clock.advance(30)
    await authority.release_hold(leaf.serial_number, ACTOR)
    await presigner.catch_up()

    released = await stored_response(store, leaf.serial_number)
    assert [s.certificate_status for s in released.responses] == [ocsp.OCSPCertStatus.GOOD] * 2
    assert all(s.this_update_utc == fake_clock.now() for s in released.responses)
    stored = await store.get(ISSUING, leaf.serial_number)
    assert stored is not None and stored.status == "good"


# --- when it is signed again ----------------------------------------------------------------------------------


async def test_responses_are_re_signed_at_half_their_validity_and_not_before(
    rt: Runtime,
    authority: Authority,
    store: SQLiteResponseStore,
    fake_clock: FakeClock,
    executor: concurrent.futures.Executor,
) -> None:
    leaves = [await issue(authority, f"leaf{i}") for i in range(3)]
    presigner = make_presigner(rt, store, fake_clock, executor)
    await presigner.catch_up()
    before = {leaf.serial_number: await store.get(ISSUING, leaf.serial_number) for leaf in leaves}
    last_change = await store.last_change()

    fake_clock.advance(VALIDITY // 2 - 1)
    assert await presigner.step() is False
    assert await store.last_change() == last_change

    fake_clock.advance(1)
    assert await presigner.step() is True
    assert await presigner.step() is False  # everything was refreshed at once

    now = fake_clock.now()
    for leaf in leaves:
        old = before[leaf.serial_number]
        new = await store.get(ISSUING, leaf.serial_number)
        assert old is not None and new is not None
        assert new.change_id > old.change_id
        assert new.this_update == to_epoch(now)
        assert new.next_update == to_epoch(now) + VALIDITY
        resp = ocsp.load_der_ocsp_response(new.der)
        assert all(s.this_update_utc == now for s in resp.responses)
    assert await store.last_change() == last_change + len(leaves) + 1  # and the intermediate's, by the root


async def test_a_restarted_presigner_resumes_from_its_stored_position(
    rt: Runtime,
    authority: Authority,
    store: SQLiteResponseStore,
    fake_clock: FakeClock,
    executor: concurrent.futures.Executor,
) -> None:
    old_leaves = [await issue(authority, f"old{i}") for i in range(3)]
    first = make_presigner(rt, store, fake_clock, executor)
    await first.catch_up()
    assert await store.position("presigner") == await rt.log.head()
    change_ids = {leaf.serial_number: await change_id(store, leaf.serial_number) for leaf in old_leaves}

    new_leaf = await issue(authority, "new")
    fake_clock.advance(60)
    second = make_presigner(rt, SQLiteResponseStore(rt.db), fake_clock, executor)
    last_change = await store.last_change()
    await second.catch_up()

    assert await store.last_change() == last_change + 1  # only the new certificate was signed
    assert await store.position("presigner") == await rt.log.head()
    for leaf in old_leaves:
        assert await change_id(store, leaf.serial_number) == change_ids[leaf.serial_number]
    resp = await stored_response(store, new_leaf.serial_number)
    assert all(s.certificate_status == ocsp.OCSPCertStatus.GOOD for s in resp.responses)


async def test_stored_position_reaches_the_log_head_when_the_last_events_need_no_response(
    rt: Runtime,
    store: SQLiteResponseStore,
    fake_clock: FakeClock,
    executor: concurrent.futures.Executor,
) -> None:
    # A fresh CA: issuers added, the intermediate issued by the root, a signer rotated; no leaf yet.
    await make_presigner(rt, store, fake_clock, executor).catch_up()

    assert await store.position("presigner") == await rt.log.head()


async def test_rotation_re_signs_every_response_with_the_new_signer(
    rt: Runtime,
    authority: Authority,
    store: SQLiteResponseStore,
    fake_clock: FakeClock,
    executor: concurrent.futures.Executor,
) -> None:
    leaves = [await issue(authority, f"leaf{i}") for i in range(2)]
    await authority.revoke(leaves[1].serial_number, "superseded", ACTOR)
    presigner = make_presigner(rt, store, fake_clock, executor)
    await presigner.catch_up()
    old_signer = await signer_cert(rt)

    fake_clock.advance(5)
    assert await authority.rotate_signers(ACTOR, force=True)
    assert await presigner.step() is True

    new_signer = await signer_cert(rt)
    assert new_signer != old_signer
    new_key_hash = x509.SubjectKeyIdentifier.from_public_key(new_signer.public_key()).digest
    for leaf, status in zip(leaves, (ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED), strict=True):
        resp = await stored_response(store, leaf.serial_number)
        assert resp.certificates == [new_signer]
        assert resp.responder_key_hash == new_key_hash
        verify_signature(resp, new_signer)
        assert [s.certificate_status for s in resp.responses] == [status] * 2
        assert all(s.this_update_utc == fake_clock.now() for s in resp.responses)


# --- what is never signed -------------------------------------------------------------------------------------


async def test_the_root_signs_the_status_of_the_intermediate_and_its_revocation(
    rt: Runtime,
    authority: Authority,
    store: SQLiteResponseStore,
    fake_clock: FakeClock,
    executor: concurrent.futures.Executor,
) -> None:
    leaf = await issue(authority)
    intermediate, root = await issuer_cert(rt), await issuer_cert(rt, ROOT)
    root_signer = await signer_cert(rt, ROOT)
    presigner = make_presigner(rt, store, fake_clock, executor)
    await presigner.catch_up()
    fake_clock.advance(5)

    # Revoking the intermediate (the explicit operation) is answered by the root's OCSP signer.
    await authority.revoke_ca(ISSUING, "cACompromise", ACTOR)
    await presigner.catch_up()

    stored = await store.get(ROOT, intermediate.serial_number)
    assert stored is not None
    resp = ocsp.load_der_ocsp_response(stored.der)
    for single in resp.responses:
        assert single.certificate_status == ocsp.OCSPCertStatus.REVOKED
        assert single.revocation_reason == x509.ReasonFlags.ca_compromise
    check_cert_ids(resp, intermediate, root)
    assert resp.certificates == [root_signer]
    root_signer.verify_directly_issued_by(root)
    verify_signature(resp, root_signer)
    assert await store.get(ISSUING, leaf.serial_number) is not None


async def test_responses_never_outlive_the_signer_certificate(
    rt: Runtime,
    authority: Authority,
    store: SQLiteResponseStore,
    fake_clock: FakeClock,
    executor: concurrent.futures.Executor,
) -> None:
    leaf = await issue(authority)
    signer = await signer_cert(rt)
    signer_left = to_epoch(signer.not_valid_after_utc) - to_epoch(fake_clock.now())
    validity = signer_left + 10 * 86400  # longer than the signer has left
    await make_presigner(rt, store, fake_clock, executor, validity=validity).catch_up()

    stored = await store.get(ISSUING, leaf.serial_number)
    assert stored is not None
    assert stored.next_update == to_epoch(signer.not_valid_after_utc)
    # Refreshed at half of what is actually valid, well before the signer expires.
    assert stored.refresh_at <= stored.this_update + (stored.next_update - stored.this_update) // 2
    resp = ocsp.load_der_ocsp_response(stored.der)
    assert all(s.next_update_utc == signer.not_valid_after_utc for s in resp.responses)


# --- the real process pool and an independent verifier ------------------------------------------------------


async def test_signing_in_worker_processes_gives_the_same_verifiable_responses(
    rt: Runtime, authority: Authority, store: SQLiteResponseStore, fake_clock: FakeClock
) -> None:
    leaves = [await issue(authority, f"leaf{i}") for i in range(3)]
    await authority.revoke(leaves[0].serial_number, "keyCompromise", ACTOR)
    pool = signing_pool(2)
    try:
        await make_presigner(rt, store, fake_clock, pool).catch_up()
    finally:
        pool.shutdown(wait=True)

    signer = await signer_cert(rt)
    issuer = await issuer_cert(rt)
    expected = [ocsp.OCSPCertStatus.REVOKED, ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.GOOD]
    for leaf, status in zip(leaves, expected, strict=True):
        resp = await stored_response(store, leaf.serial_number)
        check_cert_ids(resp, leaf, issuer)
        verify_signature(resp, signer)
        assert [s.certificate_status for s in resp.responses] == [status] * 2


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
async def test_openssl_verifies_good_and_revoked_responses(
    rt: Runtime,
    authority: Authority,
    store: SQLiteResponseStore,
    fake_clock: FakeClock,
    executor: concurrent.futures.Executor,
    ca_config: Config,
    tmp_path: Path,
) -> None:
    good = await issue(authority, "good")
    revoked = await issue(authority, "revoked")
    await authority.revoke(revoked.serial_number, "keyCompromise", ACTOR)
    await make_presigner(rt, store, fake_clock, executor).catch_up()

    for name, leaf in (("good", good), ("revoked", revoked)):
        stored = await store.get(ISSUING, leaf.serial_number)
        assert stored is not None
        resp_file = tmp_path / f"{name}.der"
        resp_file.write_bytes(stored.der)
        leaf_file = tmp_path / f"{name}.pem"
        leaf_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        returncode, output = await openssl(
            "ocsp",
            "-respin",
            str(resp_file),
            "-issuer",
            str(ca_config.data_dir / "issuing-ca.pem"),
            "-cert",
            str(leaf_file),
            "-CAfile",
            str(ca_config.data_dir / "ca-chain.pem"),
            "-no_nonce",
        )
        assert returncode == 0, output
        assert "Response verify OK" in output
        assert f"{leaf_file}: {name}" in output
        if name == "revoked":
            assert "Reason: keyCompromise" in output


# --- configuration --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("validity", "fraction", "named"),
    [(60, 0.5, "validity_seconds"), (3600, 0.0, "refresh_fraction"), (3600, 1.0, "refresh_fraction")],
)
async def test_bad_settings_are_refused_naming_the_setting(
    rt: Runtime,
    store: SQLiteResponseStore,
    fake_clock: FakeClock,
    executor: concurrent.futures.Executor,
    validity: int,
    fraction: float,
    named: str,
) -> None:
    with pytest.raises(ValueError, match=named):
        PreSigner(
            rt.log,
            rt.view,
            store,
            fake_clock,
            executor,
            validity_seconds=validity,
            refresh_fraction=fraction,
            registry=CollectorRegistry(),
        )


# --- hardening ----------------------------------------------------------------------------------------------


async def test_an_ancient_invalidity_date_still_gives_a_parsable_response(
    rt: Runtime,
    authority: Authority,
    store: SQLiteResponseStore,
    fake_clock: FakeClock,
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    """Years below 1000 must be encoded with four digits, or clients cannot read the response."""
    leaf = await issue(authority)
    ancient = datetime.datetime(500, 1, 1, tzinfo=datetime.UTC)
    await authority.revoke(leaf.serial_number, "keyCompromise", Actor("tester", "r1"), invalidity_date=ancient)
    await make_presigner(rt, store, fake_clock, executor).catch_up()
    der = await store.get(ISSUING, leaf.serial_number)
    assert der is not None
    extensions = single_extensions(der.der)
    assert [e["invalidity_date"].year for e in extensions] == [500, 500]


async def test_a_presigner_that_cannot_sign_reports_no_work_instead_of_spinning(
    rt: Runtime,
    authority: Authority,
    store: SQLiteResponseStore,
    fake_clock: FakeClock,
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    await issue(authority)
    presigner = make_presigner(rt, store, fake_clock, executor)
    await presigner.catch_up()
    # Past the signer's life (rotation did not happen): responses are due but cannot be signed.
    signer = await signer_cert(rt)
    fake_clock.advance((signer.not_valid_after_utc - fake_clock.now()).total_seconds() + 60)
    assert await store.due(to_epoch(fake_clock.now()), 10)
    assert await presigner.refresh_due() is False
    assert await presigner.step() is False
