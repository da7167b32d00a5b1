"""External issuers ("bring your own CA"): the checks behind ``pca issuer`` and the events it records.

An external issuer is a CA pca did not create (an ``openssl ca`` directory, step-ca, Vault,
EJBCA) registered with ``IssuerAdded(kind="external")``. With its key reachable, pca runs it
like its own intermediates (signer rotation, CRLs); without it, pca makes the delegated OCSP
signer's key, hands out a CSR (``OCSPSignerKeyPrepared``) and takes the certificate the CA
issues for it (``ResponderCertRotated``). Every function here checks and builds; nothing
is appended: the caller appends what it gets, so a refusal changes nothing.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from revocation import der
from revocation.authority import issuer_added
from revocation.errors import ConflictError, KeyBackendError, ValidationError
from revocation.events import IssuerAdded, OCSPSignerKeyPrepared, ResponderCertRotated
from revocation.keys import KeyRef, SigningKey
from revocation.projection import IssuerRecord

# Lowercase letters, digits and inner hyphens: the id becomes part of CRL object keys and URLs.
_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,46}[a-z0-9])?")
# "x-3" and "x-delta" are the names of issuer x's shard 3 and delta CRLs (revocation.crl_layout).
_RESERVED_ENDING = re.compile(r".*-(?:[0-9]+|delta)")
# A signer certificate must leave time to renew it.
SIGNER_MIN_REMAINING = datetime.timedelta(days=1)


def check_issuer_id(issuer_id: str) -> None:
    if not _ID.fullmatch(issuer_id):
        raise ValidationError(
            f"issuer id {issuer_id!r} is not a short safe token: use 1 to 48 lowercase letters, digits and "
            "inner hyphens (it becomes part of CRL names and URLs)"
        )
    if _RESERVED_ENDING.fullmatch(issuer_id):
        raise ValidationError(
            f"issuer id {issuer_id!r} ends like a CRL shard or delta name (-<number>, -delta); choose another"
        )


def check_crl_url(url: str) -> None:
    if not url.startswith(("http://", "https://")) or len(url) > 2000 or any(ch.isspace() for ch in url):
        raise ValidationError(f"CRL URL {url!r} must be an http:// or https:// URL")


def load_certificate(data: bytes, what: str) -> x509.Certificate:
    """One certificate, PEM or DER; ValidationError naming ``what`` otherwise."""
    try:
        if b"-----BEGIN" in data:  # PEM, possibly after the text dump ``openssl ca`` writes before it
            certs = x509.load_pem_x509_certificates(data)
            if len(certs) != 1:
                raise ValidationError(f"{what} holds {len(certs)} certificates; give exactly one")
            return certs[0]
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        # Not the library's wording: it names parser internals (and, for PEM, a help link).
        form = "its PEM block does not parse" if b"-----BEGIN" in data else "it is neither PEM nor a DER certificate"
        raise ValidationError(f"{what} is not a PEM or DER certificate: {form}") from exc


def _describe(cert: x509.Certificate) -> str:
    return f"{cert.subject.rfc4514_string()!r} (serial {cert.serial_number:x})"


def _check_validity(cert: x509.Certificate, now: datetime.datetime, what: str) -> None:
    if cert.not_valid_before_utc > now:
        raise ValidationError(f"{what} {_describe(cert)} is not valid yet (notBefore {cert.not_valid_before_utc})")
    if cert.not_valid_after_utc <= now:
        raise ValidationError(f"{what} {_describe(cert)} has expired (notAfter {cert.not_valid_after_utc})")


def check_ca_certificate(cert: x509.Certificate, now: datetime.datetime) -> None:
    """A CA certificate (basicConstraints CA, keyCertSign when keyUsage is present), valid now, EC or RSA."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise ValidationError(f"certificate {_describe(cert)} is not a CA certificate: no basicConstraints") from None
    if not constraints.ca:
        raise ValidationError(f"certificate {_describe(cert)} is not a CA certificate: basicConstraints CA is false")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.key_cert_sign:
        raise ValidationError(
            f"CA certificate {_describe(cert)} may not sign certificates: its keyUsage lacks keyCertSign"
        )
    if not isinstance(cert.public_key(), (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise ValidationError(f"CA certificate {_describe(cert)} has a key that is neither EC nor RSA")
    _check_validity(cert, now, "CA certificate")


def _spki(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def external_issuer(
    issuer_id: str,
    cert: x509.Certificate,
    key_ref: KeyRef | None,
    crl_url: str,
    existing: Sequence[IssuerRecord],
    now: datetime.datetime,
) -> IssuerAdded:
    """The ``IssuerAdded`` of an external CA, after every check (the key's match is checked by the caller)."""
    check_issuer_id(issuer_id)
    check_crl_url(crl_url)
    check_ca_certificate(cert, now)
    der_bytes = cert.public_bytes(serialization.Encoding.DER)
    for other in existing:
        if other.issuer_id == issuer_id:
            raise ConflictError(f"issuer id {issuer_id!r} is taken ({other.kind} issuer)")
        same_cert = other.cert.public_bytes(serialization.Encoding.DER) == der_bytes
        # OCSP finds the issuer by its name and key hashes: two issuers with both equal would be one.
        same_ca = other.cert.subject == cert.subject and _spki(other.cert.public_key()) == _spki(cert.public_key())
        if same_cert or same_ca:
            raise ConflictError(
                f"this CA certificate ({cert.subject.rfc4514_string()}) is already registered as issuer "
                f"{other.issuer_id!r}"
            )
    return issuer_added(issuer_id, "external", None, cert, key_ref, crl_url)


# --- the delegated OCSP signer of an issuer whose key we do not hold --------------------------------


def _signer_subject(issuer_cert: x509.Certificate) -> x509.Name:
    cn = issuer_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    label = str(cn[0].value) if cn else "CA"
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{label} OCSP Responder"[:64])])


def signer_csr(issuer_cert: x509.Certificate, key: SigningKey) -> bytes:
    """A CSR (DER) for the delegated OCSP signer key ``key``, wherever the key lives.

    It requests what the signer certificate needs (digitalSignature, the OCSPSigning EKU,
    id-pkix-ocsp-nocheck); most CAs ignore requested extensions unless told to copy them.
    """
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_signer_subject(issuer_cert))
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        .add_extension(x509.OCSPNoCheck(), critical=False)
    )
    hash_algorithm: Any = key.hash_algorithm()
    private = key.private_key_for_builder()
    if private is not None:
        csr = builder.sign(private, hash_algorithm)
    else:
        # Built with a throwaway key of the same family, its public key swapped for the real one, then
        # the CertificationRequestInfo is signed by the backend (PKCS#11, KMS).
        public = key.public_key()
        stand_in: Any = (
            ec.generate_private_key(ec.SECP256R1())
            if isinstance(public, ec.EllipticCurvePublicKey)
            else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
        info = builder.sign(stand_in, hash_algorithm).tbs_certrequest_bytes
        _, pos, _ = der.split_tlv(info)
        parts = []
        while pos < len(info):
            end = der.split_tlv(info, pos)[2]
            parts.append(info[pos:end])
            pos = end
        version, subject, _stand_in_spki, attributes = parts
        info = der.sequence(version, subject, _spki(public), attributes)
        signed = der.sequence(info, key.signature_algorithm_der(), der.bit_string(key.sign(info)))
        csr = x509.load_der_x509_csr(signed)
    if not csr.is_signature_valid:
        raise KeyBackendError(f"key {key.ref.describe()} made a CSR whose signature does not verify")
    return csr.public_bytes(serialization.Encoding.DER)


def check_signer_renewable(issuer: IssuerRecord) -> None:
    """Only an external issuer whose key pca does not hold gets its signer through a CSR."""
    if issuer.kind != "external":
        raise ValidationError(f"issuer {issuer.issuer_id!r} is pca's own: its OCSP signer is rotated automatically")
    if issuer.key_ref is not None:
        raise ValidationError(
            f"pca holds the key of issuer {issuer.issuer_id!r}: its OCSP signer is created and rotated automatically"
        )


def signer_key_prepared(issuer: IssuerRecord, key: SigningKey, csr_der: bytes) -> OCSPSignerKeyPrepared:
    check_signer_renewable(issuer)
    return OCSPSignerKeyPrepared(issuer_id=issuer.issuer_id, key_ref=key.ref.to_dict(), csr_der_hex=csr_der.hex())


def signer_rotated(issuer: IssuerRecord, cert: x509.Certificate, now: datetime.datetime) -> ResponderCertRotated:
    """The rotation to the pending signer key, once ``cert`` is checked to be its OCSP signing certificate."""
    what = f"signer certificate {_describe(cert)}"
    if issuer.kind != "external" or issuer.key_ref is not None:
        raise ValidationError(f"issuer {issuer.issuer_id!r} has its OCSP signer created and rotated by pca")
    if issuer.pending_key_ref is None or issuer.pending_csr_der is None:
        raise ValidationError(
            f"issuer {issuer.issuer_id!r} has no signer key waiting for a certificate; "
            f"run 'pca issuer renew-signer --id {issuer.issuer_id} --ocsp-signer-csr FILE' first"
        )
    if cert.issuer != issuer.cert.subject:
        raise ValidationError(
            f"{what} is issued by {cert.issuer.rfc4514_string()!r}, not by issuer {issuer.issuer_id!r} "
            f"({issuer.cert.subject.rfc4514_string()!r})"
        )
    try:
        cert.verify_directly_issued_by(issuer.cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ValidationError(f"{what} is not signed by the key of issuer {issuer.issuer_id!r}: {exc}") from exc
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        raise ValidationError(f"{what} lacks the OCSPSigning extended key usage (id-kp-OCSPSigning)")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.digital_signature:
        raise ValidationError(f"{what} may not sign: its keyUsage lacks digitalSignature")
    csr = x509.load_der_x509_csr(issuer.pending_csr_der)
    if _spki(cert.public_key()) != _spki(csr.public_key()):
        raise ValidationError(
            f"{what} is for another key than the one pca made for this issuer's signer (the last CSR written)"
        )
    _check_validity(cert, now, "signer certificate")
    if cert.not_valid_after_utc - now <= SIGNER_MIN_REMAINING:
        raise ValidationError(f"{what} expires within a day (notAfter {cert.not_valid_after_utc}); issue a longer one")
    return ResponderCertRotated(
        issuer_id=issuer.issuer_id,
        cert_der_hex=cert.public_bytes(serialization.Encoding.DER).hex(),
        key_ref=issuer.pending_key_ref.to_dict(),
        not_after=cert.not_valid_after_utc,
    )


def signer_notes(cert: x509.Certificate) -> list[str]:
    """What a relying party may stumble over in a signer certificate that is otherwise accepted."""
    try:
        cert.extensions.get_extension_for_class(x509.OCSPNoCheck)
    except x509.ExtensionNotFound:
        return [
            "the signer certificate lacks id-pkix-ocsp-nocheck: clients may try to check the signer's own "
            "revocation status"
        ]
    return []
