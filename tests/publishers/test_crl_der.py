"""Tests of publishers.crl_der: hand-assembled CRLs must read back exactly as built."""

from __future__ import annotations

import dataclasses
import datetime
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from publishers import crl_der
from publishers.crl_der import CRLEntry, build_crl, verify_crl
from revocation import der
from revocation.keys import FileKey, KeyRef, PrivateKey

UTC = datetime.UTC
NOW = datetime.datetime.now(UTC).replace(microsecond=0)
THIS_UPDATE = NOW - datetime.timedelta(hours=1)
NEXT_UPDATE = NOW + datetime.timedelta(days=1)

REASON_FLAGS = {
    1: x509.ReasonFlags.key_compromise,
    2: x509.ReasonFlags.ca_compromise,
    3: x509.ReasonFlags.affiliation_changed,
    4: x509.ReasonFlags.superseded,
    5: x509.ReasonFlags.cessation_of_operation,
    6: x509.ReasonFlags.certificate_hold,
    8: x509.ReasonFlags.remove_from_crl,
    9: x509.ReasonFlags.privilege_withdrawn,
    10: x509.ReasonFlags.aa_compromise,
}


@dataclasses.dataclass(frozen=True)
class CA:
    cert: x509.Certificate
    key: FileKey

    @property
    def private(self) -> PrivateKey:
        return self.key.private_key_for_builder()

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(private: PrivateKey, common_name: str, *, with_ski: bool) -> CA:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if with_ski:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(private.public_key()), False)
    cert = builder.sign(private, hashes.SHA256())
    return CA(cert, FileKey(KeyRef(backend="file", path=f"{common_name}.pem"), private))


def issue_leaf(ca: CA, serial: int) -> x509.Certificate:
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(_name(f"leaf {serial}"))
        .issuer_name(ca.cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - datetime.timedelta(hours=2))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca.private, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def ec_ca() -> CA:
    return make_ca(ec.generate_private_key(ec.SECP256R1()), "Test EC CA", with_ski=True)


@pytest.fixture(scope="module")
def rsa_ca() -> CA:
    # Without SKI, so the AuthorityKeyIdentifier comes from hashing the public key.
    return make_ca(rsa.generate_private_key(public_exponent=65537, key_size=2048), "Test RSA CA", with_ski=False)


@pytest.fixture(params=["ec", "rsa"])
def ca(request: pytest.FixtureRequest, ec_ca: CA, rsa_ca: CA) -> CA:
    return ec_ca if request.param == "ec" else rsa_ca


def build(ca: CA, entries: Iterable[CRLEntry], number: int = 7, extra_extensions: Sequence[bytes] = ()) -> bytes:
    return build_crl(
        ca.cert,
        ca.key,
        entries,
        number=number,
        this_update=THIS_UPDATE,
        next_update=NEXT_UPDATE,
        extra_extensions=extra_extensions,
    )


def expected_key_id(cert: x509.Certificate) -> bytes:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def assert_entry_matches(revoked: x509.RevokedCertificate, entry: CRLEntry) -> None:
    assert revoked.serial_number == entry.serial
    assert revoked.revocation_date_utc == entry.revoked_at.astimezone(UTC)
    oids = [ext.oid for ext in revoked.extensions]
    if entry.reason:
        assert revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason == REASON_FLAGS[entry.reason]
    else:
        assert x509.CRLReason.oid not in oids
    if entry.invalidity_date is not None:
        invalidity = revoked.extensions.get_extension_for_class(x509.InvalidityDate).value
        assert invalidity.invalidity_date_utc == entry.invalidity_date.astimezone(UTC)
    else:
        assert x509.InvalidityDate.oid not in oids
    assert not any(ext.critical for ext in revoked.extensions)


def tbs_tags(crl: bytes) -> list[int]:
    """Tags of the TBSCertList's top-level fields."""
    _, start, _ = der.split_tlv(crl)
    _, pos, end = der.split_tlv(crl, start)
    tags = []
    while pos < end:
        tag, _, pos = der.split_tlv(crl, pos)
        tags.append(tag)
    return tags


def test_crl_with_entries_reads_back(ca: CA) -> None:
    entries = [
        CRLEntry(1, NOW - datetime.timedelta(days=3), 1, NOW - datetime.timedelta(days=4)),
        CRLEntry(2, NOW - datetime.timedelta(days=2)),
        CRLEntry(0xFEDCBA98_76543210_FEDCBA98_76543210, NOW - datetime.timedelta(minutes=5), 1),
        CRLEntry(4, NOW - datetime.timedelta(days=2), 0, NOW - datetime.timedelta(days=9)),
        CRLEntry(5, NOW - datetime.timedelta(seconds=1), 5),
        CRLEntry(2**159 - 1, NOW, 10),
        CRLEntry(0x80, NOW.astimezone(datetime.timezone(datetime.timedelta(hours=-7))), 8),
    ]
    crl = verify_crl(build(ca, entries, number=2**100), ca.cert)

    assert crl.issuer == ca.cert.subject
    assert crl.last_update_utc == THIS_UPDATE
    assert crl.next_update_utc == NEXT_UPDATE
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2**100
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert not aki.critical
    assert aki.value.key_identifier == expected_key_id(ca.cert)
    assert aki.value.authority_cert_issuer is None
    assert [ext.oid for ext in crl.extensions] == [x509.AuthorityKeyIdentifier.oid, x509.CRLNumber.oid]
    assert len(crl) == len(entries)
    for revoked, entry in zip(crl, entries, strict=True):
        assert_entry_matches(revoked, entry)


def test_empty_crl_omits_revoked_certificates(ca: CA) -> None:
    crl_bytes = build(ca, [], number=0)
    crl = verify_crl(crl_bytes, ca.cert)
    assert len(crl) == 0
    assert list(crl) == []
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 0
    # version, signature, issuer, thisUpdate, nextUpdate, [0] crlExtensions: no empty SEQUENCE in between.
    assert tbs_tags(crl_bytes) == [der.INTEGER, der.SEQUENCE, der.SEQUENCE, der.UTC_TIME, der.UTC_TIME, 0xA0]
    assert tbs_tags(build(ca, [CRLEntry(1, NOW)]))[5:] == [der.SEQUENCE, 0xA0]


def test_entries_accept_any_iterable(ec_ca: CA) -> None:
    crl = verify_crl(build(ec_ca, (CRLEntry(n, NOW) for n in range(1, 4))), ec_ca.cert)
    assert [r.serial_number for r in crl] == [1, 2, 3]


def test_extra_extensions_follow_the_standard_ones(ec_ca: CA) -> None:
    delta = der.extension("2.5.29.27", der.integer(5), critical=True)
    crl = verify_crl(build(ec_ca, [CRLEntry(9, NOW, 8)], extra_extensions=[delta]), ec_ca.cert)
    assert [ext.oid for ext in crl.extensions] == [
        x509.AuthorityKeyIdentifier.oid,
        x509.CRLNumber.oid,
        x509.DeltaCRLIndicator.oid,
    ]
    indicator = crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    assert indicator.critical
    assert indicator.value.crl_number == 5


def _moderate_entries() -> list[CRLEntry]:
    entries = []
    reasons = [None, 0, *REASON_FLAGS]
    for i in range(200):
        revoked_at = NOW - datetime.timedelta(hours=i // 3, seconds=i)
        invalidity = revoked_at - datetime.timedelta(days=i % 5) if i % 4 == 0 else None
        entries.append(CRLEntry(1000 + i * 7_777_777_777, revoked_at, reasons[i % len(reasons)], invalidity))
    return entries


def _cryptography_crl(ca: CA, entries: list[CRLEntry], number: int) -> x509.CertificateRevocationList:
    revoked = []
    for entry in entries:
        builder = x509.RevokedCertificateBuilder().serial_number(entry.serial).revocation_date(entry.revoked_at)
        if entry.reason:
            builder = builder.add_extension(x509.CRLReason(REASON_FLAGS[entry.reason]), critical=False)
        if entry.invalidity_date is not None:
            builder = builder.add_extension(x509.InvalidityDate(entry.invalidity_date), critical=False)
        revoked.append(builder.build())
    aki = x509.AuthorityKeyIdentifier(expected_key_id(ca.cert), None, None)
    return x509.CertificateRevocationListBuilder(
        issuer_name=ca.cert.subject,
        last_update=THIS_UPDATE,
        next_update=NEXT_UPDATE,
        extensions=[
            x509.Extension(aki.oid, False, aki),
            x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(number)),
        ],
        revoked_certificates=revoked,
    ).sign(ca.private, hashes.SHA256())


def test_matches_cryptography_builder(ca: CA) -> None:
    entries = _moderate_entries()
    ours = verify_crl(build(ca, entries, number=42), ca.cert)
    theirs = _cryptography_crl(ca, entries, 42)

    assert ours.issuer == theirs.issuer
    assert ours.last_update_utc == theirs.last_update_utc
    assert ours.next_update_utc == theirs.next_update_utc
    assert ours.signature_algorithm_oid == theirs.signature_algorithm_oid
    assert list(ours.extensions) == list(theirs.extensions)
    assert len(ours) == len(theirs) == len(entries)
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.serial_number == reference.serial_number
        assert mine.revocation_date_utc == reference.revocation_date_utc
        assert list(mine.extensions) == list(reference.extensions)


def test_tbs_is_byte_identical_to_cryptography_builder(ca: CA) -> None:
    # Stronger than the field comparison: both make the same DER choices (UTCTime, extension order).
    # Should a cryptography upgrade change an encoding choice, this fails while the field test still passes.
    entries = _moderate_entries()
    ours = x509.load_der_x509_crl(build(ca, entries, number=42))
    assert ours.tbs_certlist_bytes == _cryptography_crl(ca, entries, 42).tbs_certlist_bytes


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl binary not installed")
def test_openssl_verifies_crl_and_revocation(ca: CA, tmp_path: Path) -> None:
    revoked_leaf = issue_leaf(ca, 0x1234_5678_9ABC_DEF0_1234)
    good_leaf = issue_leaf(ca, 0x0FED_CBA9_8765)
    crl_bytes = build(
        ca, [CRLEntry(3, NOW), CRLEntry(revoked_leaf.serial_number, NOW - datetime.timedelta(minutes=1), 1)]
    )
    (tmp_path / "ca.pem").write_bytes(ca.pem())
    (tmp_path / "crl.der").write_bytes(crl_bytes)
    (tmp_path / "crl.pem").write_bytes(x509.load_der_x509_crl(crl_bytes).public_bytes(serialization.Encoding.PEM))
    (tmp_path / "revoked.pem").write_bytes(revoked_leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "good.pem").write_bytes(good_leaf.public_bytes(serialization.Encoding.PEM))

    def openssl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["openssl", *args], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)

    checked = openssl("crl", "-in", "crl.der", "-inform", "DER", "-CAfile", "ca.pem", "-noout")
    assert "verify OK" in checked.stdout + checked.stderr, checked

    verify = ("verify", "-crl_check", "-CAfile", "ca.pem", "-CRLfile", "crl.pem")
    revoked = openssl(*verify, "revoked.pem")
    assert revoked.returncode != 0
    assert "certificate revoked" in revoked.stdout + revoked.stderr, revoked
    good = openssl(*verify, "good.pem")
    assert good.returncode == 0, good
    assert "good.pem: OK" in good.stdout


def test_verify_crl_rejects_tampered_signature(ca: CA) -> None:
    crl_bytes = bytearray(build(ca, [CRLEntry(1, NOW, 1)]))
    crl_bytes[-1] ^= 0x01
    with pytest.raises(ValueError, match="signature does not verify"):
        verify_crl(bytes(crl_bytes), ca.cert)


def test_verify_crl_rejects_other_issuer(ec_ca: CA, rsa_ca: CA) -> None:
    crl_bytes = build(ec_ca, [CRLEntry(1, NOW)])
    with pytest.raises(ValueError, match="is not the certificate subject"):
        verify_crl(crl_bytes, rsa_ca.cert)
    # Same name, different key: only the signature can tell.
    impostor = make_ca(ec.generate_private_key(ec.SECP256R1()), "Test EC CA", with_ski=True)
    with pytest.raises(ValueError, match="signature does not verify"):
        verify_crl(crl_bytes, impostor.cert)


def test_verify_crl_rejects_garbage(ec_ca: CA) -> None:
    with pytest.raises(ValueError, match="does not parse"):
        verify_crl(b"\x30\x03\x02\x01\x01", ec_ca.cert)


NAIVE = datetime.datetime(2030, 1, 1)  # deliberately without tzinfo: the error case under test


@pytest.mark.parametrize(
    ("kwargs", "entries", "message"),
    [
        ({"next_update": THIS_UPDATE}, [], "next_update .* is not after this_update"),
        ({"next_update": THIS_UPDATE - datetime.timedelta(seconds=1)}, [], "is not after this_update"),
        ({"next_update": THIS_UPDATE + datetime.timedelta(microseconds=500)}, [], "is not after this_update"),
        ({"number": -1}, [], "CRL number -1 "),
        ({"number": 2**159}, [], f"CRL number {2**159} "),
        ({"this_update": NAIVE}, [], "this_update 2030-01-01T00:00:00 has no time zone"),
        ({}, [CRLEntry(0, NOW)], "serial 0 "),
        ({}, [CRLEntry(1, NOW), CRLEntry(-5, NOW)], "serial -5 "),
        ({}, [CRLEntry(2**159, NOW)], f"serial {2**159} "),
        ({}, [CRLEntry(3, NOW, 7)], "serial 3: reason 7 "),
        ({}, [CRLEntry(3, NOW, 11, NOW)], "serial 3: reason 11 "),
        ({}, [CRLEntry(4, NAIVE)], "serial 4: revoked_at 2030-01-01T00:00:00 has no time zone"),
        ({}, [CRLEntry(5, NOW, 1, NAIVE)], "serial 5: invalidity_date 2030-01-01T00:00:00 has no time zone"),
        ({"extra_extensions": [der.extension("2.5.29.20", der.integer(1))]}, [], r"\[0\] repeats .*2\.5\.29\.20"),
        ({"extra_extensions": [der.integer(1)]}, [], r"\[0\] is not an Extension \(not a single SEQUENCE"),
        ({"extra_extensions": [der.sequence(der.integer(1))]}, [], r"\[0\] is not an Extension \(does not start"),
        ({"extra_extensions": [b"\x30\x05\x06"]}, [], r"\[0\] is not an Extension \(truncated DER"),
    ],
)
def test_bad_arguments_raise_value_error(
    ec_ca: CA, kwargs: dict[str, object], entries: list[CRLEntry], message: str
) -> None:
    arguments: dict[str, object] = {"number": 1, "this_update": THIS_UPDATE, "next_update": NEXT_UPDATE, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_crl(ec_ca.cert, ec_ca.key, entries, **arguments)  # type: ignore[arg-type]


def test_key_must_match_issuer(ec_ca: CA, rsa_ca: CA) -> None:
    with pytest.raises(ValueError, match=r"key Test RSA CA\.pem does not match the public key of 'CN=Test EC CA'"):
        build_crl(ec_ca.cert, rsa_ca.key, [], number=1, this_update=THIS_UPDATE, next_update=NEXT_UPDATE)


def _whole_seconds(low: int, high: int) -> st.SearchStrategy[datetime.datetime]:
    offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
        lambda minutes: datetime.timezone(datetime.timedelta(minutes=minutes))
    )
    return st.datetimes(
        # Hypothesis wants naive bounds; a day of margin keeps any UTC offset inside the year range.
        min_value=datetime.datetime(low, 1, 2),
        max_value=datetime.datetime(high, 12, 30),
        timezones=st.one_of(st.just(UTC), offsets),
    ).map(lambda moment: moment.replace(microsecond=0))


entry_strategy = st.builds(
    CRLEntry,
    serial=st.integers(min_value=1, max_value=2**159 - 1),
    revoked_at=_whole_seconds(1950, 2100),
    reason=st.sampled_from([None, 0, *REASON_FLAGS]),
    invalidity_date=st.none() | _whole_seconds(1950, 2100),
)


@settings(deadline=None, max_examples=60)
@given(entries=st.lists(entry_strategy, max_size=25, unique_by=lambda entry: entry.serial))
def test_round_trip_property(ec_ca: CA, entries: list[CRLEntry]) -> None:
    crl = verify_crl(build(ec_ca, entries), ec_ca.cert)
    assert len(crl) == len(entries)
    for revoked, entry in zip(crl, entries, strict=True):
        assert_entry_matches(revoked, entry)


@given(moment=_whole_seconds(1001, 9998).map(lambda m: m.replace(microsecond=123456)))
def test_fast_time_encoding_equals_der_helpers(moment: datetime.datetime) -> None:
    # crl_der formats times itself for speed; it must stay byte-identical to the shared helpers.
    assert crl_der._time(moment, utc_time_allowed=True) == der.x509_time(moment)
    assert crl_der._time(moment, utc_time_allowed=False) == der.generalized_time(moment)


# --- extensions of delta and sharded CRLs, and reading entries back ------------------------------------------


def test_idp_delta_indicator_and_freshest_crl_read_back_as_rfc_5280_says(ec_ca: CA) -> None:
    crl = verify_crl(
        build(
            ec_ca,
            [],
            extra_extensions=[
                crl_der.issuing_distribution_point(
                    "http://crl.test/ca-2.crl", only_user_certs=True, only_ca_certs=False
                ),
                crl_der.delta_crl_indicator(41),
                crl_der.freshest_crl("http://crl.test/ca-2-delta.crl"),
            ],
        ),
        ec_ca.cert,
    )
    idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert idp.critical
    assert idp.value == x509.IssuingDistributionPoint(
        [x509.UniformResourceIdentifier("http://crl.test/ca-2.crl")], None, True, False, None, False, False
    )
    indicator = crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    assert indicator.critical and indicator.value.crl_number == 41
    freshest = crl.extensions.get_extension_for_class(x509.FreshestCRL)
    assert not freshest.critical
    assert [n.value for p in freshest.value for n in p.full_name or []] == ["http://crl.test/ca-2-delta.crl"]
    with pytest.raises(ValueError, match="both"):
        crl_der.issuing_distribution_point("http://x/a.crl", only_user_certs=True, only_ca_certs=True)
    with pytest.raises(ValueError, match="base CRL number"):
        crl_der.delta_crl_indicator(-1)


def _values(entry: CRLEntry) -> crl_der.EntryValues:
    invalidity = None if entry.invalidity_date is None else int(entry.invalidity_date.timestamp())
    return (int(entry.revoked_at.timestamp()), entry.reason or None, invalidity)


@settings(deadline=None, max_examples=60)
@given(entries=st.lists(entry_strategy, max_size=25, unique_by=lambda entry: entry.serial))
def test_read_entries_returns_what_was_built(ec_ca: CA, entries: list[CRLEntry]) -> None:
    assert crl_der.read_entries(build(ec_ca, entries)) == {e.serial: _values(e) for e in entries}


def test_read_entries_refuses_what_build_crl_never_emits(ec_ca: CA) -> None:
    one = CRLEntry(5, NOW, 1)
    crl = build(ec_ca, [one, CRLEntry(6, NOW, crl_der.REMOVE_FROM_CRL)])
    assert crl_der.read_entries(crl) == {5: (int(NOW.timestamp()), 1, None), 6: (int(NOW.timestamp()), 8, None)}
    with pytest.raises(ValueError, match="listed twice"):
        crl_der.read_entries(build(ec_ca, [one, one]))
    with pytest.raises(ValueError):
        crl_der.read_entries(b"\x30\x03\x02\x01\x01")
    with pytest.raises(ValueError):
        crl_der.read_entries(crl[:-10])
    # An entry extension other than reasonCode and invalidityDate (here: certificateIssuer's OID).
    reason = der.extension(crl_der.OID_REASON_CODE, der.enumerated(1))
    odd = reason.replace(der.oid(crl_der.OID_REASON_CODE), der.oid("2.5.29.29"))
    assert crl.count(reason) == 1
    with pytest.raises(ValueError, match=r"unexpected entry extension 2\.5\.29\.29"):
        crl_der.read_entries(crl.replace(reason, odd))
