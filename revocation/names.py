"""What may go into a certificate pca issues: subject alternative names, subject attributes, keys.

Pure functions, each raising ``ValidationError`` with a message that names the offending value
(as ``repr`` shows it, so an embedded NUL or control character is visible). Used for names given
in the JSON of ``POST /v1/certificates`` and for those a CSR carries, which are never copied
verbatim.

- DNS names: RFC 1034 / RFC 5280 4.2.1.6 preferred name syntax (letters, digits, inner hyphens,
  labels of 1 to 63 octets, 253 in all, no trailing dot), a wildcard only as the whole leftmost
  label of a name of at least three labels; internationalised names are converted to A-labels
  with IDNA 2008 (the ``idna`` package), and an A-label given as such must be valid IDNA 2008.
- IP addresses: one address, IPv4 or IPv6; never a network.
- Email addresses (rfc822Name): an ASCII local part of printable characters and a valid host.
- URIs: absolute, ASCII, printable, no spaces; a host, when present, is a valid host name or IP.
- Subject attributes: text (never a raw DER value such as ``CN=#020101``), no control characters,
  within RFC 5280's upper bounds; countryName two letters.
- Keys: RSA of 2048 to 8192 bits with an odd public exponent of at least 65537, or EC on
  P-256, P-384 or P-521 (not secp256k1 or any other curve).
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Sequence
from urllib.parse import urlsplit

import idna
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from revocation.errors import ValidationError

MAX_DNS_LENGTH = 253
MAX_LABEL_LENGTH = 63
MAX_EMAIL_LENGTH = 254
MAX_URI_LENGTH = 2048
MAX_SANS = 100

_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PRINTABLE = frozenset(string.printable) - frozenset("\t\n\r\x0b\x0c")
# RFC 5322 atext and '.': what a dot-atom local part may hold.
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")

# RFC 5280 Appendix A upper bounds, in characters; attributes not listed are bounded by MAX_ATTRIBUTE.
MAX_ATTRIBUTE = 256
_UPPER_BOUNDS = {
    NameOID.COMMON_NAME: 64,
    NameOID.ORGANIZATION_NAME: 64,
    NameOID.ORGANIZATIONAL_UNIT_NAME: 64,
    NameOID.LOCALITY_NAME: 128,
    NameOID.STATE_OR_PROVINCE_NAME: 128,
    NameOID.SERIAL_NUMBER: 64,
    NameOID.EMAIL_ADDRESS: 255,
    NameOID.DOMAIN_COMPONENT: 63,
    NameOID.COUNTRY_NAME: 2,
}
_TEXT_TYPES = frozenset(
    {
        x509.name._ASN1Type.UTF8String,
        x509.name._ASN1Type.PrintableString,
        x509.name._ASN1Type.IA5String,
    }
)

ALLOWED_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "secp256r1": ec.SECP256R1,
    "secp384r1": ec.SECP384R1,
    "secp521r1": ec.SECP521R1,
}
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192


def _visible(value: str) -> str:
    """The value as an error message shows it: quoted, escapes for what cannot be seen, and bounded."""
    shown = repr(value)
    return shown if len(shown) <= 120 else shown[:100] + "...' (" + str(len(value)) + " characters)"


def dns_name(name: str, what: str = "DNS name") -> str:
    """The name as it goes into a dNSName: ASCII, A-labels for internationalised labels."""
    if not isinstance(name, str):
        raise ValidationError(f"{what} must be a string, got {type(name).__name__}")
    if not name:
        raise ValidationError(f"{what} '' is empty")
    if len(name) > 4 * MAX_DNS_LENGTH:
        raise ValidationError(f"{what} {_visible(name)} is longer than {MAX_DNS_LENGTH} characters")
    labels = name.split(".")
    if labels[-1] == "":
        raise ValidationError(f"{what} {_visible(name)} ends with a dot (give the name without it)")
    out = []
    for n, label in enumerate(labels):
        if label == "*" and n == 0:
            if len(labels) < 3:
                raise ValidationError(f"{what} {_visible(name)}: a wildcard needs at least two labels after it")
            out.append(label)
            continue
        out.append(_label(label, name, what))
    result = ".".join(out)
    if len(result) > MAX_DNS_LENGTH:
        raise ValidationError(f"{what} {_visible(name)} is longer than {MAX_DNS_LENGTH} characters")
    return result


def _label(label: str, name: str, what: str) -> str:
    if not label:
        raise ValidationError(f"{what} {_visible(name)} has an empty label")
    if "*" in label:
        raise ValidationError(f"{what} {_visible(name)}: a wildcard may only be the whole leftmost label")
    if label.isascii():
        if not _LDH_LABEL.fullmatch(label):
            raise ValidationError(
                f"{what} {_visible(name)} has label {_visible(label)}, which is not letters, digits and inner "
                f"hyphens of at most {MAX_LABEL_LENGTH} characters (RFC 1034)"
            )
        if label[2:4] == "--":
            if not label.lower().startswith("xn--"):
                raise ValidationError(f"{what} {_visible(name)} has label {_visible(label)} with '--' in 3rd-4th place")
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError) as exc:
                raise ValidationError(
                    f"{what} {_visible(name)} has label {_visible(label)}, not a valid A-label"
                ) from exc
        return label
    try:
        encoded = idna.encode(label).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise ValidationError(
            f"{what} {_visible(name)} has label {_visible(label)}, which IDNA 2008 does not allow"
        ) from exc
    if len(encoded) > MAX_LABEL_LENGTH:
        raise ValidationError(f"{what} {_visible(name)} has a label longer than {MAX_LABEL_LENGTH} octets")
    return encoded


def ip_address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not isinstance(value, str):
        raise ValidationError(f"IP address must be a string, got {type(value).__name__}")
    if "/" in value:
        raise ValidationError(f"IP address {_visible(value)} is a network; give one address")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValidationError(f"IP address {_visible(value)} is not an IPv4 or IPv6 address") from None


def email_address(value: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"email address must be a string, got {type(value).__name__}")
    if len(value) > MAX_EMAIL_LENGTH:
        raise ValidationError(f"email address {_visible(value)} is longer than {MAX_EMAIL_LENGTH} characters")
    local, at, domain = value.rpartition("@")
    if not at or not local or not _LOCAL_PART.fullmatch(local):
        raise ValidationError(f"email address {_visible(value)} is not local-part@domain with an ASCII local part")
    return f"{local}@{dns_name(domain, f'the domain of email address {_visible(value)}')}"


def uri(value: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"URI must be a string, got {type(value).__name__}")
    if len(value) > MAX_URI_LENGTH:
        raise ValidationError(f"URI {_visible(value)} is longer than {MAX_URI_LENGTH} characters")
    if not value.isascii() or any(ch not in _PRINTABLE or ch == " " for ch in value):
        raise ValidationError(f"URI {_visible(value)} holds spaces, control or non-ASCII characters")
    scheme, colon, _ = value.partition(":")
    if not colon or not _URI_SCHEME.fullmatch(scheme):
        raise ValidationError(f"URI {_visible(value)} is not absolute (scheme:...)")
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        raise ValidationError(f"URI {_visible(value)} does not parse") from None
    if parts.netloc and not host:
        raise ValidationError(f"URI {_visible(value)} has an authority without a host")
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            dns_name(host, f"the host of URI {_visible(value)}")
    return value


def general_names(names: Sequence[x509.GeneralName], where: str = "the CSR") -> list[x509.GeneralName]:
    """Subject alternative names as a CSR carries them, checked one by one; only the four kinds pca issues."""
    if len(names) > MAX_SANS:
        raise ValidationError(f"{where} has {len(names)} subject alternative names; at most {MAX_SANS}")
    out: list[x509.GeneralName] = []
    for name in names:
        if isinstance(name, x509.DNSName):
            out.append(x509.DNSName(dns_name(name.value)))
        elif isinstance(name, x509.IPAddress):
            if not isinstance(name.value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
                raise ValidationError(f"{where} has the IP network {name.value} as a name; give one address")
            out.append(name)
        elif isinstance(name, x509.RFC822Name):
            out.append(x509.RFC822Name(email_address(name.value)))
        elif isinstance(name, x509.UniformResourceIdentifier):
            out.append(x509.UniformResourceIdentifier(uri(name.value)))
        else:
            raise ValidationError(
                f"{where} has a subject alternative name of a kind pca does not issue: {_describe_name(name)} "
                "(only DNS names, IP addresses, email addresses and URIs)"
            )
    return out


def _describe_name(name: x509.GeneralName) -> str:
    if isinstance(name, x509.OtherName):
        return f"otherName {name.type_id.dotted_string}" + (
            " (a Microsoft UPN)" if name.type_id.dotted_string == "1.3.6.1.4.1.311.20.2.3" else ""
        )
    if isinstance(name, x509.DirectoryName):
        return f"directoryName {_visible(name.value.rfc4514_string())}"
    if isinstance(name, x509.RegisteredID):
        return f"registeredID {name.value.dotted_string}"
    return type(name).__name__


def build_sans(
    dns: Sequence[str] = (), ips: Sequence[str] = (), emails: Sequence[str] = (), uris: Sequence[str] = ()
) -> list[x509.GeneralName]:
    """Subject alternative names from the JSON of a request, each checked."""
    if len(dns) + len(ips) + len(emails) + len(uris) > MAX_SANS:
        raise ValidationError(f"at most {MAX_SANS} subject alternative names in all")
    names: list[x509.GeneralName] = [x509.DNSName(dns_name(d)) for d in dns]
    names += [x509.IPAddress(ip_address(ip)) for ip in ips]
    names += [x509.RFC822Name(email_address(e)) for e in emails]
    names += [x509.UniformResourceIdentifier(uri(u)) for u in uris]
    return names


def subject(name: x509.Name, where: str = "subject") -> x509.Name:
    """Refuse attributes that are not text, hold control characters, or exceed their upper bound."""
    attributes = list(name)
    if not attributes:
        raise ValidationError(f"{where} is empty")
    for attribute in attributes:
        label = attribute.rfc4514_attribute_name
        value = attribute.value
        if not isinstance(value, str) or attribute._type not in _TEXT_TYPES:
            raise ValidationError(
                f"{where} attribute {label} is not text (a raw encoded value such as {label}=#020101 is refused)"
            )
        if not value:
            raise ValidationError(f"{where} attribute {label} is empty")
        if any(ch < " " or ch == "\x7f" for ch in value):
            raise ValidationError(f"{where} attribute {label}={_visible(value)} holds a control character")
        bound = _UPPER_BOUNDS.get(attribute.oid, MAX_ATTRIBUTE)
        if len(value) > bound:
            raise ValidationError(f"{where} attribute {label}={_visible(value)} is longer than {bound} characters")
        if attribute.oid == NameOID.COUNTRY_NAME and not (value.isascii() and value.isalpha()):
            raise ValidationError(f"{where} attribute C={_visible(value)} is not a two-letter country code")
    return name


def public_key(key: object, where: str = "the CSR") -> None:
    """Only the key types and sizes pca issues for: RSA 2048-8192, EC on P-256, P-384 or P-521."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ALLOWED_CURVES:
            raise ValidationError(
                f"{where} has an EC key on curve {key.curve.name}; allowed: {', '.join(ALLOWED_CURVES)}"
            )
        return
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise ValidationError(
                f"{where} has an RSA key of {key.key_size} bits; allowed: {MIN_RSA_BITS} to {MAX_RSA_BITS}"
            )
        exponent = key.public_numbers().e
        if exponent < 65537 or exponent % 2 == 0:
            raise ValidationError(f"{where} has an RSA key with public exponent {exponent}; use 65537")
        return
    raise ValidationError(f"{where} has a {type(key).__name__.lstrip('_')} key; use ECDSA (P-256/384/521) or RSA")
