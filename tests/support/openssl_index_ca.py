"""A real ``openssl ca`` directory (index.txt, newcerts/, serial) for the import tests, as functions on a
directory; the configuration and the ``openssl`` runner are those of ``tests.support.openssl_ca``."""

from __future__ import annotations

from pathlib import Path

from tests.support.openssl_ca import CNF, openssl

__all__ = ["issue", "make_ca", "openssl", "revoke"]

NOT_AFTER = "20301231235959Z"


def make_ca(d: Path, name: str) -> None:
    """An openssl ca in ``d`` with an EC P-256 key; its first serial is 0xFF."""
    d.mkdir(parents=True)
    (d / "newcerts").mkdir()
    (d / "index.txt").write_text("")
    (d / "serial").write_text("FF\n")  # the second serial, 0x100, checks openssl's even-digit names
    # Certificates issued without -extensions carry none: no AIA, no CRL DP.
    (d / "openssl.cnf").write_text(
        CNF.format(d=d, ocsp_url="http://unused.test/ocsp", crl_url="http://unused.test/c.crl")
    )
    openssl(*("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
            *("-keyout", d / "ca.key", "-out", d / "ca.pem", "-subj", f"/CN={name}", "-days", "30"))  # fmt: skip


def issue(d: Path, cn: str, enddate: str = NOT_AFTER, startdate: str | None = None) -> None:
    csr = d / f"{cn}.csr"
    openssl(*("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
            *("-keyout", d / f"{cn}.key", "-out", csr, "-subj", f"/CN={cn}"))  # fmt: skip
    dates = ("-startdate", startdate) if startdate else ()
    out = d / f"{cn}.pem"
    openssl("ca", "-batch", "-config", d / "openssl.cnf", "-in", csr, "-out", out, "-enddate", enddate, *dates)


def revoke(d: Path, cert: Path, *option: str) -> None:
    """``openssl ca -revoke cert`` with options such as ``-crl_reason keyCompromise``."""
    openssl("ca", "-config", d / "openssl.cnf", "-revoke", cert, *option)
