"""Readers for importing certificates an existing CA issued: its ``openssl ca`` database and its
certificate files, turned into typed records. Nothing here writes events; the caller decides
what to do with each record and each error.
"""

from __future__ import annotations

from revocation.importing.certfiles import (
    CertificateFile,
    CertificateReadError,
    issued_by,
    read_certificates,
)
from revocation.importing.openssl_index import (
    IndexEntry,
    IndexLineError,
    load_issued_certificate,
    newcerts_filename,
    parse_asn1_time,
    parse_index_line,
    read_openssl_index,
)

__all__ = [
    "CertificateFile",
    "CertificateReadError",
    "IndexEntry",
    "IndexLineError",
    "issued_by",
    "load_issued_certificate",
    "newcerts_filename",
    "parse_asn1_time",
    "parse_index_line",
    "read_certificates",
    "read_openssl_index",
]
