"""The agent's Prometheus metrics, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class SyncMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.fetches = Counter(
            "crl_sync_fetches",
            "CRL fetches by result: updated (a new CRL verified), unchanged (the installed CRL again), "
            "not_modified (304), refused (failed a check), error (no usable response)",
            ["url", "result"],
            registry=registry,
        )
        self.refusals = Counter(
            "crl_sync_refusals", "CRLs or downloads not installed, by reason", ["url", "reason"], registry=registry
        )
        self.installs = Counter("crl_sync_installs", "output files written (their bytes changed)", registry=registry)
        self.install_errors = Counter(
            "crl_sync_install_errors", "output or state files that could not be written", registry=registry
        )
        self.on_change = Counter(
            "crl_sync_on_change_runs", "--on-change runs by result (ok, failed, timeout)", ["result"], registry=registry
        )
        self.last_install = Gauge(
            "crl_sync_last_install_timestamp_seconds",
            "when a new CRL of the URL was last installed (Unix time)",
            ["url"],
            registry=registry,
        )
        self.crl_number = Gauge("crl_sync_crl_number", "CRL number installed for the URL", ["url"], registry=registry)
        self.until_next_update = Gauge(
            "crl_sync_seconds_until_next_update",
            "seconds until the installed CRL's nextUpdate (negative: expired, relying parties will reject it)",
            ["url"],
            registry=registry,
        )
        self.reports = Counter(
            "crl_sync_reports",
            "installation reports to the admin API by result (sent, rejected, failed, dropped)",
            ["result"],
            registry=registry,
        )
        self.last_pass = Gauge(
            "crl_sync_last_pass_timestamp_seconds", "when the last pass over every URL ended", registry=registry
        )
