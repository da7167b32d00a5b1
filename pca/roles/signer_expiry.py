"""Warning before an issuer's delegated OCSP signer expires: a metric, a /healthz entry and a log line.

Signers of issuers whose key pca holds are rotated automatically (``Authority.rotate_signers``);
an external issuer's signer is renewed by hand (``pca issuer renew-signer`` / ``set-signer``), so
the warning is what tells an operator to do it. The metric covers every issuer with a signer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from pca.runtime import Runtime
from revocation.clock import Clock, iso
from revocation.errors import PCAError
from revocation.projection import IssuerDirectory, IssuerRecord
from revocation.waiting import wait_event

log = logging.getLogger("pca.signers")

CHECK_SECONDS = 300.0
LOG_EVERY_SECONDS = 3600.0  # a standing warning is logged again this often


def _advice(rec: IssuerRecord) -> str:
    if rec.key_ref is not None:
        return "pca rotates it automatically; check the api role's log if it does not"
    return f"renew it: pca issuer renew-signer --id {rec.issuer_id} --ocsp-signer-csr FILE, then set-signer"


class SignerExpiry:
    def __init__(self, view: IssuerDirectory, clock: Clock, registry: CollectorRegistry, *, warn_days: int) -> None:
        self._view = view
        self._clock = clock
        self._warn_seconds = warn_days * 86400
        self._gauge = Gauge(
            "ocsp_signer_expiry_seconds",
            "Seconds until the delegated OCSP signer of each issuer expires (negative: expired)",
            ["issuer"],
            registry=registry,
        )
        self._ca_gauge = Gauge(
            "ca_certificate_expiry_seconds",
            "Seconds until each issuer's own CA certificate expires (negative: expired)",
            ["issuer"],
            registry=registry,
        )
        self._labels: set[str] = set()
        self._logged: dict[str, float] = {}
        self.warnings: list[str] = []
        self.problems: list[str] = []
        self.signers: dict[str, dict[str, Any]] = {}

    async def check(self) -> None:
        now = self._clock.now()
        warnings, problems, signers = [], [], {}
        seen = set()
        for rec in await self._view.issuers():
            self._ca_gauge.labels(rec.issuer_id).set((rec.cert.not_valid_after_utc - now).total_seconds())
            signer = rec.signer_cert
            if signer is None:
                if rec.kind == "external":
                    state = "a CSR waits for its certificate" if rec.pending_key_ref else "no signer key yet"
                    warnings.append(f"issuer {rec.issuer_id} has no OCSP signer ({state}): pca answers no OCSP for it")
                continue
            left = (signer.not_valid_after_utc - now).total_seconds()
            self._gauge.labels(rec.issuer_id).set(left)
            seen.add(rec.issuer_id)
            days = round(left / 86400, 1)
            signers[rec.issuer_id] = {"not_after": iso(signer.not_valid_after_utc), "days_left": days}
            if left <= 0:
                expired_at = iso(signer.not_valid_after_utc)
                problems.append(f"the OCSP signer of issuer {rec.issuer_id} expired at {expired_at}")
            elif left <= self._warn_seconds:
                warnings.append(
                    f"the OCSP signer of issuer {rec.issuer_id} expires in {days} days "
                    f"({iso(signer.not_valid_after_utc)}); {_advice(rec)}"
                )
        for gone in self._labels - seen:
            with contextlib.suppress(KeyError):
                self._gauge.remove(gone)
        self._labels = seen
        self.warnings, self.problems, self.signers = warnings, problems, signers

    def log_new(self) -> None:
        """Log each warning and problem, a standing one again after ``LOG_EVERY_SECONDS``."""
        now = self._clock.monotonic()
        for message in (*self.problems, *self.warnings):
            last = self._logged.get(message)
            if last is None or now - last >= LOG_EVERY_SECONDS:
                self._logged[message] = now
                log.warning("%s", message)

    async def health(self) -> dict[str, Any]:
        await self.check()
        report: dict[str, Any] = {"signers": self.signers}
        if self.warnings:
            # Warnings keep /healthz at 200: the signer still signs; "problem" (503) once it has expired.
            report["warnings"] = self.warnings
        if self.problems:
            report["problem"] = "; ".join(self.problems)
        return report


async def start_signer_expiry(rt: Runtime) -> SignerExpiry:
    expiry = SignerExpiry(rt.view, rt.clock, rt.registry, warn_days=rt.config.ocsp.signer_warn_days)
    await expiry.check()
    expiry.log_new()
    wake = asyncio.Event()
    rt.on_log_change(wake.set)  # a new signer shows at once

    async def run() -> None:
        while True:
            wake.clear()
            await wait_event(wake, CHECK_SECONDS)
            try:
                await expiry.check()
                expiry.log_new()
            except PCAError as exc:
                log.warning("cannot check the OCSP signers: %s", exc)
            await asyncio.sleep(1.0)  # a burst of events costs one read a second at most

    rt.tasks.append(run())
    rt.health["ocsp_signers"] = expiry.health
    return expiry
