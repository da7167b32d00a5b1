"""Numbers read from outside (headers, configuration, store metadata, lease holders) are ASCII digits.

``str.isdigit`` accepts '²', '٣' and other Unicode digits, which ``int`` refuses: a check by
``isdigit`` alone lets such a value through to a ValueError (a 500, a crash) instead of the
answer or message meant for a value that is not a number.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from pca.config import parse_listen
from pca.public_rsgi import RSGIListener, announces_too_much
from pca.runtime import Runtime
from publishers.crlsync.settings import UsageError
from publishers.crlsync.settings import parse_listen as parse_metrics_listen
from publishers.objectstore import DirectoryStore, ObjectHead, StoredObject
from publishers.storer import META_NUMBER, Storer
from responders.app import MAX_REQUEST_BYTES
from revocation import crl_layout
from revocation.coordination.holders import parse_holder
from revocation.errors import ConfigError
from tests.support.ca import ISSUING
from tests.support.crl import crl_number, make_publisher

UNICODE_DIGITS = ["²", "٣", "1²"]


@dataclasses.dataclass
class Scope:
    headers: dict[str, str]
    proto: str = "http"
    method: str = "POST"
    path: str = "/ocsp"


class Protocol:
    """An RSGI request whose body is ``body``; keeps what was answered."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.answered: tuple[int, bytes] | None = None

    async def __call__(self) -> bytes:
        return self.body

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.answered = (status, body)


class BodyEcho:
    """Stands in for the OCSP app: answers 200 with the body it read, 413 when it was refused as too large."""

    async def reply(self, method: str, path: str, header: Any, read_body: Any) -> tuple[int, list[Any], bytes]:
        body = await read_body()
        return (413, [], b"") if body is None else (200, [], body)


async def rsgi_answer(content_length: str) -> tuple[int, bytes] | None:
    protocol = Protocol(b"request")
    listener = RSGIListener(BodyEcho(), None, body_timeout=5)  # type: ignore[arg-type]
    await listener.__rsgi__(Scope({"content-length": content_length}), protocol)  # type: ignore[arg-type]
    return protocol.answered


@pytest.mark.parametrize("length", UNICODE_DIGITS)
async def test_an_ocsp_post_whose_content_length_is_in_unicode_digits_is_answered(length: str) -> None:
    # granian itself answers such a request 400 before pca sees it; another front server may not.
    assert await rsgi_answer(length) == (200, b"request")


@pytest.mark.parametrize("length", [str(MAX_REQUEST_BYTES + 1), "9" * 5000])
async def test_an_ocsp_post_announcing_too_much_is_refused_however_long_the_number(length: str) -> None:
    assert announces_too_much(length)
    assert await rsgi_answer(length) == (413, b"")


@pytest.mark.parametrize("port", UNICODE_DIGITS)
def test_a_listen_address_with_a_port_in_unicode_digits_is_a_configuration_error(port: str) -> None:
    with pytest.raises(ConfigError, match="must be HOST:PORT"):
        parse_listen(f"127.0.0.1:{port}", "public.listen")
    with pytest.raises(UsageError, match="is not HOST:PORT"):
        parse_metrics_listen(f"127.0.0.1:{port}")


@pytest.mark.parametrize("pid", UNICODE_DIGITS)
def test_a_lease_holder_with_a_pid_in_unicode_digits_is_no_process_of_ours(pid: str) -> None:
    assert parse_holder(f"host:{pid}:12345@machine") is None


class NumberTampered:
    """The store, with the CRL number in every object's metadata replaced by ``number``."""

    def __init__(self, inner: DirectoryStore, number: str) -> None:
        self.inner, self.number = inner, number

    async def head(self, key: str) -> ObjectHead | None:
        head = await self.inner.head(key)
        return None if head is None else dataclasses.replace(head, metadata={**head.metadata, META_NUMBER: self.number})

    async def get(self, key: str) -> StoredObject | None:
        return await self.inner.get(key)


@pytest.mark.parametrize("number", UNICODE_DIGITS)
async def test_a_crl_number_in_unicode_digits_in_the_store_metadata_is_read_from_the_crl(
    rt: Runtime, tmp_path: Path, number: str
) -> None:
    store = DirectoryStore(tmp_path / "crl")
    await make_publisher(rt, store, rt.clock).publish_all()
    key = crl_layout.full_key(ISSUING)
    stored, _ = await Storer(NumberTampered(store, number), rt.view).stored_number(key)  # type: ignore[arg-type]
    assert stored == crl_number(x509.load_der_x509_crl((tmp_path / "crl" / key).read_bytes()))
