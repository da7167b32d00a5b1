"""The roles a process runs: chosen by name from a mapping of start functions, sharing typed state."""

from __future__ import annotations

import asyncio
import datetime

import pytest

from pca.config import Config
from pca.roles import ROLES, start_role
from pca.roles.publisher import start_crl_server, start_publisher
from pca.roles.responder import start_presigner, start_responder
from pca.runtime import open_runtime
from publishers.http import CRLApp
from responders.app import OCSPApp
from revocation.clock import FakeClock

START = datetime.datetime(2026, 5, 1, 8, 0, tzinfo=datetime.UTC)


def test_each_role_name_maps_to_its_start_function() -> None:
    assert ROLES == {
        "presigner": start_presigner,
        "responder": start_responder,
        "publisher": start_publisher,
        "crlserver": start_crl_server,
    }


async def test_an_unknown_role_is_refused_naming_the_known_ones(ca_config: Config) -> None:
    rt = open_runtime(ca_config, FakeClock(START))
    try:
        known = "presigner, responder, publisher, crlserver"
        with pytest.raises(ValueError, match=f"unknown role 'api'; roles are {known}"):
            await start_role("api", rt)
    finally:
        rt.close()


async def test_the_responder_reports_as_told_and_by_the_runtime_clock(ca_config: Config) -> None:
    clock = FakeClock(START)
    rt = open_runtime(ca_config, clock)
    rt.responder_id = "edge-7"
    rt.responder_url = "http://edge-7.test/ocsp"
    rt.serving = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        await start_role("presigner", rt)
        await start_role("responder", rt)
        await start_role("crlserver", rt)
        # Both OCSP roles use the one response store of the process.
        assert rt.response_store is not None
        # The CRL server also answers, at any other path, the CRL DP paths of external issuers (pca issuer add).
        assert [(prefix, type(app)) for prefix, app in rt.public_apps] == [
            ("/ocsp", OCSPApp),
            ("/crl", CRLApp),
            ("", CRLApp),
        ]

        tasks = [asyncio.create_task(task) for task in rt.tasks]
        await asyncio.sleep(0.2)
        assert await rt.coord.responders() == []  # not serving yet: a responder does not count
        rt.serving.set()
        for _ in range(200):
            states = await rt.coord.responders()
            if states:
                break
            await asyncio.sleep(0.05)
        [state] = states
        assert (state.responder_id, state.url) == ("edge-7", "http://edge-7.test/ocsp")
        # The fake clock stands still in May 2026: the system clock would give today instead.
        assert state.started_at == START.timestamp()
        assert state.last_seen == START.timestamp()
        assert (await rt.health["responder"]())["responder_id"] == "edge-7"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await rt.aclose()
