"""``pca serve``: start the chosen roles in one process, on SQLite or PostgreSQL.

Embedded: every role in one process on SQLite. Scaled: each role (or any subset)
in its own process or host against one PostgreSQL URL; the pre-signer and the
publisher hold leases so a second copy stands by, and any number of responders
follow the response store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, make_asgi_app
from starlette.types import ASGIApp

from pca.admin_tls import admin_listener_tls
from pca.bind_check import check_listeners
from pca.config import DATABASE_URL_ENV, PUBLIC_SERVERS, Config
from pca.granian_proc import become_subreaper, stop_granian
from pca.listener_limits import Budget, connection_budget, raise_descriptor_limit
from pca.listener_protocol import ListenerServer, listener_config
from pca.listeners import ListenerGuard, granian_args, quiet_resource_errors, uvicorn_guards
from pca.main_health import publish_main_health, write_once
from pca.metrics import (
    WORKERS_ENV,
    WorkersCollector,
    count_events,
    export_expiring,
    export_signing,
    export_tracker_position,
    make_workers_dir,
    publish_main_metrics,
    remove_workers_dir,
)
from pca.roles import start_role
from pca.runtime import (
    HealthApp,
    PrefixDispatcher,
    Runtime,
    ca_certificates_health,
    connect_runtime,
    run_forever,
)
from revocation.admin.api import AdminAPI
from revocation.admin.client_certs import ClientCertAuth
from revocation.admin.installations import InstallationRecorder
from revocation.admin.recording import CertificateRecorder
from revocation.admin.status_data import StatusSettings, StatusSources
from revocation.admin.status_page import StatusPage
from revocation.admin.tokens import TokenFile
from revocation.authority import Actor, Authority
from revocation.clock import SystemClock
from revocation.errors import ConfigError
from revocation.issued_revocation import IssuedRevocation
from revocation.issuer_summary import PcaURLs
from revocation.keys import check_key_for_certificate
from revocation.propagation.tracker import PropagationTracker

log = logging.getLogger("pca.serve")

ALL_ROLES = ("api", "presigner", "responder", "publisher", "tracker")
SERVERS = PUBLIC_SERVERS
SIGNER_CHECK_SECONDS = 3600


class _Server(ListenerServer):
    """A uvicorn server that leaves signal handling to us (two servers share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def build_authority(rt: Runtime) -> Authority:
    cfg = rt.config
    return Authority(
        rt.log,
        rt.view,
        rt.clock,
        key_dir=cfg.data_dir / "keys",
        default_issuer=cfg.default_issuer,
        leaf_validity_days=cfg.leaf_validity_days,
        key_algorithm=cfg.key_algorithm,
        ocsp_url=cfg.ocsp_url,
        signer_validity_days=cfg.ocsp.signer_validity_days,
        signer_renew_before_days=cfg.ocsp.signer_renew_before_days,
        crl_layout=cfg.crl_layout,
    )


def pca_urls(cfg: Config) -> PcaURLs:
    return PcaURLs(cfg.ocsp_url, cfg.crl_layout, cfg.public_url)


def status_page(
    cfg: Config, rt: Runtime, tracker: PropagationTracker | None, client_auth: ClientCertAuth | None
) -> StatusPage:
    """``GET /status`` on the admin listener (``revocation.admin.status_page``); the API role has a tracker."""
    assert tracker is not None
    settings = StatusSettings(
        pca_urls(cfg),
        cfg.crl.interval_seconds,
        cfg.crl.delta_interval_seconds,
        cfg.scale.heartbeat_seconds,
        cfg.scale.responder_gone_seconds,
        cfg.scale.slo_seconds,
    )
    sources = StatusSources(rt.view, rt.log, rt.coord, tracker, settings, rt.clock.time)
    return StatusPage(sources, TokenFile(cfg.tokens_db), client_auth, rt.clock)


async def check_keys(rt: Runtime) -> None:
    """Every key we will sign with is reachable, signs, and matches its certificate; else stop now.

    Works for every backend (a test signature is made and verified); the error names
    the key reference and the certificate, never a PIN or passphrase.
    """
    for issuer in await rt.view.issuers():
        if issuer.key_ref is not None:
            await asyncio.to_thread(
                check_key_for_certificate, issuer.key_ref, issuer.cert, f"issuer {issuer.issuer_id}"
            )
        if issuer.signer_cert is not None and issuer.signer_key_ref is not None:
            await asyncio.to_thread(
                check_key_for_certificate,
                issuer.signer_key_ref,
                issuer.signer_cert,
                f"the OCSP signer of {issuer.issuer_id}",
            )


async def _rotate_signers(authority: Authority) -> None:
    while True:
        try:
            for rec in await authority.rotate_signers(Actor("system:signer-rotation", "rotation")):
                log.info("rotated the OCSP signer of %s (seq %d)", rec.payload["issuer_id"], rec.seq)
        except Exception:
            log.exception("OCSP signer rotation failed; retrying later")
        await asyncio.sleep(SIGNER_CHECK_SECONDS)


def _uvicorn(app: ASGIApp, host: str, port: int, guard: ListenerGuard, backlog: int, **extra: Any) -> _Server:
    """A listener bounded by ``[limits]``; ``extra`` goes to ``uvicorn.Config`` (TLS settings, say)."""
    return _Server(listener_config(app, host, port, guard, backlog=backlog, **extra))


def _granian(
    cfg: Config, workers: int, identity: dict[str, str], budget: Budget, metrics_dir: Path
) -> subprocess.Popen[bytes]:
    """The public listener (OCSP and CRLs) under granian, in its own worker processes, through RSGI."""
    host, port = cfg.public_listen
    cmd = [
        sys.executable, "-m", "pca.granian_proc", str(os.getpid()),  # granian, ended with this process
        "--interface", "rsgi", "--factory", "--host", host, "--port", str(port),
        "--workers", str(workers), "--no-ws", "--log-level", "warning", "--backlog", "2048",
        *granian_args(cfg.limits, budget.descriptors), "pca.public_rsgi:create_app",
    ]  # fmt: skip
    env = public_listener_env(cfg)
    env.update(identity)
    env["PCA_RESPONDER_WORKERS"] = str(workers)
    env[WORKERS_ENV] = str(metrics_dir)  # the workers' metrics, read by the /metrics that covers them
    become_subreaper()  # workers granian's main process leaves behind come back to us (stop_granian)
    return subprocess.Popen(cmd, env=env)


def public_listener_env(cfg: Config) -> dict[str, str]:
    """The environment of the public listener's processes: nothing that opens a key.

    PINs, passphrases and cloud credentials live in this process's environment for the
    signing roles; the responders get only what running Python needs (and, when CRLs
    are read from S3, the AWS settings that reading them takes).
    """
    keep = ("PATH", "HOME", "LANG", "TZ", "TMPDIR", "VIRTUAL_ENV", "SSL_CERT_FILE", "SSL_CERT_DIR")
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith(("LC_", "PYTHON", "GRANIAN_"))}
    if cfg.database_url:
        # Responders read the response store: the database URL and libpq's settings, no key material.
        env.update({k: v for k, v in os.environ.items() if k == DATABASE_URL_ENV or k.startswith("PG")})
    if cfg.crl.store.type == "s3":
        env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})
    env["PCA_CONFIG"] = str(cfg.path)
    return env


async def _when_started(servers: list[_Server], serving: asyncio.Event) -> None:
    """Set ``serving`` once every listener accepts connections (uvicorn has no event for it)."""
    for server in servers:
        while not server.started:  # noqa: ASYNC110 - uvicorn sets a flag, not an event
            await asyncio.sleep(0.02)
    serving.set()
    await asyncio.Event().wait()  # run_forever stops everything when one coroutine ends


async def _watch(proc: subprocess.Popen[bytes]) -> None:
    await asyncio.to_thread(proc.wait)
    raise ConfigError(f"the public listener (granian) exited with status {proc.returncode}")


def public_server(
    cfg: Config, server: str | None, workers: int | None, roles: tuple[str, ...] = ALL_ROLES
) -> tuple[str, int]:
    """The public listener's server and worker count: the flags given, else ``[public]``.

    0 workers (the default): one per core, less one when this process also signs or serves the API
    (the pre-signer, the publisher and the admin API share a core of their own; at least one worker).
    On a 2-core machine, one worker beside them answered more OCSP requests, with a shorter tail,
    than two competing with them for the cores (docs/benchmarks.md).

    ``[public] server`` is for processes that answer OCSP and whose other roles report on the admin
    listener: one with a role whose /healthz and /metrics only its public listener gives (the signing
    roles or the tracker without the API; granian's workers would answer for themselves instead) keeps
    that listener in the process, unless ``--server granian`` says otherwise.
    """
    fits = "responder" in roles and ("api" in roles or set(roles) == {"responder"})
    server = server or (cfg.public_server if fits else "uvicorn")
    if server not in SERVERS:
        raise ConfigError(f"unknown server {server!r}; choose from {', '.join(SERVERS)}")
    if server == "uvicorn":
        if workers not in (None, 1):
            raise ConfigError(f"--workers {workers}: uvicorn runs the public listener in this process (1); use granian")
        return server, 1
    if workers is None:
        workers = cfg.public_workers
    if workers < 0:
        raise ConfigError(f"--workers {workers}: give 1 or more, or 0 for one per core")
    if workers == 0:
        cores = os.cpu_count() or 1
        busy = bool(set(roles) & {"api", "presigner", "publisher"})
        workers = max(1, cores - 1) if busy else cores
    return server, workers


async def serve(
    cfg: Config,
    roles: tuple[str, ...] = ALL_ROLES,
    *,
    server: str | None = None,
    workers: int | None = None,
    responder_id: str | None = None,
    responder_url: str | None = None,
    insecure_admin_http: bool = False,
) -> None:
    unknown = set(roles) - set(ALL_ROLES)
    if unknown:
        raise ConfigError(f"unknown roles {sorted(unknown)}; choose from {', '.join(ALL_ROLES)}")
    if not roles:
        raise ConfigError(f"no roles given; choose from {', '.join(ALL_ROLES)}")
    server, workers = public_server(cfg, server, workers, roles)
    check_listeners(cfg, roles)
    # Listener limits: each listener's connection cap fits the open-files limit, raised to the hard one.
    budget = connection_budget(cfg.limits, raise_descriptor_limit(), admin="api" in roles)
    admin_guard, public_guard = uvicorn_guards(cfg.limits, budget)
    quiet_resource_errors(asyncio.get_running_loop())
    rt = await connect_runtime(cfg, SystemClock(), listen=True)
    rt.responder_id = responder_id or None
    rt.responder_url = responder_url or None
    granian: subprocess.Popen[bytes] | None = None
    metrics_dir: Path | None = None
    export_signing(rt.registry)
    # Stopped while starting (SIGTERM, Ctrl-C): stop at once, through the cleanup below (granian included).
    main_task = asyncio.current_task()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, main_task.cancel if main_task else lambda: None)
    try:
        if not await rt.view.issuers():
            raise ConfigError(f"the database {cfg.database_label} holds no issuers: run 'pca init' first")
        if set(roles) & {"api", "presigner", "publisher"}:
            await check_keys(rt)  # a responder alone never opens a key
        servers: list[_Server] = []
        coros: list[Any] = []
        health = HealthApp(rt.health)
        tracker: PropagationTracker | None = None
        if "tracker" in roles or "api" in roles:
            # The API answers timelines from stored data; only the tracker role exports the histograms.
            tracker = PropagationTracker(
                rt.log,
                rt.view,
                rt.coord,
                rt.registry if "tracker" in roles else CollectorRegistry(),
                slo_seconds=cfg.scale.slo_seconds,
                gone_after=cfg.scale.responder_gone_seconds,
                down_after=min(3 * cfg.scale.heartbeat_seconds, cfg.scale.responder_gone_seconds),
                now=rt.clock.time,
            )
        if "tracker" in roles and tracker is not None:
            rt.on_log_change(tracker.wake)
            coros.append(tracker.run())
            export_tracker_position(rt, tracker.position)
        if "api" in roles:
            rt.health["ca_certificates"] = ca_certificates_health(rt)  # issuers whose CA cert expired or was revoked
            count_events(rt)
            export_expiring(rt)
            authority = build_authority(rt)
            await authority.rotate_signers(Actor("system:signer-rotation", "startup"))
            coros.append(_rotate_signers(authority))
            api = AdminAPI(
                authority,
                rt.log,
                TokenFile(cfg.tokens_db),
                rt.registry,
                max_body_bytes=cfg.max_body_bytes,
                health=health.report,
                tracker=tracker,
                coordination=rt.coord,
                issuer_stats=(rt.view, pca_urls(cfg)),
                recorder=CertificateRecorder(rt.log, rt.view, rt.clock),
                installations=InstallationRecorder(rt.view, rt.coord, now=rt.clock.time),
                client_auth=ClientCertAuth(rt.view) if cfg.admin_tls.client_ca else None,
                projection=rt.view,
                issued=IssuedRevocation(rt.log, rt.view, rt.clock),
                clock=rt.clock,
            )
            tls, renewal = await admin_listener_tls(cfg, authority, insecure_admin_http, rt.clock)
            coros.extend([renewal] if renewal is not None else [])
            page = status_page(cfg, rt, tracker, ClientCertAuth(rt.view) if cfg.admin_tls.client_ca else None)
            admin_app = PrefixDispatcher([("/status", page.app()), ("", api.app())])  # the page beside the API
            servers.append(_uvicorn(admin_app, *cfg.admin_listen, admin_guard, budget.admin_backlog, **tls))
        public = "responder" in roles or "publisher" in roles
        for role in roles:
            if role == "responder" and server == "granian":
                continue  # the granian workers run it
            if role not in ("api", "tracker"):
                await start_role(role, rt)
        granian_public = public and server == "granian"
        if granian_public:
            given = (("PCA_RESPONDER_ID", responder_id), ("PCA_RESPONDER_URL", responder_url))
            identity = {k: v for k, v in given if v}
            metrics_dir = make_workers_dir()
            if "api" in roles:
                rt.registry.register(WorkersCollector(metrics_dir))  # the admin /metrics covers the workers
            else:
                identity["PCA_WORKER_METRICS"] = "1"  # no admin listener: the workers serve /metrics,
                coros.append(publish_main_metrics(rt.registry, metrics_dir))  # this process's series too
            await write_once(health, metrics_dir, rt.clock)  # the workers' /healthz covers this process's roles too
            health_changed = asyncio.Event()
            rt.on_log_change(health_changed.set)
            coros.append(publish_main_health(health, metrics_dir, health_changed, rt.clock))
            granian = _granian(cfg, workers, identity, budget, metrics_dir)
            coros.append(_watch(granian))
        elif public:
            await start_role("crlserver", rt)
        if not granian_public and (public or "api" not in roles):
            # A process without the admin API (a pre-signer, a responder) still answers /healthz and
            # /metrics, on the public listener; the admin API has its own.
            apps: list[tuple[str, ASGIApp]] = [*rt.public_apps, ("/healthz", health)]
            if "api" not in roles:
                apps.append(("/metrics", make_asgi_app(rt.registry)))
            servers.append(_uvicorn(PrefixDispatcher(apps), *cfg.public_listen, public_guard, budget.public_backlog))
        serving = rt.serving = asyncio.Event()  # the listeners are up (responders wait for it)
        coros.extend(rt.tasks)
        coros.extend(s.serve() for s in servers)
        coros.append(_when_started(servers, serving))

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        async def wait_stop() -> None:
            await stop.wait()
            log.info("stopping")
            for s in servers:
                s.should_exit = True
            # Give the servers a moment to finish answering requests in flight.
            await asyncio.sleep(0.3)

        log.info(
            "serving roles %s on %s; public %s:%d (%s), admin %s:%d",
            ",".join(roles),
            cfg.database_label,
            *cfg.public_listen,
            f"granian, {workers} worker process(es)" if granian_public else "uvicorn, in this process",
            *cfg.admin_listen,
        )
        public_budget = connection_budget(cfg.limits, budget.descriptors, admin=False) if granian_public else budget
        log.info(
            "open connections at most: public %d (per process), admin %d; open-files limit %d",
            public_budget.public_connections,
            budget.admin_connections,
            budget.descriptors,
        )
        with contextlib.suppress(asyncio.CancelledError):
            await run_forever([*coros, wait_stop()])
    except asyncio.CancelledError:
        log.info("stopped while starting")
    finally:
        if granian is not None:
            await asyncio.to_thread(stop_granian, granian)
        if metrics_dir is not None:
            remove_workers_dir(metrics_dir)
        await rt.aclose()
