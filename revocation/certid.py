"""The issuer half of an OCSP CertID (RFC 6960 4.1.1), computed once for responders and probers.

issuerNameHash is the hash of the issuer's subject Name and issuerKeyHash the
hash of its subjectPublicKey BIT STRING contents, both as encoded in the issuer's
certificate. Clients hash those bytes as they find them, so both are cut out of
the TBSCertificate rather than rebuilt from parsed objects: a re-encoding (a
string type, an EC point in another form) would name a different issuer.
"""

from __future__ import annotations

import hashlib

from cryptography import x509

from revocation import der

ALGORITHMS = ("sha1", "sha256", "sha384", "sha512")


def subject_name_and_key(cert: x509.Certificate) -> tuple[bytes, bytes]:
    """The subject Name (DER) and the subjectPublicKey bits of ``cert``, byte for byte as encoded in it.

    The key bits leave out the BIT STRING's unused-bits byte, as RFC 6960 hashes them.
    """
    tbs = cert.tbs_certificate_bytes
    _, pos, _ = der.split_tlv(tbs)
    if tbs[pos] == 0xA0:  # version
        pos = der.split_tlv(tbs, pos)[2]
    for _ in range(4):  # serialNumber, signature, issuer, validity
        pos = der.split_tlv(tbs, pos)[2]
    _, _, subject_end = der.split_tlv(tbs, pos)
    _, spki_start, _ = der.split_tlv(tbs, subject_end)
    _, _, algorithm_end = der.split_tlv(tbs, spki_start)
    _, key_start, key_end = der.split_tlv(tbs, algorithm_end)
    return tbs[pos:subject_end], tbs[key_start + 1 : key_end]


def certid_hashes(cert: x509.Certificate, algorithms: tuple[str, ...] = ALGORITHMS) -> dict[str, tuple[bytes, bytes]]:
    """(issuerNameHash, issuerKeyHash) per hash algorithm for CertIDs naming ``cert`` as issuer."""
    name, key = subject_name_and_key(cert)
    return {alg: (hashlib.new(alg, name).digest(), hashlib.new(alg, key).digest()) for alg in algorithms}
