"""``pca issuer`` on PostgreSQL: add without the key, set the signer, record a certificate, list."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from pca.config import load_config
from tests.pca.test_cli_issuers import assert_refused, pca, record
from tests.support.openssl_ca import OpenSSLCA
from tests.support.processes import init_ca


async def test_add_set_signer_and_list_on_postgres(
    tmp_path: Path, postgres_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = await asyncio.to_thread(init_ca, tmp_path / "pca", "--database-url", postgres_database)
    cfg = load_config(config_path)
    ext = OpenSSLCA(tmp_path / "ext", "Partner CA", ocsp_url=cfg.ocsp_url, crl_url="http://crl.partner.test/p.crl")
    csr = tmp_path / "signer.csr"

    def run(*args: str | Path) -> str:
        return pca("issuer", *args, capsys=capsys)

    await asyncio.to_thread(run, "add", "--config", config_path, "--id", "partner", "--cert", ext.cert_path,
                            "--ocsp-signer-csr", csr)  # fmt: skip
    await asyncio.to_thread(assert_refused, config_path, capsys, "issuer id 'partner' is taken",
                            "add", "--id", "partner", "--cert", ext.cert_path)  # fmt: skip
    signer = ext.sign(csr, tmp_path / "signer.pem", "ocsp_signer")
    await asyncio.to_thread(run, "set-signer", "--config", config_path, "--id", "partner", "--cert", signer)
    await record(cfg, "partner", ext.issue("leaf"))

    listed = json.loads(await asyncio.to_thread(run, "list", "--config", config_path, "--json"))
    partner = {i["issuer_id"]: i for i in listed["issuers"]}["partner"]
    assert partner["ocsp_signer"]["status"] == "active"
    assert "pending_csr" not in partner["ocsp_signer"]
    assert partner["certificates"] == {"total": 1, "revoked": 0}
    assert partner["certificate_urls"]["ocsp"] == [{"url": cfg.ocsp_url, "certificates": 1, "reaches_pca": True}]
