"""One revocation's timeline, built by the real ``build_timeline``: for the tests of its JSON and of
the CLI that prints it (so the CLI is tested on the shape the API serves, not a copy of it)."""

from __future__ import annotations

from revocation.coordination import CRLInstallation, CRLPublication, PresignedState, ProbeResult, ResponderState
from revocation.propagation.timeline import Timeline, build_timeline

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SEQ = 42


def sample_timeline(
    stored_at: float | None,
    *,
    superseded: bool = False,
    now: float = T0 + 10,
    slo_seconds: float = 5.0,
    crl_published: bool = True,
    r2_last_seen: float = T0 + 5,
    r2_ended: bool = False,
) -> Timeline:
    """Revoked at T0 (seq 42): r1 applied it, r2 has not (``r2_ended``: its process on this machine has ended),
    r3 is gone; a delta CRL and a probe saw it;
    relying party nginx-1 installed that delta (haproxy-2 only a CRL from before the revocation)."""
    return build_timeline(
        issuer_id="issuing-ca",
        serial=0x1F2E3D,
        seq=SEQ,
        committed_at=T0,
        superseded=superseded,
        presigned=PresignedState("issuing-ca", 0x1F2E3D, "revoked", SEQ, 9, stored_at),
        responders=[
            ResponderState("r1", "http://r1/ocsp", 9, T0 - 100, T0 + 5),
            ResponderState("r2", "http://r2/ocsp", 8, T0 - 100, r2_last_seen, ended=r2_ended),
            ResponderState("r3", "", 2, T0 - 100, T0 - 86_400),
        ],
        applied={"r1": T0 + 0.3},
        crl=CRLPublication("issuing-ca", 0, "delta", 7, SEQ, T0 + 2.5) if crl_published else None,
        probes=[
            ProbeResult("issuing-ca", 0x1F2E3D, SEQ, "http://r1/ocsp", T0 + 0.4),
            ProbeResult("issuing-ca", 0x1F2E3D, SEQ - 5, "http://r1/ocsp", T0 - 50),  # an earlier revocation
        ],
        now=now,
        gone_after=30.0,
        slo_seconds=slo_seconds,
        crl_published=crl_published,
        installations=[
            CRLInstallation("haproxy-2", "issuing-ca", 0, "full", 6, SEQ - 1, T0 + 1.0),
            CRLInstallation("nginx-1", "issuing-ca", 0, "delta", 7, SEQ, T0 + 3.25),
            CRLInstallation("nginx-1", "issuing-ca", 0, "full", 8, SEQ + 9, T0 + 60.0),
        ]
        if crl_published
        else [],
    )
