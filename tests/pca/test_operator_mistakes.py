"""Operator mistakes are caught: each one fails at once with one line naming the file, setting or value."""

from __future__ import annotations

import dataclasses
import os
import socket
import stat
import subprocess
import sys
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pca.admin_tls_config import AdminTLSConfig
from pca.config import Config, config_schema, load_config
from publishers.crlsync.settings import UsageError, read_toml
from revocation.errors import ConfigError
from tests.support.ports import free_port
from tests.support.processes import ServerProcess, init_ca, running_server, stop_process


def _pca(*args: str | Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    """``pca`` as an operator runs it: a process of its own, its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "pca.cli", *map(str, args)], capture_output=True, text=True, timeout=120, check=check
    )


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pca: error: "), done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_ca(tmp_path_factory.mktemp("ca"))


# --- configuration keys -------------------------------------------------------------------------------


def test_misspelt_and_misplaced_keys_are_refused_naming_the_closest_valid_one(initialised: Path) -> None:
    config = initialised.parent / "typos.toml"
    text = initialised.read_text()
    config.write_text(
        "shard = 4\n"
        + text.replace("[crl]\n", "[crl]\nvalidty_seconds = 7200\nlease_seconds = 5\n").replace(
            '[crl.store]\ntype = "directory"', '[crl.stor]\ntype = "s3"\nbucket = "crls"'
        )
    )
    line = _one_line_error(_pca("rebuild", "--config", config))
    assert f"configuration {config}:" in line
    assert "unknown key shard (did you mean crl.shards?)" in line
    assert "unknown key crl.validty_seconds (did you mean crl.validity_seconds?)" in line
    assert "unknown key crl.lease_seconds (did you mean scale.lease_seconds?)" in line
    # The S3 settings would have been ignored, and CRLs written to the local directory.
    assert "unknown table [crl.stor] (did you mean [crl.store]?)" in line


def test_an_unknown_key_is_reported_before_the_values_it_would_explain(tmp_path: Path) -> None:
    config = tmp_path / "pca.toml"
    config.write_text("[crl]\nshard = 4\ninterval_seconds = 100000\n")  # above the default validity
    with pytest.raises(ConfigError, match=r"unknown key crl\.shard \(did you mean crl\.shards\?\)"):
        load_config(config, env={})


def _tables(cls: type[Any], prefix: str) -> dict[str, set[str]]:
    """The tables a configuration dataclass stands for: its fields, and each dataclass field a sub-table."""
    out: dict[str, set[str]] = {prefix: set()}
    for name, hint in typing.get_type_hints(cls).items():
        out[prefix].add(name)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            out.update(_tables(hint, f"{prefix}.{name}"))
    return out


def test_every_field_of_the_configuration_dataclasses_is_a_known_key() -> None:
    """A setting added to a configuration dataclass (``[ocsp]``, ``[crl]``, ``[crl.store]``, ``[scale]``, and
    any table added as one) but not read by the loader would be refused in every file: caught here."""
    schema = config_schema()
    tables = [
        _tables(hint, name)
        for name, hint in typing.get_type_hints(Config).items()
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and name != "admin_tls"
    ]
    assert {"ocsp", "crl", "crl.store", "scale"} <= {name for found in tables for name in found}
    # The admin listener's TLS settings are keys of [admin] with a tls_ prefix, not a table of their own.
    admin_tls = {"tls", "tls_cert", "tls_key", "tls_validity_days", "tls_renew_before_days", "ca_file", "client_ca"}
    assert admin_tls <= schema["admin"], sorted(admin_tls - schema["admin"])
    assert len(dataclasses.fields(AdminTLSConfig)) == len(admin_tls) + 1  # + managed_file, a path under data_dir
    for found in tables:
        for table, keys in found.items():
            assert keys <= schema.get(table, frozenset()), f"[{table}] does not read {sorted(keys - schema[table])}"


def test_crl_sync_names_the_closest_setting(tmp_path: Path) -> None:
    config = tmp_path / "sync.toml"
    config.write_text('urls = ["http://a/x.crl"]\nca-bundle = "b"\n')
    with pytest.raises(UsageError, match=r"unknown setting 'ca-bundle' \(did you mean ca_bundle\?\)"):
        read_toml(config)


# --- files the CLI writes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("served")) as srv:
        yield srv


def _issue(srv: ServerProcess, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return _pca("issue", "--config", srv.config_path, "--subject", "CN=svc", "--dns", "svc.internal", *args)


def _issued(srv: ServerProcess) -> int:
    with srv.admin() as admin:
        events = admin.get("/v1/events?after=0&limit=1000").json()["events"]
    return sum(1 for e in events if e["type"] == "CertificateIssued")


def test_key_out_refuses_a_symlink_a_fifo_and_an_existing_file_before_issuing(
    server: ServerProcess, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "link.key"
    link.symlink_to(victim)
    fifo = tmp_path / "fifo.key"  # stands for /dev/null: not a regular file
    os.mkfifo(fifo)
    before = _issued(server)

    line = _one_line_error(_issue(server, "--key-out", link))
    assert f"{link} is a symbolic link: refusing to write through it" in line
    line = _one_line_error(_issue(server, "--key-out", fifo))
    assert f"{fifo} is a named pipe (FIFO), not a regular file: refusing to replace it" in line
    line = _one_line_error(_issue(server, "--key-out", tmp_path / "new.key", "--out", victim))
    assert f"{victim} exists already: refusing to overwrite it; --force replaces it" in line

    assert victim.read_text() == "precious\n" and link.is_symlink() and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert _issued(server) == before, "a refused output must not leave a certificate issued without its key"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.key", "link.key", "victim"]  # no temporary left


def test_key_out_writes_a_private_file_and_force_replaces_a_regular_one(server: ServerProcess, tmp_path: Path) -> None:
    key, cert = tmp_path / "svc.key", tmp_path / "svc.pem"
    key.write_text("old\n")
    key.chmod(0o644)
    done = _issue(server, "--key-out", key, "--out", cert, "--force")
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and b"PRIVATE KEY" in key.read_bytes()
    assert b"BEGIN CERTIFICATE" in cert.read_bytes()
    # --force replaces regular files only: a symbolic link stays refused.
    link = tmp_path / "again.key"
    link.symlink_to(key)
    assert "is a symbolic link" in _one_line_error(_issue(server, "--key-out", link, "--force"))


def test_a_csr_that_is_not_one_is_named_without_a_parser_message(server: ServerProcess, tmp_path: Path) -> None:
    csr = tmp_path / "req.csr"
    csr.write_bytes(b"\x30\x03\x02\x01")  # truncated DER
    line = _one_line_error(_issue(server, "--csr", csr))
    assert line == f"pca: error: CSR {csr} is neither a PEM nor a DER certificate signing request"


def test_init_refuses_a_dangling_symlink_for_its_configuration(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    directory.mkdir()
    (directory / "pca.toml").symlink_to(tmp_path / "elsewhere.toml")
    line = _one_line_error(_pca("init", "--dir", directory))
    assert "pca.toml is a symbolic link: refusing to write through it" in line
    assert not (tmp_path / "elsewhere.toml").exists()


def test_crl_sync_refuses_an_out_that_is_a_symlink_at_start(tmp_path: Path) -> None:
    (tmp_path / "real.pem").write_text("")
    (tmp_path / "crl.pem").symlink_to(tmp_path / "real.pem")
    done = _pca("crl-sync", "--once", "--url", "http://127.0.0.1:9/x.crl", "--ca-bundle", tmp_path / "ca.pem",
                "--out", tmp_path / "crl.pem")  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{tmp_path / 'crl.pem'} is a symbolic link: refusing to write through it" in done.stderr


# --- a second serve -------------------------------------------------------------------------------------


def _wait_for(path: Path, needles: list[str], proc: subprocess.Popen[bytes], seconds: float = 60) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = path.read_text()
        if all(n in text for n in needles):
            return text
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{text}"
        time.sleep(0.2)
    raise AssertionError(f"{needles} not in:\n{path.read_text()}")


def test_a_second_serve_on_the_same_data_directory_says_it_stands_by(server: ServerProcess, tmp_path: Path) -> None:
    log = tmp_path / "second.log"
    with open(log, "wb") as out:
        second = subprocess.Popen(
            [sys.executable, "-m", "pca.cli", "serve", "--config", str(server.config_path),
             "--roles", "presigner,publisher", "--public-listen", f"127.0.0.1:{free_port()}"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        assert server.proc is not None
        holder = f"pid {server.proc.pid} on host {socket.gethostname()}"
        lines = [
            f"WARNING pca.lease: another pca serve ({holder}) holds the {role} lease for "
            f"{server.config.data_dir}; standing by"
            for role in ("pre-signer", "publisher")
        ]
        _wait_for(log, lines, second)
        time.sleep(server.config.scale.lease_seconds / 2)  # past a renewal period: said once, not at every look
        text = log.read_text()
        assert [text.count(line) for line in lines] == [1, 1], text
    finally:
        stop_process(second)


# --- pca probe --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def revoked(server: ServerProcess) -> str:
    """A certificate revoked on ``server``, for probes that start from the first event."""
    with server.admin() as admin:
        issued = admin.post("/v1/certificates", json={"subject": "CN=probed", "dns": ["probed.internal"]})
        assert issued.status_code == 201, issued.text
        serial = issued.json()["serial"]
        assert admin.post(f"/v1/certificates/{serial}/revoke", json={"reason": "keyCompromise"}).status_code == 201
    return str(serial)


def _token(srv: ServerProcess, role: str) -> str:
    done = _pca(
        "token", "create", "--config", srv.config_path, "--name", f"{role}-{time.monotonic_ns()}", "--role", role
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _probe(srv: ServerProcess, token: str, responder: str) -> subprocess.CompletedProcess[str]:
    return _pca("probe", "--config", srv.config_path, "--token", token, "--responder", responder,
                "--from-start", "--duration", "1", "--timeout", "5")  # fmt: skip


def test_probe_exits_0_when_every_responder_said_revoked_and_the_reports_were_taken(
    server: ServerProcess, revoked: str
) -> None:
    done = _probe(server, _token(server, "prober"), server.config.ocsp_url)
    assert done.returncode == 0, done.stderr
    assert "timeouts 0" in done.stdout and "not accepted 0" in done.stdout


def test_probe_exits_1_when_the_admin_api_refuses_its_reports(server: ServerProcess, revoked: str) -> None:
    done = _probe(server, _token(server, "auditor"), server.config.ocsp_url)  # may read, may not report
    assert done.returncode == 1
    assert "pca: error: probe failed: " in done.stderr and "sightings not accepted by the admin API" in done.stderr
    assert "probe results posted 0" in done.stdout  # the summary is still printed


def test_probe_exits_1_when_a_responder_never_answers(server: ServerProcess, revoked: str) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}/ocsp"
    done = _probe(server, _token(server, "prober"), unreachable)
    assert done.returncode == 1
    assert "revocations not seen revoked by every responder in time" in done.stderr
    assert f"{unreachable}: 1 timeouts" in done.stdout


# --- listeners --------------------------------------------------------------------------------------------


def test_a_bind_failure_names_the_listener_and_the_setting(server: ServerProcess) -> None:
    admin_host, admin_port = server.config.admin_listen
    public_host, public_port = server.config.public_listen
    # The same configuration twice: the first serve holds both ports.
    line = _one_line_error(_pca("serve", "--config", server.config_path))
    assert line == (
        f"pca: error: admin listener {admin_host}:{admin_port} (admin.listen or --admin-listen): address already in use"
    )
    # granian binds in a process of its own: the port is asked about before it starts.
    line = _one_line_error(_pca("serve", "--config", server.config_path, "--roles", "responder", "--server", "granian"))
    assert line == (
        f"pca: error: public listener {public_host}:{public_port} (public.listen or --public-listen): "
        "address already in use"
    )
    line = _one_line_error(
        _pca("serve", "--config", server.config_path, "--roles", "responder", "--public-listen", "192.0.2.1:8080")
    )
    assert line.endswith(
        "public listener 192.0.2.1:8080 (public.listen or --public-listen): cannot assign requested address"
    )


# --- what the CLI prints of a library's error ----------------------------------------------------------


def test_a_malformed_token_file_is_named_in_one_line(tmp_path: Path) -> None:
    config = init_ca(tmp_path / "ca")
    (tmp_path / "ca" / "tokens.json").write_text('{"tokens": [')
    line = _one_line_error(_pca("token", "create", "--config", config, "--name", "n", "--role", "prober"))
    assert line == f"pca: error: token file {tmp_path / 'ca' / 'tokens.json'} is not JSON (line 1, column 13)"
    (tmp_path / "ca" / "tokens.json").write_text("[]")
    line = _one_line_error(_pca("token", "create", "--config", config, "--name", "n", "--role", "prober"))
    assert line.endswith('tokens.json is malformed: it must be an object {"tokens": [...]}')


def test_import_names_a_certificate_that_does_not_parse_without_the_parser_text(
    server: ServerProcess, tmp_path: Path
) -> None:
    (tmp_path / "truncated.der").write_bytes(b"\x30\x82\x01\x00\x30")
    (tmp_path / "bad.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    done = _pca("import", "--config", server.config_path, "--issuer", "issuing-ca", "--on-error", "continue",
                "--certs", tmp_path / "truncated.der", tmp_path / "bad.pem")  # fmt: skip
    output = done.stdout + done.stderr
    assert "truncated.der" in output and "bad.pem" in output, output
    assert "ParseError" not in output and "Traceback" not in output, output


def test_a_database_path_that_is_not_sqlite_is_named_in_one_line(initialised: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a database, but long enough to look like one's first page\n" * 20)
    config = tmp_path / "pca.toml"
    config.write_text(initialised.read_text().replace('database = "pca.db"', f'database = "{tmp_path / "notes.txt"}"'))
    line = _one_line_error(_pca("rebuild", "--config", config))
    assert line == f"pca: error: cannot open the SQLite database {tmp_path / 'notes.txt'} (paths.database): " + (
        "file is not a database"
    )


def test_init_refuses_a_symlink_for_a_ca_certificate_before_making_the_ca(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    directory.mkdir()
    (directory / "ca-chain.pem").symlink_to(tmp_path / "elsewhere.pem")
    line = _one_line_error(_pca("init", "--dir", directory))
    assert "ca-chain.pem is a symbolic link: refusing to write through it" in line
    assert sorted(p.name for p in directory.iterdir()) == ["ca-chain.pem"]  # no configuration, key or database
