"""``pca issuer``: an external CA run by the real ``openssl ca``, its OCSP answered and its CRLs published by pca.

The CA's certificates are recorded as the import will record them (``CertificateIssued`` with
profile "imported"); ``pca serve`` runs as a real process and ``openssl ocsp`` / ``openssl verify``
are the relying parties.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from pca.cli import main as pca_main
from pca.config import Config, load_config
from pca.runtime import connect_runtime
from pca.serve import build_authority
from revocation.authority import certificate_issued
from revocation.clock import SystemClock
from revocation.eventlog import NewEvent
from tests.support.ca import ACTOR
from tests.support.openssl_ca import OpenSSLCA, load_pem, openssl
from tests.support.processes import ServerProcess, init_ca

WAIT = 30.0  # seconds to wait for pca serve to have signed or published something


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return init_ca(tmp_path / "pca")


def pca(*args: str | Path, capsys: pytest.CaptureFixture[str]) -> str:
    pca_main([str(a) for a in args])
    return capsys.readouterr().out


async def record(cfg: Config, issuer_id: str, *certs: Path) -> None:
    """What ``pca import`` will do: record certificates the external CA issued."""
    rt = await connect_runtime(cfg, SystemClock())
    try:
        events = [NewEvent(certificate_issued(issuer_id, load_pem(c), "imported"), 0, "tester", "r1") for c in certs]
        await rt.log.append(events)
    finally:
        await rt.aclose()


async def revoke(cfg: Config, issuer_id: str, cert: Path) -> None:
    rt = await connect_runtime(cfg, SystemClock())
    try:
        await build_authority(rt).revoke(load_pem(cert).serial_number, "superseded", ACTOR, issuer_id=issuer_id)
    finally:
        await rt.aclose()


@pytest.fixture
def server(config_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(config_path)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def ocsp_status(ca: OpenSSLCA, leaf: Path, url: str) -> str | None:
    out = openssl_lenient("ocsp", "-issuer", ca.cert_path, "-cert", leaf, "-url", url, "-CAfile", ca.cert_path)
    match = re.search(rf"{re.escape(str(leaf))}: (good|revoked|unknown)", out)
    return match.group(1) if match and "Response verify OK" in out else None


def openssl_lenient(*args: str | Path) -> str:
    try:
        return openssl(*args)
    except AssertionError as exc:
        return str(exc)


def wait_for(check: object, want: object) -> None:
    deadline = time.monotonic() + WAIT
    got = None
    while time.monotonic() < deadline:
        got = check()  # type: ignore[operator]
        if got == want:
            return
        time.sleep(0.2)
    raise AssertionError(f"waited for {want!r}, last saw {got!r}")


def serial_of(path: Path) -> str:
    return f"{load_pem(path).serial_number:x}"


def test_a_ca_without_its_key_gets_a_signer_from_a_csr_and_pca_answers_ocsp_for_it(
    tmp_path: Path, config_path: Path, server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config(config_path)
    ext = OpenSSLCA(tmp_path / "ext", "Partner CA", ocsp_url=cfg.ocsp_url, crl_url="http://crl.partner.test/p.crl")
    csr = tmp_path / "signer.csr"

    out = pca("issuer", "add", "--config", config_path, "--id", "partner", "--cert", ext.cert_path,
              "--ocsp-signer-csr", csr, capsys=capsys)  # fmt: skip
    assert "added external issuer partner" in out and csr.exists()
    listed = pca("issuer", "list", "--config", config_path, capsys=capsys)
    assert "partner  external  key not held" in listed
    assert "OCSP signer   pending CSR" in listed
    assert "not published: no key" in listed

    signer = ext.sign(csr, tmp_path / "signer.pem", "ocsp_signer")
    out = pca("issuer", "set-signer", "--config", config_path, "--id", "partner", "--cert", signer, capsys=capsys)
    assert "OCSP signer of partner set" in out and "note:" not in out  # it carries id-pkix-ocsp-nocheck

    good, bad = ext.issue("good-leaf"), ext.issue("bad-leaf")
    asyncio.run(record(cfg, "partner", good, bad))
    # The running server learns of the issuer, its signer and its certificates from the log alone.
    wait_for(lambda: ocsp_status(ext, good, cfg.ocsp_url), "good")
    wait_for(lambda: ocsp_status(ext, bad, cfg.ocsp_url), "good")

    with server.admin() as admin:
        revoked = admin.post(f"/v1/certificates/{serial_of(bad)}/revoke", json={"reason": "keyCompromise"})
        assert revoked.status_code in (200, 201), revoked.text
        issuers = {i["issuer_id"]: i for i in admin.get("/v1/issuers").json()["issuers"]}
    wait_for(lambda: ocsp_status(ext, bad, cfg.ocsp_url), "revoked")
    assert ocsp_status(ext, good, cfg.ocsp_url) == "good"

    partner = issuers["partner"]
    assert partner["origin"] == "external" and partner["key_held"] is False
    assert partner["crl"]["published"] is False and "no key" in partner["crl"]["reason"]
    assert partner["ocsp_signer"]["status"] == "active"
    assert partner["certificates"] == {"total": 2, "revoked": 1}
    urls = partner["certificate_urls"]
    assert urls["sampled"] == 2
    assert urls["ocsp"] == [{"url": cfg.ocsp_url, "certificates": 2, "reaches_pca": True}]
    assert urls["crl"] == [{"url": "http://crl.partner.test/p.crl", "certificates": 2, "reaches_pca": False}]

    # Renewal without downtime: the old signer answers until the new certificate is set; this one is
    # short-lived, so pca warns about it.
    csr2 = tmp_path / "signer2.csr"
    pca("issuer", "renew-signer", "--config", config_path, "--id", "partner", "--ocsp-signer-csr", csr2, capsys=capsys)
    assert ocsp_status(ext, good, cfg.ocsp_url) == "good"
    short = ext.sign(csr2, tmp_path / "signer2.pem", "ocsp_signer", "-days", "5")
    pca("issuer", "set-signer", "--config", config_path, "--id", "partner", "--cert", short, capsys=capsys)

    def warning() -> bool:
        health = httpx.get(cfg.public_url + "/healthz", timeout=5).json()
        return any("partner" in w and "expires in" in w for w in health["ocsp_signers"].get("warnings", []))

    wait_for(warning, True)
    health = httpx.get(cfg.public_url + "/healthz", timeout=5)
    assert health.status_code == 200  # a warning, not a failure: the signer still signs
    with server.admin() as admin:
        metrics = admin.get("/metrics").text
    left = float(re.search(r'ocsp_signer_expiry_seconds\{issuer="partner"\} (\S+)', metrics).group(1))  # type: ignore[union-attr]
    assert 4 * 86400 < left <= 5 * 86400
    assert 'ocsp_signer_expiry_seconds{issuer="issuing-ca"}' in metrics
    # The new signer signs: a fresh answer verifies against the CA and names the new responder.
    wait_for(lambda: ocsp_status(ext, bad, cfg.ocsp_url), "revoked")


def test_a_ca_with_its_key_gets_signers_and_crls_that_openssl_accepts(
    tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config(config_path)
    crl_url = cfg.public_url + "/pki/partner.crl"  # the URL the CA already writes; pca's listener serves it
    ext = OpenSSLCA(tmp_path / "ext", "Keyed CA", ocsp_url=cfg.ocsp_url, crl_url=crl_url)
    out = pca("issuer", "add", "--config", config_path, "--id", "keyed", "--cert", ext.cert_path,
              "--key-file", ext.key_path, "--crl-url", crl_url, capsys=capsys)  # fmt: skip
    assert "OCSP signer created" in out
    good, bad = ext.issue("good-leaf"), ext.issue("bad-leaf")
    asyncio.run(record(cfg, "keyed", good, bad))
    listed = json.loads(pca("issuer", "list", "--config", config_path, "--json", capsys=capsys))
    keyed = {i["issuer_id"]: i for i in listed["issuers"]}["keyed"]
    assert keyed["key_held"] is True and keyed["crl"]["published"] is True
    assert crl_url in keyed["crl"]["urls"]
    assert keyed["certificate_urls"]["crl"] == [{"url": crl_url, "certificates": 2, "reaches_pca": True}]

    asyncio.run(revoke(cfg, "keyed", bad))  # before the server starts: its first full CRL lists it
    srv = ServerProcess(config_path)
    srv.start()
    try:
        wait_for(lambda: ocsp_status(ext, bad, cfg.ocsp_url), "revoked")
        assert ocsp_status(ext, good, cfg.ocsp_url) == "good"

        crl_file = tmp_path / "partner.crl"

        def crl_lists_bad() -> bool:
            reply = httpx.get(crl_url, timeout=5)
            if reply.status_code != 200:
                return False
            crl = x509.load_der_x509_crl(reply.content)
            crl_file.write_bytes(reply.content)
            return crl.get_revoked_certificate_by_serial_number(load_pem(bad).serial_number) is not None

        wait_for(crl_lists_bad, True)
    finally:
        srv.stop()
    pem = tmp_path / "partner-crl.pem"
    openssl("crl", "-inform", "DER", "-in", crl_file, "-out", pem)
    verify = ("verify", "-crl_check", "-CAfile", ext.cert_path, "-CRLfile", pem)
    assert "OK" in openssl(*verify, good)
    refused = openssl_lenient(*verify, bad)
    assert "certificate revoked" in refused


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("leaf", "not a CA certificate: basicConstraints CA is false"),
        ("no_certsign", "lacks keyCertSign"),
        ("expired", "has expired"),
        ("future", "is not valid yet"),
        ("unreadable", "cannot read CA certificate"),
        ("garbage", "is not a PEM or DER certificate: its PEM block does not parse"),
        ("random", "is not a PEM or DER certificate: it is neither PEM nor a DER certificate"),
    ],
)
def test_bad_ca_certificates_are_refused_and_nothing_is_recorded(
    tmp_path: Path, config_path: Path, make: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config(config_path)
    ext = OpenSSLCA(tmp_path / "ext", "Partner CA", ocsp_url=cfg.ocsp_url, crl_url=cfg.crl_url("x"))
    cert = {
        "leaf": lambda: ext.issue("leaf"),
        "no_certsign": lambda: ext.issue("sub", "ca_no_certsign"),
        "expired": lambda: ext.issue("old", "ca_ext", "-startdate", "20200101000000Z", "-enddate", "20200201000000Z"),
        "future": lambda: ext.issue("new", "ca_ext", "-startdate", "20990101000000Z", "-enddate", "20990201000000Z"),
        "unreadable": lambda: tmp_path / "missing.pem",
        "garbage": lambda: _write(
            tmp_path / "garbage.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        ),
        "random": lambda: _write(tmp_path / "random.der", bytes(range(256)) * 40),
    }[make]()
    assert_refused(config_path, capsys, message, "add", "--id", "partner", "--cert", cert,
                   "--ocsp-signer-csr", tmp_path / "s.csr")  # fmt: skip
    assert not (tmp_path / "s.csr").exists()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def events(config_path: Path) -> int:
    async def head() -> int:
        rt = await connect_runtime(load_config(config_path), SystemClock())
        try:
            return await rt.log.head()
        finally:
            await rt.aclose()

    return asyncio.run(head())


def assert_refused(config_path: Path, capsys: pytest.CaptureFixture[str], message: str, *args: str | Path) -> None:
    before = events(config_path)
    keys = set((config_path.parent / "keys").iterdir())
    with pytest.raises(SystemExit) as exited:
        pca_main(["issuer", *[str(a) for a in args[:1]], "--config", str(config_path), *[str(a) for a in args[1:]]])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("pca: error: ") and message in err, err
    assert events(config_path) == before  # nothing appended
    assert set((config_path.parent / "keys").iterdir()) == keys  # and no key left behind


def test_ids_and_duplicates_are_refused(tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(config_path)
    ext = OpenSSLCA(tmp_path / "ext", "Partner CA", ocsp_url=cfg.ocsp_url, crl_url=cfg.crl_url("x"))
    for bad_id, message in [
        ("Partner", "not a short safe token"),
        ("../etc", "not a short safe token"),
        ("a" * 49, "not a short safe token"),
        ("partner-3", "ends like a CRL shard or delta name"),
        ("partner-delta", "ends like a CRL shard or delta name"),
        ("issuing-ca", "issuer id 'issuing-ca' is taken"),
    ]:
        assert_refused(config_path, capsys, message, "add", "--id", bad_id, "--cert", ext.cert_path)
    pca("issuer", "add", "--config", config_path, "--id", "partner", "--cert", ext.cert_path, capsys=capsys)
    assert_refused(config_path, capsys, "already registered as issuer 'partner'",
                   "add", "--id", "partner2", "--cert", ext.cert_path)  # fmt: skip
    assert_refused(config_path, capsys, "issuer id 'partner' is taken",
                   "add", "--id", "partner", "--cert", ext.cert_path)  # fmt: skip
    other = OpenSSLCA(tmp_path / "other", "Other CA", ocsp_url=cfg.ocsp_url, crl_url=cfg.crl_url("x"))
    assert_refused(config_path, capsys, "does not match",
                   "add", "--id", "other", "--cert", other.cert_path, "--key-file", ext.key_path)  # fmt: skip


def test_set_signer_refuses_what_is_not_the_pending_signer(
    tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config(config_path)
    ext = OpenSSLCA(tmp_path / "ext", "Partner CA", ocsp_url=cfg.ocsp_url, crl_url=cfg.crl_url("x"))
    other = OpenSSLCA(tmp_path / "other", "Other CA", ocsp_url=cfg.ocsp_url, crl_url=cfg.crl_url("x"))
    csr = tmp_path / "signer.csr"
    set_signer = ("set-signer", "--id", "partner", "--cert")
    pca("issuer", "add", "--config", config_path, "--id", "partner", "--cert", ext.cert_path, capsys=capsys)
    assert_refused(config_path, capsys, "no signer key waiting", *set_signer, ext.issue("early", "ocsp_signer"))
    pca("issuer", "renew-signer", "--config", config_path, "--id", "partner", "--ocsp-signer-csr", csr, capsys=capsys)

    no_eku = ext.sign(csr, tmp_path / "no-eku.pem", "no_eku")
    assert_refused(config_path, capsys, "lacks the OCSPSigning extended key usage", *set_signer, no_eku)
    foreign = other.sign(csr, tmp_path / "foreign.pem", "ocsp_signer")
    assert_refused(config_path, capsys, "not by issuer 'partner'", *set_signer, foreign)
    wrong_key = ext.issue("another-key", "ocsp_signer")
    assert_refused(config_path, capsys, "for another key than the one pca made", *set_signer, wrong_key)
    expired = ext.sign(csr, tmp_path / "expired.pem", "ocsp_signer",
                       "-startdate", "20200101000000Z", "-enddate", "20200201000000Z")  # fmt: skip
    assert_refused(config_path, capsys, "has expired", *set_signer, expired)
    brief = ext.sign(csr, tmp_path / "brief.pem", "ocsp_signer", "-enddate", _hours_from_now(12))
    assert_refused(config_path, capsys, "expires within a day", *set_signer, brief)
    assert_refused(config_path, capsys, "its OCSP signer is rotated automatically",
                   "renew-signer", "--id", "issuing-ca", "--ocsp-signer-csr", tmp_path / "x.csr")  # fmt: skip

    good = ext.sign(csr, tmp_path / "good.pem", "ocsp_signer")
    assert "set" in pca("issuer", *set_signer[:3], "--config", config_path, "--cert", good, capsys=capsys)


def _hours_from_now(hours: int) -> str:
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(time.time() + hours * 3600))
