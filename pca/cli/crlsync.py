"""``pca crl-sync``: the CRL sync agent for relying parties (``publishers.crlsync``; docs/crl-sync.md).

Exit statuses: 0 when every CRL was installed or unchanged (``--once``) or the agent was
stopped by SIGTERM/SIGINT; 1 when ``--once`` refused a CRL or could not fetch one, or the agent
could not start; 2 for usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from pca.metrics_listener import MetricsListener, listener_limits
from publishers.crlsync.agent import Agent, run_agent
from publishers.crlsync.fetch import tls_context
from publishers.crlsync.metrics import SyncMetrics
from publishers.crlsync.report import Reporter
from publishers.crlsync.settings import FORMATS, SyncSettings, UsageError, build_settings, parse_listen, read_toml
from revocation.errors import ConfigError

log = logging.getLogger("pca.crlsync")

# flag dest -> TOML key, for the settings a flag can override
_FLAGS = (
    "ca_bundle",
    "out",
    "format",
    "interval",
    "on_change",
    "on_change_timeout",
    "state_file",
    "agent_id",
    "report_to",
    "token_file",
    "tls_ca",
    "metrics_listen",
    "timeout",
    "max_bytes",
    "max_skew",
    "warn_before",
)


def add_crlsync_parser(sub: Any) -> None:
    p = sub.add_parser(
        "crl-sync",
        help="keep local CRL files fresh for nginx, HAProxy, OpenVPN (a relying party's agent)",
        description="Fetch CRLs, verify each against a CA bundle and the CRL installed before, and install "
        "the newest good CRL of every URL into one file atomically; run a command when its bytes change. "
        "Exit status with --once: 0 all installed or unchanged, 1 a CRL refused or unreachable, 2 usage.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file with the same settings (flags override it)")
    p.add_argument(
        "--url",
        action="append",
        dest="urls",
        metavar="URL",
        help="a CRL to fetch (repeatable): the issuing CA's full CRL, its delta, the chain's CRLs (the root's)",
    )
    p.add_argument(
        "--delta-url",
        action="append",
        dest="delta_urls",
        metavar="URL",
        help="a delta CRL to fetch (repeatable); a delta named in a synced full CRL's Freshest CRL may be a --url",
    )
    p.add_argument("--ca-bundle", metavar="FILE", help="PEM of the CA certificates whose CRLs are accepted")
    p.add_argument("--out", metavar="FILE", help="the file to keep fresh (e.g. /etc/pca/crl-bundle.pem)")
    p.add_argument("--format", choices=FORMATS, help="pem (default): a bundle of every CRL; der: one --url only")
    p.add_argument("--interval", type=float, metavar="SECONDS", help="poll period (default 5)")
    p.add_argument("--once", action="store_true", help="one pass, then exit (status 0, or 1 when a CRL failed)")
    p.add_argument("--on-change", metavar="CMD", help="shell command run after a new file is installed")
    p.add_argument("--on-change-timeout", type=float, metavar="SECONDS", help="kill --on-change after (default 60)")
    p.add_argument("--state-file", metavar="PATH", help="what was installed per URL (default: OUT.state.json)")
    p.add_argument("--metrics-listen", metavar="HOST:PORT", help="serve Prometheus /metrics (host default 127.0.0.1)")
    p.add_argument("--agent-id", metavar="NAME", help="this agent's name in reports (default: the host name)")
    p.add_argument("--report-to", metavar="ADMIN_URL", help="report each installed CRL to this admin API")
    p.add_argument("--token-file", metavar="FILE", help="bearer token for --report-to (default: PCA_TOKEN)")
    p.add_argument(
        "--tls-ca", metavar="FILE", help="CAs trusted for https CRL URLs and --report-to (default: the system's)"
    )
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="limit of one fetch, body included (default 30)")
    p.add_argument("--max-bytes", type=int, metavar="N", help="largest CRL accepted (default 268435456)")
    p.add_argument("--max-skew", type=float, metavar="SECONDS", help="thisUpdate may be this far ahead (default 60)")
    p.add_argument(
        "--warn-before", type=float, metavar="SECONDS", help="warn this long before nextUpdate (default 3600)"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_crl_sync)


def settings_from_args(args: argparse.Namespace) -> SyncSettings:
    """The file's settings, then every flag that was given."""
    given: dict[str, Any] = read_toml(Path(args.config)) if args.config else {}
    for key in ("urls", "delta_urls", *_FLAGS):
        value = getattr(args, key)
        if value is not None:
            given[key] = value
    settings = build_settings(given)
    try:
        listener_limits(settings.limits)  # the /metrics listener's [limits]: checked now, used by serve()
    except ConfigError as exc:
        raise UsageError(f"{args.config}: {exc}") from None
    return settings


def cmd_crl_sync(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # One line per request every few seconds would drown the agent's own lines.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        settings = settings_from_args(args)
    except UsageError as exc:
        print(f"pca crl-sync: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(asyncio.run(serve(settings, once=args.once)))


async def serve(settings: SyncSettings, *, once: bool, registry: CollectorRegistry | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT (or one pass with ``once``); the exit status."""
    metrics = SyncMetrics(registry or CollectorRegistry())
    try:
        agent = Agent(settings, metrics)
    except ValueError as exc:
        print(f"pca crl-sync: error: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    listener = None
    try:
        if settings.metrics_listen:
            # Bounded like every listener of pca: header sizes, timeouts, a connection cap (pca.metrics_listener).
            host, port = parse_listen(settings.metrics_listen)
            listener = MetricsListener(metrics.registry, host, port, listener_limits(settings.limits))
            try:
                await listener.start()
            except OSError as exc:
                reason = (exc.strerror or str(exc)).lower()
                print(
                    f"pca crl-sync: error: cannot listen on {settings.metrics_listen} (--metrics-listen): {reason}",
                    file=sys.stderr,
                )
                return 1
        if settings.report_to and settings.token:
            verify = tls_context(settings.tls_ca)  # the admin API's CA too, when it serves https
            agent.reporter = Reporter(settings.report_to, settings.token, settings.agent_id, metrics, verify=verify)
        log.info("syncing %d CRL URL(s) into %s every %g s", len(settings.all_urls()), settings.out, settings.interval)
        status = await run_agent(agent, stop, once=once)
        if agent.reporter is not None:
            # Reports of a last pass get a moment (a second signal does not wait for them).
            await agent.reporter.drain(15.0 if once and not stop.is_set() else 3.0)
        return status
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if agent.reporter is not None:
            await agent.reporter.aclose()
        await agent.aclose()
        if listener is not None:
            await listener.stop()
        log.info("stopped")
