"""A signer rotation that loses the race to another process destroys the key it made (file keys here;
the PKCS#11 and KMS cases are in test_keys_pkcs11.py and test_keys_kms.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pca.runtime import Runtime
from tests.support.signing_backends import rotation_race


async def test_the_key_file_of_a_lost_rotation_is_removed(rt: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    won, lost = await rotation_race(rt)
    assert [Path(won.path).is_file(), Path(lost.path).exists()] == [True, False]  # noqa: ASYNC240
    assert f"OCSP signer key file:{lost.path} of issuing-ca destroyed" in caplog.text
