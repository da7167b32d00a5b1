"""The typed propagation timeline: the JSON it gives, and a saved one read back unchanged."""

from __future__ import annotations

import dataclasses
import json

import pytest

from revocation.coordination import CRLInstallation
from revocation.propagation.timeline import (
    CRLSighting,
    Moment,
    ProbeSighting,
    RelyingPartySighting,
    ResponderProgress,
    Timeline,
    Unrecorded,
    relying_party_sightings,
)
from tests.support.timelines import SEQ, T0
from tests.support.timelines import sample_timeline as _timeline


def test_the_json_is_what_the_admin_api_serves() -> None:
    assert _timeline(T0 + 0.12).to_json() == {
        "issuer_id": "issuing-ca",
        "serial": "1f2e3d",
        "seq": SEQ,
        "committed_at": "2026-01-01T00:00:00Z",
        "superseded": False,
        "presigned": {"at": "2026-01-01T00:00:00.120000Z", "seconds": 0.12},
        "responders": [
            {
                "responder_id": "r1",
                "url": "http://r1/ocsp",
                "state": "applied",
                "applied_at": "2026-01-01T00:00:00.300000Z",
                "seconds": 0.3,
                "applied_change": 9,
                "last_seen": "2026-01-01T00:00:05Z",
                "counted": True,
            },
            {
                "responder_id": "r2",
                "url": "http://r2/ocsp",
                "state": "pending",
                "applied_at": None,
                "seconds": None,
                "applied_change": 8,
                "last_seen": "2026-01-01T00:00:05Z",
                "counted": True,
            },
            {
                "responder_id": "r3",
                "url": "",
                "state": "gone",
                "applied_at": None,
                "seconds": None,
                "applied_change": 2,
                "last_seen": "2025-12-31T00:00:00Z",
                "counted": False,
            },
        ],
        "ocsp_all_responders": None,
        "crl": {"at": "2026-01-01T00:00:02.500000Z", "seconds": 2.5, "kind": "delta", "number": 7, "shard": 0},
        "probes": [{"responder_url": "http://r1/ocsp", "seen_at": "2026-01-01T00:00:00.400000Z", "seconds": 0.4}],
        "pending": ["r2"],
        "slo_seconds": 5.0,
        "slo_met": False,
        "crl_published": True,
        "relying_parties": [
            {"agent": "nginx-1", "at": "2026-01-01T00:00:03.250000Z", "seconds": 3.25, "kind": "delta", "number": 7}
        ],
        "gone_without": [],  # r3 was gone before the revocation: it is not one that missed it
    }


def test_a_responder_that_dies_after_the_commit_without_it_is_named_when_the_slo_is_met_without_it() -> None:
    """r2 was live at the commit, never applied the revocation, and went silent: once it is gone,
    the live r1 alone completes the OCSP channel, and the timeline names r2 as gone without it."""
    while_silent = _timeline(T0 + 0.12, now=T0 + 20, r2_last_seen=T0 + 1)
    assert (while_silent.pending, while_silent.slo_met, while_silent.gone_without) == (("r2",), False, ())
    gone = _timeline(T0 + 0.12, now=T0 + 31.5, r2_last_seen=T0 + 1)
    assert [(r.responder_id, r.state, r.counted) for r in gone.responders] == [
        ("r1", "applied", True),
        ("r2", "gone", False),
        ("r3", "gone", False),
    ]
    assert gone.ocsp_all_responders == Moment("2026-01-01T00:00:00.300000Z", 0.3)
    assert (gone.pending, gone.slo_met, gone.gone_without) == ((), True, ("r2",))
    assert Timeline.from_json(json.loads(json.dumps(gone.to_json()))) == gone


def test_a_responder_whose_process_has_ended_is_gone_at_once_and_named_only_if_it_outlived_the_commit() -> None:
    """r2's id names a process of this machine that has ended (kill -9): however fresh its last heartbeat, it
    no longer holds the OCSP channel open. Dead before the commit, it never could have had the revocation: not
    named; its last heartbeat after the commit, it was live then and died without it: named."""
    waiting = _timeline(T0 + 0.12, now=T0 + 2, r2_last_seen=T0 - 0.5)
    assert (waiting.ocsp_all_responders, waiting.pending) == (None, ("r2",))
    dead_before = _timeline(T0 + 0.12, now=T0 + 2, r2_last_seen=T0 - 0.5, r2_ended=True)
    assert [(r.responder_id, r.state, r.counted) for r in dead_before.responders] == [
        ("r1", "applied", True),
        ("r2", "gone", False),
        ("r3", "gone", False),
    ]
    assert dead_before.ocsp_all_responders == Moment("2026-01-01T00:00:00.300000Z", 0.3)
    assert (dead_before.pending, dead_before.slo_met, dead_before.gone_without) == ((), True, ())
    dead_after = _timeline(T0 + 0.12, now=T0 + 2, r2_last_seen=T0 + 1, r2_ended=True)
    assert dead_after.ocsp_all_responders == Moment("2026-01-01T00:00:00.300000Z", 0.3)
    assert (dead_after.pending, dead_after.slo_met, dead_after.gone_without) == ((), True, ("r2",))


@pytest.mark.parametrize("stored_at", [T0 + 0.12, None], ids=["stored-at-known", "stored-at-unrecorded"])
def test_a_saved_timeline_reads_back_to_the_same_value(stored_at: float | None) -> None:
    timeline = _timeline(stored_at)
    assert isinstance(timeline.presigned, Moment if stored_at is not None else Unrecorded)
    # Through JSON text, as the coordination store keeps it.
    saved = json.loads(json.dumps(timeline.to_json(), sort_keys=True))
    assert Timeline.from_json(saved) == timeline
    assert Timeline.from_json(saved).to_json() == timeline.to_json()


def test_a_timeline_saved_before_relying_parties_were_tracked_reads_back_with_none() -> None:
    saved = _timeline(T0 + 0.12).to_json()
    del saved["relying_parties"]
    assert Timeline.from_json(saved).relying_parties == ()
    assert Timeline.from_json(saved).to_json() == {**saved, "relying_parties": []}


def test_relying_party_sightings_keep_each_agents_earliest_of_a_crl_listing_it() -> None:
    c = T0
    installs = [
        CRLInstallation("b", "ca", 0, "full", 6, SEQ - 1, c + 0.5),  # published before the revocation
        CRLInstallation("b", "ca", 0, "delta", 9, SEQ + 2, c + 9.0),
        CRLInstallation("a", "ca", 0, "full", 8, SEQ, c + 4.0),
        CRLInstallation("a", "ca", 0, "delta", 7, SEQ, c + 2.0),
    ]
    assert relying_party_sightings(installs, SEQ, c) == (
        RelyingPartySighting("a", "2026-01-01T00:00:02Z", 2.0, "delta", 7),
        RelyingPartySighting("b", "2026-01-01T00:00:09Z", 9.0, "delta", 9),
    )
    # Merged with those saved before: the earlier of the two per agent.
    saved = (RelyingPartySighting("b", "2026-01-01T00:00:05Z", 5.0, "full", 8),)
    assert [(s.agent, s.seconds) for s in relying_party_sightings(installs, SEQ, c, saved)] == [("a", 2.0), ("b", 5.0)]
    assert relying_party_sightings(installs, SEQ + 3, c) == ()


def test_missing_names_the_channels_not_reached() -> None:
    assert _timeline(T0).missing() == ["ocsp_all_responders"]
    superseded = _timeline(T0, superseded=True)
    assert (superseded.pending, superseded.slo_met) == ((), None)


def test_each_part_of_a_timeline_is_its_fields_as_json_and_a_copy() -> None:
    parts = [
        ResponderProgress(
            "r1", "http://r1.test/ocsp", "applied", "2026-01-01T00:00:01Z", 1.0, 7, "2026-01-01T00:00:02Z", True
        ),
        CRLSighting("2026-01-01T00:00:03Z", 3.0, "delta", 12, 0),
        ProbeSighting("http://r1.test/ocsp", "2026-01-01T00:00:01Z", 1.0),
        RelyingPartySighting("agent-1", "2026-01-01T00:00:04Z", 4.0, "full", 11),
    ]
    for part in parts:
        data = part.to_json()
        assert data == dataclasses.asdict(part)
        assert list(data) == [f.name for f in dataclasses.fields(part)]
        assert type(part).from_json(json.loads(json.dumps(data))) == part
        data["seconds"] = -1.0  # what the caller does with it is not the part's business
        assert part.to_json() == dataclasses.asdict(part)
