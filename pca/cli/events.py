"""``pca events``: the event log as JSON lines, once or followed (``--follow``), for a SIEM or a log shipper.

It reads ``GET /v1/events`` (roles admin and auditor) a page at a time from ``--after SEQ``. With
``--follow`` it keeps polling, reconnects after a lost connection or a server restart (backoff up to
10 s, a line on stderr each time), and stops cleanly on SIGINT or SIGTERM (exit 0, saying on stderr
which ``--after`` resumes) and when its reader goes away (SIGPIPE: exit 0, no traceback). Standard
output carries nothing but events, one JSON object a line, each flushed as it comes.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import stat
import sys
import time
from types import FrameType
from typing import Any

import httpx

from pca.cli.common import fail
from pca.cli.remote import _admin_access

PAGE = 1000  # the API's largest page
RETRY_FIRST, RETRY_MAX = 0.5, 10.0


class _Stop(Exception):
    """SIGINT or SIGTERM: stop following."""


def add_events_parser(sub: Any, remote_flags: Any) -> None:
    p = sub.add_parser(
        "events",
        help="print events from the log as JSON lines (--follow streams them, for a SIEM)",
        description="Print events from the event log as JSON lines, one event a line, oldest first (needs an "
        "admin or auditor token). --follow keeps streaming new events, reconnecting after a lost connection; "
        "--after SEQ resumes after the last seq a consumer holds.",
    )
    remote_flags(p)
    p.add_argument("--after", type=int, default=0, metavar="SEQ", help="start after this seq (default 0: the start)")
    p.add_argument("--limit", type=int, default=100, help="without --follow: at most this many events (default 100)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events until SIGINT or SIGTERM")
    p.add_argument(
        "--format",
        default="json",
        choices=["json", "text"],
        help="json: the API's event objects, one a line (default); text: seq, time, type, actor, stream",
    )
    p.add_argument("--poll", type=float, default=1.0, help="--follow: seconds between reads when idle (default 1)")
    p.set_defaults(func=cmd_events)


def _line(event: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(event, sort_keys=True, separators=(",", ":"))
    return f"{event['seq']} {event['recorded_at']} {event['type']} {event['actor']} {event['stream']}"


def _page(http: httpx.Client, after: int, limit: int) -> list[dict[str, Any]]:
    """One page of events after ``after``; a refusal (a bad token, a role that may not read the log) fails
    at once, a server that cannot answer (5xx) raises ``httpx.HTTPError`` to be retried."""
    resp = http.get("/v1/events", params={"after": after, "limit": limit})
    if resp.status_code >= 500:
        raise httpx.HTTPStatusError(f"HTTP {resp.status_code}", request=resp.request, response=resp)
    if resp.status_code != 200:
        try:
            problem = resp.json()
            fail(f"{problem.get('title', resp.status_code)}: {problem.get('detail', resp.text)}")
        except ValueError:
            fail(f"HTTP {resp.status_code}: {resp.text[:200]}")
    events = resp.json().get("events")
    if not isinstance(events, list):
        fail("the admin API answered GET /v1/events without an events list")
    return events


def _emit(events: list[dict[str, Any]], fmt: str) -> None:
    for event in events:
        sys.stdout.write(_line(event, fmt) + "\n")
    sys.stdout.flush()  # a log shipper reading a pipe gets each page as it comes


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def cmd_events(args: argparse.Namespace) -> None:
    if args.after < 0:
        fail("--after must be 0 or a seq of the log")
    if not 1 <= args.limit <= PAGE and not args.follow:
        fail(f"--limit must be from 1 to {PAGE}")
    if args.poll <= 0:
        fail("--poll must be a positive number of seconds")
    url, token, tls = _admin_access(args)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    position = [args.after]  # the last seq printed, for the resume hint
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=30.0, verify=tls) as http:
            if not args.follow:
                _emit(_page_or_fail(http, args.after, args.limit, url), args.format)
                return
            signal.signal(signal.SIGINT, _on_signal)
            signal.signal(signal.SIGTERM, _on_signal)
            _follow(http, position, args.format, args.poll, url)
    except _Stop:
        print(f"pca: stopped following the event log; resume with --after {position[0]}", file=sys.stderr)
    except BrokenPipeError:
        # The reader went away (| head, a shipper restarting): leave quietly. Python would complain about
        # the pipe once more when it flushes stdout at exit, so point stdout at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(0) from None


def _untrusted(exc: httpx.HTTPError, url: str) -> None:
    """A server whose certificate does not verify is no passing fault: fail at once, saying what to check."""
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        fail(
            f"cannot reach the admin API at {url}: {exc} (is --ca-file / admin.ca_file the CA bundle that "
            "issued the admin API's certificate?)"
        )


def _page_or_fail(http: httpx.Client, after: int, limit: int, url: str) -> list[dict[str, Any]]:
    try:
        return _page(http, after, limit)
    except httpx.HTTPError as exc:
        _untrusted(exc, url)
        fail(f"cannot read the event log from {url}: {exc}")


def _follow(http: httpx.Client, position: list[int], fmt: str, poll: float, url: str) -> None:
    """Print every event after ``position[0]`` and keep following, keeping ``position[0]`` the last seq
    printed; returns only through an exception (a signal, a closed pipe, a refusal)."""
    after = position[0]
    backoff = RETRY_FIRST
    lost = False
    while True:
        try:
            events = _page(http, after, PAGE)
        except httpx.HTTPError as exc:
            _untrusted(exc, url)
            print(f"pca: cannot read the event log from {url} ({exc}); retrying in {backoff:g}s", file=sys.stderr)
            lost = True
            time.sleep(backoff)
            backoff = min(backoff * 2, RETRY_MAX)
            continue
        if lost:
            print(f"pca: reading the event log again from {url}, after seq {after}", file=sys.stderr)
            lost, backoff = False, RETRY_FIRST
        if events:
            _emit(events, fmt)
            after = position[0] = int(events[-1]["seq"])
        if len(events) < PAGE:
            _idle(poll)


def _idle(seconds: float) -> None:
    """Wait between reads of an idle log; a reader that went away meanwhile (``| head -n 5``: the pipe's read
    end closed) ends the wait at once as a closed pipe, rather than at the next event's write."""
    fd = sys.stdout.fileno()
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        time.sleep(seconds)
        return
    watch = select.poll()
    watch.register(fd, select.POLLERR)  # a pipe's writer gets POLLERR once no reader is left
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if any(ev & (select.POLLERR | select.POLLHUP) for _, ev in watch.poll(left * 1000)):
            raise BrokenPipeError
