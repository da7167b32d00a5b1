"""The directory store after a crash between writing an object's data and its ``.meta`` sidecar.

A child process writes an object a second time and kills itself (``os._exit``) right after
the first or the second of the two renames of that write; the test then reads the store as
the public listener and the next publisher would.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from publishers.objectstore import DirectoryStore, PreconditionFailed
from publishers.storer import CRL_TYPE

OLD, NEW = b"old CRL bytes", b"new CRL bytes, a longer list"
OLD_EXPIRES, NEW_EXPIRES = "Thu, 01 Jan 2099 00:00:00 GMT", "Fri, 02 Jan 2099 00:00:00 GMT"

# argv: the store's directory, and after which rename of the second write the process dies.
WRITER = f"""
import asyncio, os, sys
from pathlib import Path
from publishers.objectstore import DirectoryStore

store, crash_after = DirectoryStore(Path(sys.argv[1])), int(sys.argv[2])
first = asyncio.run(store.put("x.crl", {OLD!r}, content_type="{CRL_TYPE}", expires="{OLD_EXPIRES}",
                              metadata={{"crl-number": "1"}}))
print(first, flush=True)
renames, real_replace = 0, os.replace

def replace(src, dst):
    global renames
    real_replace(src, dst)
    renames += 1
    if renames == crash_after:
        os._exit(9)  # the machine stops here

os.replace = replace
asyncio.run(store.put("x.crl", {NEW!r}, content_type="{CRL_TYPE}", expires="{NEW_EXPIRES}",
                      metadata={{"crl-number": "2"}}, if_match=first))
"""


@pytest.mark.parametrize("crash_after", [1, 2])
async def test_a_crash_between_data_and_sidecar_never_shows_one_objects_bytes_with_anothers_number(
    tmp_path: Path, crash_after: int
) -> None:
    root = tmp_path / "crl"
    child = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", WRITER, str(root), str(crash_after)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 9, child.stderr
    first_etag = child.stdout.strip()

    store = DirectoryStore(root)
    obj, head = await store.get("x.crl"), await store.head("x.crl")
    assert obj is not None and head is not None
    # What a reader sees is one write's bytes with that write's number and expiry (or none of them),
    # never the new number (and ETag, and expiry) on the old bytes.
    if obj.data == OLD:
        assert (obj.metadata, obj.expires, obj.etag) == ({"crl-number": "1"}, OLD_EXPIRES, first_etag)
    else:
        assert obj.data == NEW
        assert obj.metadata in ({"crl-number": "2"}, {}) and obj.expires in (NEW_EXPIRES, "")
        assert obj.etag != first_etag
    assert obj.content_type == CRL_TYPE
    assert (head.etag, head.size, head.metadata) == (obj.etag, len(obj.data), obj.metadata)

    # The store goes on: a writer holding the ETag it read wins, one holding an older ETag loses.
    if obj.etag != first_etag:
        with pytest.raises(PreconditionFailed):
            await store.put("x.crl", b"stale writer", content_type=CRL_TYPE, if_match=first_etag)
    third = await store.put("x.crl", b"third", content_type=CRL_TYPE, if_match=obj.etag, metadata={"crl-number": "3"})
    after = await store.get("x.crl")
    assert after is not None and (after.data, after.etag, after.metadata) == (b"third", third, {"crl-number": "3"})
