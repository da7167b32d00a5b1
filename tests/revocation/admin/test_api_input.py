"""Bad input on the admin API: each is a 400 problem+json naming the offending value, never a 500, nothing recorded.

Query parameters (ASCII digits with bounds, no unknown or repeated ones), JSON fields (types, lengths,
unknown fields named), subject alternative names and subject attributes from JSON and from CSRs, CSR
key types and curves, and CSR parse errors in words of pca's own (no library internals).
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pca.runtime import Runtime
from tests.support.admin import admin_client, assert_problem, bearer

UPN = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")


@pytest.fixture
async def api(runtime: Runtime) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    async with admin_client(runtime) as pair:
        yield pair


def csr_pem(
    sans: list[x509.GeneralName] | None = None,
    subject: x509.Name | None = None,
    curve: ec.EllipticCurve | None = None,
) -> str:
    key = ec.generate_private_key(curve or ec.SECP256R1())
    name = subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "csr-svc")])
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def csr_with(*sans: x509.GeneralName) -> dict[str, Any]:
    return {"csr": csr_pem(list(sans)), "profile": "client"}


BAD_GETS = {
    "limit-superscript-two": ("/v1/events?limit=%C2%B2", "limit='²'"),
    "after-superscript-one": ("/v1/events?after=%C2%B9", "after='¹'"),
    "after-5000-digits": ("/v1/events?after=" + "9" * 5000, "(5000 characters)"),
    "limit-negative": ("/v1/events?limit=-1", "limit='-1'"),
    "limit-zero": ("/v1/events?limit=0", "from 1 to 1000"),
    "unknown-query": ("/v1/events?lmit=5", "unknown query parameter 'lmit'"),
    "repeated-query": ("/v1/events?limit=5&limit=6", "'limit' is given more than once"),
    "issuers-query": ("/v1/issuers?all=1", "unknown query parameter 'all'"),
    "certificate-query": ("/v1/certificates/{serial}?issuer=issuing-ca&x=1", "unknown query parameter 'x'"),
    "serial-unicode-digits": ("/v1/certificates/%C2%B2", "serial '²'"),
    "serial-too-long": ("/v1/certificates/" + "f" * 41, "at most 20 octets"),
}


@pytest.mark.parametrize(("path", "detail"), BAD_GETS.values(), ids=BAD_GETS.keys())
async def test_bad_query_and_path_parameters_are_400_naming_them(
    api: tuple[httpx.AsyncClient, dict[str, str]], path: str, detail: str
) -> None:
    client, tokens = api
    issued = await client.post(
        "/v1/certificates", json={"subject": "CN=q", "dns": ["q.example"]}, headers=bearer(tokens, "admin")
    )
    resp = await client.get(path.format(serial=issued.json()["serial"]), headers=bearer(tokens, "admin"))
    assert_problem(resp, 400, detail)


SAN_CASES = {
    # JSON
    "json-nul-in-dns": ({"subject": "CN=x", "dns": ["a\u0000.evil.com"]}, r"'a\x00.evil.com'"),
    "json-empty-dns": ({"subject": "CN=x", "dns": [""]}, "DNS name '' is empty"),
    "json-slash-dns": ({"subject": "CN=x", "dns": ["a/b.example"]}, "'a/b'"),
    "json-trailing-dot": ({"subject": "CN=x", "dns": ["x.example."]}, "ends with a dot"),
    "json-bad-wildcard": ({"subject": "CN=x", "dns": ["a*.x.example"]}, "wildcard"),
    "json-long-label": ({"subject": "CN=x", "dns": ["a" * 64 + ".example"]}, "at most 63"),
    "json-ip-network": ({"subject": "CN=x", "ips": ["10.0.0.0/8"]}, "'10.0.0.0/8' is a network"),
    "json-email-nul": ({"subject": "CN=x", "profile": "client", "emails": ["a\u0000b@x.example"]}, r"'a\x00b@"),
    "json-uri-space": ({"subject": "CN=x", "profile": "client", "uris": ["https://x .example/"]}, "URI"),
    "json-cn-integer": ({"subject": "CN=#020101", "dns": ["x.example"]}, "CN"),
    "json-cn-control": ({"subject": "CN=a\\01b", "dns": ["x.example"]}, "control character"),
    "json-cn-too-long": ({"subject": "CN=" + "x" * 65, "dns": ["x.example"]}, "longer than RFC 5280 allows"),
    "json-country": ({"subject": "CN=x,C=D1", "dns": ["x.example"]}, "C='D1'"),
    "json-unknown-field": ({"subject": "CN=x", "dns": ["x.example"], "dnss": ["y"]}, "unknown field(s) 'dnss'"),
    "json-validity-huge": ({"subject": "CN=x", "dns": ["x.example"], "validity_days": 10**30}, "validity_days"),
    "json-too-many-sans": ({"subject": "CN=x", "dns": [f"h{i}.example" for i in range(101)]}, "at most 100"),
    "json-subject-type": ({"subject": ["CN=x"], "dns": ["x.example"]}, "subject must be a string"),
    # CSR
    "csr-empty-dns": (csr_with(x509.DNSName("")), "DNS name '' is empty"),
    "csr-nul-dns": (csr_with(x509.DNSName("a\x00b.evil")), r"'a\x00b.evil'"),
    "csr-slash-dns": (csr_with(x509.DNSName("a/b")), "'a/b'"),
    "csr-upn": (csr_with(x509.OtherName(UPN, b"\x0c\x05a@b.c")), "otherName 1.3.6.1.4.1.311.20.2.3"),
    "csr-directory-name": (
        csr_with(x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil")]))),
        "directoryName 'CN=evil'",
    ),
    "csr-ip-network": (csr_with(x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))), "IP network 10.0.0.0/8"),
    "csr-cn-integer": (
        {"csr": csr_pem([x509.DNSName("x.example")], x509.Name.from_rfc4514_string("CN=#020101"))},
        r"'\x02\x01\x01'",
    ),
    "csr-secp256k1": ({"csr": csr_pem([x509.DNSName("x.example")], curve=ec.SECP256K1())}, "curve secp256k1"),
    "csr-garbage": (
        {"csr": "-----BEGIN CERTIFICATE REQUEST-----\nMIIBAA==\n-----END CERTIFICATE REQUEST-----\n"},
        "CSR cannot be parsed: it is not a PEM or DER PKCS#10 request",
    ),
    "csr-not-pem": ({"csr": "MIIBAA=="}, "CSR cannot be parsed"),
}


@pytest.mark.parametrize(("body", "detail"), SAN_CASES.values(), ids=SAN_CASES.keys())
async def test_bad_names_keys_and_fields_of_an_issue_are_400_naming_the_value(
    api: tuple[httpx.AsyncClient, dict[str, str]], runtime: Runtime, body: dict[str, Any], detail: str
) -> None:
    client, tokens = api
    head = await runtime.log.head()

    resp = await client.post("/v1/certificates", json=body, headers=bearer(tokens, "admin"))

    problem = assert_problem(resp, 400, detail)
    for internal in ("ParseError", "ShortData", "asn1", "Traceback"):
        assert internal not in problem["detail"]
    assert await runtime.log.head() == head


async def test_names_are_checked_then_issued_in_their_canonical_form(
    api: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    client, tokens = api
    body = {"subject": "CN=bücher", "dns": ["bücher.example", "*.svc.example"], "ips": ["::1"]}

    resp = await client.post("/v1/certificates", json=body, headers=bearer(tokens, "admin"))

    assert resp.status_code == 201, resp.text
    cert = x509.load_pem_x509_certificate(resp.json()["certificate"].encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["xn--bcher-kva.example", "*.svc.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("::1")]


async def test_a_csr_with_good_names_is_issued_with_them(api: tuple[httpx.AsyncClient, dict[str, str]]) -> None:
    client, tokens = api
    body = {"csr": csr_pem([x509.DNSName("csr.example"), x509.IPAddress(ipaddress.ip_address("10.1.2.3"))])}

    resp = await client.post("/v1/certificates", json=body, headers=bearer(tokens, "admin"))

    assert resp.status_code == 201, resp.text
    cert = x509.load_pem_x509_certificate(resp.json()["certificate"].encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["csr.example"]


OTHER_POSTS = {
    "revoke-unknown-field": ("/v1/certificates/{serial}/revoke", {"reason": "keyCompromise", "force": True}, "'force'"),
    "revoke-invalidity-type": (
        "/v1/certificates/{serial}/revoke",
        {"reason": "keyCompromise", "invalidity_date": 5},
        "invalidity_date must be an ISO 8601 string",
    ),
    "release-unknown-field": ("/v1/certificates/{serial}/release-hold", {"isuer": "x"}, "'isuer'"),
    "probe-unknown-field": (
        "/v1/propagation/probes",
        {"issuer_id": "issuing-ca", "serial": "{serial}", "seq": 1, "responder_url": "http://r/ocsp", "seen": "x"},
        "'seen'",
    ),
    "import-unknown-field": ("/v1/certificates/import", {"certificate": "x", "issuers": "x"}, "'issuers'"),
    "import-entry-unknown-field": (
        "/v1/certificates/import",
        {"certificates": [{"certificate": "x", "revoke": {}}]},
        "certificates[0] has unknown field(s) 'revoke'",
    ),
}


@pytest.mark.parametrize(("path", "body", "detail"), OTHER_POSTS.values(), ids=OTHER_POSTS.keys())
async def test_unknown_and_mistyped_fields_elsewhere_are_400_naming_them(
    runtime: Runtime, path: str, body: dict[str, Any], detail: str
) -> None:
    from revocation.admin.recording import CertificateRecorder

    recorder = CertificateRecorder(runtime.log, runtime.view)
    async with admin_client(runtime, ("prober",), recorder=recorder, coordination=runtime.coord) as (client, tokens):
        issued = await client.post(
            "/v1/certificates", json={"subject": "CN=p", "dns": ["p.example"]}, headers=bearer(tokens, "admin")
        )
        serial = issued.json()["serial"]
        head = await runtime.log.head()
        sent = {k: (v.format(serial=serial) if isinstance(v, str) else v) for k, v in body.items()}

        resp = await client.post(path.format(serial=serial), json=sent, headers=bearer(tokens, "admin"))

        assert_problem(resp, 400, detail)
        assert await runtime.log.head() == head
