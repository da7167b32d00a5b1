"""The report of ``pca serve``'s own roles, as granian's workers read it (``pca.main_health``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pca.main_health import main_health_reader, publish_main_health, write_once
from pca.runtime import HealthApp
from revocation.clock import FakeClock


def _app(parts: dict[str, dict[str, Any]]) -> HealthApp:
    async def check(name: str) -> dict[str, Any]:
        return parts[name]

    return HealthApp({name: (lambda n=name: check(n)) for name in parts})


async def test_a_worker_adds_the_servers_parts_and_a_problem_there_degrades_it(tmp_path: Path) -> None:
    parts = {"presigner": {"lease": "active"}, "publisher": {"problem": "the CRL was refused"}}
    await write_once(_app(parts), tmp_path)
    worker = HealthApp({"responder": _ok}, main_health_reader(tmp_path))
    report = await worker.report()
    assert report["presigner"] == {"lease": "active"} and report["responder"] == {"lag_changes": 0}
    assert report["publisher"]["problem"] == "the CRL was refused"
    assert report["status"] == "degraded"


async def _ok() -> dict[str, Any]:
    return {"lag_changes": 0}


async def test_no_report_or_an_old_one_is_a_problem(tmp_path: Path) -> None:
    clock = FakeClock()
    worker = HealthApp({"responder": _ok}, main_health_reader(tmp_path, stale_after=5, clock=clock))
    report = await worker.report()
    assert report["status"] == "degraded" and "not reported" in report["server"]["problem"]
    await write_once(_app({"presigner": {"lease": "active"}}), tmp_path, clock)
    clock.advance(5)
    report = await worker.report()
    assert report["status"] == "ok" and report["presigner"] == {"lease": "active"}
    clock.advance(55)  # the writer's clock (the same wall time) has not written since
    report = await worker.report()
    assert report["status"] == "degraded" and "60 s ago" in report["server"]["problem"]


async def test_a_part_the_worker_can_compute_is_computed_fresh(tmp_path: Path) -> None:
    await write_once(_app({"ca_certificates": {}}), tmp_path)

    async def revoked_now() -> dict[str, Any]:
        return {"problem": "CA certificate of issuing-ca revoked"}

    worker = HealthApp({}, main_health_reader(tmp_path, {"ca_certificates": revoked_now}))
    report = await worker.report()
    assert report["ca_certificates"]["problem"].startswith("CA certificate") and report["status"] == "degraded"


async def test_the_server_rewrites_its_report_when_a_part_changes(tmp_path: Path) -> None:
    parts: dict[str, dict[str, Any]] = {"presigner": {"lease": "standby"}}
    app = _app(parts)
    await write_once(app, tmp_path)
    task = asyncio.create_task(publish_main_health(app, tmp_path, asyncio.Event()))
    try:
        parts["presigner"] = {"lease": "active"}
        reader = main_health_reader(tmp_path)
        for _ in range(100):
            if (await reader())["presigner"] == {"lease": "active"}:
                break
            await asyncio.sleep(0.02)
        assert (await reader())["presigner"] == {"lease": "active"}
    finally:
        task.cancel()
