"""The issuing core: CA certificates, delegated OCSP signers and leaf certificates.

Pure functions over cryptography objects; the application (``authority.py``)
records what they produce as events.
"""

from __future__ import annotations

import datetime
import functools
import secrets
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from revocation import der, names
from revocation.errors import KeyBackendError, ValidationError
from revocation.keys import PrivateKey, PublicKey, SigningKey, verify_signature

PROFILES = ("server", "client")
# A leaf never starts before its issuer's notBefore; this backdating absorbs clock skew.
BACKDATE = datetime.timedelta(minutes=5)


def random_serial() -> int:
    """A positive serial with 128 random bits (at most 17 octets in DER, within RFC 5280's 20)."""
    serial = 0
    while serial == 0:
        serial = secrets.randbits(128)
    return serial


def parse_subject(subject: str) -> x509.Name:
    """Parse an RFC 4514 string like ``CN=svc1,O=Example``."""
    if len(subject) > 4096:
        raise ValidationError(f"subject of {len(subject)} characters is too long")
    try:
        name = x509.Name.from_rfc4514_string(subject)
    except ValueError as exc:
        why = "an attribute is longer than RFC 5280 allows (64 for CN)" if "length must be" in str(exc) else ""
        raise ValidationError(
            f"subject {subject!r} is not an RFC 4514 name such as CN=svc1,O=Example" + (f": {why}" if why else "")
        ) from None
    return names.subject(name, f"subject {subject!r}:")


def _ski(public_key: PublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]


def create_root(
    key: SigningKey, subject: x509.Name, now: datetime.datetime, validity_days: int, crl_url: str | None = None
) -> x509.Certificate:
    """A self-signed root. Its key signs only intermediates and the root's CRL."""
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(random_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(_ski(public), critical=False)
    )
    return _sign_certificate(builder, key, public)


def create_intermediate(
    root_cert: x509.Certificate,
    root_key: SigningKey,
    public: PublicKey,
    subject: x509.Name,
    now: datetime.datetime,
    validity_days: int,
    root_crl_url: str,
    *,
    ocsp_url: str,
) -> x509.Certificate:
    """An issuing CA under ``root_cert``: its CRL DP is the root's CRL, its AIA the root's OCSP at ``ocsp_url``."""
    not_after = _not_after(now, validity_days, root_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root_cert.subject)
        .public_key(public)
        .serial_number(random_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(_ski(public), critical=False)
        .add_extension(_aki(root_cert), critical=False)
        .add_extension(_aia_ocsp(ocsp_url), critical=False)
        .add_extension(_crl_dp(root_crl_url), critical=False)
    )
    return _sign_certificate(builder, root_key, root_cert.public_key())  # type: ignore[arg-type]


def _delegated_signer(
    issuer_cert: x509.Certificate,
    issuer_key: SigningKey,
    public: PublicKey,
    now: datetime.datetime,
    validity_days: int,
    role: str,
    usage: x509.ExtendedKeyUsage,
    *,
    usage_critical: bool,
    more: tuple[x509.ExtensionType, ...] = (),
) -> x509.Certificate:
    """An end-entity certificate named "<issuer CN> <role>" whose key only signs: digitalSignature and ``usage``."""
    cn = issuer_cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    label = str(cn[0].value) if cn else "CA"
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"{label} {role}")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject)
        .public_key(public)
        .serial_number(random_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(_not_after(now, validity_days, issuer_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(usage, critical=usage_critical)
    )
    for extension in more:
        builder = builder.add_extension(extension, critical=False)
    builder = builder.add_extension(_ski(public), critical=False).add_extension(_aki(issuer_cert), critical=False)
    return _sign_certificate(builder, issuer_key, issuer_cert.public_key())  # type: ignore[arg-type]


def create_ocsp_signer(
    issuer_cert: x509.Certificate,
    issuer_key: SigningKey,
    public: PublicKey,
    now: datetime.datetime,
    validity_days: int,
) -> x509.Certificate:
    """A delegated OCSP signing certificate (RFC 6960 4.2.2.2) with id-pkix-ocsp-nocheck."""
    usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING])
    return _delegated_signer(
        issuer_cert, issuer_key, public, now, validity_days, "OCSP Responder", usage,
        usage_critical=False, more=(x509.OCSPNoCheck(),),
    )  # fmt: skip


# The extended key usage of audit checkpoint signers (``revocation.checkpoints``): an OID of the
# 2.25 (UUID) arc, which anyone may assign without registration (ITU-T X.667).
CHECKPOINT_SIGNING = x509.ObjectIdentifier("2.25.69252448998054820625270984272883882123")


def create_checkpoint_signer(
    issuer_cert: x509.Certificate,
    issuer_key: SigningKey,
    public: PublicKey,
    now: datetime.datetime,
    validity_days: int,
) -> x509.Certificate:
    """The certificate of the key that signs audit checkpoints: digitalSignature, EKU ``CHECKPOINT_SIGNING`` only."""
    usage = x509.ExtendedKeyUsage([CHECKPOINT_SIGNING])
    return _delegated_signer(
        issuer_cert, issuer_key, public, now, validity_days, "Audit Checkpoint Signer", usage, usage_critical=True
    )


@functools.cache
def _stand_in(kind: str) -> PrivateKey:
    """A throwaway key whose only use is to make a builder write the right signatureAlgorithm."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _sign_certificate(builder: x509.CertificateBuilder, key: SigningKey, issuer_public: PublicKey) -> x509.Certificate:
    """Sign ``builder``'s certificate with ``key``, wherever the key lives.

    A key in this process signs through cryptography. For a key in a token or KMS
    the TBSCertificate is built with a throwaway key of the same family and hash
    (so its signature field names the algorithm the real key uses), signed by the
    backend, and assembled as SEQUENCE { tbs, AlgorithmIdentifier, BIT STRING };
    the result is verified with ``issuer_public`` before it is returned.
    """
    hash_algorithm: Any = key.hash_algorithm()
    private = key.private_key_for_builder()
    if private is not None:
        return builder.sign(private, hash_algorithm)
    public = key.public_key()
    stand_in = _stand_in("ec" if isinstance(public, ec.EllipticCurvePublicKey) else "rsa")
    tbs = builder.sign(stand_in, hash_algorithm).tbs_certificate_bytes
    algorithm = key.signature_algorithm_der()
    if _tbs_signature_algorithm(tbs) != algorithm:
        raise KeyBackendError(f"key {key.ref.describe()}: its signature algorithm does not match the certificate's")
    signature = key.sign(tbs)
    cert = x509.load_der_x509_certificate(der.sequence(tbs, algorithm, der.bit_string(signature)))
    try:
        verify_signature(issuer_public, cert.signature, tbs, hash_algorithm)
    except InvalidSignature as exc:
        raise KeyBackendError(
            f"key {key.ref.describe()} made a certificate signature that the issuer's public key does not verify"
        ) from exc
    return cert


def _tbs_signature_algorithm(tbs: bytes) -> bytes:
    """The ``signature`` AlgorithmIdentifier inside a TBSCertificate, as encoded."""
    _, pos, _ = der.split_tlv(tbs)
    if tbs[pos] == 0xA0:  # version
        pos = der.split_tlv(tbs, pos)[2]
    pos = der.split_tlv(tbs, pos)[2]  # serialNumber
    return tbs[pos : der.split_tlv(tbs, pos)[2]]


def _not_after(now: datetime.datetime, validity_days: int, ceiling: datetime.datetime) -> datetime.datetime:
    """``now + validity_days``, never beyond ``ceiling`` (the issuer's notAfter) and never overflowing."""
    if validity_days >= (ceiling - now).days + 1:
        return ceiling
    return now + datetime.timedelta(days=validity_days)


def _key_usage(
    cert_sign: bool = False, digital_signature: bool = False, key_encipherment: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _crl_dp(url: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints([x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)])


def _aia_ocsp(url: str) -> x509.AuthorityInformationAccess:
    """Authority Information Access naming the OCSP responder of the certificate's issuer."""
    ocsp = x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(url))
    return x509.AuthorityInformationAccess([ocsp])


def parse_csr(pem_or_der: bytes) -> x509.CertificateSigningRequest:
    """Load a CSR and check its self-signature; ValidationError says what is wrong."""
    try:
        if pem_or_der.lstrip().startswith(b"-----"):
            csr = x509.load_pem_x509_csr(pem_or_der)
        else:
            csr = x509.load_der_x509_csr(pem_or_der)
    except ValueError:
        # Not the library's wording (ParseError { kind: ShortData ... }): it names parser internals.
        raise ValidationError("CSR cannot be parsed: it is not a PEM or DER PKCS#10 request") from None
    try:
        key = csr.public_key()
    except (ValueError, TypeError):  # an unknown key type, or a point not on its curve
        raise ValidationError("CSR public key is of a type or on a curve pca does not issue for") from None
    names.public_key(key, "the CSR")
    try:
        valid = csr.is_signature_valid
    except (ValueError, InvalidSignature, TypeError):
        raise ValidationError("CSR signature cannot be checked: its algorithm or encoding is not supported") from None
    if not valid:
        raise ValidationError("CSR signature is invalid: the CSR was not signed by the key it contains")
    return csr


def csr_names(
    csr: x509.CertificateSigningRequest, *, subject: bool = True, sans: bool = True
) -> tuple[x509.Name, list[x509.GeneralName]]:
    """The CSR's subject and subject alternative names (those asked for), each checked; never copied verbatim."""
    name, general_names = x509.Name([]), []
    try:
        if subject:
            name = csr.subject
        if sans:
            try:
                general_names = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
            except x509.ExtensionNotFound:
                pass
    except (ValueError, TypeError):  # a malformed or duplicated extension, an undecodable name
        raise ValidationError("the CSR's subject or extensions do not parse") from None
    if subject:
        if not list(name):
            raise ValidationError("the CSR has an empty subject; give one with subject")
        names.subject(name, "the CSR's subject:")
    return name, names.general_names(general_names, "the CSR")


def build_sans(
    dns: Sequence[str] = (), ips: Sequence[str] = (), emails: Sequence[str] = (), uris: Sequence[str] = ()
) -> list[x509.GeneralName]:
    """Subject alternative names from a request, each checked (``revocation.names``)."""
    return names.build_sans(dns, ips, emails, uris)


def issue_leaf(
    issuer_cert: x509.Certificate,
    issuer_key: SigningKey,
    public: PublicKey,
    subject: x509.Name,
    sans: Sequence[x509.GeneralName],
    profile: str,
    now: datetime.datetime,
    validity_days: int,
    ocsp_url: str,
    crl_url: str,
    *,
    serial: int | None = None,
    freshest_crl_url: str | None = None,
) -> x509.Certificate:
    """A leaf by profile; its validity never reaches beyond the issuer's.

    ``serial`` is drawn here unless given (the caller picks it first when the
    serial decides the CRL shard, hence ``crl_url``); ``freshest_crl_url`` adds
    a Freshest CRL extension naming the shard's delta CRL.
    """
    if serial is not None and not 0 < serial < 2**159:
        raise ValidationError(f"serial {serial} is outside 1..2**159-1")
    if profile not in PROFILES:
        raise ValidationError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if validity_days < 1:
        raise ValidationError(f"validity of {validity_days} days is not positive")
    if profile == "server" and not sans:
        raise ValidationError("a server certificate needs at least one subject alternative name (--dns or --ip)")
    not_after = _not_after(now, validity_days, issuer_cert.not_valid_after_utc)
    eku = ExtendedKeyUsageOID.SERVER_AUTH if profile == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject)
        .public_key(public)
        .serial_number(random_serial() if serial is None else serial)
        .not_valid_before(max(now - BACKDATE, issuer_cert.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_encipherment=isinstance(public, rsa.RSAPublicKey)), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(_ski(public), critical=False)
        .add_extension(_aki(issuer_cert), critical=False)
        .add_extension(_aia_ocsp(ocsp_url), critical=False)
        .add_extension(_crl_dp(crl_url), critical=False)
    )
    if freshest_crl_url is not None:
        # RFC 5280 4.2.1.15: non-critical; same syntax as the CRL DP.
        freshest = x509.FreshestCRL(
            [x509.DistributionPoint([x509.UniformResourceIdentifier(freshest_crl_url)], None, None, None)]
        )
        builder = builder.add_extension(freshest, critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return _sign_certificate(builder, issuer_key, issuer_cert.public_key())  # type: ignore[arg-type]
