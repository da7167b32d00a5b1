"""The issuing core and the Authority: what gets issued, what may be revoked, and when signers rotate."""

from __future__ import annotations

import asyncio
import datetime
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pca.config import Config, load_config
from pca.runtime import Runtime, open_runtime
from pca.serve import build_authority
from revocation.authority import Actor, Authority, IssueRequest, RevokeOutcome, parse_serial
from revocation.clock import FakeClock
from revocation.errors import ConflictError, NotFoundError, ValidationError
from revocation.events import REVOCATION_REASONS, CertificateRevoked, ResponderCertRotated, cert_stream
from revocation.keys import KeyRef, open_key
from tests.support.processes import init_ca

UTC = datetime.UTC
ACTOR = Actor("tester", "req-1")
ISSUING = "issuing-ca"
ROOT = "root-ca"


def mode(path: Path | str) -> int:
    return stat.S_IMODE(Path(path).stat().st_mode)


def issuing_cert(cfg: Config) -> x509.Certificate:
    return x509.load_pem_x509_certificate((cfg.data_dir / "issuing-ca.pem").read_bytes())


def spki(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def make_csr(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, common_name: str = "csr-svc", dns: tuple[str, ...] = ()
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
            ]
        )
    )
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def authority(runtime: Runtime) -> Authority:
    return build_authority(runtime)


@pytest.fixture
def now() -> datetime.datetime:
    # Whole seconds: certificate times have no fractions, so comparisons can be exact.
    return datetime.datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
async def fake_rt(ca_config: Config, now: datetime.datetime) -> AsyncIterator[Runtime]:
    rt = open_runtime(ca_config, FakeClock(now))
    try:
        yield rt
    finally:
        rt.close()


async def issue_server(authority: Authority, name: str = "svc1") -> x509.Certificate:
    got = await authority.issue(IssueRequest(subject=f"CN={name}", dns=[f"{name}.example"]), ACTOR)
    return got.certificate


# --- issuance ---------------------------------------------------------------------------


async def test_issue_server_certificate_with_generated_key(fake_rt: Runtime, now: datetime.datetime) -> None:
    cfg = fake_rt.config
    got = await build_authority(fake_rt).issue(
        IssueRequest(subject="CN=svc1,O=Example", dns=["svc1.example", "svc1.internal"]), ACTOR
    )
    cert = got.certificate

    cert.verify_directly_issued_by(issuing_cert(cfg))
    assert 2**100 <= cert.serial_number < 2**128
    assert cert.subject.rfc4514_string() == "CN=svc1,O=Example"
    assert cert.not_valid_after_utc == now + datetime.timedelta(days=90)
    assert cert.not_valid_before_utc <= now

    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [d.access_location.value for d in aia] == [cfg.ocsp_url]
    dps = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for dp in dps for n in dp.full_name or []] == [cfg.crl_url(ISSUING)]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["svc1.example", "svc1.internal"]

    # The generated key is handed back once, and it is the certificate's.
    assert got.private_key_pem is not None
    private = serialization.load_pem_private_key(got.private_key_pem, password=None)
    assert spki(private.public_key()) == spki(cert.public_key())  # type: ignore[arg-type]

    assert got.event.type == "CertificateIssued" and got.event.actor == "tester"
    record = await fake_rt.view.certificate(ISSUING, cert.serial_number)
    assert record is not None and (record.status, record.profile) == ("good", "server")


async def test_client_profile_is_for_client_authentication(authority: Authority) -> None:
    got = await authority.issue(IssueRequest(subject="CN=alice", emails=["alice@example.com"], profile="client"), ACTOR)
    eku = got.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


async def test_client_profile_needs_no_san(authority: Authority) -> None:
    got = await authority.issue(IssueRequest(subject="CN=device-7", profile="client"), ACTOR)
    with pytest.raises(x509.ExtensionNotFound):
        got.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)


async def test_validity_beyond_the_issuer_is_clamped_to_the_issuers_not_after(runtime: Runtime) -> None:
    issuer = issuing_cert(runtime.config)
    got = await build_authority(runtime).issue(
        IssueRequest(subject="CN=long", dns=["long.example"], validity_days=4000), ACTOR
    )
    assert got.certificate.not_valid_after_utc == issuer.not_valid_after_utc


async def test_absurd_validity_is_clamped_rather_than_crashing(runtime: Runtime) -> None:
    issuer = issuing_cert(runtime.config)
    got = await build_authority(runtime).issue(
        IssueRequest(subject="CN=forever", dns=["forever.example"], validity_days=10**7), ACTOR
    )
    assert got.certificate.not_valid_after_utc == issuer.not_valid_after_utc


async def test_negative_validity_is_refused(authority: Authority) -> None:
    with pytest.raises(ValidationError, match="-1 days"):
        await authority.issue(IssueRequest(subject="CN=x", dns=["x.example"], validity_days=-1), ACTOR)


async def test_zero_validity_is_refused(authority: Authority) -> None:
    with pytest.raises(ValidationError, match="validity"):
        await authority.issue(IssueRequest(subject="CN=x", dns=["x.example"], validity_days=0), ACTOR)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (IssueRequest(subject="CN=nosan"), "subject alternative name"),
        (IssueRequest(subject="CN=x", dns=["x.example"], profile="codeSigning"), "unknown profile 'codeSigning'"),
        (IssueRequest(subject="not a subject", dns=["x.example"]), "not an RFC 4514 name"),
        (IssueRequest(subject="C=France", dns=["x.example"]), "C=France"),
        (IssueRequest(dns=["x.example"]), "subject is required"),
        (IssueRequest(subject="CN=x", dns=["bad name.example"]), "DNS name"),
        (IssueRequest(subject="CN=x", ips=["300.1.1.1"]), "IP address"),
    ],
    ids=["server-without-san", "unknown-profile", "bad-subject", "bad-country", "no-subject", "bad-dns", "bad-ip"],
)
async def test_invalid_issue_requests_are_refused_and_record_nothing(
    runtime: Runtime, request_: IssueRequest, message: str
) -> None:
    head = await runtime.log.head()
    with pytest.raises(ValidationError, match=message):
        await build_authority(runtime).issue(request_, ACTOR)
    assert await runtime.log.head() == head


async def test_unknown_issuer_is_not_found(authority: Authority) -> None:
    with pytest.raises(NotFoundError, match="no-such-ca"):
        await authority.issue(IssueRequest(subject="CN=x", dns=["x.example"], issuer_id="no-such-ca"), ACTOR)


async def test_the_root_does_not_issue_leaves(authority: Authority) -> None:
    with pytest.raises(ValidationError, match="root-ca"):
        await authority.issue(IssueRequest(subject="CN=x", dns=["x.example"], issuer_id="root-ca"), ACTOR)


# --- issuance from a CSR ------------------------------------------------------------------


async def test_issue_from_csr_takes_subject_sans_and_key_from_it(runtime: Runtime) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key, "csr-svc", ("csr-svc.example", "alt.example"))

    got = await build_authority(runtime).issue(IssueRequest(csr=csr), ACTOR)

    cert = got.certificate
    cert.verify_directly_issued_by(issuing_cert(runtime.config))
    assert cert.subject.rfc4514_string() == "O=Example,CN=csr-svc"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["csr-svc.example", "alt.example"]
    assert spki(cert.public_key()) == spki(key.public_key())  # type: ignore[arg-type]
    assert got.private_key_pem is None  # the requester holds the key, we never saw it


async def test_csr_with_a_broken_signature_is_refused(authority: Authority) -> None:
    csr = x509.load_pem_x509_csr(make_csr(ec.generate_private_key(ec.SECP256R1()), dns=("x.example",)))
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte belongs to the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)

    with pytest.raises(ValidationError, match="signature"):
        await authority.issue(IssueRequest(csr=tampered), ACTOR)


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not a certificate request",
        b"-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n",
        b"",
    ],
    ids=["text", "pem-armoured-garbage", "empty"],
)
async def test_garbage_csr_is_refused(runtime: Runtime, garbage: bytes) -> None:
    head = await runtime.log.head()
    with pytest.raises(ValidationError, match="CSR"):
        await build_authority(runtime).issue(IssueRequest(csr=garbage), ACTOR)
    assert await runtime.log.head() == head


async def test_rsa_1024_csr_is_refused(authority: Authority) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValidationError, match="1024"):
        await authority.issue(IssueRequest(csr=make_csr(weak, dns=("weak.example",))), ACTOR)


# --- pca init: key algorithms and file modes -------------------------------------------------


async def _issue_one(cfg: Config) -> x509.Certificate:
    rt = open_runtime(cfg, FakeClock(datetime.datetime.now(UTC)))
    try:
        return await issue_server(build_authority(rt))
    finally:
        rt.close()


@pytest.mark.parametrize(
    ("algorithm", "key_type", "size"),
    [
        ("ec-p256", ec.EllipticCurvePublicKey, 256),
        ("ec-p384", ec.EllipticCurvePublicKey, 384),
        ("rsa-2048", rsa.RSAPublicKey, 2048),
    ],
)
def test_init_creates_ca_keys_of_the_chosen_algorithm_readable_only_by_the_owner(
    tmp_path: Path, algorithm: str, key_type: type, size: int
) -> None:
    cfg = load_config(init_ca(tmp_path / "ca", "--key-algorithm", algorithm))

    for name in ("root-ca", "issuing-ca"):
        public = x509.load_pem_x509_certificate((cfg.data_dir / f"{name}.pem").read_bytes()).public_key()
        assert isinstance(public, key_type)
        assert public.key_size == size
    key_files = sorted((cfg.data_dir / "keys").glob("*.key"))
    assert len(key_files) == 5  # root, issuing CA, the OCSP signers of both, the audit checkpoint signer
    for path in key_files:
        assert mode(path) == 0o600, path
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key.public_key(), key_type)
    assert mode(cfg.token_file) == 0o600
    assert mode(cfg.tokens_db) == 0o600

    leaf = asyncio.run(_issue_one(cfg))
    leaf.verify_directly_issued_by(issuing_cert(cfg))


# --- revocation ---------------------------------------------------------------------------


async def test_revoke_records_reason_and_time(fake_rt: Runtime, now: datetime.datetime) -> None:
    authority = build_authority(fake_rt)
    cert = await issue_server(authority)
    compromised = now - datetime.timedelta(days=3)

    outcome = await authority.revoke(cert.serial_number, "keyCompromise", ACTOR, invalidity_date=compromised)

    assert outcome.created
    assert outcome.event.event == CertificateRevoked(
        issuer_id=ISSUING,
        serial=f"{cert.serial_number:x}",
        reason="keyCompromise",
        revoked_at=now,
        invalidity_date=compromised,
    )
    record = await authority.find(cert.serial_number)
    assert (record.status, record.reason, record.revoked_at, record.invalidity_date) == (
        "revoked",
        "keyCompromise",
        now,
        compromised,
    )


async def test_repeating_a_revocation_is_idempotent(runtime: Runtime) -> None:
    authority = build_authority(runtime)
    cert = await issue_server(authority)
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    first = await authority.revoke(cert.serial_number, "keyCompromise", ACTOR, invalidity_date=when)
    head = await runtime.log.head()

    again = await authority.revoke(
        cert.serial_number, "keyCompromise", Actor("someone-else", "req-2"), invalidity_date=when
    )

    assert not again.created
    assert again.event.seq == first.event.seq
    assert again.event.actor == "tester"
    assert await runtime.log.head() == head


@pytest.mark.parametrize(
    ("reason", "invalidity", "message"),
    [
        ("superseded", None, "already revoked with reason keyCompromise"),
        ("keyCompromise", datetime.datetime(2025, 5, 5, tzinfo=UTC), "another invalidity date"),
        ("certificateHold", None, "already revoked"),
    ],
    ids=["other-reason", "other-invalidity-date", "hold-after-permanent"],
)
async def test_revoking_again_differently_is_a_conflict(
    runtime: Runtime, reason: str, invalidity: datetime.datetime | None, message: str
) -> None:
    authority = build_authority(runtime)
    cert = await issue_server(authority)
    await authority.revoke(cert.serial_number, "keyCompromise", ACTOR)
    head = await runtime.log.head()

    with pytest.raises(ConflictError, match=message):
        await authority.revoke(cert.serial_number, reason, ACTOR, invalidity_date=invalidity)
    assert await runtime.log.head() == head
    assert (await authority.find(cert.serial_number)).reason == "keyCompromise"


@pytest.mark.parametrize(
    ("reason", "invalidity", "message"),
    [
        ("keyCompromise", datetime.timedelta(days=1), "in the future"),
        ("compromisedByAliens", None, "unknown revocation reason 'compromisedByAliens'"),
        ("removeFromCRL", None, "unknown revocation reason 'removeFromCRL'"),
        ("keycompromise", None, "unknown revocation reason"),
    ],
    ids=["future-invalidity-date", "unknown-reason", "removeFromCRL", "wrong-case"],
)
async def test_invalid_revocations_are_refused(
    runtime: Runtime, reason: str, invalidity: datetime.timedelta | None, message: str
) -> None:
    authority = build_authority(runtime)
    cert = await issue_server(authority)
    head = await runtime.log.head()
    when = None if invalidity is None else runtime.clock.now() + invalidity

    with pytest.raises(ValidationError, match=message):
        await authority.revoke(cert.serial_number, reason, ACTOR, invalidity_date=when)
    assert await runtime.log.head() == head
    assert (await authority.find(cert.serial_number)).status == "good"


async def test_revoking_an_unknown_serial_is_not_found(authority: Authority) -> None:
    with pytest.raises(NotFoundError, match="abcdef"):
        await authority.revoke(0xABCDEF, "keyCompromise", ACTOR)


async def test_hold_may_become_permanent_but_not_the_reverse(authority: Authority) -> None:
    cert = await issue_server(authority)
    serial = cert.serial_number

    held = await authority.revoke(serial, "certificateHold", ACTOR)
    permanent = await authority.revoke(serial, "keyCompromise", ACTOR)

    assert held.created and permanent.created
    assert permanent.event.seq > held.event.seq
    assert (await authority.find(serial)).reason == "keyCompromise"
    with pytest.raises(ConflictError):
        await authority.revoke(serial, "certificateHold", ACTOR)
    with pytest.raises(ConflictError, match="not on hold"):
        await authority.release_hold(serial, ACTOR)


async def test_release_hold_makes_the_certificate_good_again(runtime: Runtime) -> None:
    authority = build_authority(runtime)
    cert = await issue_server(authority)
    await authority.revoke(cert.serial_number, "certificateHold", ACTOR)

    rec = await authority.release_hold(cert.serial_number, ACTOR)

    assert rec.type == "CertificateHoldReleased"
    record = await authority.find(cert.serial_number)
    assert (record.status, record.reason, record.revoked_at) == ("good", None, None)
    stream = await runtime.log.read_stream(cert_stream(ISSUING, cert.serial_number))
    assert [e.type for e in stream] == ["CertificateIssued", "CertificateRevoked", "CertificateHoldReleased"]
    # Released once; a second release finds nothing on hold.
    with pytest.raises(ConflictError, match="not on hold"):
        await authority.release_hold(cert.serial_number, ACTOR)


async def test_release_hold_of_a_good_certificate_is_a_conflict(authority: Authority) -> None:
    cert = await issue_server(authority)
    with pytest.raises(ConflictError, match="not revoked"):
        await authority.release_hold(cert.serial_number, ACTOR)


async def test_release_hold_of_an_unknown_serial_is_not_found(authority: Authority) -> None:
    with pytest.raises(NotFoundError):
        await authority.release_hold(0x1234, ACTOR)


async def test_concurrent_identical_revocations_record_one_event(runtime: Runtime) -> None:
    authority = build_authority(runtime)
    cert = await issue_server(authority)

    outcomes = await asyncio.gather(
        *(authority.revoke(cert.serial_number, "keyCompromise", Actor(f"op{i}", f"r{i}")) for i in range(10))
    )

    assert sum(o.created for o in outcomes) == 1
    assert len({o.event.seq for o in outcomes}) == 1
    stream = await runtime.log.read_stream(cert_stream(ISSUING, cert.serial_number))
    assert [e.type for e in stream] == ["CertificateIssued", "CertificateRevoked"]


async def test_concurrent_conflicting_revocations_have_exactly_one_winner(runtime: Runtime) -> None:
    authority = build_authority(runtime)
    cert = await issue_server(authority)
    # certificateHold is left out: a hold may legitimately be overtaken by a permanent reason.
    reasons = [r for r in REVOCATION_REASONS if r != "certificateHold"]

    results = await asyncio.gather(
        *(authority.revoke(cert.serial_number, r, ACTOR) for r in reasons), return_exceptions=True
    )

    winners = [(r, o) for r, o in zip(reasons, results, strict=True) if isinstance(o, RevokeOutcome)]
    assert len(winners) == 1
    assert all(isinstance(o, ConflictError) for o in results if not isinstance(o, RevokeOutcome))
    assert (await authority.find(cert.serial_number)).reason == winners[0][0]
    stream = await runtime.log.read_stream(cert_stream(ISSUING, cert.serial_number))
    assert [e.type for e in stream] == ["CertificateIssued", "CertificateRevoked"]


# --- serials -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("abcdef", 0xABCDEF),
        ("ABCDEF", 0xABCDEF),
        ("ab:cd:EF", 0xABCDEF),
        ("0x1f", 0x1F),
        ("0X1F", 0x1F),
        (" 01 ", 1),
        ("f" * 40, int("f" * 40, 16)),
    ],
)
def test_parse_serial_accepts_hex_forms(text: str, value: int) -> None:
    assert parse_serial(text) == value


@pytest.mark.parametrize(
    "text",
    ["", "0x", ":", "zz", "12g4", "-1", "0", "00:00", "1" * 41, "1.5"],
)
def test_parse_serial_rejects_what_is_not_a_serial(text: str) -> None:
    with pytest.raises(ValidationError, match="serial"):
        parse_serial(text)


# --- delegated OCSP signers -----------------------------------------------------------------


async def _signer(rt: Runtime) -> x509.Certificate:
    [issuer] = [i for i in await rt.view.issuers() if i.issuer_id == ISSUING]
    assert issuer.signer_cert is not None
    return issuer.signer_cert


async def test_forced_rotation_issues_a_proper_ocsp_signer(runtime: Runtime) -> None:
    before = await _signer(runtime)

    [rec] = await build_authority(runtime).rotate_signers(ACTOR, force=True, issuer_id=ISSUING)

    event = rec.event
    assert isinstance(event, ResponderCertRotated) and event.issuer_id == ISSUING
    signer = x509.load_der_x509_certificate(bytes.fromhex(event.cert_der_hex))
    assert signer.serial_number != before.serial_number
    assert await _signer(runtime) == signer
    signer.verify_directly_issued_by(issuing_cert(runtime.config))
    assert list(signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.OCSP_SIGNING
    ]
    signer.extensions.get_extension_for_class(x509.OCSPNoCheck)
    assert signer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    key_path = event.key_ref["path"]
    assert mode(key_path) == 0o600
    signing_key = open_key(KeyRef.from_dict(event.key_ref))
    assert spki(signing_key.public_key()) == spki(signer.public_key())  # type: ignore[arg-type]


async def test_a_fresh_signer_is_not_rotated(runtime: Runtime) -> None:
    head = await runtime.log.head()
    assert await build_authority(runtime).rotate_signers(ACTOR) == []
    assert await runtime.log.head() == head


async def test_signer_is_rotated_once_it_nears_expiry(ca_config: Config) -> None:
    probe = open_runtime(ca_config, FakeClock())
    try:
        old = await _signer(probe)
    finally:
        probe.close()
    renew_before = datetime.timedelta(days=ca_config.ocsp.signer_renew_before_days)
    clock = FakeClock(old.not_valid_after_utc - renew_before - datetime.timedelta(days=1))
    rt = open_runtime(ca_config, clock)
    try:
        authority = build_authority(rt)
        assert await authority.rotate_signers(ACTOR) == []

        clock.advance(2 * 86400)  # now within signer_renew_before_days of expiry
        rotated = await authority.rotate_signers(ACTOR)
        # The root's signer (its OCSP answers for the intermediates) was made with the same validity.
        assert sorted(r.payload["issuer_id"] for r in rotated) == sorted([ROOT, ISSUING])
        [rec] = [r for r in rotated if r.payload["issuer_id"] == ISSUING]

        new = await _signer(rt)
        assert rec.type == "ResponderCertRotated"
        assert new.serial_number != old.serial_number
        assert new.not_valid_after_utc > old.not_valid_after_utc
        # Rotated once: the new signer is fresh, so asking again changes nothing.
        assert await authority.rotate_signers(ACTOR) == []
    finally:
        rt.close()
