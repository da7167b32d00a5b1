"""``pca serve`` with no flags: the public listener in granian worker processes, through RSGI.

One real ``pca serve`` (no --server, no --workers) is shared by the module: it runs granian, OCSP
is answered there, and what goes through the RSGI-to-ASGI bridge (CRLs, /healthz) arrives whole
and unchanged, a CRL of many megabytes included.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pca.config import load_config
from pca.public_app import settle_heap
from pca.serve import public_server
from publishers.objectstore import DirectoryStore
from revocation.errors import ConfigError
from tests.support.processes import ServerProcess, descendants, init_ca

pytestmark = pytest.mark.e2e

BIG_KEY = "big-test.crl"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(init_ca(tmp_path_factory.mktemp("rsgi") / "ca"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_pca_serve_without_flags_runs_the_public_listener_under_granian_rsgi(server: ServerProcess) -> None:
    assert server.proc is not None
    below = [_cmdline(pid) for pid in descendants(server.proc.pid)]
    granian = [cmd for cmd in below if b"granian" in cmd]
    assert granian, f"no granian process below pca serve: {below}"
    assert any(b"rsgi" in cmd and b"pca.public_rsgi:create_app" in cmd for cmd in granian), granian
    workers = max(1, (os.cpu_count() or 1) - 1)  # public.workers = 0: a core left to pca serve's own roles
    assert f"granian, {workers} worker process(es)" in server.log_path.read_text()
    response = httpx.get(server.public_url + "/healthz", timeout=5)
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert response.headers["server"] == "granian"


def test_a_large_crl_is_served_complete_and_byte_identical_through_rsgi(server: ServerProcess) -> None:
    data = os.urandom(24 * 1024 * 1024)  # the size of a CRL of some 500,000 entries
    store = DirectoryStore(server.config.crl_dir)
    etag = asyncio.run(store.put(BIG_KEY, data, content_type="application/pkix-crl", cache_control="max-age=300"))
    url = f"{server.public_url}/crl/{BIG_KEY}"
    digest = hashlib.sha256()
    size = 0
    with httpx.stream("GET", url, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/pkix-crl"
        assert response.headers["content-length"] == str(len(data))
        assert response.headers["etag"] == etag
        assert response.headers["cache-control"] == "max-age=300"
        for chunk in response.iter_bytes():
            digest.update(chunk)
            size += len(chunk)
    assert size == len(data)
    assert digest.digest() == hashlib.sha256(data).digest()

    head = httpx.head(url, timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(data))
    cached = httpx.get(url, headers={"if-none-match": etag}, timeout=10)
    assert cached.status_code == 304 and cached.content == b""
    # The CRL the publisher wrote is served as the file holds it, through openssl too.
    crl = httpx.get(server.public_url + "/crl/issuing-ca.crl", timeout=10)
    assert crl.status_code == 200
    assert crl.content == (server.config.crl_dir / "issuing-ca.crl").read_bytes()
    parsed = subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-noout", "-issuer"], input=crl.content, capture_output=True, check=True
    )
    assert b"PCA Issuing CA" in parsed.stdout


def test_requests_off_the_ocsp_path_get_the_same_answers_as_under_uvicorn(server: ServerProcess) -> None:
    base = server.public_url
    assert httpx.get(base + "/nothing-here", timeout=5).status_code == 404
    assert httpx.get(base + "/crl/no-such.crl", timeout=5).status_code == 404
    refused = httpx.post(base + "/crl/issuing-ca.crl", content=b"x", timeout=5)
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
    assert httpx.get(base + "/crl/../pca.toml", timeout=5).status_code == 404


# --- choosing the server: [public] server and workers, the flags over them ---------------------------------------


def _config(tmp_path: Path, public: str) -> Path:
    path = tmp_path / "pca.toml"
    path.write_text(f'[public]\nurl = "http://127.0.0.1:8080"\n{public}\n')
    return path


def test_the_configuration_chooses_the_server_and_the_flags_override_it(tmp_path: Path) -> None:
    cores = os.cpu_count() or 1
    beside = max(1, cores - 1)  # a core left to the signing roles and the API of the same process
    default = load_config(_config(tmp_path, ""))
    assert public_server(default, None, None) == ("granian", beside)
    assert public_server(default, None, None, ("responder",)) == ("granian", cores)  # a responder alone
    assert public_server(default, "granian", 3) == ("granian", 3)
    assert public_server(default, "uvicorn", None) == ("uvicorn", 1)
    three = load_config(_config(tmp_path, 'server = "granian"\nworkers = 3'))
    assert public_server(three, None, None) == ("granian", 3)
    assert public_server(three, None, 1) == ("granian", 1)
    assert public_server(three, "uvicorn", None) == ("uvicorn", 1)  # workers are granian's
    uvicorn = load_config(_config(tmp_path, 'server = "uvicorn"'))
    assert public_server(uvicorn, None, None) == ("uvicorn", 1)
    assert public_server(uvicorn, "granian", None) == ("granian", beside)
    with pytest.raises(ConfigError, match="uvicorn runs the public listener in this process"):
        public_server(uvicorn, None, 2)
    # A process whose roles report only on its public listener (no API) keeps that listener in the process.
    for roles in (("presigner", "publisher"), ("tracker",), ("responder", "publisher")):
        assert public_server(three, None, None, roles) == ("uvicorn", 1), roles
        assert public_server(three, "granian", None, roles) == ("granian", 3), roles
    assert public_server(three, None, None, ("responder",)) == ("granian", 3)
    assert public_server(three, None, None, ("api", "responder", "publisher")) == ("granian", 3)


@pytest.mark.parametrize(
    ("public", "message"),
    [
        ('server = "nginx"', "public.server 'nginx' is not one of granian, uvicorn"),
        ("workers = -1", "public.workers must be 0 .one per core. or more"),
        ('server = "uvicorn"\nworkers = 2', "applies to granian only"),
        ('workers = "2"', "public.workers must be int"),
        ("worker = 2", "worker"),
    ],
)
def test_a_wrong_server_setting_is_named_at_load(tmp_path: Path, public: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_config(tmp_path, public))


def test_pca_init_writes_the_server_settings_with_their_defaults(tmp_path: Path) -> None:
    config = init_ca(tmp_path / "ca")
    text = config.read_text()
    assert '\nserver = "granian"' in text and "\nworkers = 0" in text
    cfg = load_config(config)
    assert (cfg.public_server, cfg.public_workers) == ("granian", 0)


# --- the worker's heap: the loaded cache out of the garbage collector's way ---------------------------------------


async def test_a_worker_freezes_its_heap_once_its_cache_has_caught_up() -> None:
    """Full collections walk the whole cache (35-330 ms per worker, the POST p99 tail); frozen, it is left out."""
    asked: list[int] = []

    async def report() -> dict[str, object]:
        asked.append(len(asked))
        return {"lag_changes": 0 if len(asked) >= 3 else 1000 - len(asked)}

    gc.unfreeze()
    try:
        await settle_heap(report, poll=0.01)
        assert len(asked) == 3  # not before the cache held the whole feed
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_the_workers_healthz_covers_the_roles_of_pca_serves_own_process(server: ServerProcess) -> None:
    """A load balancer asks the public port: it must hear about the pre-signer and the publisher,
    which run in pca serve's process, not only about the worker that answers."""
    body = httpx.get(server.public_url + "/healthz", timeout=5).json()
    for part in ("responder", "presigner", "publisher", "ocsp_signers"):
        assert part in body, body
    assert body["presigner"]["lease"] == "active", body
