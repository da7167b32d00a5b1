"""Shared by the key-backend tests: one end-to-end exercise run against every backend.

``exercise`` issues, revokes, rotates the OCSP signer, pre-signs in a real worker
process and publishes CRLs with the keys of an initialised CA, and then has the
``openssl`` command verify every certificate, OCSP response and CRL it produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry

from pca.config import Config
from pca.runtime import Runtime, open_runtime
from pca.serve import build_authority, check_keys
from publishers.objectstore import DirectoryStore
from responders.presigner import PreSigner, signing_pool
from responders.store.sqlite import SQLiteResponseStore
from revocation.authority import Actor, IssueRequest
from revocation.checkpoints import SIGNER_RENEW_BEFORE, SIGNER_STREAM, ensure_signer
from revocation.clock import SystemClock
from revocation.eventlog import NewEvent, RecordedEvent
from revocation.events import ResponderCertRotated
from revocation.keys import KeyRef
from tests.support.ca import ISSUING, ROOT
from tests.support.crl import make_publisher
from tests.support.processes import stop_process

ACTOR = Actor("test", "backends")


def openssl(*args: object) -> str:
    """Run openssl; returns stdout and stderr together, failing the test on a non-zero status."""
    result = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=60)
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"openssl {' '.join(map(str, args))} failed:\n{out}"
    return out


@dataclasses.dataclass
class Exercised:
    key_refs: list[KeyRef]  # every key the CA used: root, issuing CA, first and rotated OCSP signer
    good: Path
    revoked: Path


async def exercise(cfg: Config, workdir: Path) -> Exercised:
    """Sign everything a CA signs with its configured keys; openssl verifies all of it."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    rt = open_runtime(cfg, SystemClock())
    try:
        await check_keys(rt)
        authority = build_authority(rt)
        good = await authority.issue(IssueRequest(subject="CN=good", dns=["good.test"]), ACTOR)
        bad = await authority.issue(IssueRequest(subject="CN=revoked", dns=["revoked.test"]), ACTOR)
        await authority.revoke(bad.certificate.serial_number, "keyCompromise", ACTOR)
        first_signer = {i.issuer_id: i for i in await rt.view.issuers()}[ISSUING].signer_key_ref
        # A rotation creates the new signer key in the issuing CA's backend.
        assert await authority.rotate_signers(ACTOR, force=True)
        issuers = {i.issuer_id: i for i in await rt.view.issuers()}
        issuing = issuers[ISSUING]
        assert issuing.key_ref is not None and issuing.signer_key_ref is not None and first_signer is not None
        assert issuing.signer_key_ref.backend == issuing.key_ref.backend
        assert issuing.signer_key_ref != first_signer
        await check_keys(rt)

        store = SQLiteResponseStore(rt.db)
        pool = signing_pool(1)  # a real worker process: it opens the key itself
        try:
            presigner = PreSigner(
                rt.log,
                rt.view,
                store,
                rt.clock,
                pool,
                validity_seconds=3600,
                refresh_fraction=0.5,
                registry=CollectorRegistry(),
                parallelism=1,
            )
            # A bound, so that a stuck pre-signer fails the test instead of hanging the run.
            await asyncio.wait_for(presigner.catch_up(), 120)
        finally:
            pool.shutdown(wait=True)

        publisher = make_publisher(rt, DirectoryStore(cfg.crl_dir), rt.clock)
        published = await publisher.publish_all()
        assert sorted(p.issuer_id for p in published) == [ISSUING, ROOT], publisher.last_error

        d = cfg.data_dir
        paths = {}
        for name, issued in (("good", good), ("revoked", bad)):
            pem = workdir / f"{name}.pem"
            pem.write_bytes(issued.certificate.public_bytes(serialization.Encoding.PEM))
            paths[name] = pem
            assert f"{pem}: OK" in openssl("verify", "-CAfile", d / "ca-chain.pem", pem)
            stored = await store.get(ISSUING, issued.certificate.serial_number)
            assert stored is not None, f"no pre-signed response for {name}"
            resp = workdir / f"{name}.ocsp"
            resp.write_bytes(stored.der)
            text = openssl(
                "ocsp", "-respin", resp, "-issuer", d / "issuing-ca.pem", "-cert", pem,
                "-CAfile", d / "ca-chain.pem", "-no_nonce",
            )  # fmt: skip
            assert "Response verify OK" in text, text
            assert f"{pem}: {name}" in text, text

        for issuer_id, trust in ((ISSUING, "ca-chain.pem"), (ROOT, "root-ca.pem")):
            crl = cfg.crl_dir / f"{issuer_id}.crl"
            assert "verify OK" in openssl("crl", "-inform", "DER", "-in", crl, "-CAfile", d / trust, "-noout")
        crl = x509.load_der_x509_crl((cfg.crl_dir / f"{ISSUING}.crl").read_bytes())
        assert [r.serial_number for r in crl] == [bad.certificate.serial_number]

        refs = [issuers[ROOT].key_ref, issuing.key_ref, first_signer, issuing.signer_key_ref]
        return Exercised([r for r in refs if r is not None], paths["good"], paths["revoked"])
    finally:
        rt.close()


def files_containing(directory: Path, secret: bytes) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and secret in p.read_bytes()]


@contextlib.contextmanager
def responder_alone(config_path: Path, env: Mapping[str, str]) -> Iterator[str]:
    """``pca serve --roles responder`` as a process with ``env``; yields its public URL once it answers."""
    from pca.config import load_config

    cfg = load_config(config_path)
    log_path = config_path.parent / "responder.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pca.cli", "serve", "--roles", "responder", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the responder exited with {proc.returncode}:\n{log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(cfg.public_url + "/crl/issuing-ca.crl", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"the responder did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield cfg.public_url
    finally:
        stop_process(proc)


def ask_responder(url: str, cfg: Config, cert: Path) -> str:
    """``openssl ocsp`` against a running responder; returns its output."""
    d = cfg.data_dir
    return openssl(
        "ocsp", "-issuer", d / "issuing-ca.pem", "-cert", cert, "-url", url + "/ocsp",
        "-CAfile", d / "ca-chain.pem", "-no_nonce",
    )  # fmt: skip


def run_pca(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pca.cli", *args], capture_output=True, text=True, timeout=60, env=dict(env)
    )


def clean_env(*drop: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in drop}


def have_openssl() -> bool:
    return shutil.which("openssl") is not None


class _RacingLog:
    """The event log, with another process's signer rotation committed just before the first append."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.lost: KeyRef | None = None  # the key of the rotation that lost
        self.won: list[RecordedEvent] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rt.log, name)

    async def append(self, events: Sequence[NewEvent]) -> list[RecordedEvent]:
        rotated = events[0].event
        if self.lost is None and isinstance(rotated, ResponderCertRotated) and rotated.issuer_id == ISSUING:
            self.lost = KeyRef.from_dict(rotated.key_ref)
            self.won = await build_authority(self.rt).rotate_signers(ACTOR, force=True)
        return await self.rt.log.append(events)


async def rotation_race(rt: Runtime) -> tuple[KeyRef, KeyRef]:
    """Two authorities rotate the issuing CA's OCSP signer at once and the second to append loses:
    returns (the winner's signer key, the key the loser had made for its rotation)."""
    racing = _RacingLog(rt)
    loser = build_authority(dataclasses.replace(rt, log=racing))
    recorded = await loser.rotate_signers(ACTOR, force=True)  # the root's signer too, which it does not lose
    assert ISSUING not in [r.payload["issuer_id"] for r in recorded], "the loser records nothing for the issuing CA"
    assert racing.lost is not None and ISSUING in [r.payload["issuer_id"] for r in racing.won]
    issuing = {i.issuer_id: i for i in await rt.view.issuers()}[ISSUING]
    assert issuing.signer_key_ref is not None and issuing.signer_key_ref != racing.lost
    return issuing.signer_key_ref, racing.lost


async def checkpoint_signer_race(rt: Runtime) -> tuple[KeyRef, KeyRef]:
    """Two publishers renew the audit checkpoint signer at once and the second to append loses: returns
    (the winner's signer key, the key the loser had made for its signer), after checking that the loser
    took the winner's signer."""
    [first] = await rt.log.read_stream(SIGNER_STREAM)
    renew_at = datetime.datetime.fromisoformat(first.payload["not_after"]) - SIGNER_RENEW_BEFORE
    key_dir, algorithm, real, lost = rt.config.data_dir / "keys", rt.config.key_algorithm, rt.log, []

    class Racing:
        """The log, with the other publisher's signer recorded just before this one's append."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        async def append(self, events: Sequence[NewEvent]) -> list[RecordedEvent]:
            if not lost:
                lost.append(KeyRef.from_dict(events[0].event.key_ref))  # type: ignore[attr-defined]
                await ensure_signer(real, rt.view, key_dir, algorithm, renew_at, "other", "won")
            return await real.append(events)

    kept = await ensure_signer(Racing(), rt.view, key_dir, algorithm, renew_at, "tester", "lost")  # type: ignore[arg-type]
    signers = await real.read_stream(SIGNER_STREAM)
    assert [e.request_id for e in signers] == [first.request_id, "won"], "the loser records no signer"
    assert kept.key_ref == signers[-1].payload["key_ref"] != lost[0].to_dict()
    return KeyRef.from_dict(kept.key_ref), lost[0]
