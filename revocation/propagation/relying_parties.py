"""The tracker's ``relying_party`` channel: CRLs installed by relying parties' CRL sync agents.

A sync agent (``pca crl-sync``) at a relying party (an nginx or HAProxy host) reports each CRL it
installs with ``POST /v1/propagation/crl-installations``; the coordination store keeps one row per
agent and CRL, with the log position the CRL was published from. A revocation has reached an agent
once the agent installed a CRL of the certificate's (issuer, shard) published from a position at or
past the revocation's seq (``relying_party_sightings``); a CRL published before it does not list it.

The channel is informative only: agents are optional and outside pca's control, so it never counts
toward ``slo_met`` or ``Timeline.missing()``, and a revocation no agent installed is not a breach.

Retention, kept simple: ``watch_agents`` reads once, per followed revocation, the agents *known* for
its shard: those that reported an installation of one of the shard's CRLs at or after
``KNOWN_AGENT_WINDOW`` (an hour) before the commit (for a batch followed together, before the
earliest commit of the batch). The tracker keeps the revocation in memory until each known agent
has installed it, never past its ``give_up_after``, so that each agent's delay is observed in
``revocation_propagation_seconds{channel="relying_party"}``: once per (revocation, agent), when
first seen, for known agents and for any other agent that installs it while it is followed.
Installations reported later still show in the timeline served (merged in when it is read).
Rows older than ``KEEP_INSTALLATIONS`` are pruned: an on-demand timeline of a revocation the tracker
did not save shows only the agents whose rows remain.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

from revocation.coordination import CRLInstallation, CRLPublication, InstallationLog
from revocation.propagation.timeline import since

KNOWN_AGENT_WINDOW = 3600.0  # seconds before a commit in which an agent's installation makes it known
# Installations are pruned after a day (with responder progress): a finished timeline keeps its sightings,
# and the known agents need only the last hour's.
KEEP_INSTALLATIONS = 86_400.0


@dataclasses.dataclass
class AgentWatch:
    """The relying parties of one followed revocation."""

    known: frozenset[str] | None = None  # agents expected to install it; None until read
    installed: dict[str, CRLInstallation] = dataclasses.field(default_factory=dict)  # agent -> its first

    def waiting(self) -> list[str]:
        """The known agents that have not installed a CRL listing it yet."""
        return sorted((self.known or frozenset()) - self.installed.keys())


class Followed(Protocol):
    """What ``watch_agents`` needs of a revocation the tracker follows."""

    issuer_id: str
    seq: int
    committed_at: float
    shard: int | None
    crl: CRLPublication | None
    crl_published: bool
    agents: AgentWatch


def _earliest_from(rows: list[CRLInstallation]) -> tuple[list[int], list[CRLInstallation]]:
    """One agent's rows by position, and for each index the earliest installation at or past it."""
    rows = sorted(rows, key=lambda r: (r.position, r.installed_at))
    suffix: list[CRLInstallation] = []
    best: CRLInstallation | None = None
    for row in reversed(rows):
        if best is None or row.installed_at < best.installed_at:
            best = row
        suffix.append(best)
    suffix.reverse()
    return [r.position for r in rows], suffix


async def watch_agents(coord: InstallationLog, followed: Sequence[Followed], observe: Callable[[float], None]) -> None:
    """Note the known agents of each followed revocation (once) and the agents that installed it;
    ``observe`` gets each new (revocation, agent)'s seconds from the commit. One read of agents and
    one of installations per (issuer, shard)."""
    by_shard: dict[tuple[str, int], list[Followed]] = {}
    for t in followed:
        if t.shard is not None and t.crl_published:
            by_shard.setdefault((t.issuer_id, t.shard), []).append(t)
    for (issuer_id, shard), group in by_shard.items():
        unread = [t for t in group if t.agents.known is None]
        if unread:
            since_ = min(t.committed_at for t in unread) - KNOWN_AGENT_WINDOW
            known = frozenset(await coord.crl_agents(issuer_id, shard, since_))
            for t in unread:
                t.agents.known = known
        # No agent can have installed a CRL listing it before pca published one.
        ready = [t for t in group if t.crl is not None]
        if not ready:
            continue
        rows = await coord.crl_installations(issuer_id, shard, min(t.seq for t in ready))
        by_agent: dict[str, list[CRLInstallation]] = {}
        for row in rows:
            by_agent.setdefault(row.agent, []).append(row)
        for agent, agent_rows in by_agent.items():
            lacking = [t for t in ready if agent not in t.agents.installed]
            if not lacking:
                continue
            positions, earliest = _earliest_from(agent_rows)
            for t in lacking:
                i = bisect.bisect_left(positions, t.seq)
                if i < len(positions):
                    first = earliest[i]
                    t.agents.installed[agent] = first
                    observe(since(first.installed_at, t.committed_at))
