"""High availability on PostgreSQL, as real processes: the pre-signer and the publisher started
twice, the active one killed, stopped or frozen; and the responder under granian with two workers.

The issue asks: exactly one pre-signer and one publisher are active at a time; the other
takes over within seconds when the first dies (at once when it stops cleanly); nothing is
signed into the past, no CRL number goes down, no revocation is lost. Everything is
checked from outside, over HTTP (each process's /healthz and /metrics, OCSP, the CRLs),
plus the lease table itself.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import itertools
import re
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import httpx
import pytest
from cryptography import x509
from cryptography.x509 import ocsp

from revocation.coordination import ResponderState
from revocation.storage.postgres.coordination import PostgresCoordination
from revocation.storage.postgres.db import open_pg_pool
from tests.support.crl import crl_number, delta_base
from tests.support.ports import free_port
from tests.support.postgres import PostgresCluster, create_database, postgres_cluster
from tests.support.processes import descendants
from tests.support.scaled import Deployment, RoleProcess, metric, ocsp_answer, ocsp_get_url, set_options, wait_for

pytestmark = pytest.mark.e2e

LEASE = 3.0  # scale.lease_seconds: renewals every second
TAKEOVER_BOUND = LEASE + 4.0  # a standby polls every LEASE / 3; the rest is slack for a loaded machine


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    with postgres_cluster() as pg:
        yield pg


def deployment(tmp_path: Path, pg: PostgresCluster) -> Deployment:
    """A CA in a database of its own on the cluster, with short leases and quick CRLs."""
    dep = Deployment(tmp_path / "ca", pg, database_url=asyncio.run(create_database(pg.dsn)))
    set_options(
        dep.config,
        scale={"lease_seconds": LEASE, "heartbeat_seconds": 0.5},
        ocsp={"workers": 1},
        crl={"after_revocation_seconds": 0.5},
    )
    return dep


def database_url(dep: Deployment) -> str:
    match = re.search(r'(?m)^url = "([^"]+)"', dep.config.read_text())
    assert match, "no database url in pca.toml"
    return match.group(1)


def lease_row(dsn: str, name: str) -> tuple[str, float, float] | None:
    """(holder, expires_at, acquired_at) of the lease, read from the table behind the processes' backs."""

    async def read() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchrow("SELECT holder, expires_at, acquired_at FROM leases WHERE name = $1", name)
        finally:
            await conn.close()

    row = asyncio.run(read())
    return None if row is None else (str(row["holder"]), float(row["expires_at"]), float(row["acquired_at"]))


def fresh_renewal(dsn: str, name: str) -> tuple[str, float, float]:
    """The lease just after its holder renewed it (so its expiry is a whole lease away)."""
    first = lease_row(dsn, name)
    assert first is not None, f"nobody holds the {name} lease"
    return wait_for(  # type: ignore[no-any-return]
        f"the {name} lease to be renewed",
        lambda: (row := lease_row(dsn, name)) is not None and row[1] > first[1] and row,
        interval=0.02,
    )


def lease_state(proc: RoleProcess, role: str) -> tuple[str, str, float | None]:
    """(lease state, holder) from the process's /healthz, and its role_lease_active gauge."""
    report = proc.health()[role]
    gauge = metric(
        httpx.get(proc.health_url.replace("/healthz", "/metrics"), timeout=5).text, "role_lease_active", role=role
    )
    return str(report["lease"]), str(report["holder"]), gauge


def exactly_one_active(procs: list[RoleProcess], role: str) -> RoleProcess | None:
    """The active process when exactly one says it is (health and gauge agreeing) and the rest stand by."""
    states = [lease_state(p, role) for p in procs]
    active = [p for p, (state, _, gauge) in zip(procs, states, strict=True) if state == "active" and gauge == 1.0]
    standby = [p for p, (state, _, gauge) in zip(procs, states, strict=True) if state == "standby" and gauge == 0.0]
    return active[0] if len(active) == 1 and len(standby) == len(procs) - 1 else None


def answered(client: httpx.Client, url: str, want: str) -> bool:
    return ocsp_answer(client, url) == (200, want)


class OCSPWatch(threading.Thread):
    """Asks the responder about every certificate, over and over; keeps every answer it got."""

    def __init__(self, url: str, certs: list[x509.Certificate], issuer: x509.Certificate) -> None:
        super().__init__(daemon=True)
        self.urls = {cert.serial_number: ocsp_get_url(url, cert, issuer) for cert in certs}
        self.stop_event = threading.Event()
        # serial -> [(status, thisUpdate, revocation time)], one per SingleResponse, in the order seen
        self.seen: defaultdict[int, list[tuple[str, datetime.datetime, datetime.datetime | None]]] = defaultdict(list)
        self.errors: Counter[str] = Counter()

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.stop_event.is_set():
                for serial, url in self.urls.items():
                    try:
                        resp = client.get(url)
                    except httpx.HTTPError as exc:
                        self.errors[type(exc).__name__] += 1
                        continue
                    parsed = ocsp.load_der_ocsp_response(resp.content) if resp.status_code == 200 else None
                    if parsed is None or parsed.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
                        self.errors[f"HTTP {resp.status_code}"] += 1
                        continue
                    for single in parsed.responses:
                        revoked_at = (
                            single.revocation_time_utc
                            if single.certificate_status == ocsp.OCSPCertStatus.REVOKED
                            else None
                        )
                        self.seen[serial].append(
                            (single.certificate_status.name.lower(), single.this_update_utc, revoked_at)
                        )
                self.stop_event.wait(0.3)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(10)

    def check(self, revoked: set[int], good: set[int]) -> None:
        """thisUpdate never goes back; a revoked certificate never answers good again; at the end each
        answers what it should."""
        for serial, answers in self.seen.items():
            for (status, this_update, _), (later_status, later_update, _) in itertools.pairwise(answers):
                assert later_update >= this_update, f"{serial:x}: thisUpdate went back: {this_update} -> {later_update}"
                assert not (status == "revoked" and later_status != "revoked"), (
                    f"{serial:x}: revoked, then {later_status}"
                )
            for _, this_update, revoked_at in answers:
                if revoked_at is not None:
                    assert this_update >= revoked_at, f"{serial:x}: signed at {this_update}, revoked at {revoked_at}"
            final = answers[-1][0] if answers else None
            assert final == ("revoked" if serial in revoked else "good"), (serial, final)
        assert set(self.seen) == revoked | good
        assert not self.errors, self.errors


class CRLView(NamedTuple):
    full: int  # the CRL numbers
    delta: int
    full_update: datetime.datetime  # their thisUpdate
    delta_update: datetime.datetime
    listed: set[int]  # the serials listed by the two


def crl_view(base_url: str, issuer: x509.Certificate) -> CRLView:
    """The full and delta CRLs as a client fetches them, signatures checked."""
    with httpx.Client(base_url=base_url, timeout=5) as client:
        full = x509.load_der_x509_crl(client.get("/crl/issuing-ca.crl").raise_for_status().content)
        delta = x509.load_der_x509_crl(client.get("/crl/issuing-ca-delta.crl").raise_for_status().content)
    for crl in (full, delta):
        assert crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    assert delta_base(full) is None and delta_base(delta) is not None
    return CRLView(
        crl_number(full),
        crl_number(delta),
        full.last_update_utc,
        delta.last_update_utc,
        {e.serial_number for e in full} | {e.serial_number for e in delta},
    )


def test_a_second_presigner_and_publisher_stand_by_and_take_over(tmp_path: Path, cluster: PostgresCluster) -> None:
    """Both started twice; the active pair is killed, then (restarted as standbys) the new active pair
    is stopped cleanly, then frozen past its lease and woken; last, a publisher gets its lease back.
    Revocations go on throughout."""
    dep = deployment(tmp_path, cluster)
    dsn = database_url(dep)
    api = dep.role("api", "api")
    responder = dep.responder("r1")
    presigners = [dep.role(f"presigner-{x}", "presigner") for x in "ab"]
    publishers = [dep.role("publisher-a", "publisher", port=dep.crl_port), dep.role("publisher-b", "publisher")]
    ocsp_url = f"http://127.0.0.1:{responder.port}/ocsp"  # type: ignore[attr-defined]

    def crl_url(proc: RoleProcess) -> str:
        return f"http://127.0.0.1:{proc.port}"  # type: ignore[attr-defined]

    watch: OCSPWatch | None = None
    admin = dep.admin()
    try:
        for proc in (api, responder, *presigners, *publishers):
            proc.start(wait=False)
        for proc in (api, responder, *presigners, *publishers):
            proc.wait_ready()
        certs = []
        for i in range(32):
            resp = admin.post("/v1/certificates", json={"subject": f"CN=ha-{i}", "dns": [f"ha-{i}.internal"]})
            assert resp.status_code == 201, resp.text
            certs.append(x509.load_pem_x509_certificate(resp.json()["certificate"].encode()))
        batches = iter([certs[i : i + 4] for i in range(0, len(certs) - 4, 4)])  # revoked a batch at a time
        never_revoked = {c.serial_number for c in certs[-4:]}
        revoked: set[int] = set()
        views: list[CRLView] = []  # the CRLs at each check, in order
        last_revoked: set[int] = set()  # the revocations at the last check

        def revoke(batch: list[x509.Certificate]) -> None:
            for cert in batch:
                resp = admin.post(f"/v1/certificates/{cert.serial_number:x}/revoke", json={"reason": "keyCompromise"})
                assert resp.status_code == 201, resp.text
                revoked.add(cert.serial_number)

        def revoke_next_batch() -> None:
            revoke(next(batches))

        def propagated(publisher: RoleProcess, what: str, *, takeover: bool = False) -> None:
            """Every revocation so far is answered revoked by the responder and listed by the CRLs
            the publisher serves; CRL numbers never go down, and a newer delta lists the newest."""
            with httpx.Client(timeout=5) as client:
                for cert in certs:
                    want = "revoked" if cert.serial_number in revoked else "good"
                    url = ocsp_get_url(ocsp_url, cert, dep.issuer)
                    wait_for(f"{cert.serial_number:x} {want} {what}", functools.partial(answered, client, url, want))
            view: CRLView = wait_for(
                f"the CRLs to list every revocation {what}",
                lambda: (got := crl_view(crl_url(publisher), dep.issuer)).listed >= revoked and got,
            )
            assert not view.listed & never_revoked
            if views:
                seen = max(max(v.full, v.delta) for v in views)
                last = views[-1]
                # Nothing goes back: not the numbers (one sequence for full and delta), not thisUpdate.
                assert view.full >= last.full and view.delta >= last.delta, (what, views, view)
                assert view.full_update >= last.full_update and view.delta_update >= last.delta_update, (what, view)
                if len(revoked) > len(last_revoked):  # a newer CRL lists the newest revocations: the full
                    # CRL that follows them (crl.full_after_revocation), or the delta while it waits
                    assert max(view.full, view.delta) > seen, (what, views, view)
                if takeover:  # the new holder starts with a full CRL, numbered above everything before
                    assert view.full > seen, (what, views, view)
            views.append(view)
            last_revoked.clear()
            last_revoked.update(revoked)

        def the_active(role: str, procs: list[RoleProcess]) -> RoleProcess:
            active: RoleProcess = wait_for(f"exactly one active {role}", lambda: exactly_one_active(procs, role))
            row = lease_row(dsn, role)
            assert row is not None and row[0] == active.health()[role]["holder"], row
            for standby in procs:
                if standby is not active:  # healthy, and saying whose lease it waits for
                    resp = httpx.get(standby.health_url, timeout=5)
                    waiting = resp.json()[role].get("standby", "")
                    assert resp.status_code == 200, resp.text
                    assert waiting.startswith(f"standing by, lease held by {row[0]} until "), waiting
            return active

        def took_over(role: str, successor: RoleProcess, before: tuple[str, float, float], since: float) -> float:
            """Wait for ``successor`` to be active; check the lease names it; return the seconds it took."""
            wait_for(f"the {role} {successor.name} to take over", lambda: lease_state(successor, role)[0] == "active")
            took = time.monotonic() - since
            row = lease_row(dsn, role)
            assert row is not None and row[0] == successor.health()[role]["holder"] != before[0], (row, before)
            return took

        # --- one of each is active, the other stands by ---
        presigner, publisher = the_active("presigner", presigners), the_active("publisher", publishers)
        propagated(publisher, "at the start")
        watch = OCSPWatch(ocsp_url, certs, dep.issuer)
        watch.start()
        revoke_next_batch()
        propagated(publisher, "before the kill")

        # --- the active pre-signer and publisher are killed; revocations go on meanwhile ---
        before = {role: fresh_renewal(dsn, role) for role in ("presigner", "publisher")}
        presigner.kill()
        publisher.kill()
        killed_at = time.monotonic()
        revoke_next_batch()
        spares = {
            "presigner": next(p for p in presigners if p is not presigner),
            "publisher": next(p for p in publishers if p is not publisher),
        }
        for role, spare in spares.items():
            took = took_over(role, spare, before[role], killed_at)
            print(f"\n{role}: the standby took over {took:.2f}s after the kill")
            assert took < TAKEOVER_BOUND, f"the standby {role} took {took:.1f}s to take over"
            # The killed holder ran on this machine: it is known dead, and its lease is taken over
            # before it would have run out in the table (one on another host would be waited out).
            assert lease_row(dsn, role)[2] < before[role][1]  # type: ignore[index]
        propagated(spares["publisher"], "after the takeover", takeover=True)
        revoke_next_batch()
        propagated(spares["publisher"], "after more revocations")

        # --- the killed ones come back as standbys; then the active ones are stopped cleanly ---
        presigner.start()
        publisher.start()
        assert the_active("presigner", presigners) is spares["presigner"]
        assert the_active("publisher", publishers) is spares["publisher"]
        stopped_at = {}
        for role, proc in spares.items():
            before[role] = fresh_renewal(dsn, role)  # its lease now runs a whole LEASE more
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)
            stopped_at[role] = time.monotonic()
        for (role, proc), successor in zip(spares.items(), (presigner, publisher), strict=True):
            assert proc.proc is not None
            assert proc.proc.wait(15) == 0, proc.log_text()[-3000:]
            row = lease_row(dsn, role)
            assert row is None or row[0] != before[role][0], f"the stopped {role} kept its lease: {row}"
            took = took_over(role, successor, before[role], stopped_at[role])
            print(f"\n{role}: handed over {took:.2f}s after SIGTERM")
            assert took < LEASE, f"the {role} handover took {took:.1f}s after a clean stop"
            # Before the stopped holder's lease would have run out: it was released, not left to expire.
            assert lease_row(dsn, role)[2] < before[role][1]  # type: ignore[index]
        revoke_next_batch()
        propagated(publisher, "after the clean handover", takeover=True)

        # --- the active ones freeze (SIGSTOP) past their lease with work to do; the standbys take
        # over; when the frozen ones wake, they stand by and undo nothing ---
        for proc in spares.values():
            proc.start()
        assert the_active("presigner", presigners) is presigner
        assert the_active("publisher", publishers) is publisher
        before = {role: fresh_renewal(dsn, role) for role in ("presigner", "publisher")}
        revoke_next_batch()
        for proc in (presigner, publisher):
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        for role, spare in spares.items():
            took = took_over(role, spare, before[role], frozen_at)
            print(f"\n{role}: the standby took over {took:.2f}s after the holder froze")
            assert took < TAKEOVER_BOUND, f"the standby {role} took {took:.1f}s to take over"
            assert lease_row(dsn, role)[2] >= before[role][1]  # type: ignore[index]
        propagated(spares["publisher"], "while the old holders are frozen", takeover=True)
        revoke_next_batch()
        for proc in (presigner, publisher):
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGCONT)
        assert the_active("presigner", presigners) is spares["presigner"]
        assert the_active("publisher", publishers) is spares["publisher"]
        propagated(spares["publisher"], "after the frozen ones woke")
        propagated(publisher, "as the woken publisher serves them")

        # --- a publisher that gets its lease back publishes what happened while it stood by. The
        # active one freezes while idle; the other (which was active before) takes over; once the frozen
        # one is awake and standing by, revocations begin and the active one is killed before it can
        # publish them. Standing by, the woken one did not follow the log, yet it publishes them. ---
        woken, other = spares["publisher"], publisher
        before = {"publisher": fresh_renewal(dsn, "publisher")}
        assert woken.proc is not None
        woken.proc.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        took = took_over("publisher", other, before["publisher"], frozen_at)
        assert took < TAKEOVER_BOUND, f"the publisher took {took:.1f}s to take over"
        woken.proc.send_signal(signal.SIGCONT)
        assert the_active("publisher", publishers) is other
        before = {"publisher": fresh_renewal(dsn, "publisher")}
        batch = next(batches)
        revoke(batch[:1])
        other.kill()  # within the debounce (crl.after_revocation_seconds) of the revocation
        killed_at = time.monotonic()
        revoke(batch[1:])
        took = took_over("publisher", woken, before["publisher"], killed_at)
        print(f"\npublisher: the woken one took its lease back {took:.2f}s after the kill")
        assert took < TAKEOVER_BOUND, f"the publisher took {took:.1f}s to take its lease back"
        # Killed on this machine: known dead, its lease taken over before it would have run out.
        assert lease_row(dsn, "publisher")[2] < before["publisher"][1]  # type: ignore[index]
        propagated(woken, "after the woken publisher got its lease back")
        running = [api, responder, *presigners, woken]

        watch.finish()
        numbers = [(v.full, v.delta) for v in views]
        print(f"\nCRL numbers (full, delta) {numbers}; {sum(map(len, watch.seen.values()))} OCSP answers checked")
        watch.check(revoked, never_revoked)
        assert next(batches, None) is None and revoked == {c.serial_number for c in certs[:-4]}
        for proc in running:
            assert proc.proc is not None and proc.proc.poll() is None, f"{proc.name} exited:\n{proc.log_text()}"
        # All stop cleanly at once, the woken ones too (a stopping standby must not take the lease back).
        for proc in running:
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)
        for proc in running:
            assert proc.proc is not None
            assert proc.proc.wait(15) == 0, f"{proc.name}:\n{proc.log_text()[-3000:]}"
    except BaseException:
        dep.print_logs()
        raise
    finally:
        admin.close()
        if watch is not None:
            watch.finish()
        for proc in dep.procs:  # a frozen process would not hear SIGTERM
            if proc.proc is not None and proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGCONT)
        dep.stop_all()


def test_the_responder_under_granian_on_postgresql(tmp_path: Path, cluster: PostgresCluster) -> None:
    dep = deployment(tmp_path, cluster)
    dsn = database_url(dep)
    port = free_port()
    url = f"http://127.0.0.1:{port}/ocsp"
    api = dep.role("api", "api")
    presigner = dep.role("presigner", "presigner")
    args = ("--server", "granian", "--workers", "2", "--responder-id", "gr", "--responder-url", url)
    responder = dep.role("gr", "responder", *args, port=port)
    admin = dep.admin()
    try:
        for proc in (api, presigner, responder):
            proc.start(wait=False)
        for proc in (api, presigner, responder):
            proc.wait_ready()
        certs = []
        for i in range(3):
            resp = admin.post("/v1/certificates", json={"subject": f"CN=gr-{i}", "dns": [f"gr-{i}.internal"]})
            assert resp.status_code == 201, resp.text
            certs.append(x509.load_pem_x509_certificate(resp.json()["certificate"].encode()))

        def answers(cert: x509.Certificate, want: str) -> bool:
            # A new connection each time, so that both workers are asked.
            for _ in range(6):
                with httpx.Client(timeout=5) as client:
                    if ocsp_answer(client, ocsp_get_url(url, cert, dep.issuer)) != (200, want):
                        return False
            return True

        for cert in certs:
            wait_for(f"{cert.serial_number:x} good under granian", functools.partial(answers, cert, "good"))

        async def snapshot() -> tuple[list[ResponderState], int]:
            """The responders' heartbeats and the response store's last change, as the tracker reads them."""
            pool = await open_pg_pool(dsn, min_size=1, max_size=1, migrate=False)
            try:
                coord = PostgresCoordination(pool)
                return await coord.responders(), await coord.last_change()
            finally:
                await pool.close()

        def workers_reporting(min_change: int = 0) -> dict[str, ResponderState] | None:
            states, _ = asyncio.run(snapshot())
            found = {s.responder_id: s for s in states if s.responder_id.startswith("gr")}
            if len(found) == 2 and all(s.applied_change >= min_change for s in found.values()):
                return found
            return None

        heartbeats = wait_for("both granian workers to heartbeat", workers_reporting)
        assert responder.proc is not None
        below = descendants(responder.proc.pid)
        for rid, state in heartbeats.items():
            match = re.fullmatch(r"gr/(\d+)", rid)
            assert match, rid
            assert int(match.group(1)) in below, f"{rid} is not a process of the granian listener {below}"
            assert state.url == url

        # A revocation made after the workers started reaches both, through the change feed.
        revoked = certs[1]
        resp = admin.post(f"/v1/certificates/{revoked.serial_number:x}/revoke", json={"reason": "keyCompromise"})
        assert resp.status_code == 201, resp.text
        wait_for("revoked from both workers", lambda: answers(revoked, "revoked"))
        _, last_change = asyncio.run(snapshot())
        assert wait_for("both workers to report the change applied", lambda: workers_reporting(last_change))
        for cert in (certs[0], certs[2]):
            assert answers(cert, "good")

        def timeline_done() -> dict[str, Any] | None:
            t: dict[str, Any] = admin.get(f"/v1/certificates/{revoked.serial_number:x}/propagation").json()
            return t if t["ocsp_all_responders"] else None

        timeline = wait_for("the propagation timeline", timeline_done)
        listed = {r["responder_id"]: r["state"] for r in timeline["responders"]}
        assert listed == dict.fromkeys(heartbeats, "applied"), listed
        health = responder.health()
        assert health["status"] == "ok" and health["responder"]["responder_id"].startswith("gr/"), health
    except BaseException:
        dep.print_logs()
        raise
    finally:
        admin.close()
        dep.stop_all()
