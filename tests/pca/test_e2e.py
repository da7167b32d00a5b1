"""End to end: the acceptance path of ``pca`` as an operator and a TLS client see it.

Everything here runs real processes: ``pca`` as a command, ``pca serve`` as a
server on free ports, the ``openssl`` command as the OCSP/CRL client, and real
HTTP. One server is shared by the tests that do not disturb each other; the
tests that stop, restart or tamper with a server get their own (``server``).
"""

from __future__ import annotations

import base64
import random
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.support.crl import crl_number
from tests.support.processes import ServerProcess, running_server

pytestmark = pytest.mark.e2e

T = TypeVar("T")

_SCRIPT = Path(sys.executable).with_name("pca")
PCA = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "pca.cli"]

# The product's promise: OCSP answers "revoked" within this long after `pca revoke` returns.
OCSP_PROPAGATION_SECONDS = 1.0
# CRL publishing after a revocation is debounced (~2 s); allow generously for a loaded machine.
CRL_PROPAGATION_SECONDS = 10.0
UNKNOWN_SERIAL = 0x7E57_0000_0000_0000_DEAD_BEEF_0000_0001


# --- running things ----------------------------------------------------------------------


def pca(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*PCA, *map(str, args)], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(
            f"pca {' '.join(map(str, args))} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def openssl(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=60)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def poll(check: Callable[[], T], timeout: float, interval: float = 0.05) -> T:
    """Call ``check`` until it returns something truthy or ``timeout`` passes; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


# --- the CA as a user sees it -------------------------------------------------------------


@dataclass(frozen=True)
class Cert:
    serial: int
    serial_hex: str
    path: Path
    key: Path | None


def ca_dir(srv: ServerProcess) -> Path:
    return srv.config_path.parent


def issue(srv: ServerProcess, name: str) -> Cert:
    d = ca_dir(srv)
    out, key = d / f"{name}.pem", d / f"{name}.key"
    result = pca(
        "issue",
        "--config",
        srv.config_path,
        "--subject",
        f"CN={name}",
        "--dns",
        f"{name}.internal",
        "--out",
        out,
        "--key-out",
        key,
    )
    serial_hex = result.stdout.splitlines()[0].strip()
    return Cert(int(serial_hex, 16), serial_hex, out, key)


def revoke(srv: ServerProcess, cert: Cert, reason: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return pca("revoke", "--config", srv.config_path, cert.serial_hex, "--reason", reason, *extra)


def status_line(srv: ServerProcess, cert: Cert) -> str:
    """The first line of ``pca status``: serial, status and, when revoked, reason and times."""
    return pca("status", "--config", srv.config_path, cert.serial_hex).stdout.splitlines()[0]


def ocsp_post(srv: ServerProcess, cert: Cert, *options: str) -> str:
    """``openssl ocsp`` over POST against the server; returns stdout and stderr together."""
    d = ca_dir(srv)
    return output(
        openssl(
            "ocsp",
            "-issuer",
            d / "issuing-ca.pem",
            *options,
            "-cert",
            cert.path,
            "-url",
            f"{srv.public_url}/ocsp",
            "-CAfile",
            d / "ca-chain.pem",
        )
    )


def ocsp_status(text: str, cert: Cert) -> str | None:
    """The status openssl reports for ``cert`` (good, revoked, unknown), or None."""
    match = re.search(rf"^{re.escape(str(cert.path))}: (\w+)", text, re.MULTILINE)
    return match.group(1) if match else None


def verified_status(srv: ServerProcess, cert: Cert, *options: str) -> str | None:
    text = ocsp_post(srv, cert, *options)
    return ocsp_status(text, cert) if "Response verify OK" in text else None


def ocsp_get_request(srv: ServerProcess, cert: Cert, workdir: Path) -> str:
    """The RFC 5019 GET URL for ``cert``: openssl writes the request, we encode it into the path."""
    req = workdir / f"{cert.path.stem}-req.der"
    result = openssl("ocsp", "-issuer", ca_dir(srv) / "issuing-ca.pem", "-cert", cert.path, "-no_nonce", "-reqout", req)
    assert result.returncode == 0, output(result)
    return f"{srv.public_url}/ocsp/" + quote(base64.b64encode(req.read_bytes()).decode(), safe="")


def verify_response(srv: ServerProcess, der: bytes, cert: Cert, workdir: Path) -> str:
    resp = workdir / f"{cert.path.stem}-resp.der"
    resp.write_bytes(der)
    d = ca_dir(srv)
    return output(
        openssl(
            "ocsp",
            "-respin",
            resp,
            "-issuer",
            d / "issuing-ca.pem",
            "-cert",
            cert.path,
            "-CAfile",
            d / "ca-chain.pem",
            "-no_nonce",
        )
    )


def fetch_crl(srv: ServerProcess, issuer: str = "issuing-ca") -> tuple[httpx.Response, x509.CertificateRevocationList]:
    resp = httpx.get(f"{srv.public_url}/crl/{issuer}.crl", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp, x509.load_der_x509_crl(resp.content)


def wait_for_crl_listing(srv: ServerProcess, *certs: Cert) -> x509.CertificateRevocationList:
    """The first served CRL listing every one of ``certs``: the full CRL or, soon after a revocation, the delta."""

    def listed() -> x509.CertificateRevocationList | None:
        for name in ("issuing-ca", "issuing-ca-delta"):
            crl = fetch_crl(srv, name)[1]
            if all(crl.get_revoked_certificate_by_serial_number(c.serial) is not None for c in certs):
                return crl
        return None

    crl = poll(listed, CRL_PROPAGATION_SECONDS, interval=0.2)
    assert crl is not None, f"the served CRL does not list {[c.serial_hex for c in certs]} after 10 s"
    return crl


def terminate(srv: ServerProcess) -> int:
    """SIGTERM the server as an init system would; returns its exit status."""
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGTERM)
    try:
        code = srv.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        srv.proc.kill()
        srv.proc.wait()
        pytest.fail("pca serve did not exit within 5 s of SIGTERM")
    srv.proc = None
    return code


def assert_clean_log(srv: ServerProcess) -> None:
    log = srv.log_path.read_text()
    assert "Traceback" not in log, f"serve.log holds a traceback:\n{log}"
    assert srv.token not in log, "serve.log holds the admin token"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the tests that neither stop it nor change what others look at."""
    with running_server(tmp_path_factory.mktemp("shared") / "ca") as srv:
        yield srv


# --- 1. the command line describes itself ---------------------------------------------------

COMMANDS = [
    (),
    ("init",),
    ("serve",),
    ("issue",),
    ("revoke",),
    ("status",),
    ("release-hold",),
    ("events",),
    ("audit",),
    ("audit", "verify"),
    ("rebuild",),
    ("migrate",),
    ("token",),
    ("token", "create"),
    ("token", "list"),
    ("token", "revoke"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "pca")
def test_help_exits_zero_with_usage(command: tuple[str, ...]) -> None:
    result = pca(*command, "--help")
    assert result.stdout.startswith(f"usage: {' '.join(('pca', *command))} ")
    assert "--help" in result.stdout


def test_top_level_help_describes_pca_and_lists_every_command() -> None:
    text = pca("--help").stdout
    assert "private CA" in text
    for command in ("init", "serve", "issue", "revoke", "status", "release-hold", "events", "audit", "rebuild"):
        assert re.search(rf"^\s+{re.escape(command)}\b", text, re.MULTILINE), f"{command} not listed:\n{text}"


def _description(help_text: str) -> str:
    """The paragraph argparse prints between the usage block and the argument lists."""
    paragraphs = [p.strip() for p in help_text.split("\n\n") if p.strip()]
    if len(paragraphs) < 2 or paragraphs[1].startswith(("positional arguments:", "options:")):
        return ""
    return paragraphs[1]


@pytest.mark.parametrize("command", [c for c in COMMANDS if c], ids=" ".join)
def test_subcommand_help_says_what_the_command_does(command: tuple[str, ...]) -> None:
    text = pca(*command, "--help").stdout
    assert len(_description(text).split()) >= 3, f"`pca {' '.join(command)} --help` has no description:\n{text}"


# --- 2. issuing ---------------------------------------------------------------------------------


def test_issue_prints_serial_first_and_writes_matching_cert_and_private_key(shared: ServerProcess) -> None:
    d = ca_dir(shared)
    result = pca(
        "issue",
        "--config",
        shared.config_path,
        "--subject",
        "CN=svc1",
        "--dns",
        "svc1.internal",
        "--out",
        d / "svc1.pem",
        "--key-out",
        d / "svc1.key",
    )
    first = result.stdout.splitlines()[0]
    assert re.fullmatch(r"[0-9a-f]+", first), f"first line is not a lowercase hex serial: {first!r}"

    cert = x509.load_pem_x509_certificate((d / "svc1.pem").read_bytes())
    assert cert.serial_number == int(first, 16)
    assert cert.subject.rfc4514_string() == "CN=svc1"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["svc1.internal"]

    key_path = d / "svc1.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)

    verify = openssl("verify", "-CAfile", d / "ca-chain.pem", d / "svc1.pem")
    assert verify.returncode == 0 and f"{d / 'svc1.pem'}: OK" in verify.stdout, output(verify)


def test_issue_from_csr_certifies_the_csr_key(shared: ServerProcess, tmp_path: Path) -> None:
    csr, key = tmp_path / "csr.pem", tmp_path / "csr.key"
    made = openssl(
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=csr.test",
        "-addext",
        "subjectAltName=DNS:csr.test",
        "-keyout",
        key,
        "-out",
        csr,
    )
    assert made.returncode == 0, output(made)
    out = tmp_path / "csr-cert.pem"
    result = pca("issue", "--config", shared.config_path, "--csr", csr, "--out", out)
    serial = int(result.stdout.splitlines()[0], 16)

    cert = x509.load_pem_x509_certificate(out.read_bytes())
    assert cert.serial_number == serial
    assert cert.subject.rfc4514_string() == "CN=csr.test"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["csr.test"]
    # The certificate is for the CSR's key, and no key is handed out.
    ours = serialization.load_pem_private_key(key.read_bytes(), password=None).public_key()
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(*spki) == ours.public_bytes(*spki)
    assert "PRIVATE KEY" not in result.stdout

    verify = openssl("verify", "-CAfile", ca_dir(shared) / "ca-chain.pem", out)
    assert verify.returncode == 0, output(verify)


# --- 3. OCSP over POST ------------------------------------------------------------------------------


def test_ocsp_post_good_then_revoked_within_one_second(shared: ServerProcess) -> None:
    cert = issue(shared, "post-svc")
    for options in ((), ("-no_nonce",), ("-sha256",), ("-sha256", "-no_nonce")):
        text = ocsp_post(shared, cert, *options)
        assert "Response verify OK" in text, f"{options}: {text}"
        assert ocsp_status(text, cert) == "good", f"{options}: {text}"

    revoke(shared, cert, "keyCompromise")
    deadline = time.monotonic() + OCSP_PROPAGATION_SECONDS  # counted from when `pca revoke` returned
    last = ""

    def revoked() -> bool:
        nonlocal last
        last = ocsp_post(shared, cert, "-no_nonce")
        return ocsp_status(last, cert) == "revoked"

    done = poll(revoked, deadline - time.monotonic(), interval=0.02)
    assert done, f"OCSP still not 'revoked' 1 s after `pca revoke` returned:\n{last}"
    assert "Response verify OK" in last
    assert "Reason: keyCompromise" in last

    # Every client flavour sees the revocation: with a nonce, and with a SHA-256 CertID.
    for options in ((), ("-sha256",), ("-sha256", "-no_nonce")):
        text = ocsp_post(shared, cert, *options)
        assert "Response verify OK" in text, f"{options}: {text}"
        assert ocsp_status(text, cert) == "revoked", f"{options}: {text}"
        assert "Reason: keyCompromise" in text, f"{options}: {text}"


def test_invalidity_date_shows_in_status_and_ocsp(shared: ServerProcess) -> None:
    cert = issue(shared, "invalidity-svc")
    revoke(shared, cert, "keyCompromise", "--invalidity-date", "2024-05-01T12:00:00Z")

    line = status_line(shared, cert)
    assert line.startswith(f"{cert.serial_hex} revoked reason=keyCompromise"), line
    assert "invalidity_date=2024-05-01T12:00:00Z" in line, line

    def response_text() -> str | None:
        text = ocsp_post(shared, cert, "-no_nonce", "-resp_text")
        return text if ocsp_status(text, cert) == "revoked" else None

    text = poll(response_text, OCSP_PROPAGATION_SECONDS)
    assert text is not None
    assert "Invalidity Date" in text and "May  1 12:00:00 2024 GMT" in text, text


# --- 4. OCSP over GET (RFC 5019) -----------------------------------------------------------------------


def _http_date(value: str) -> float:
    from email.utils import parsedate_to_datetime

    return parsedate_to_datetime(value).timestamp()


def test_ocsp_get_has_rfc5019_caching_headers_and_verifies(shared: ServerProcess, tmp_path: Path) -> None:
    good, bad = issue(shared, "get-good"), issue(shared, "get-revoked")
    revoke(shared, bad, "superseded")

    with httpx.Client(timeout=10) as client:
        for cert, expected, reason in ((good, "good", None), (bad, "revoked", "superseded")):
            url = ocsp_get_request(shared, cert, tmp_path)

            def fetch(u: str = url, want: str = expected, c: Cert = cert) -> httpx.Response | None:
                resp = client.get(u)
                return resp if ocsp_status(verify_response(shared, resp.content, c, tmp_path), c) == want else None

            resp = poll(fetch, OCSP_PROPAGATION_SECONDS)
            assert resp is not None, f"GET never answered {expected} for {cert.serial_hex}"
            assert resp.status_code == 200
            assert resp.headers["content-type"] == "application/ocsp-response"
            cache_control = [p.strip() for p in resp.headers["cache-control"].split(",")]
            assert {"public", "no-transform", "must-revalidate"} <= set(cache_control), cache_control
            max_age = [int(p.split("=", 1)[1]) for p in cache_control if p.startswith("max-age=")]
            assert len(max_age) == 1 and max_age[0] > 0, cache_control
            for header in ("last-modified", "expires", "etag"):
                assert resp.headers.get(header), f"{header} missing: {dict(resp.headers)}"
            # A cache must never keep the answer beyond the response's nextUpdate (= Expires).
            assert _http_date(resp.headers["date"]) + max_age[0] <= _http_date(resp.headers["expires"])

            text = verify_response(shared, resp.content, cert, tmp_path)
            assert "Response verify OK" in text, text
            assert ocsp_status(text, cert) == expected, text
            if reason:
                assert "Reason: superseded" in text, text

            # Revalidation with the ETag: nothing changed, so 304.
            again = client.get(url, headers={"if-none-match": resp.headers["etag"]})
            assert again.status_code == 304, again


def test_ocsp_unknown_serial_is_unauthorized_over_get_and_post(shared: ServerProcess, tmp_path: Path) -> None:
    d = ca_dir(shared)
    req = tmp_path / "unknown-req.der"
    serial = f"0x{UNKNOWN_SERIAL:x}"
    made = openssl("ocsp", "-issuer", d / "issuing-ca.pem", "-serial", serial, "-no_nonce", "-reqout", req)
    assert made.returncode == 0, output(made)

    resp = httpx.get(f"{shared.public_url}/ocsp/" + quote(base64.b64encode(req.read_bytes()).decode(), safe=""))
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/ocsp-response"
    (tmp_path / "unknown-resp.der").write_bytes(resp.content)
    text = output(
        openssl(
            "ocsp",
            "-respin",
            tmp_path / "unknown-resp.der",
            "-issuer",
            d / "issuing-ca.pem",
            "-serial",
            serial,
            "-CAfile",
            d / "ca-chain.pem",
            "-no_nonce",
        )
    )
    assert "Responder Error: unauthorized (6)" in text, text

    text = output(
        openssl(
            "ocsp",
            "-issuer",
            d / "issuing-ca.pem",
            "-serial",
            serial,
            "-url",
            f"{shared.public_url}/ocsp",
            "-CAfile",
            d / "ca-chain.pem",
        )
    )
    assert "Responder Error: unauthorized (6)" in text, text
    assert ": good" not in text


# --- 5. CRLs ------------------------------------------------------------------------------------------


def test_crl_lists_revocations_verifies_and_numbers_increase(shared: ServerProcess, tmp_path: Path) -> None:
    d = ca_dir(shared)
    resp, crl = fetch_crl(shared)
    assert resp.headers["content-type"] == "application/pkix-crl"
    first_number = crl_number(crl)

    good, first, second = issue(shared, "crl-good"), issue(shared, "crl-first"), issue(shared, "crl-second")
    revoke(shared, first, "keyCompromise")
    crl_1 = wait_for_crl_listing(shared, first)
    assert crl_number(crl_1) > first_number
    assert crl_1.get_revoked_certificate_by_serial_number(good.serial) is None

    revoke(shared, second, "cessationOfOperation")
    crl_2 = wait_for_crl_listing(shared, first, second)
    assert crl_number(crl_2) > crl_number(crl_1)

    der = tmp_path / "crl.der"
    der.write_bytes(crl_2.public_bytes(serialization.Encoding.DER))
    checked = openssl("crl", "-inform", "DER", "-in", der, "-CAfile", d / "ca-chain.pem", "-noout")
    assert checked.returncode == 0 and "verify OK" in output(checked), output(checked)

    # What a relying party holds: the full CRL and (when crl_2 is one) the delta; openssl combines them.
    pem = tmp_path / "crl.pem"
    pem.write_bytes(
        fetch_crl(shared)[1].public_bytes(serialization.Encoding.PEM) + crl_2.public_bytes(serialization.Encoding.PEM)
    )
    for cert in (first, second):
        result = openssl(
            "verify", "-crl_check", "-use_deltas", "-CAfile", d / "ca-chain.pem", "-CRLfile", pem, cert.path
        )
        assert result.returncode != 0, output(result)
        assert "certificate revoked" in output(result), output(result)
    result = openssl("verify", "-crl_check", "-use_deltas", "-CAfile", d / "ca-chain.pem", "-CRLfile", pem, good.path)
    assert result.returncode == 0 and f"{good.path}: OK" in result.stdout, output(result)


def test_a_relying_party_reading_only_full_crls_refuses_a_revoked_certificate_within_seconds(
    shared: ServerProcess, tmp_path: Path
) -> None:
    """nginx ssl_crl, HAProxy, OpenVPN and ``openssl verify -crl_check`` read only the full CRL: it must
    follow the revocation (crl.full_after_revocation, on by default), not wait for crl.interval_seconds."""
    d = ca_dir(shared)
    cert, good = issue(shared, "full-only"), issue(shared, "full-only-good")
    revoke(shared, cert, "keyCompromise")

    def full_lists_it() -> x509.CertificateRevocationList | None:
        crl = fetch_crl(shared)[1]
        return crl if crl.get_revoked_certificate_by_serial_number(cert.serial) is not None else None

    full = poll(full_lists_it, CRL_PROPAGATION_SECONDS, interval=0.2)
    assert full is not None, f"the full CRL does not list {cert.serial_hex} {CRL_PROPAGATION_SECONDS} s after"
    assert full.extensions.get_extension_for_class(x509.CRLNumber) is not None
    with pytest.raises(x509.ExtensionNotFound):
        full.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    pem = tmp_path / "full.pem"
    root_crl = fetch_crl(shared, "root-ca")[1]
    pem.write_bytes(full.public_bytes(serialization.Encoding.PEM) + root_crl.public_bytes(serialization.Encoding.PEM))
    refused = openssl("verify", "-crl_check_all", "-CAfile", d / "ca-chain.pem", "-CRLfile", pem, cert.path)
    assert refused.returncode != 0 and "certificate revoked" in output(refused), output(refused)
    accepted = openssl("verify", "-crl_check_all", "-CAfile", d / "ca-chain.pem", "-CRLfile", pem, good.path)
    assert accepted.returncode == 0, output(accepted)


def test_root_crl_is_served_and_verifies_against_the_root(shared: ServerProcess, tmp_path: Path) -> None:
    d = ca_dir(shared)
    resp, crl = fetch_crl(shared, "root-ca")
    assert resp.headers["content-type"] == "application/pkix-crl"
    root = x509.load_pem_x509_certificate((d / "root-ca.pem").read_bytes())
    assert crl.issuer == root.subject
    der = tmp_path / "root.crl"
    der.write_bytes(resp.content)
    checked = openssl("crl", "-inform", "DER", "-in", der, "-CAfile", d / "root-ca.pem", "-noout")
    assert checked.returncode == 0 and "verify OK" in output(checked), output(checked)


# --- 9. bad input from the operator -------------------------------------------------------------------


def test_revoke_unknown_serial_fails_clearly(shared: ServerProcess) -> None:
    result = pca(
        "revoke", "--config", shared.config_path, f"{UNKNOWN_SERIAL:x}", "--reason", "keyCompromise", check=False
    )
    assert result.returncode != 0
    assert f"no certificate with serial {UNKNOWN_SERIAL:x}" in result.stderr, result.stderr
    assert "Traceback" not in output(result)


def test_revoking_again_is_idempotent_but_a_different_reason_is_refused(shared: ServerProcess) -> None:
    cert = issue(shared, "again-svc")
    first = revoke(shared, cert, "superseded")
    again = revoke(shared, cert, "superseded")
    assert again.stdout == first.stdout  # the same revocation: same time, same event
    other = pca("revoke", "--config", shared.config_path, cert.serial_hex, "--reason", "keyCompromise", check=False)
    assert other.returncode != 0
    assert "already revoked" in other.stderr, other.stderr
    assert status_line(shared, cert).startswith(f"{cert.serial_hex} revoked reason=superseded")


def test_wrong_token_is_unauthorized_and_changes_nothing(shared: ServerProcess) -> None:
    cert = issue(shared, "token-svc")
    result = pca(
        "revoke",
        "--config",
        shared.config_path,
        "--token",
        "wrong",
        cert.serial_hex,
        "--reason",
        "keyCompromise",
        check=False,
    )
    assert result.returncode != 0
    assert "Unauthorized" in result.stderr, result.stderr
    assert "Traceback" not in output(result)
    assert status_line(shared, cert) == f"{cert.serial_hex} good"
    assert verified_status(shared, cert, "-no_nonce") == "good"


# --- 10. nothing a client sends produces a 500 --------------------------------------------------------


def test_random_requests_never_cause_a_server_error(shared: ServerProcess, tmp_path: Path) -> None:
    rng = random.Random(5019)
    cert = issue(shared, "fuzz-svc")
    req = tmp_path / "fuzz-req.der"
    made = openssl(
        "ocsp", "-issuer", ca_dir(shared) / "issuing-ca.pem", "-cert", cert.path, "-no_nonce", "-reqout", req
    )
    assert made.returncode == 0, output(made)
    valid = req.read_bytes()

    samples: list[bytes] = []
    for i in range(200):
        if i % 2:
            samples.append(rng.randbytes(rng.randint(0, 300)))
        else:  # a real request with a few bytes changed, cut or extended: reaches deeper into the parser
            data = bytearray(valid)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            if rng.random() < 0.3:
                data = data[: rng.randrange(len(data))]
            if rng.random() < 0.2:
                data += rng.randbytes(rng.randint(1, 20))
            samples.append(bytes(data))

    failures = []
    base = shared.public_url
    with httpx.Client(timeout=10) as client:
        for data in samples:
            attempts = [
                ("POST", f"{base}/ocsp", {"content": data, "headers": {"content-type": "application/ocsp-request"}}),
                ("POST", f"{base}/ocsp", {"content": data}),
                ("GET", f"{base}/ocsp/" + quote(data, safe=""), {}),
                ("GET", f"{base}/ocsp/" + quote(base64.b64encode(data).decode(), safe=""), {}),
                ("GET", f"{base}/" + quote(data, safe=""), {}),
                ("GET", f"{base}/crl/" + quote(data, safe=""), {}),
            ]
            for method, url, kwargs in attempts:
                resp = client.request(method, url, **kwargs)
                if resp.status_code >= 500:
                    failures.append((method, url[:120], data[:40], resp.status_code))

        assert not failures, f"{len(failures)} requests got a 5xx, e.g. {failures[:5]}"
        health = client.get(shared.admin_url + "/healthz")
        assert health.status_code == 200, health.text
    assert verified_status(shared, cert, "-no_nonce") == "good"


# --- 6. the audit trail is tamper-evident -------------------------------------------------------------


def _revocation_seq(result: subprocess.CompletedProcess[str]) -> int:
    match = re.search(r"event seq (\d+)", result.stdout)
    assert match, result.stdout
    return int(match.group(1))


def _audit_fails_naming(srv: ServerProcess, seq: int, *options: str) -> None:
    result = pca("audit", "verify", *options, "--config", srv.config_path, check=False)
    assert result.returncode != 0, f"audit verify {options} passed a tampered log:\n{result.stdout}"
    assert re.search(rf"\bseq {seq}\b", result.stderr), result.stderr
    assert "Traceback" not in output(result)


def test_audit_detects_an_edited_event(server: ServerProcess) -> None:
    cert = issue(server, "audit-edit")
    seq = _revocation_seq(revoke(server, cert, "keyCompromise"))
    issue(server, "audit-after")  # the edited row is not the last one
    ok = pca("audit", "verify", "--config", server.config_path)
    assert "audit OK" in ok.stdout
    assert "audit OK" in pca("audit", "verify", "--local", "--config", server.config_path).stdout

    assert terminate(server) in (0, -signal.SIGTERM)
    with sqlite3.connect(server.config.database) as db:
        changed = db.execute(
            "UPDATE events SET payload = replace(payload, 'keyCompromise', 'superseded') WHERE seq = ?", (seq,)
        ).rowcount
    db.close()
    assert changed == 1

    _audit_fails_naming(server, seq, "--local")
    server.start()
    _audit_fails_naming(server, seq)
    assert_clean_log(server)


def test_audit_detects_a_deleted_event(server: ServerProcess) -> None:
    first, second = issue(server, "audit-del-1"), issue(server, "audit-del-2")
    seq = _revocation_seq(revoke(server, first, "keyCompromise"))
    revoke(server, second, "superseded")
    assert "audit OK" in pca("audit", "verify", "--config", server.config_path).stdout

    assert terminate(server) in (0, -signal.SIGTERM)
    with sqlite3.connect(server.config.database) as db:
        deleted = db.execute("DELETE FROM events WHERE seq = ?", (seq,)).rowcount
    db.close()
    assert deleted == 1

    _audit_fails_naming(server, seq, "--local")
    server.start()
    _audit_fails_naming(server, seq)
    assert_clean_log(server)


# --- 7. restart -------------------------------------------------------------------------------------


def test_restart_keeps_statuses_and_serves_presigned_responses_at_once(server: ServerProcess, tmp_path: Path) -> None:
    good, compromised, superseded = (issue(server, n) for n in ("rs-good", "rs-compromised", "rs-superseded"))
    revoke(server, compromised, "keyCompromise")
    revoke(server, superseded, "superseded")
    certs = (good, compromised, superseded)
    expected = {good: "good", compromised: "revoked", superseded: "revoked"}
    for cert in certs:
        assert poll(lambda c=cert: verified_status(server, c, "-no_nonce") == expected[c], OCSP_PROPAGATION_SECONDS)
    crl_before = crl_number(wait_for_crl_listing(server, compromised, superseded))

    statuses = {c: status_line(server, c) for c in certs}
    urls = {c: ocsp_get_request(server, c, tmp_path) for c in certs}
    etags = {c: httpx.get(urls[c], timeout=10).headers["etag"] for c in certs}

    code = terminate(server)
    assert code in (0, -signal.SIGTERM), f"pca serve exited {code} on SIGTERM"
    server.start()

    # Right away, the responses signed before the restart are served (same bytes: same ETag).
    with httpx.Client(timeout=10) as client:
        assert {c: client.get(urls[c]).headers["etag"] for c in certs} == etags
    for cert in certs:
        assert status_line(server, cert) == statuses[cert]
        assert verified_status(server, cert, "-no_nonce") == expected[cert]

    def newer_crl() -> x509.CertificateRevocationList | None:
        crl = fetch_crl(server)[1]
        return crl if crl_number(crl) > crl_before else None

    crl_after = poll(newer_crl, CRL_PROPAGATION_SECONDS, interval=0.2)
    assert crl_after is not None, f"no CRL numbered above {crl_before} within 10 s of the restart"
    assert {r.serial_number for r in crl_after} == {compromised.serial, superseded.serial}

    # Still nothing re-signed: the restart did not throw away the pre-signed responses.
    with httpx.Client(timeout=10) as client:
        assert {c: client.get(urls[c]).headers["etag"] for c in certs} == etags
    assert_clean_log(server)


# --- 8. offline maintenance: migrate and rebuild ----------------------------------------------------------


def test_rebuild_on_stopped_data_keeps_statuses(server: ServerProcess) -> None:
    good, revoked, released = (issue(server, n) for n in ("rb-good", "rb-revoked", "rb-released"))
    revoke(server, revoked, "affiliationChanged")
    revoke(server, released, "certificateHold")
    pca("release-hold", "--config", server.config_path, released.serial_hex)
    certs = (good, revoked, released)
    expected = {good: "good", revoked: "revoked", released: "good"}
    for cert in certs:
        assert poll(lambda c=cert: verified_status(server, c, "-no_nonce") == expected[c], OCSP_PROPAGATION_SECONDS)
    statuses = {c: status_line(server, c) for c in certs}
    assert statuses[revoked].startswith(f"{revoked.serial_hex} revoked reason=affiliationChanged")
    assert statuses[released] == f"{released.serial_hex} good"

    assert terminate(server) in (0, -signal.SIGTERM)
    assert "up to date" in pca("migrate", "--config", server.config_path).stdout
    rebuilt = pca("rebuild", "--config", server.config_path)
    assert re.search(r"from \d+ events", rebuilt.stdout), rebuilt.stdout
    server.start()

    for cert in certs:
        assert status_line(server, cert) == statuses[cert]
        assert verified_status(server, cert, "-no_nonce") == expected[cert]
    # The rebuilt state accepts new decisions: a good certificate can still be revoked.
    revoke(server, good, "keyCompromise")
    assert poll(lambda: verified_status(server, good, "-no_nonce") == "revoked", OCSP_PROPAGATION_SECONDS)
    assert "audit OK" in pca("audit", "verify", "--config", server.config_path).stdout
    assert_clean_log(server)


# --- known product bugs -------------------------------------------------------------------------------


def test_overlong_crl_name_is_not_a_server_error(server: ServerProcess) -> None:
    resp = httpx.get(f"{server.public_url}/crl/{'a' * 300}.crl", timeout=10)
    assert resp.status_code < 500, resp.text
    assert_clean_log(server)


def test_issue_key_out_is_private_even_over_an_existing_file(shared: ServerProcess) -> None:
    key = ca_dir(shared) / "reissue.key"
    key.write_text("an old key\n")
    key.chmod(0o644)
    pca(
        "issue",
        "--config",
        shared.config_path,
        "--subject",
        "CN=reissue",
        "--dns",
        "reissue.internal",
        "--out",
        ca_dir(shared) / "reissue.pem",
        "--key-out",
        key,
        "--force",  # without it an existing file is refused (tests/pca/test_operator_mistakes.py)
    )
    assert "PRIVATE KEY" in key.read_text()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600, oct(key.stat().st_mode)


# --- 9 (cont.). the shared server's log, after every test that used it ---------------------------------------


def test_shared_server_log_has_no_traceback_and_no_token(shared: ServerProcess) -> None:
    assert shared.proc is not None and shared.proc.poll() is None, "the shared server died"
    assert_clean_log(shared)
