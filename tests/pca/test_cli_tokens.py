"""``pca token create|list|revoke`` against a real ``pca serve``: what an operator does and sees.

A revocation applies to the running server at once (it re-reads the token file), an expired
or revoked token is told so, ``list`` never shows a secret, and every creation and revocation
is an event in the log with its actor.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from revocation.admin.tokens import TokenFile, add_token, read_last_used, revoke_token, write_secret_file
from tests.support.processes import ServerProcess, running_server
from tests.support.scaled import pca


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("tokens") / "ca") as server:
        yield server


def _get(srv: ServerProcess, token: str, path: str = "/v1/issuers") -> httpx.Response:
    return httpx.get(srv.admin_url + path, headers={"authorization": f"Bearer {token}"}, timeout=10)


def _events(srv: ServerProcess) -> list[dict[str, object]]:
    with srv.admin() as admin:
        return list(admin.get("/v1/events?after=0&limit=1000").json()["events"])


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return result.stdout


def test_a_token_is_created_used_listed_revoked_and_refused_at_once(srv: ServerProcess) -> None:
    config = srv.config_path
    token = _ok(pca("token", "create", "--config", config, "--name", "ops-1", "--role", "auditor",
                    "--expires-in", "30d")).strip()  # fmt: skip
    assert token.startswith("pca_") and "\n" not in token
    assert _get(srv, token).status_code == 200

    listing = _ok(pca("token", "list", "--config", config))
    line = next(x for x in listing.splitlines() if x.startswith("ops-1 "))
    assert line.split()[1:3] == ["auditor", "active"]
    in_30_days = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)
    assert in_30_days.strftime("%Y-%m-%d") in line
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    assert line.split()[-1].startswith(today)  # LAST USED: the request above
    as_json = json.loads(_ok(pca("token", "list", "--config", config, "--json")))
    assert {t["name"] for t in as_json["tokens"]} >= {"admin", "ops-1"}
    assert next(t for t in as_json["tokens"] if t["name"] == "ops-1")["last_used"].startswith(today)
    # Neither the secrets nor their hashes: nothing a reader could use.
    stored = json.loads(srv.config.tokens_db.read_text())["tokens"]
    for text in (listing, json.dumps(as_json)):
        assert token not in text and srv.token not in text
        assert all(t["sha256"] not in text for t in stored)

    revoked = pca("token", "revoke", "--config", config, "--name", "ops-1")
    assert "revoked token 'ops-1'" in _ok(revoked)
    refused = _get(srv, token)  # the very next request: the server re-reads the changed file
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert "has been revoked" in refused.json()["detail"]
    assert "ops-1" not in refused.text  # the holder learns it is revoked, not which name it had
    assert _get(srv, "pca_" + "y" * 43).json()["detail"] == "the bearer token is not valid"
    listed = json.loads(_ok(pca("token", "list", "--config", config, "--json")))["tokens"]
    assert next(t for t in listed if t["name"] == "ops-1")["state"] == "revoked"

    again = pca("token", "revoke", "--config", config, "--name", "ops-1")
    assert again.returncode == 1 and "revoked already" in again.stderr
    unknown = pca("token", "revoke", "--config", config, "--name", "nobody")
    assert unknown.returncode == 1 and "no token named 'nobody'" in unknown.stderr
    taken = pca("token", "create", "--config", config, "--name", "ops-1", "--role", "auditor")
    assert taken.returncode == 1 and "exists already" in taken.stderr


def test_every_creation_and_revocation_is_an_event_with_its_actor(srv: ServerProcess) -> None:
    config = srv.config_path
    _ok(pca("token", "create", "--config", config, "--name", "audited", "--role", "prober"))
    _ok(pca("token", "revoke", "--config", config, "--name", "audited"))
    events = [e for e in _events(srv) if str(e["type"]).startswith("Token")]
    init = next(e for e in events if e["payload"] == {"v": 1, "name": "admin", "role": "admin", "expires": None})
    assert (init["type"], init["actor"]) == ("TokenCreated", "system:init")
    mine = [e for e in events if e["stream"] == "token/audited"]
    assert [e["type"] for e in mine] == ["TokenCreated", "TokenRevoked"]
    assert all(str(e["actor"]).startswith("cli:") for e in mine)
    assert mine[0]["payload"] == {"v": 1, "name": "audited", "role": "prober", "expires": None}
    assert "audit OK" in _ok(pca("audit", "verify", "--config", config))
    listed = json.loads(_ok(pca("token", "list", "--config", config, "--json")))["tokens"]
    assert next(t for t in listed if t["name"] == "audited")["last_used"] is None  # never used


def test_an_expired_token_is_refused_and_says_so(srv: ServerProcess) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
    token = add_token(srv.config.tokens_db, "last-week", "auditor", now=past, expires=past + datetime.timedelta(days=1))
    resp = _get(srv, token)
    assert resp.status_code == 401 and "has expired" in resp.json()["detail"]
    line = next(x for x in _ok(pca("token", "list", "--config", srv.config_path)).splitlines() if "last-week" in x)
    assert line.split()[1:3] == ["auditor", "expired"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--expires-in", "soon"], "give a number and a unit"),
        (["--expires-in", "0d"], "more than 0"),
        (["--expires-at", "2020-01-01T00:00:00Z"], "not in the future"),
        (["--expires-at", "2099-01-01T00:00:00"], "no timezone"),
        (["--expires-in", "1d", "--expires-at", "2099-01-01T00:00:00Z"], "not allowed with"),
    ],
)
def test_a_bad_expiry_is_refused_and_nothing_is_created(srv: ServerProcess, flags: list[str], message: str) -> None:
    before_file, before_head = srv.config.tokens_db.read_text(), len(_events(srv))
    result = pca("token", "create", "--config", srv.config_path, "--name", "never", "--role", "auditor", *flags)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert srv.config.tokens_db.read_text() == before_file
    assert len(_events(srv)) == before_head


def test_a_token_file_from_before_expiry_and_revocation_still_works(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    add_token(path, "x", "admin")
    old = {"tokens": [{k: v for k, v in e.items() if k in ("name", "role", "sha256")}
                      for e in json.loads(path.read_text())["tokens"]]}  # fmt: skip
    token = add_token(tmp_path / "other.json", "y", "revoker")
    old["tokens"].append({"name": "y", "role": "revoker", "sha256": json.loads((tmp_path / "other.json").read_text())
                          ["tokens"][0]["sha256"]})  # fmt: skip
    path.write_text(json.dumps(old))
    store = TokenFile(path)()
    assert store.authenticate(token) is not None
    assert [(t.name, t.created, t.expires, t.revoked) for t in store.tokens()] == [
        ("x", None, None, None),
        ("y", None, None, None),
    ]


def test_the_server_sees_a_rewrite_of_the_same_size_in_the_same_instant(tmp_path: Path) -> None:
    """TokenFile re-reads on any change of the file: a rewrite with the same size and mtime (a coarse
    clock, a restored copy) is still seen, since every write is a rename to a new inode."""
    path = tmp_path / "tokens.json"
    token = add_token(path, "a", "admin")
    tokens = TokenFile(path)
    assert tokens().authenticate(token) is not None
    stat = path.stat()
    data = json.loads(path.read_text())
    data["tokens"][0]["sha256"] = "0" * 64  # the same length: another token now
    write_secret_file(path, json.dumps(data, indent=2))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    assert tokens().authenticate(token) is None


def test_a_revocation_the_log_missed_is_recorded_by_revoking_again(srv: ServerProcess) -> None:
    """As when the database was unreachable at the first ``pca token revoke``: the file says revoked,
    the log does not; the same command again records it (and only then says "revoked already")."""
    config = srv.config_path
    _ok(pca("token", "create", "--config", config, "--name", "missed", "--role", "auditor"))
    revoke_token(srv.config.tokens_db, "missed")  # the file only
    assert [e["type"] for e in _events(srv) if e["stream"] == "token/missed"] == ["TokenCreated"]
    assert "revoked token 'missed'" in _ok(pca("token", "revoke", "--config", config, "--name", "missed"))
    assert [e["type"] for e in _events(srv) if e["stream"] == "token/missed"] == ["TokenCreated", "TokenRevoked"]
    again = pca("token", "revoke", "--config", config, "--name", "missed")
    assert again.returncode == 1 and "revoked already" in again.stderr


def test_last_use_is_recorded_to_the_minute_with_one_write_a_minute(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token = add_token(path, "busy", "auditor")
    tokens = TokenFile(path)
    t0 = datetime.datetime(2026, 12, 6, 8, 0, 5, tzinfo=datetime.UTC)
    for seconds in (0, 20, 50):  # one minute: written once, at its first use
        tokens().check(token, t0 + datetime.timedelta(seconds=seconds))
    assert read_last_used(path) == {"busy": "2026-12-06T08:00:05Z"}
    tokens().check(token, t0 + datetime.timedelta(seconds=70))
    assert read_last_used(path) == {"busy": "2026-12-06T08:01:15Z"}
    assert "busy" in path.with_name("tokens.last-used.json").read_text()
