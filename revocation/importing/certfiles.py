"""Reading certificate files (PEM, PEM bundles, DER, directories) and checking who signed them."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from revocation.errors import ValidationError

# Far above any real bundle; a larger file is most likely not a certificate file at all,
# and each file is read whole (one at a time), so this bounds memory.
MAX_FILE_BYTES = 64 * 1024 * 1024
# The body stops at the next "-----": with a lazy ".*?" an unterminated BEGIN would swallow the
# certificates after it up to their END, and rescanning from every such line is quadratic.
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n((?:(?!-----).)*)-----END \1-----", re.DOTALL)
_CERTIFICATE_LABELS = frozenset({b"CERTIFICATE", b"X509 CERTIFICATE"})


@dataclasses.dataclass(frozen=True)
class CertificateFile:
    """One certificate and where it was found: ``index`` is its position among a file's certificates."""

    path: Path
    index: int
    encoding: Literal["PEM", "DER"]
    certificate: x509.Certificate

    @property
    def where(self) -> str:
        return f"{self.path}#{self.index}"


@dataclasses.dataclass(frozen=True)
class CertificateReadError:
    """A file (or one block of a bundle, when ``index`` is set) that yielded no certificate."""

    path: Path
    index: int | None
    message: str

    @property
    def where(self) -> str:
        return str(self.path) if self.index is None else f"{self.path}#{self.index}"

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def _files(root: Path) -> Iterator[Path | CertificateReadError]:
    """Regular files under ``root`` in sorted order, walked lazily; symlinked folders are not followed."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        yield CertificateReadError(root, None, f"cannot list the directory: {exc.strerror or exc}")
        return
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            yield from _files(path)
        elif entry.is_file():
            yield path


def _read_pem(path: Path, data: bytes) -> Iterator[CertificateFile | CertificateReadError]:
    index = 0
    labels: list[str] = []
    for match in _PEM_BLOCK.finditer(data):
        label = match.group(1)
        if label not in _CERTIFICATE_LABELS:
            labels.append(label.decode())  # keys or CRLs next to certificates are not ours to report
            continue
        try:
            cert = x509.load_pem_x509_certificate(match.group(0))
        except ValueError:  # cryptography's text names parser internals
            yield CertificateReadError(path, index, "PEM certificate block does not decode to a certificate")
        else:
            yield CertificateFile(path, index, "PEM", cert)
        index += 1
    if index == 0:
        found = f"only {', '.join(sorted(set(labels)))} blocks" if labels else "no complete PEM block"
        yield CertificateReadError(path, None, f"PEM file without a certificate: {found}")


def _read_file(path: Path) -> Iterator[CertificateFile | CertificateReadError]:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            yield CertificateReadError(path, None, f"{size} bytes, over the {MAX_FILE_BYTES}-byte limit")
            return
        data = path.read_bytes()
    except OSError as exc:
        yield CertificateReadError(path, None, f"cannot read: {exc.strerror or exc}")
        return
    if b"-----BEGIN " in data:
        yield from _read_pem(path, data)
        return
    try:
        cert = x509.load_der_x509_certificate(data)
    except ValueError:
        yield CertificateReadError(path, None, "neither a PEM file nor a DER certificate")
        return
    yield CertificateFile(path, 0, "DER", cert)


def read_certificates(paths: Iterable[str | Path]) -> Iterator[CertificateFile | CertificateReadError]:
    """Every certificate in ``paths`` (files or directories, recursively), one file in memory at a time.

    A file that is not a certificate is reported as a ``CertificateReadError`` and the walk goes on.
    """
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for found in _files(path):
                if isinstance(found, CertificateReadError):
                    yield found
                else:
                    yield from _read_file(found)
        elif path.exists():
            yield from _read_file(path)
        else:
            yield CertificateReadError(path, None, "no such file or directory")


def _describe(cert: x509.Certificate) -> str:
    return f"certificate serial {cert.serial_number:x} (subject {cert.subject.rfc4514_string()!r})"


def issued_by(cert: x509.Certificate, issuer_cert: x509.Certificate) -> None:
    """Refuse ``cert`` unless ``issuer_cert``'s key signed it and its issuer name is that subject."""
    try:
        cert.verify_directly_issued_by(issuer_cert)
    except InvalidSignature:
        why = "the signature does not verify with the issuer's key"
    except ValueError as exc:
        # cryptography raises ValueError for an issuer name mismatch or a signature algorithm
        # it cannot check; both mean we cannot accept the pair
        why = f"{exc} (certificate names issuer {cert.issuer.rfc4514_string()!r})"
    except TypeError as exc:
        why = f"the issuer's key type cannot verify signatures: {exc}"
    else:
        return
    # named only on failure: rfc4514_string costs as much as the signature check itself
    issuer_subject = issuer_cert.subject.rfc4514_string()
    raise ValidationError(f"{_describe(cert)} is not issued by {issuer_subject!r}: {why}")
