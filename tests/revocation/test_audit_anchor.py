"""The audit chain's anchor and the projection audit, on SQLite and PostgreSQL.

The three attacks of issue 13 (item 4), each done behind pca's back with a connection of its own,
as an intruder with write access to the database would: delete the last row and rewind the head;
edit a row and recompute every later hash; un-revoke a certificate in the projection table. The
hash chain alone passes the first two; a signed checkpoint catches them. A replay of the log
catches the third, and so does the storer before it publishes a full CRL.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from pca.cli import main as pca_main
from pca.config import Config, load_config
from pca.roles.publisher import build_publisher
from pca.runtime import Runtime, connect_runtime
from pca.serve import build_authority
from publishers.checkpointer import LATEST_KEY, Checkpointer
from publishers.objectstore import DirectoryStore
from publishers.storer import RefusedCRL
from revocation import ca
from revocation.authority import Authority
from revocation.checkpoints import SIGNER_RENEW_BEFORE, Checkpoint, ensure_signer, sign_checkpoint
from revocation.clock import Clock, FakeClock, SystemClock
from revocation.eventlog import row_hash
from revocation.keys import KeyRef, generate_key
from tests.support.ca import ACTOR, issue, now_utc
from tests.support.postgres import create_database, drop_database
from tests.support.processes import init_ca
from tests.support.signing_backends import checkpoint_signer_race
from tests.support.storage import Raw, pg_raw, sqlite_raw


class CA:
    """An initialised CA, its runtime and a way to write its database behind its back."""

    def __init__(self, config: Config, rt: Runtime, raw: Raw) -> None:
        self.config, self.rt, self.raw = config, rt, raw
        self.authority: Authority = build_authority(rt)
        self.store = DirectoryStore(config.crl_dir)

    def checkpointer(self, clock: Clock | None = None) -> Checkpointer:
        from prometheus_client import CollectorRegistry

        return Checkpointer(
            self.rt.log,
            self.rt.view,
            self.store,
            clock or self.rt.clock,
            CollectorRegistry(),
            key_dir=self.config.data_dir / "keys",
            key_algorithm=self.config.key_algorithm,
            every_events=1,
            interval_seconds=300,
        )

    @property
    def latest(self) -> Path:
        return self.config.crl_dir / LATEST_KEY


@pytest.fixture(params=["sqlite", "postgres"])
async def ca_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CA]:
    server_dsn: str | None = None if request.param == "sqlite" else request.getfixturevalue("postgres_dsn")
    dsn = None if server_dsn is None else await create_database(server_dsn)
    if dsn is not None:
        config_path = await asyncio.to_thread(init_ca, tmp_path / "ca", "--database-url", dsn)
        raw = pg_raw(dsn)
    else:
        config_path = await asyncio.to_thread(init_ca, tmp_path / "ca")
        raw = sqlite_raw(tmp_path / "ca" / "pca.db")
    config = load_config(config_path)
    rt = await connect_runtime(config, SystemClock())
    try:
        yield CA(config, rt, raw)
    finally:
        await rt.aclose()
        if server_dsn is not None and dsn is not None:
            await drop_database(server_dsn, dsn)


async def history(ca_: CA) -> list[x509.Certificate]:
    """Three certificates, the second revoked (keyCompromise), then a checkpoint of the head."""
    certs = [await issue(ca_.authority, f"svc{i}") for i in range(3)]
    await ca_.authority.revoke(certs[1].serial_number, "keyCompromise", ACTOR)
    checkpoint = await ca_.checkpointer().tick()
    assert checkpoint is not None and checkpoint.seq == await ca_.rt.log.head()
    return certs


def audit(ca_: CA, *extra: str) -> None:
    pca_main(["audit", "verify", "--local", "--config", str(ca_.config.path), *extra])


async def audit_fails(ca_: CA, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        await asyncio.to_thread(audit, ca_, *extra)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "AUDIT FAILED" in err
    return err


async def rewrite_chain_from(raw: Raw, seq: int) -> None:
    """Recompute every hash from ``seq`` on, and the head: what someone who edited row ``seq`` would do."""
    [(prev,)] = await raw("SELECT prev_hash FROM events WHERE seq = ?", seq)
    rows = await raw(
        "SELECT seq, stream, version, type, payload, actor, request_id, recorded_at FROM events "
        "WHERE seq >= ? ORDER BY seq",
        seq,
    )
    for s, stream, version, type_, payload, actor, request_id, recorded_at in rows:
        digest = row_hash(prev, int(s), stream, int(version), type_, payload, actor, request_id, recorded_at)
        await raw("UPDATE events SET prev_hash = ?, hash = ? WHERE seq = ?", prev, digest, s)
        prev = digest
    await raw("UPDATE log_head SET seq = ?, hash = ? WHERE id = 1", rows[-1][0], prev)


# --- a checkpoint anchors the chain --------------------------------------------------------------


async def test_a_valid_checkpoint_verifies(ca_db: CA, capsys: pytest.CaptureFixture[str]) -> None:
    await history(ca_db)
    head = await ca_db.rt.log.head()
    doc = json.loads(ca_db.latest.read_bytes())
    assert doc["checkpoint"]["seq"] == head
    assert (ca_db.config.crl_dir / f"checkpoints/{head:012d}.json").read_bytes() == ca_db.latest.read_bytes()

    await asyncio.to_thread(audit, ca_db, "--checkpoint", str(ca_db.latest))
    out = capsys.readouterr().out
    assert f"audit OK: {head} events, hash chain intact" in out
    assert "projection matches a replay of the log (4 certificates compared)" in out
    assert f"checkpoint seq {head} of " in out and "Audit Checkpoint Signer" in out


async def test_deleting_the_last_row_and_rewinding_the_head_fails_against_the_checkpoint(
    ca_db: CA, capsys: pytest.CaptureFixture[str]
) -> None:
    await history(ca_db)
    head = await ca_db.rt.log.head()
    [(prev,)] = await ca_db.raw("SELECT prev_hash FROM events WHERE seq = ?", head)
    await ca_db.raw("DELETE FROM events WHERE seq = ?", head)
    await ca_db.raw("UPDATE log_head SET seq = ?, hash = ? WHERE id = 1", head - 1, prev)
    # The last event was the revocation: take it out of the projection too, so only the anchor can tell.
    await ca_db.raw("UPDATE certificates SET status = 'good', revoked_at = NULL, reason = NULL, version = 1 "
                    "WHERE status = 'revoked'")  # fmt: skip

    await asyncio.to_thread(audit, ca_db)  # the chain alone: passes
    assert f"audit OK: {head - 1} events" in capsys.readouterr().out

    err = await audit_fails(ca_db, capsys, "--checkpoint", str(ca_db.latest))
    assert f"event log broken at seq {head}:" in err
    assert f"but the log ends at seq {head - 1}" in err

    # The publisher notices too, and signs no checkpoint of the rewound log.
    checkpointer = ca_db.checkpointer()
    await ca_db.authority.revoke((await ca_db.rt.view.issuer_certificates("issuing-ca"))[0].serial, "superseded", ACTOR)
    before = ca_db.latest.read_bytes()
    assert await checkpointer.tick() is None
    assert f"seq {head}" in checkpointer.last_error
    assert ca_db.latest.read_bytes() == before


async def test_editing_a_row_and_recomputing_the_later_hashes_fails_against_the_checkpoint(
    ca_db: CA, capsys: pytest.CaptureFixture[str]
) -> None:
    await history(ca_db)
    head = await ca_db.rt.log.head()
    [(first_issue,)] = await ca_db.raw("SELECT MIN(seq) FROM events WHERE type = 'CertificateIssued' AND actor = ?",
                                       ACTOR.name)  # fmt: skip
    await ca_db.raw("UPDATE events SET actor = 'someone-else' WHERE seq = ?", first_issue)
    await rewrite_chain_from(ca_db.raw, first_issue)

    await asyncio.to_thread(audit, ca_db)  # the chain alone: passes
    assert f"audit OK: {head} events" in capsys.readouterr().out

    err = await audit_fails(ca_db, capsys, "--checkpoint", str(ca_db.latest))
    assert f"event log broken at seq {head}: its hash is not the one checkpointed" in err


async def test_a_forged_checkpoint_is_refused(ca_db: CA, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    await history(ca_db)
    head = await ca_db.rt.log.head()
    [(head_hash,)] = await ca_db.raw("SELECT hash FROM events WHERE seq = ?", head)
    [(first_hash,)] = await ca_db.raw("SELECT hash FROM events WHERE seq = 1")
    now = now_utc()
    # An intruder's own CA, named as the issuing CA, and its checkpoint signer (the same EKU): not the CA's key.
    issuing = x509.load_pem_x509_certificate((ca_db.config.data_dir / "issuing-ca.pem").read_bytes())
    other_key = generate_key(KeyRef("file"), "other-ca", "ec-p256", tmp_path)
    other_ca = ca.create_root(other_key, issuing.subject, now, 30)
    signer_key = generate_key(KeyRef("file"), "forger", "ec-p256", tmp_path)
    signer = ca.create_checkpoint_signer(other_ca, other_key, signer_key.public_key(), now, 30)
    forged = tmp_path / "forged.json"
    forged.write_bytes(sign_checkpoint(Checkpoint(first_hash, head, head_hash, now), signer_key, signer))
    err = await audit_fails(ca_db, capsys, "--checkpoint", str(forged))
    assert "its certificate does not verify with its CA's key" in err
    stranger = tmp_path / "stranger.json"
    other = ca.create_root(other_key, ca.parse_subject("CN=Stranger CA"), now, 30)
    stranger_signer = ca.create_checkpoint_signer(other, other_key, signer_key.public_key(), now, 30)
    stranger.write_bytes(sign_checkpoint(Checkpoint(first_hash, head, head_hash, now), signer_key, stranger_signer))
    err = await audit_fails(ca_db, capsys, "--checkpoint", str(stranger))
    assert "was not issued by any of the trusted CA certificates" in err

    # A certificate the CA issued for something else (a TLS leaf, whose key its holder has): refused
    # for what it is, before its signature is even looked at.
    leaf = await issue(ca_db.authority, "svc-leaf")
    holder_key = generate_key(KeyRef("file"), "leaf-holder", "ec-p256", tmp_path)
    wrong_use = tmp_path / "leaf.json"
    wrong_use.write_bytes(sign_checkpoint(Checkpoint(first_hash, head, head_hash, now), holder_key, leaf))
    err = await audit_fails(ca_db, capsys, "--checkpoint", str(wrong_use))
    assert "is not a checkpoint signer" in err

    # The genuine document with its seq changed: the signature no longer covers it.
    genuine = json.loads(ca_db.latest.read_bytes())
    genuine["checkpoint"]["seq"] = head - 1
    altered = tmp_path / "altered.json"
    altered.write_text(json.dumps(genuine))
    err = await audit_fails(ca_db, capsys, "--checkpoint", str(altered))
    assert "signature does not verify" in err

    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    err = await audit_fails(ca_db, capsys, "--checkpoint", str(garbage))
    assert "not a readable checkpoint document" in err
    assert "Traceback" not in err


# --- the projection against a replay of the log ---------------------------------------------------


async def test_un_revoking_in_the_projection_is_named_by_audit_verify(
    ca_db: CA, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = await history(ca_db)
    serial = f"{certs[1].serial_number:x}"
    await ca_db.raw("UPDATE certificates SET status = 'good', revoked_at = NULL, reason = NULL WHERE serial = ?",
                    serial)  # fmt: skip

    assert await ca_db.rt.log.verify_chain() == await ca_db.rt.log.head()  # the chain is intact
    err = await audit_fails(ca_db, capsys, "--checkpoint", str(ca_db.latest))
    assert "the status projection disagrees with a replay of the log in 1 places" in err
    assert f"certificate issuing-ca/{serial}: the projection has status good (the log says revoked)" in err
    assert "reason none (the log says keyCompromise)" in err

    await asyncio.to_thread(pca_main, ["rebuild", "--config", str(ca_db.config.path)])
    capsys.readouterr()
    await asyncio.to_thread(audit, ca_db, "--checkpoint", str(ca_db.latest))
    assert "audit OK" in capsys.readouterr().out


async def test_a_deleted_projection_row_is_named_by_audit_verify(ca_db: CA, capsys: pytest.CaptureFixture[str]) -> None:
    certs = await history(ca_db)
    serial = f"{certs[1].serial_number:x}"
    await ca_db.raw("DELETE FROM certificates WHERE serial = ?", serial)
    err = await audit_fails(ca_db, capsys)
    assert f"certificate issuing-ca/{serial}: the log says revoked (keyCompromise" in err
    assert "the projection has no such certificate" in err


async def test_the_checkpoint_signer_is_made_by_init_and_certified_by_the_issuing_ca(ca_db: CA) -> None:
    events = await ca_db.rt.log.read_stream("audit/checkpoint-signer")
    assert [e.type for e in events] == ["CheckpointSignerSet"]
    cert = x509.load_der_x509_certificate(bytes.fromhex(events[0].payload["cert_der_hex"]))
    issuing = x509.load_pem_x509_certificate((ca_db.config.data_dir / "issuing-ca.pem").read_bytes())
    cert.verify_directly_issued_by(issuing)
    assert cert.not_valid_after_utc - now_utc() > datetime.timedelta(days=300)
    assert ca.CHECKPOINT_SIGNING in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value


# --- the storer answers to the log, not only to the projection ----------------------------------


def crl_serials(path: Path) -> set[int]:
    return {entry.serial_number for entry in x509.load_der_x509_crl(path.read_bytes())}


@pytest.mark.parametrize("tamper", ["un-revoke", "delete-row"])
async def test_the_storer_refuses_a_full_crl_that_drops_a_revocation_the_log_has(ca_db: CA, tamper: str) -> None:
    certs = await history(ca_db)
    serial = certs[1].serial_number
    publisher = build_publisher(ca_db.rt, ca_db.store)
    issuer = next(i for i in await ca_db.rt.view.issuers() if i.issuer_id == "issuing-ca")
    first = await publisher.publish(issuer)
    crl_path = ca_db.config.crl_dir / "issuing-ca.crl"
    assert serial in crl_serials(crl_path)

    if tamper == "un-revoke":
        await ca_db.raw("UPDATE certificates SET status = 'good', revoked_at = NULL, reason = NULL, version = 1 "
                        "WHERE serial = ?", f"{serial:x}")  # fmt: skip
    else:
        await ca_db.raw("DELETE FROM certificates WHERE serial = ?", f"{serial:x}")
    with pytest.raises(RefusedCRL, match=f"e.g. serial {serial:x}, revoked by seq") as refused:
        await publisher.publish(issuer)
    assert "pca rebuild" in str(refused.value)
    assert serial in crl_serials(crl_path)  # the CRL in the store still lists it
    labels = {"issuer": "issuing-ca", "kind": "full", "result": "projection_disagrees"}
    assert ca_db.rt.registry.get_sample_value("crl_publishes_total", labels) == 1

    await asyncio.to_thread(pca_main, ["rebuild", "--config", str(ca_db.config.path)])
    again = await publisher.publish(issuer)
    assert again.number > first.number
    assert serial in crl_serials(crl_path)


async def test_a_released_hold_and_expired_revocations_are_no_disagreement(ca_db: CA) -> None:
    certs = await history(ca_db)
    await ca_db.authority.revoke(certs[0].serial_number, "certificateHold", ACTOR)
    await ca_db.authority.release_hold(certs[0].serial_number, ACTOR)
    await ca_db.authority.revoke(certs[2].serial_number, "certificateHold", ACTOR)
    await ca_db.authority.revoke(certs[2].serial_number, "keyCompromise", ACTOR)
    assert await ca_db.rt.log.projection_drops("issuing-ca") == []
    publisher = build_publisher(ca_db.rt, ca_db.store)
    issuer = next(i for i in await ca_db.rt.view.issuers() if i.issuer_id == "issuing-ca")
    await publisher.publish(issuer)
    assert crl_serials(ca_db.config.crl_dir / "issuing-ca.crl") == {certs[1].serial_number, certs[2].serial_number}


async def test_after_its_ca_is_revoked_the_signer_is_replaced_once_another_issuing_ca_stands(ca_db: CA) -> None:
    """A checkpoint signer certified by a compromised CA anchors nothing: once a new issuing CA stands
    (``pca issuer create``, runbook 2), checkpoints are signed by a signer it certified."""
    await history(ca_db)
    [first] = await ca_db.rt.log.read_stream("audit/checkpoint-signer")
    assert first.payload["issuer_id"] == "issuing-ca"
    await ca_db.authority.revoke_ca("issuing-ca", "cACompromise", ACTOR)
    keys, now = ca_db.config.data_dir / "keys", now_utc()
    # No other issuing CA stands yet: the current signer goes on signing.
    kept = await ensure_signer(ca_db.rt.log, ca_db.rt.view, keys, "ec-p256", now, "tester", "t1")
    assert kept.key_ref == first.payload["key_ref"]

    config = str(ca_db.config.path)
    await asyncio.to_thread(pca_main, ["issuer", "create", "--config", config, "--id", "issuing-b", "--cn", "B"])
    checkpoint = await ca_db.checkpointer().tick()  # of the head the revocation and the new CA moved
    assert checkpoint is not None
    signers = await ca_db.rt.log.read_stream("audit/checkpoint-signer")
    assert [e.payload["issuer_id"] for e in signers] == ["issuing-ca", "issuing-b"]
    doc = json.loads(ca_db.latest.read_bytes())
    signer = x509.load_pem_x509_certificate(doc["certificates"][0].encode())
    new_ca = x509.load_pem_x509_certificate((ca_db.config.data_dir / "issuing-b.pem").read_bytes())
    signer.verify_directly_issued_by(new_ca)
    # Verified against the new CA's chain, which does not hold the compromised CA.
    new_chain = str(ca_db.config.data_dir / "issuing-b-chain.pem")
    await asyncio.to_thread(audit, ca_db, "--checkpoint", str(ca_db.latest), "--ca", new_chain)


async def test_a_signer_near_its_expiry_is_replaced_and_checkpoints_verify_with_the_new_one(
    ca_db: CA, capsys: pytest.CaptureFixture[str]
) -> None:
    await history(ca_db)
    [first] = await ca_db.rt.log.read_stream("audit/checkpoint-signer")
    not_after = datetime.datetime.fromisoformat(first.payload["not_after"].replace("Z", "+00:00"))
    later = not_after - SIGNER_RENEW_BEFORE + datetime.timedelta(seconds=1)
    renewed = await ensure_signer(ca_db.rt.log, ca_db.rt.view, ca_db.config.data_dir / "keys", "ec-p256", later,
                                  "tester", "renew")  # fmt: skip
    assert renewed.key_ref != first.payload["key_ref"]
    assert [e.type for e in await ca_db.rt.log.read_stream("audit/checkpoint-signer")] == ["CheckpointSignerSet"] * 2
    # Asked again before the new one nears its end: the same signer.
    assert await ensure_signer(ca_db.rt.log, ca_db.rt.view, ca_db.config.data_dir / "keys", "ec-p256", later,
                               "tester", "renew") == renewed  # fmt: skip

    await issue(ca_db.authority, "svc-after-renewal")
    checkpoint = await ca_db.checkpointer(FakeClock(later)).tick()  # signed in the new signer's lifetime
    assert checkpoint is not None
    doc = json.loads(ca_db.latest.read_bytes())
    signer = x509.load_pem_x509_certificate(doc["certificates"][0].encode())
    assert signer.serial_number == x509.load_der_x509_certificate(bytes.fromhex(renewed.cert_der_hex)).serial_number
    await asyncio.to_thread(audit, ca_db, "--checkpoint", str(ca_db.latest))
    assert f"checkpoint seq {checkpoint.seq} of " in capsys.readouterr().out


async def test_a_certificate_planted_in_the_projection_is_named_by_audit_verify(
    ca_db: CA, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = await history(ca_db)
    columns = "status, subject, profile, not_before, not_after, cert_der, revoked_at, reason, version, updated_seq"
    await ca_db.raw(f"INSERT INTO certificates (issuer_id, serial, {columns}) "
                    f"SELECT issuer_id, 'abcdef0123', {columns} FROM certificates WHERE serial = ?",
                    f"{certs[1].serial_number:x}")  # fmt: skip
    err = await audit_fails(ca_db, capsys)
    planted = "certificate issuing-ca/abcdef0123: in the projection (revoked (keyCompromise))"
    assert f"{planted}, never issued in the log" in err


async def test_the_key_of_a_signer_that_lost_the_race_to_another_process_is_destroyed(
    ca_db: CA, caplog: pytest.LogCaptureFixture
) -> None:
    """Two publishers renew the signer at once: the second to record its signer uses the first's, and the
    key it made for its own (named by no event) is removed, as a lost OCSP signer rotation's is (the
    PKCS#11 and KMS cases are in tests/revocation/keys)."""
    won, lost = await checkpoint_signer_race(ca_db.rt)
    assert [Path(won.path).is_file(), Path(lost.path).exists()] == [True, False]  # noqa: ASYNC240
    assert f"audit checkpoint signer key file:{lost.path} destroyed" in caplog.text
