"""The OCSP fuzzer's grammar, driven by Hypothesis, against the responder ``pca serve`` runs.

A few thousand structure-aware inputs (``loadtests.fuzz_inputs``: OCSPRequests broken field by
field and byte by byte, base64 and percent-encoding good and bad, wrong content types, huge
bodies, other methods) go into the responder's ASGI app; every answer must be a well-formed
OCSP response for the CertID asked, or a clean 4xx. A failure shrinks to a small input. The
million-input run is ``python -m loadtests.ocsp_fuzz`` (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import collections

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtests.common import populate, presign_all
from loadtests.fuzz_inputs import HypothesisChooser, Input, RandomChooser, make_input
from loadtests.ocsp_fuzz import Failure, Tally, call_app, fuzz_app, judge, open_responder
from pca.config import Config
from pca.runtime import open_runtime
from revocation.clock import SystemClock

EXAMPLES = 2500


def _presigned_ca(cfg: Config) -> tuple[list[int], list[int]]:
    rt = open_runtime(cfg, SystemClock())
    try:
        population = asyncio.run(populate(rt, 40, revoked_every=4))
        asyncio.run(presign_all(rt, 1))
    finally:
        rt.close()
    return population.good(), sorted(population.revoked)


def test_no_input_of_the_grammar_gets_a_5xx_or_a_wrong_answer(ca_config: Config) -> None:
    good, revoked = _presigned_ca(ca_config)
    outcomes: collections.Counter[str] = collections.Counter()
    with asyncio.Runner() as runner:
        responder = runner.run(open_responder(ca_config, good, revoked))
        try:

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(st.data())
            def answered_cleanly(data: st.DataObject) -> None:
                inp = make_input(HypothesisChooser(data), responder.known)
                outcomes[judge(inp, *runner.run(call_app(responder.app, inp)))] += 1

            answered_cleanly()
        finally:
            responder.close()
    # The grammar reaches every kind of answer: the lookup (good, revoked, unknown), the parser's
    # refusals and the HTTP checks.
    for outcome in ("ocsp successful", "ocsp malformed_request", "ocsp unauthorized", "http 415", "http 405"):
        assert outcomes[outcome] > 0, outcomes


def test_the_oracle_refuses_what_the_responder_must_never_answer() -> None:
    inp = Input("post", "POST", "/ocsp", (), b"x")
    for status, headers, body in (
        (500, {}, b""),
        (200, {b"content-type": b"text/html"}, b"<html>"),
        (200, {b"content-type": b"application/ocsp-response"}, b"\x30\x03\x0a\x01\x02"),  # internalError
        (200, {b"content-type": b"application/ocsp-response"}, b"not DER"),
        (302, {}, b""),
    ):
        with pytest.raises(Failure):
            judge(inp, status, headers, body)


def test_the_fast_driver_runs_the_same_grammar_without_failures(ca_config: Config) -> None:
    good, revoked = _presigned_ca(ca_config)

    async def run() -> Tally:
        responder = await open_responder(ca_config, good, revoked)
        try:
            tally = Tally()
            await fuzz_app(responder.app, responder.known, RandomChooser(7), 3000, tally)
            return tally
        finally:
            responder.close()

    tally = asyncio.run(run())
    assert (tally.inputs, tally.failure_count) == (3000, 0), tally.failures
    assert tally.outcomes["ocsp successful"] > 100
