"""``pca``: set up a CA, serve it, and operate it through the admin API.

This module holds the parser; the commands that open this host's database and files
are in ``pca.cli.local``, those that call the admin API over HTTP in ``pca.cli.remote``.
"""

from __future__ import annotations

import argparse

from pca.cli import local, remote
from pca.cli.common import fail
from pca.cli.crlsync import add_crlsync_parser
from pca.cli.events import add_events_parser
from pca.cli.importing import add_import_parser
from pca.cli.incidents import add_incident_parsers
from pca.cli.issuers import add_issuer_parsers
from pca.cli.replay import add_replay_parser
from pca.cli.tokens import add_token_parsers
from revocation import __version__, ca
from revocation.errors import PCAError
from revocation.events import REVOCATION_REASONS
from revocation.keys import BACKENDS, KEY_ALGORITHMS


def cmd_audit_verify(args: argparse.Namespace) -> None:
    # One subcommand, two paths: --local reads the database, otherwise the admin API is asked (pca.cli.audit).
    from pca.cli import audit

    audit.cmd_audit_verify(args)


def _remote(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="pca.toml (for the admin URL and token file)")
    p.add_argument("--admin-url", help="admin API base URL (overrides the configuration)")
    p.add_argument("--token", help="bearer token (default: PCA_TOKEN, then the configured token file)")
    p.add_argument("--ca-file", help="CA bundle to verify the admin API's certificate (default: admin.ca_file)")
    p.add_argument("--client-cert", help="PEM client certificate (admin.client_ca); without --token it authenticates")
    p.add_argument("--client-key", help="PEM key of --client-cert (default: in the same file)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pca",
        description="Revocation and status infrastructure for a private CA: pre-signed OCSP, CRLs, audit log.",
    )
    parser.add_argument("--version", action="version", version=f"pca {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "init",
        help="create a root CA, an issuing CA, an OCSP signer and a configuration",
        description="Create a root CA, an issuing CA, an OCSP signer and a configuration.",
    )
    p.add_argument("--dir", required=True, help="directory for configuration, keys, database and CRLs")
    p.add_argument("--public-url", default="http://127.0.0.1:8080", help="base URL of OCSP and CRLs (in certificates)")
    p.add_argument("--admin-listen", default="127.0.0.1:8081", help="HOST:PORT of the admin API")
    p.add_argument("--admin-url", help="where the CLI finds the admin API (default: https:// + --admin-listen)")
    p.add_argument(
        "--no-admin-tls",
        action="store_true",
        help="serve the admin API over plain HTTP (admin.tls = false; refused on a non-loopback address)",
    )
    p.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL (postgresql://user@host:port/db; no password: use PGPASSWORD or ~/.pgpass) "
        "instead of the embedded SQLite file",
    )
    p.add_argument("--key-algorithm", default="ec-p256", choices=KEY_ALGORITHMS, help="algorithm of every CA key")
    p.add_argument("--root-cn", default="PCA Root CA", help="common name of the root CA")
    p.add_argument("--issuing-cn", default="PCA Issuing CA", help="common name of the issuing CA")
    k = p.add_argument_group(
        "signing keys",
        "Where the CA and OCSP signer keys are created. Only references (paths, labels, key ids, the names of "
        "environment variables or files holding a PIN or passphrase) are recorded, never a secret.",
    )
    k.add_argument("--key-backend", default="file", choices=BACKENDS, help="file (default), pkcs11 (an HSM) or kms")
    k.add_argument("--key-passphrase-env", metavar="NAME", help="file: encrypt key files with the passphrase in $NAME")
    k.add_argument("--key-passphrase-file", metavar="PATH", help="file: encrypt key files with the passphrase in PATH")
    k.add_argument("--pkcs11-module", metavar="PATH", help="pkcs11: the PKCS#11 library, e.g. libsofthsm2.so")
    k.add_argument("--pkcs11-token-label", metavar="LABEL", help="pkcs11: token of the issuing CA and OCSP signers")
    k.add_argument("--pkcs11-pin-env", metavar="NAME", help="pkcs11: the user PIN is in $NAME")
    k.add_argument("--pkcs11-pin-file", metavar="PATH", help="pkcs11: the user PIN is in PATH")
    k.add_argument("--pkcs11-root-token-label", metavar="LABEL", help="pkcs11: a token of its own for the root key")
    k.add_argument("--pkcs11-root-pin-env", metavar="NAME", help="pkcs11: PIN of the root's token in $NAME")
    k.add_argument("--pkcs11-root-pin-file", metavar="PATH", help="pkcs11: PIN of the root's token in PATH")
    k.add_argument("--kms-region", metavar="REGION", help="kms: AWS region (default: AWS_REGION)")
    k.add_argument("--kms-endpoint-url", metavar="URL", help="kms: endpoint (a VPC endpoint or a local KMS server)")
    p.set_defaults(func=local.cmd_init)
    add_incident_parsers(add_issuer_parsers(sub), _remote)

    p = sub.add_parser(
        "serve", help="run the server (all roles by default)", description="Run the server (all roles by default)."
    )
    p.add_argument("--config", required=True)
    p.add_argument("--roles", help="comma-separated subset of api,presigner,responder,publisher,tracker (default: all)")
    p.add_argument("--public-listen", metavar="HOST:PORT", help="override public.listen (e.g. one per responder)")
    p.add_argument("--admin-listen", metavar="HOST:PORT", help="override admin.listen")
    p.add_argument(
        "--responder-id", help="this responder's name in heartbeats and propagation timelines (default: host:pid)"
    )
    p.add_argument("--responder-url", help="the OCSP URL this responder answers on, shown in timelines")
    p.add_argument(
        "--server",
        choices=["granian", "uvicorn"],
        help="server of the public listener (default: public.server, granian): granian runs it in --workers "
        "processes of its own; uvicorn in this process",
    )
    p.add_argument(
        "--workers", type=int, help="public listener processes, granian only (default: public.workers; 0: one per core)"
    )
    p.add_argument(
        "--insecure-admin-http",
        action="store_true",
        help="allow admin.tls = false on a non-loopback admin.listen (tokens cross the network in clear)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=local.cmd_serve)

    p = sub.add_parser(
        "issue",
        help="issue a leaf certificate (prints the serial first)",
        description="Issue a leaf certificate (prints the serial first).",
    )
    _remote(p)
    p.add_argument("--subject", help='RFC 4514 subject, e.g. "CN=svc1,O=Example" (default: from the CSR)')
    p.add_argument("--dns", action="append", default=[], help="DNS subject alternative name (repeatable)")
    p.add_argument("--ip", action="append", default=[], help="IP address SAN (repeatable)")
    p.add_argument("--email", action="append", default=[], help="email SAN (repeatable)")
    p.add_argument("--uri", action="append", default=[], help="URI SAN (repeatable)")
    p.add_argument("--profile", default="server", choices=ca.PROFILES)
    p.add_argument("--validity-days", type=int, help="validity (default from the configuration, 90)")
    p.add_argument("--csr", help="PEM or DER CSR file; without it a key is generated")
    p.add_argument("--key-algorithm", choices=KEY_ALGORITHMS, help="algorithm of a generated key")
    p.add_argument("--issuer", help="issuing CA id (default from the configuration)")
    p.add_argument("--out", help="write the certificate PEM here (default: stdout)")
    p.add_argument("--key-out", help="write the generated private key here (mode 0600)")
    p.add_argument("--force", action="store_true", help="replace an existing --out or --key-out file")
    p.set_defaults(func=remote.cmd_issue)

    p = sub.add_parser("revoke", help="revoke a certificate", description="Revoke a certificate.")
    _remote(p)
    p.add_argument("serial", help="serial number in hex")
    p.add_argument("--reason", required=True, choices=REVOCATION_REASONS)
    p.add_argument("--invalidity-date", help="ISO 8601 time the key is known or suspected compromised")
    p.add_argument("--issuer", help="issuer id, when the serial exists under several issuers")
    p.set_defaults(func=remote.cmd_revoke)

    p = sub.add_parser(
        "release-hold",
        help="release a certificate from certificateHold",
        description="Release a certificate from certificateHold.",
    )
    _remote(p)
    p.add_argument("serial")
    p.set_defaults(func=remote.cmd_release_hold)

    p = sub.add_parser("status", help="show a certificate's status", description="Show a certificate's status.")
    _remote(p)
    p.add_argument("serial")
    p.add_argument("--issuer")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.set_defaults(func=remote.cmd_status)

    p = sub.add_parser(
        "propagation",
        help="show where a revocation has got to: OCSP responders, CRLs, probes, SLO",
        description="Show where a certificate's revocation has got to: pre-signed, applied by each OCSP "
        "responder, published in a CRL, seen by probes, and whether the SLO was met.",
    )
    _remote(p)
    p.add_argument("serial", help="serial number in hex")
    p.add_argument("--issuer", help="issuer id, when the serial exists under several issuers")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.set_defaults(func=remote.cmd_propagation)

    p = sub.add_parser(
        "probe",
        help="probe OCSP responders over HTTP as a client would, timing each revocation",
        description="Follow the event log and ask each OCSP responder about every revocation (or a sample) "
        "until it answers revoked; report each sighting to the admin API (needs a prober or admin token) "
        "and print percentiles from commit to seen-by-all-responders at the end (--duration or Ctrl-C).",
    )
    _remote(p)
    p.add_argument("--responder", action="append", required=True, metavar="URL", help="OCSP responder URL (repeatable)")
    p.add_argument("--sample", type=float, default=1.0, help="fraction of revocations to probe (default 1.0)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for revoked (default 30)")
    p.add_argument("--duration", type=float, help="stop following the log after this many seconds")
    p.add_argument("--poll", type=float, default=0.05, help="seconds between asks and log reads (default 0.05)")
    p.add_argument("--from-start", action="store_true", help="probe every revocation in the log, not only new ones")
    p.add_argument("--concurrency", type=int, default=64, help="OCSP requests in flight at most (default 64)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=remote.cmd_probe)

    add_events_parser(sub, _remote)

    add_import_parser(sub)
    add_crlsync_parser(sub)
    p = sub.add_parser("audit", help="audit the event log", description="Audit the event log.")
    audit = p.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")
    v = audit.add_parser(
        "verify",
        help="walk the hash chain, compare the projection with a replay of the log, check a signed checkpoint",
        description="Walk the hash chain (fails naming the first bad seq), compare the status projection with a "
        "replay of the log (naming the first differences), and with --checkpoint check that the log still holds "
        "a signed checkpoint's seq and hash.",
    )
    _remote(v)
    v.add_argument("--local", action="store_true", help="read the database directly instead of asking the API")
    v.add_argument(
        "--checkpoint",
        metavar="FILE|URL",
        help="a signed checkpoint (checkpoints/latest.json beside the CRLs): the log must still hold its seq and hash",
    )
    v.add_argument("--ca", metavar="FILE", help="CA certificates (PEM) the checkpoint signer must chain to "
                   "(default: ca-chain.pem beside the configuration)")  # fmt: skip
    v.set_defaults(func=cmd_audit_verify)

    p = sub.add_parser(
        "rebuild",
        help="rebuild the certificate-status projection from the event log",
        description="Rebuild the certificate-status projection from the event log.",
    )
    p.add_argument("--config", required=True)
    p.set_defaults(func=local.cmd_rebuild)

    p = sub.add_parser(
        "migrate", help="apply database schema migrations", description="Apply database schema migrations."
    )
    p.add_argument("--config", required=True)
    p.set_defaults(func=local.cmd_migrate)

    add_token_parsers(sub)
    add_replay_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except PCAError as exc:
        fail(str(exc))
    except OSError as exc:  # a file the command could not use: one line naming it, not a traceback
        fail(f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
