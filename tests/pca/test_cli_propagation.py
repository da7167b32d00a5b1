"""``pca propagation``: what it asks the admin API and how it shows the timeline.

The admin API is stood in for by httpx's MockTransport, so these tests fix the
request (path, query, token) and the printed text; the real endpoint is tested in
tests/revocation/admin/test_api_propagation.py and the real server's answer in
tests/revocation/propagation/test_prober.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pca import cli
from tests.support.timelines import T0, sample_timeline

# What the admin API serves: the real timeline's JSON.
TIMELINE: dict[str, Any] = sample_timeline(T0 + 0.12, slo_seconds=1.0).to_json()


Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Callable[[Handler], list[httpx.Request]]:
    """Route the CLI's admin client to ``handler``; returns the list of requests it received."""

    def install(handler: Handler) -> list[httpx.Request]:
        seen: list[httpx.Request] = []
        real_client = httpx.Client

        def record(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return handler(request)

        def client(**kwargs: Any) -> httpx.Client:
            return real_client(transport=httpx.MockTransport(record), **kwargs)

        monkeypatch.setattr(httpx, "Client", client)
        return seen

    return install


ARGS = ["--admin-url", "http://admin", "--token", "pca_t"]


def test_propagation_prints_each_stage(
    api: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    seen = api(lambda request: httpx.Response(200, json=TIMELINE))

    cli.main(["propagation", *ARGS, "1F2E3D", "--issuer", "issuing-ca"])

    [request] = seen
    assert request.url.path == "/v1/certificates/1F2E3D/propagation"
    assert request.url.params["issuer"] == "issuing-ca"
    assert request.headers["authorization"] == "Bearer pca_t"
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "1f2e3d from issuing-ca: revoked by event seq 42",
        "  committed          2026-01-01T00:00:00Z",
        "  pre-signed         2026-01-01T00:00:00.120000Z (+0.120s)",
        "  responder r1 http://r1/ocsp: applied 2026-01-01T00:00:00.300000Z (+0.300s)",
        "  responder r2 http://r2/ocsp: pending",
        "  responder r3: gone (not counted)",
        "  all responders     pending (not caught up: r2)",
        "  CRL                delta CRL number 7 2026-01-01T00:00:02.500000Z (+2.500s)",
        "  relying party nginx-1: installed delta CRL number 7 2026-01-01T00:00:03.250000Z (+3.250s)",
        "  probe http://r1/ocsp: saw revoked 2026-01-01T00:00:00.400000Z (+0.400s)",
        "  SLO 1s: NOT met",
    ]


def test_propagation_when_everything_arrived(
    api: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    done = {
        **TIMELINE,
        "responders": [TIMELINE["responders"][0]],
        "ocsp_all_responders": {"at": "2026-01-01T00:00:00.300000Z", "seconds": 0.3},
        "crl": {**TIMELINE["crl"], "kind": "full", "shard": 3},
        "pending": [],
        "slo_met": True,
    }
    api(lambda request: httpx.Response(200, json=done))

    cli.main(["propagation", *ARGS, "1f2e3d"])

    out = capsys.readouterr().out
    assert "  all responders     2026-01-01T00:00:00.300000Z (+0.300s)\n" in out
    assert "  CRL                full CRL number 7 (shard 3) 2026-01-01T00:00:02.500000Z (+2.500s)\n" in out
    assert "not caught up" not in out and "superseded" not in out
    assert out.splitlines()[-1] == "  SLO 1s: met"


def test_an_slo_met_without_a_responder_that_went_gone_names_it(
    api: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    """r2 died after the commit without the revocation: "met" alone would hide that it never had it."""
    gone = sample_timeline(T0 + 0.12, slo_seconds=1.0, now=T0 + 31.5, r2_last_seen=T0 + 1).to_json()
    api(lambda request: httpx.Response(200, json=gone))

    cli.main(["propagation", *ARGS, "1f2e3d"])

    out = capsys.readouterr().out
    assert "  responder r2 http://r2/ocsp: gone (not counted)\n" in out
    assert out.splitlines()[-1] == "  SLO 1s: met by live responders; r2 gone"


def test_a_released_hold_says_so(
    api: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    api(lambda request: httpx.Response(200, json={**TIMELINE, "superseded": True, "pending": [], "slo_met": None}))
    cli.main(["propagation", *ARGS, "1f2e3d"])
    out = capsys.readouterr().out
    assert out.splitlines()[1] == "  superseded: the hold was released since; nothing is waited for any more"
    assert out.splitlines()[-1] == "  SLO 1s: not decided yet"


def test_propagation_json(api: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]) -> None:
    api(lambda request: httpx.Response(200, json=TIMELINE))
    cli.main(["propagation", *ARGS, "1f2e3d", "--json"])
    assert json.loads(capsys.readouterr().out) == TIMELINE


def test_a_sparse_timeline_still_prints(
    api: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    api(lambda request: httpx.Response(200, json={"issuer_id": "issuing-ca", "serial": "ab", "seq": 3}))
    cli.main(["propagation", *ARGS, "ab"])
    out = capsys.readouterr().out
    assert "committed          ?" in out
    assert "pre-signed         pending" in out
    assert "responders         none known" in out
    assert "relying parties    none reported" in out
    assert out.splitlines()[-1] == "  SLO: not decided yet"


@pytest.mark.parametrize(
    ("status", "detail"),
    [
        (404, "certificate ab from issuing-ca was never revoked"),
        (503, "propagation tracking is not configured on this server"),
        (400, "serial 'zz' is not a hexadecimal number"),
    ],
)
def test_propagation_errors_exit_nonzero_with_the_problem_detail(
    api: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str], status: int, detail: str
) -> None:
    problem = {"type": "about:blank", "title": "Some Title", "status": status, "detail": detail}
    api(lambda request: httpx.Response(status, json=problem, headers={"content-type": "application/problem+json"}))

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["propagation", *ARGS, "ab"])

    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f"pca: error: Some Title: {detail}\n"


def test_propagation_of_an_issuer_whose_crls_pca_does_not_publish(
    api: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    keyless = sample_timeline(T0 + 0.12, crl_published=False).to_json()
    api(lambda request: httpx.Response(200, json=keyless))

    cli.main(["propagation", *ARGS, "1f2e3d"])

    assert "  CRL                not published by pca (it does not hold this issuer's key)\n" in capsys.readouterr().out


def test_propagation_lists_every_relying_party_or_none(
    api: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    two = [
        {"agent": "nginx-1", "at": "2026-01-01T00:00:03.250000Z", "seconds": 3.25, "kind": "delta", "number": 7},
        {"agent": "haproxy-2", "at": "2026-01-01T00:01:00Z", "seconds": 60.0, "kind": "full", "number": 8},
    ]
    served = [
        {**TIMELINE, "relying_parties": two},
        {**TIMELINE, "relying_parties": []},
        # Saved before relying parties were tracked: without the key.
        {k: v for k, v in TIMELINE.items() if k != "relying_parties"},
    ]
    api(lambda request: httpx.Response(200, json=served.pop(0)))

    cli.main(["propagation", *ARGS, "1f2e3d"])
    out = capsys.readouterr().out
    assert "  relying party nginx-1: installed delta CRL number 7 2026-01-01T00:00:03.250000Z (+3.250s)\n" in out
    assert "  relying party haproxy-2: installed full CRL number 8 2026-01-01T00:01:00Z (+60.000s)\n" in out
    assert "none reported" not in out
    for _ in range(2):
        cli.main(["propagation", *ARGS, "1f2e3d"])
        assert "  relying parties    none reported\n" in capsys.readouterr().out
