"""The granian workers' series, as the /metrics that covers them adds them up."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pca.metrics import workers_registry


def _worker(path: Path, pid: int, requests: int, entries: int) -> None:
    registry = CollectorRegistry()
    Counter("ocsp_requests", "OCSP requests by result", ["result"], registry=registry).labels("good").inc(requests)
    Gauge("ocsp_cache_entries", "Responses held", registry=registry).set(entries)
    latency = Histogram("ocsp_request_seconds", "time", registry=registry, buckets=(0.001, 0.01))
    for _ in range(requests):
        latency.observe(0.005)
    (path / f"worker-{pid}.prom").write_bytes(generate_latest(registry))


def test_counters_and_histograms_are_summed_gauges_kept_per_worker_and_dead_workers_left_out(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        _worker(tmp_path, os.getpid(), 3, 10)
        _worker(tmp_path, child.pid, 4, 20)
        _worker(tmp_path, dead.pid, 100, 30)
        registry = workers_registry(tmp_path)
        assert registry.get_sample_value("ocsp_requests_total", {"result": "good"}) == 7
        assert registry.get_sample_value("ocsp_request_seconds_count") == 7
        assert registry.get_sample_value("ocsp_request_seconds_bucket", {"le": "0.01"}) == 7
        assert registry.get_sample_value("ocsp_request_seconds_bucket", {"le": "0.001"}) == 0
        assert registry.get_sample_value("ocsp_cache_entries", {"pid": str(os.getpid())}) == 10
        assert registry.get_sample_value("ocsp_cache_entries", {"pid": str(child.pid)}) == 20
        assert registry.get_sample_value("ocsp_cache_entries", {"pid": str(dead.pid)}) is None
        assert not (tmp_path / f"worker-{dead.pid}.prom").exists()
        text = generate_latest(registry).decode()
        assert text.count("# TYPE ocsp_requests_total counter") == 1
    finally:
        child.kill()
        child.wait()


def test_the_main_process_series_are_served_beside_the_workers_without_a_pid_label(tmp_path: Path) -> None:
    # pca serve with signing roles and a granian listener but no admin listener writes its own file.
    _worker(tmp_path, os.getpid(), 3, 10)
    main = CollectorRegistry()
    Gauge("role_lease_active", "lease", ["role"], registry=main).labels("presigner").set(1)
    Counter("signing_operations", "signatures", ["role"], registry=main).labels("presigner").inc(5)
    (tmp_path / f"main-{os.getpid()}.prom").write_bytes(generate_latest(main))
    registry = workers_registry(tmp_path)
    assert registry.get_sample_value("role_lease_active", {"role": "presigner"}) == 1
    assert registry.get_sample_value("signing_operations_total", {"role": "presigner"}) == 5
    assert registry.get_sample_value("ocsp_cache_entries", {"pid": str(os.getpid())}) == 10
