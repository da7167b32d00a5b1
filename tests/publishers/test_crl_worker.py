"""Full CRLs made in a child process (``pca.roles.crl_worker``), as ``pca serve`` makes them: the same
CRL as in-process, adopted by the parent (numbers, the base of its deltas, metrics); a child killed
mid-way is an error the publisher retries with a new child."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from cryptography import x509

from pca.config import Config
from pca.roles.crl_worker import CRLWorker
from pca.roles.publisher import build_publisher, open_store
from pca.runtime import Runtime
from pca.serve import build_authority
from publishers.objectstore import DirectoryStore
from revocation import crl_layout
from revocation.errors import StorageError
from tests.support.ca import ACTOR, ISSUING, ROOT, issue, issuer
from tests.support.crl import crl_number, delta_base, listed


@pytest.fixture
def worker(ca_config: Config) -> Iterator[CRLWorker]:
    w = CRLWorker(ca_config)
    try:
        yield w
    finally:
        w.close()


async def stored(ca_config: Config, key: str) -> x509.CertificateRevocationList:
    obj = await DirectoryStore(ca_config.crl_dir).get(key)
    assert obj is not None, key
    return x509.load_der_x509_crl(obj.data)


async def test_a_full_crl_made_in_the_child_is_the_one_stored_and_the_parent_adopts_it(
    runtime: Runtime, ca_config: Config, worker: CRLWorker
) -> None:
    authority = build_authority(runtime)
    cert = await issue(authority, "in-child")
    await authority.revoke(cert.serial_number, "keyCompromise", ACTOR)
    publisher = build_publisher(runtime, open_store(ca_config), offload=worker)
    done = await publisher.publish_all()

    fulls = {p.issuer_id: p for p in done if p.kind == "full"}
    assert set(fulls) == {ROOT, ISSUING}
    full = await stored(ca_config, crl_layout.full_key(ISSUING))
    assert crl_number(full) == fulls[ISSUING].number
    assert listed(full).keys() == {cert.serial_number}
    # The parent adopted it: its first delta is based on the child's full CRL, numbered above it.
    [delta] = [p for p in done if p.kind == "delta" and p.issuer_id == ISSUING]
    assert delta.base_number == fulls[ISSUING].number and delta.number > fulls[ISSUING].number
    assert delta_base(await stored(ca_config, crl_layout.delta_key(ISSUING))) == fulls[ISSUING].number
    published = runtime.registry.get_sample_value(
        "crl_publishes_total", {"issuer": ISSUING, "kind": "full", "result": "published"}
    )
    assert published == 1  # counted in the parent's registry, which /metrics exports

    # Numbers keep increasing across parent and child.
    again = await publisher.publish(await issuer(runtime, ISSUING))
    assert again.number > delta.number


async def test_a_child_killed_mid_way_is_an_error_and_the_next_attempt_starts_a_new_one(
    runtime: Runtime, ca_config: Config, worker: CRLWorker
) -> None:
    record = await issuer(runtime, ISSUING)
    first = await worker(ISSUING, 0, 0)
    pool = worker._pool
    assert pool is not None
    [pid] = list(pool._processes)  # the one child
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(StorageError, match="CRL worker process died"):
        await worker(ISSUING, 0, first.number)
    second = await worker(ISSUING, 0, first.number)
    assert second.number > first.number
    assert record.issuer_id == second.issuer_id
