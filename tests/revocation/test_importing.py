"""The import readers against databases and certificates written by the real ``openssl ca``."""

from __future__ import annotations

import dataclasses
import datetime
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revocation.errors import NotFoundError, StorageError, ValidationError
from revocation.events import REASONS
from revocation.importing import (
    CertificateFile,
    CertificateReadError,
    IndexEntry,
    IndexLineError,
    issued_by,
    load_issued_certificate,
    newcerts_filename,
    openssl_index,
    parse_index_line,
    read_certificates,
    read_openssl_index,
)
from tests.support.openssl_index_ca import issue as _issue
from tests.support.openssl_index_ca import make_ca as _make_ca
from tests.support.openssl_index_ca import openssl as _openssl

UTC = datetime.UTC
COMPROMISED_AT = "20260101000000Z"
CA_COMPROMISED_AT = "20251231120000Z"
FAR_NOT_AFTER = "20600101000000Z"  # after 2049: openssl writes GeneralizedTime to the index


def _now() -> datetime.datetime:
    return datetime.datetime.now(UTC).replace(microsecond=0)


@dataclasses.dataclass(frozen=True)
class OpenSSLCA:
    dir: Path
    # serial -> (earliest, latest) revocation time around the openssl call, which writes its own clock
    revoked_between: dict[int, tuple[datetime.datetime, datetime.datetime]]

    @property
    def index(self) -> Path:
        return self.dir / "index.txt"

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.dir / "ca.pem").read_bytes())


@pytest.fixture(scope="module")
def openssl_ca(tmp_path_factory: pytest.TempPathFactory) -> OpenSSLCA:
    d = tmp_path_factory.mktemp("openssl") / "ca"
    _make_ca(d, "Import Test CA")
    for cn in ("key-compromise", "compromise-time", "held", "valid"):
        _issue(d, cn)
    _issue(d, "ca-compromise", enddate=FAR_NOT_AFTER)
    revocations = {
        0xFF: ("-crl_reason", "keyCompromise"),
        0x100: ("-crl_compromise", COMPROMISED_AT),
        0x101: ("-crl_hold", "holdInstructionReject"),
        0x103: ("-crl_CA_compromise", CA_COMPROMISED_AT),
    }
    between = {}
    for serial, option in revocations.items():
        before = _now()
        cert = d / "newcerts" / newcerts_filename(serial)
        _openssl("ca", "-config", d / "openssl.cnf", "-revoke", cert, *option)
        between[serial] = (before, _now())
    return OpenSSLCA(d, between)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("other") / "ca"
    _make_ca(d, "Another CA")
    _issue(d, "stranger")
    return d


def _entries(path: Path) -> dict[int, IndexEntry]:
    out = {}
    for item in read_openssl_index(path):
        assert isinstance(item, IndexEntry), str(item)
        out[item.serial] = item
    return out


def test_every_field_of_a_real_openssl_index(openssl_ca: OpenSSLCA) -> None:
    entries = _entries(openssl_ca.index)
    assert sorted(entries) == [0xFF, 0x100, 0x101, 0x102, 0x103]
    expected = {  # serial -> status, reason, invalidity date, hold instruction
        0xFF: ("R", "keyCompromise", None, None),
        0x100: ("R", "keyCompromise", datetime.datetime(2026, 1, 1, tzinfo=UTC), None),
        0x101: ("R", "certificateHold", None, "1.2.840.10040.2.3"),
        0x102: ("V", None, None, None),
        0x103: ("R", "cACompromise", datetime.datetime(2025, 12, 31, 12, tzinfo=UTC), None),
    }
    for line, (serial, (status, reason, invalidity, hold)) in enumerate(expected.items(), start=1):
        entry = entries[serial]
        assert (entry.status, entry.reason, entry.invalidity_date, entry.hold_instruction) == (
            status,
            reason,
            invalidity,
            hold,
        )
        assert entry.line == line and entry.where == f"{openssl_ca.index}:{line}"
        assert entry.filename == "unknown"
        if status == "R":
            assert entry.revoked_at is not None
            earliest, latest = openssl_ca.revoked_between[serial]
            assert earliest <= entry.revoked_at <= latest
        else:
            assert entry.revoked_at is None
    assert entries[0x102].subject == "/CN=valid"
    assert entries[0x102].not_after == datetime.datetime(2030, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert entries[0x103].not_after == datetime.datetime(2060, 1, 1, tzinfo=UTC)
    assert all(e.reason is None or e.reason in REASONS for e in entries.values())


def test_index_entries_match_their_newcerts(openssl_ca: OpenSSLCA) -> None:
    for entry in _entries(openssl_ca.index).values():
        cert = load_issued_certificate(openssl_ca.dir / "newcerts", entry.serial)
        assert cert.serial_number == entry.serial
        assert cert.not_valid_after_utc == entry.not_after
        issued_by(cert, openssl_ca.cert)


def test_a_certificate_of_another_ca_is_refused(openssl_ca: OpenSSLCA, other_ca: Path) -> None:
    stranger = load_issued_certificate(other_ca / "newcerts", 0xFF)
    with pytest.raises(ValidationError) as refused:
        issued_by(stranger, openssl_ca.cert)
    message = str(refused.value)
    assert "serial ff" in message and "CN=stranger" in message and "CN=Import Test CA" in message
    # the same issuer name with another key: only the signature tells them apart
    impostor_dir = other_ca.parent / "impostor"
    _make_ca(impostor_dir, "Import Test CA")
    impostor = x509.load_pem_x509_certificate((impostor_dir / "ca.pem").read_bytes())
    own = load_issued_certificate(openssl_ca.dir / "newcerts", 0x102)
    with pytest.raises(ValidationError, match="signature does not verify"):
        issued_by(own, impostor)


def test_openssl_reason_names_all_map_to_project_reasons() -> None:
    assert set(openssl_index._OPENSSL_REASONS.values()) <= set(REASONS)


def test_newcerts_names_follow_openssl() -> None:
    assert [newcerts_filename(s) for s in (0, 1, 0xFF, 0x100, 0x1000)] == [
        "00.pem",
        "01.pem",
        "FF.pem",
        "0100.pem",
        "1000.pem",
    ]
    with pytest.raises(ValidationError, match="-1"):
        newcerts_filename(-1)


def test_missing_or_wrong_newcerts_file(openssl_ca: OpenSSLCA, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"serial abc: .*0ABC\.pem does not exist"):
        load_issued_certificate(openssl_ca.dir / "newcerts", 0xABC)
    shutil.copy(openssl_ca.dir / "newcerts" / "FF.pem", tmp_path / "0200.pem")
    with pytest.raises(ValidationError, match="holds serial ff, expected 200"):
        load_issued_certificate(tmp_path, 0x200)
    (tmp_path / "0300.pem").write_text("not a certificate")
    with pytest.raises(ValidationError, match=r"0300\.pem is not a PEM certificate"):
        load_issued_certificate(tmp_path, 0x300)


GOOD = "V\t301231235959Z\t\t0A\tunknown\t/CN=good"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("V\t301231235959Z\t\t0B\tunknown", "expected 6 tab-separated fields, found 5"),
        ("V\t301231235959Z\t\t0B\tunknown\t/CN=x\textra", "found 7"),
        ("X\t301231235959Z\t\t0B\tunknown\t/CN=x", "status 'X'"),
        ("V\t301331235959Z\t\t0B\tunknown\t/CN=x", "expiry time '301331235959Z' is not a valid date"),
        ("V\t2030-12-31\t\t0B\tunknown\t/CN=x", "expiry time '2030-12-31' is neither"),
        ("V\t301231235959Z\t\t0XB\tunknown\t/CN=x", "serial '0XB' is not hexadecimal"),
        ("V\t301231235959Z\t\t\tunknown\t/CN=x", "serial '' is not hexadecimal"),
        ("V\t301231235959Z\t\t-0B\tunknown\t/CN=x", "serial '-0B'"),
        ("R\t301231235959Z\t\t0B\tunknown\t/CN=x", "status R without a revocation time"),
        ("V\t301231235959Z\t261206014223Z\t0B\tunknown\t/CN=x", "status V with a revocation field"),
        ("R\t301231235959Z\t2612060142Z,keyCompromise\t0B\tunknown\t/CN=x", "revocation time '2612060142Z'"),
        ("R\t301231235959Z\t261206014223Z,stolen\t0B\tunknown\t/CN=x", "reason 'stolen' is not one openssl"),
        ("R\t301231235959Z\t261206014223Z,keyTime\t0B\tunknown\t/CN=x", "keyTime needs a value"),
        ("R\t301231235959Z\t261206014223Z,keyTime,yesterday\t0B\tunknown\t/CN=x", "compromise time 'yesterday'"),
        ("R\t301231235959Z\t261206014223Z,holdInstruction,wait\t0B\tunknown\t/CN=x", "hold instruction 'wait'"),
        ("R\t301231235959Z\t261206014223Z,superseded,x\t0B\tunknown\t/CN=x", "superseded takes no value"),
        ("", "found 1"),
    ],
)
def test_a_bad_line_is_reported_in_place_and_reading_goes_on(tmp_path: Path, bad: str, message: str) -> None:
    index = tmp_path / "index.txt"
    index.write_text(f"{GOOD}\n{bad}\n{GOOD.replace('0A', '0C')}\n")
    first, error, third = read_openssl_index(index)
    assert isinstance(first, IndexEntry) and first.serial == 0x0A
    assert isinstance(error, IndexLineError)
    assert error.line == 2 and error.where == f"{index}:2" and message in error.message
    assert str(error) == f"{index}:2: {error.message}"
    assert isinstance(third, IndexEntry) and third.serial == 0x0C and third.line == 3


def test_reason_variants_openssl_also_reads(tmp_path: Path) -> None:
    lines = [
        "R\t301231235959Z\t261206014223Z\t01\tunknown\t/CN=a",  # -revoke without -crl_reason
        "R\t301231235959Z\t261206014223Z,CERTIFICATEHOLD\t02\tunknown\t/CN=b",  # case-insensitive
        "R\t301231235959Z\t261206014223Z,holdInstruction,1.2.840.10040.2.1\t03\tunknown\t/CN=c",
        "R\t301231235959Z\t20261206014223Z,removeFromCRL\t04\tunknown\t/CN=d",  # GeneralizedTime
        "# a comment, skipped as openssl's TXT_DB does",
        "E\t200101000000Z\t\t05\tunknown\t/CN=e",
    ]
    (tmp_path / "index.txt").write_bytes("\r\n".join(lines).encode())  # CRLF, no final newline
    entries = list(read_openssl_index(tmp_path / "index.txt"))
    assert all(isinstance(e, IndexEntry) for e in entries), entries
    got = [(e.line, e.status, e.reason, e.hold_instruction) for e in entries if isinstance(e, IndexEntry)]
    assert got == [
        (1, "R", None, None),
        (2, "R", "certificateHold", None),
        (3, "R", "certificateHold", "1.2.840.10040.2.1"),
        (4, "R", "removeFromCRL", None),
        (6, "E", None, None),
    ]
    assert isinstance(entries[0], IndexEntry)
    assert entries[0].revoked_at == datetime.datetime(2026, 12, 6, 1, 42, 23, tzinfo=UTC)
    assert isinstance(entries[4], IndexEntry)
    assert entries[4].not_after == datetime.datetime(2020, 1, 1, tzinfo=UTC)


def test_utctime_years_follow_rfc5280(tmp_path: Path) -> None:
    assert isinstance(e49 := parse_index_line("V\t491231235959Z\t\t01\tunknown\t/CN=a", "f", 1), IndexEntry)
    assert isinstance(e50 := parse_index_line("V\t500101000000Z\t\t01\tunknown\t/CN=a", "f", 1), IndexEntry)
    assert (e49.not_after.year, e50.not_after.year) == (2049, 1950)


def test_an_overlong_line_is_reported_without_being_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openssl_index, "MAX_LINE_BYTES", 100)
    index = tmp_path / "index.txt"
    index.write_text(f"{GOOD}\nV\t{'x' * 1000}\n{GOOD}\n")
    first, error, third = read_openssl_index(index)
    assert isinstance(error, IndexLineError) and error.line == 2 and "longer than 100 bytes" in error.message
    assert isinstance(first, IndexEntry) and isinstance(third, IndexEntry) and third.line == 3


def test_a_missing_index_raises(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        next(read_openssl_index(tmp_path / "index.txt"))
    with pytest.raises(StorageError):
        next(read_openssl_index(tmp_path))  # a directory


def test_a_large_index_streams_in_bounded_memory(tmp_path: Path) -> None:
    index = tmp_path / "index.txt"
    lines = 20_000  # enough that holding the entries would pass the bound many times over
    with index.open("w") as f:
        for serial in range(1, lines + 1):
            f.write(f"R\t301231235959Z\t261206014223Z,keyTime,20260101000000Z\t{serial:04X}\tunknown\t/CN=n{serial}\n")
    tracemalloc.start()
    try:
        count = sum(1 for item in read_openssl_index(index) if isinstance(item, IndexEntry))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == lines
    assert peak < 1_000_000, f"peak {peak} bytes: the reader holds more than a line at a time"


_FIELD = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["V", "R", "E", "301231235959Z", "20301231235959Z", "0A", "", "unknown", "/CN=x"]),
    st.sampled_from(["261206014223Z,keyTime,", "261206014223Z,holdInstruction,", "261206014223Z,keyCompromise"]).map(
        lambda s: s + "999999999999Z"
    ),
)


@given(line=st.one_of(st.text(), st.lists(_FIELD, min_size=5, max_size=7).map("\t".join)))
@settings(max_examples=400, deadline=None)
def test_no_line_raises_out_of_the_parser(line: str) -> None:
    result = parse_index_line(line, "index.txt", 7)
    assert isinstance(result, IndexEntry | IndexLineError)
    if isinstance(result, IndexLineError):
        assert result.where == "index.txt:7" and result.message


@given(data=st.binary(max_size=2000))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_no_file_content_raises_out_of_the_reader(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        index = Path(d) / "index.txt"
        index.write_bytes(data)
        for item in read_openssl_index(index):
            assert isinstance(item, IndexEntry | IndexLineError)


def test_certificate_files_bundles_der_and_directories(openssl_ca: OpenSSLCA, other_ca: Path, tmp_path: Path) -> None:
    newcerts = openssl_ca.dir / "newcerts"
    pems = [(newcerts / newcerts_filename(s)).read_text() for s in (0xFF, 0x100, 0x101)]
    key = (openssl_ca.dir / "valid.key").read_text()
    root = tmp_path / "import"
    (root / "sub").mkdir(parents=True)
    # a bundle with a key between certificates and a corrupt certificate block
    broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    (root / "b-bundle.pem").write_text(pems[0] + key + broken + pems[1])
    der = load_issued_certificate(newcerts, 0x102).public_bytes(Encoding.DER)
    (root / "sub" / "c.der").write_bytes(der)
    (root / "a-notes.txt").write_text("not a certificate\n")
    (root / "sub" / "d-key.pem").write_text(key)
    single = other_ca / "ca.pem"

    items = list(read_certificates([root, single, tmp_path / "missing.pem"]))
    found = [(i.path.relative_to(tmp_path) if i.path.is_relative_to(tmp_path) else i.path.name, i.index) for i in items]
    assert found == [
        (Path("import/a-notes.txt"), None),
        (Path("import/b-bundle.pem"), 0),
        (Path("import/b-bundle.pem"), 1),
        (Path("import/b-bundle.pem"), 2),
        (Path("import/sub/c.der"), 0),
        (Path("import/sub/d-key.pem"), None),
        ("ca.pem", 0),
        (Path("missing.pem"), None),
    ]
    err, ok = CertificateReadError, CertificateFile
    assert [type(i) for i in items] == [err, ok, err, ok, ok, err, ok, err]
    notes, first, corrupt, second, der_item, key_only, ca, missing = items
    assert isinstance(notes, CertificateReadError) and "neither a PEM file nor a DER certificate" in str(notes)
    assert isinstance(corrupt, CertificateReadError) and corrupt.where.endswith("b-bundle.pem#1")
    assert isinstance(first, CertificateFile) and first.certificate.serial_number == 0xFF
    assert isinstance(second, CertificateFile) and second.certificate.serial_number == 0x100
    assert isinstance(der_item, CertificateFile) and der_item.encoding == "DER"
    assert der_item.certificate.serial_number == 0x102
    assert isinstance(key_only, CertificateReadError) and "only PRIVATE KEY blocks" in key_only.message
    assert isinstance(ca, CertificateFile) and ca.encoding == "PEM" and ca.where == f"{single}#0"
    assert isinstance(missing, CertificateReadError) and "no such file" in missing.message
    for item in (first, second, der_item):
        assert isinstance(item, CertificateFile)
        issued_by(item.certificate, openssl_ca.cert)


def test_an_unterminated_pem_block_does_not_swallow_the_next(openssl_ca: OpenSSLCA, tmp_path: Path) -> None:
    pem = (openssl_ca.dir / "ca.pem").read_text()
    (tmp_path / "odd.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n" * 50_000 + pem)
    started = time.monotonic()
    (item,) = read_certificates([tmp_path / "odd.pem"])
    assert isinstance(item, CertificateFile) and item.certificate == openssl_ca.cert
    assert time.monotonic() - started < 2
