"""``revocation.names``: what may go into a certificate pca issues, by example and by property."""

from __future__ import annotations

import ipaddress
import string

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from revocation import names
from revocation.errors import ValidationError

LDH = string.ascii_letters + string.digits
label = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?", fullmatch=True).filter(lambda s: s[2:4] != "--")
hostname = st.lists(label, min_size=1, max_size=5).map(".".join)


# --- DNS names -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_name", "expected"),
    [
        ("svc1.internal", "svc1.internal"),
        ("*.svc.example", "*.svc.example"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a-b.example", "a-b.example"),
        ("localhost", "localhost"),
    ],
)
def test_good_dns_names_in_their_ascii_form(given_name: str, expected: str) -> None:
    assert names.dns_name(given_name) == expected


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("", "is empty"),
        ("a\x00b.evil", r"'a\x00b.evil'"),
        ("a/b", "'a/b'"),
        ("a b.example", "'a b'"),
        ("-a.example", "'-a'"),
        ("a-.example", "'a-'"),
        ("a..example", "empty label"),
        ("example.", "ends with a dot"),
        ("*.example", "wildcard needs at least two labels"),
        ("a.*.example", "whole leftmost label"),
        ("f*.example.com", "whole leftmost label"),
        ("ab--c.example", "'--' in 3rd-4th place"),
        ("xn--zz.example", "not a valid A-label"),
        ("a" * 64 + ".example", "at most 63"),
        (".".join(["a" * 63] * 4), "longer than 253"),
        ("ⅷ.example", "IDNA 2008 does not allow"),  # a compatibility character IDNA 2003 would map
        ("a_b.example", "'a_b'"),
    ],
)
def test_bad_dns_names_are_refused_naming_the_value(bad: str, says: str) -> None:
    with pytest.raises(ValidationError, match=None) as info:
        names.dns_name(bad)
    assert says in str(info.value)


@given(hostname)
def test_every_ldh_hostname_within_the_bounds_is_kept_as_given(name: str) -> None:
    if len(name) <= names.MAX_DNS_LENGTH:
        assert names.dns_name(name) == name


@given(st.text(max_size=80))
@settings(max_examples=500)
def test_any_text_is_either_refused_or_becomes_an_ascii_hostname(text: str) -> None:
    try:
        out = names.dns_name(text)
    except ValidationError as exc:
        assert str(exc)  # a message, never another exception
        return
    assert out.isascii() and 0 < len(out) <= names.MAX_DNS_LENGTH
    labels = out.split(".")
    assert all((lab == "*" and n == 0) or names._LDH_LABEL.fullmatch(lab) for n, lab in enumerate(labels))
    x509.DNSName(out)  # cryptography takes it as it is


@given(hostname, st.sampled_from(["\x00", "/", " ", "\n", "@", ":", "_", "\\"]), st.integers(0, 30))
def test_a_forbidden_character_anywhere_is_refused(name: str, bad: str, where: int) -> None:
    at = where % (len(name) + 1)
    with pytest.raises(ValidationError):
        names.dns_name(name[:at] + bad + name[at:])


# --- IP addresses, email addresses, URIs -------------------------------------------------------------------------


def test_ip_addresses_but_never_networks() -> None:
    assert names.ip_address("10.0.0.1") == ipaddress.ip_address("10.0.0.1")
    assert names.ip_address("::1") == ipaddress.ip_address("::1")
    for bad, says in [("10.0.0.0/8", "is a network"), ("1.2.3", "not an IPv4"), ("", "not an IPv4")]:
        with pytest.raises(ValidationError, match=says):
            names.ip_address(bad)


@given(st.ip_addresses())
def test_every_ip_address_is_accepted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    assert names.ip_address(str(address)) == address


def test_email_addresses() -> None:
    assert names.email_address("ops@bücher.example") == "ops@xn--bcher-kva.example"
    for bad in ["nope", "@x.example", "a b@x.example", "a\x00@x.example", "jörg@x.example", "a@b@", "a@-x.example"]:
        with pytest.raises(ValidationError, match="email address"):
            names.email_address(bad)


def test_uris() -> None:
    assert names.uri("spiffe://cluster.local/ns/a/sa/b") == "spiffe://cluster.local/ns/a/sa/b"
    assert names.uri("urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66").startswith("urn:")
    for bad in ["no-scheme", "https://a b/", "https://x\x00.example/", "https://bad_host.example/", "https://ü.x/"]:
        with pytest.raises(ValidationError, match="URI"):
            names.uri(bad)


# --- general names from a CSR -----------------------------------------------------------------------------------


def test_general_names_of_unsupported_kinds_are_named() -> None:
    upn = x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), b"\x0c\x01a")
    directory = x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
    for name, says in [
        (upn, "Microsoft UPN"),
        (directory, "directoryName 'CN=x'"),
        (x509.RegisteredID(x509.ObjectIdentifier("1.2.3")), "registeredID 1.2.3"),
        (x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")), "IP network"),
        (x509.DNSName(""), "is empty"),
    ]:
        with pytest.raises(ValidationError, match=None) as info:
            names.general_names([name])
        assert says in str(info.value)


def test_general_names_come_back_canonical() -> None:
    out = names.general_names([x509.DNSName("svc.example"), x509.RFC822Name("a@svc.example")])
    assert out == [x509.DNSName("svc.example"), x509.RFC822Name("a@svc.example")]


# --- subjects --------------------------------------------------------------------------------------------------


def test_subject_attributes() -> None:
    good = x509.Name.from_rfc4514_string("CN=svc1,O=Example,C=DE")
    assert names.subject(good) == good
    for bad, says in [
        ("CN=#020101", "control character"),
        ("CN=a\\00b", "control character"),
        ("CN=x,C=D1", "two-letter country"),
    ]:
        with pytest.raises(ValidationError, match=says):
            names.subject(x509.Name.from_rfc4514_string(bad))
    with pytest.raises(ValidationError, match="empty"):
        names.subject(x509.Name([]))


@given(st.text(min_size=1, max_size=64))
def test_any_common_name_is_refused_or_kept(value: str) -> None:
    try:
        attribute = x509.NameAttribute(NameOID.COMMON_NAME, value)
    except ValueError:
        return
    name = x509.Name([attribute])
    try:
        assert names.subject(name) == name
    except ValidationError as exc:
        assert any(ch < " " or ch == "\x7f" for ch in value), str(exc)


# --- keys ------------------------------------------------------------------------------------------------------


def test_allowed_keys() -> None:
    for curve in (ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()):
        names.public_key(ec.generate_private_key(curve).public_key())
    names.public_key(rsa.generate_private_key(65537, 2048).public_key())


def test_refused_keys_are_named() -> None:
    with pytest.raises(ValidationError, match="curve secp256k1"):
        names.public_key(ec.generate_private_key(ec.SECP256K1()).public_key())
    with pytest.raises(ValidationError, match="1024 bits"):
        names.public_key(rsa.generate_private_key(65537, 1024).public_key())
    with pytest.raises(ValidationError, match="public exponent 3"):
        names.public_key(rsa.generate_private_key(3, 2048).public_key())
