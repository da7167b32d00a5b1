"""The admin API's Prometheus series: requests by route, status and role, and their time.

Labels are the route's handler name (not the path, which holds serials), the status code and
the caller's role (``none`` before authentication): a few dozen series at most.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

NO_ROLE = "none"


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests = Counter(
            "admin_requests_total", "Admin API requests", ["route", "status", "role"], registry=registry
        )
        self._latency = Histogram("admin_request_seconds", "Admin API request time", ["route"], registry=registry)

    def observe(self, route: str, status: int, role: str, seconds: float) -> None:
        self._requests.labels(route, str(status), role).inc()
        self._latency.labels(route).observe(seconds)
