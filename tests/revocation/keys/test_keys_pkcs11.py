"""PKCS#11 keys against a real SoftHSM2 token created in a temporary directory.

The module initialises two tokens before anything loads the PKCS#11 library in
this process (SoftHSM reads SOFTHSM2_CONF once, when it is initialised): one for
the issuing CA and its OCSP signers, and one of its own for the root key. Each
CA gets keys with labels of its own, so the tests share the tokens.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from pca.config import Config, load_config
from pca.runtime import Runtime, open_runtime
from pca.serve import build_authority
from revocation.authority import Actor, IssueRequest
from revocation.clock import SystemClock
from revocation.errors import KeyBackendError
from revocation.keys import KeyRef, check_key_for_certificate, open_key
from tests.support.environ import environ
from tests.support.processes import init_ca
from tests.support.signing_backends import (
    ask_responder,
    checkpoint_signer_race,
    clean_env,
    exercise,
    files_containing,
    have_openssl,
    openssl,
    responder_alone,
    rotation_race,
    run_pca,
)

PIN = "hsm-pin-5309-x"
ROOT_PIN = "root-pin-8817-y"
PIN_ENV = "PCA_TEST_HSM_PIN"
TOKEN = "pca-online"
ACTOR = Actor("test", "pkcs11")
ROOT_TOKEN = "pca-root"

_MODULE_PATHS = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


def _softhsm_module() -> str | None:
    candidates = [os.environ.get("SOFTHSM2_MODULE", ""), *_MODULE_PATHS]
    return next((p for p in candidates if p and Path(p).is_file()), None)


MODULE = _softhsm_module()
pytestmark = [
    pytest.mark.skipif(
        MODULE is None or shutil.which("softhsm2-util") is None,
        reason="SoftHSM2 is not installed (Debian: apt-get install softhsm2)",
    ),
    pytest.mark.skipif(not have_openssl(), reason="needs the openssl command"),
]


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Two initialised tokens in a temporary directory; SOFTHSM2_CONF and the PIN variable set."""
    base = tmp_path_factory.mktemp("softhsm")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    with environ(**{"SOFTHSM2_CONF": str(conf), PIN_ENV: PIN}):
        for label, pin in ((TOKEN, PIN), (ROOT_TOKEN, ROOT_PIN)):
            subprocess.run(
                ["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", "so-pin-0042"],
                check=True,
                capture_output=True,
            )
        root_pin = base / "root.pin"
        root_pin.write_text(ROOT_PIN + "\n")
        root_pin.chmod(0o600)
        yield base


async def init_pkcs11_ca(directory: Path, softhsm: Path) -> Config:
    assert MODULE is not None
    return load_config(
        await asyncio.to_thread(
            init_ca,
            directory,
            "--key-backend",
            "pkcs11",
            "--pkcs11-module",
            MODULE,
            "--pkcs11-token-label",
            TOKEN,
            "--pkcs11-pin-env",
            PIN_ENV,
            "--pkcs11-root-token-label",
            ROOT_TOKEN,
            "--pkcs11-root-pin-file",
            str(softhsm / "root.pin"),
        )
    )


async def test_a_pkcs11_ca_signs_what_openssl_verifies_with_keys_that_never_leave_the_token(
    softhsm: Path, tmp_path: Path
) -> None:
    from pkcs11.constants import Attribute
    from pkcs11.exceptions import AttributeSensitive

    from revocation.keys.pkcs11 import Pkcs11Key

    cfg = await init_pkcs11_ca(tmp_path / "ca", softhsm)
    done = await exercise(cfg, tmp_path / "work")

    assert {r.backend for r in done.key_refs} == {"pkcs11"}
    assert [r.token_label for r in done.key_refs] == [ROOT_TOKEN, TOKEN, TOKEN, TOKEN]
    assert not (cfg.data_dir / "keys").exists(), "no key material is written to disk"
    for ref in done.key_refs:
        key = open_key(ref)
        assert isinstance(key, Pkcs11Key)
        attrs = key.attributes(
            [Attribute.SENSITIVE, Attribute.EXTRACTABLE, Attribute.NEVER_EXTRACTABLE, Attribute.ALWAYS_SENSITIVE]
        )
        assert attrs == {
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.NEVER_EXTRACTABLE: True,
            Attribute.ALWAYS_SENSITIVE: True,
        }, ref.describe()
        with pytest.raises(AttributeSensitive):
            key.attributes([Attribute.VALUE])
        key.close()
    # References only: no PIN in the configuration, the database or anything else in the CA directory.
    for secret in (PIN, ROOT_PIN):
        assert files_containing(cfg.data_dir, secret.encode()) == []


async def test_rsa_keys_in_the_token_sign_too(softhsm: Path, tmp_path: Path) -> None:
    assert MODULE is not None
    cfg = load_config(
        await asyncio.to_thread(
            init_ca,
            tmp_path / "ca",
            "--key-algorithm",
            "rsa-2048",
            "--key-backend",
            "pkcs11",
            "--pkcs11-module",
            MODULE,
            "--pkcs11-token-label",
            TOKEN,
            "--pkcs11-pin-env",
            PIN_ENV,
        )
    )
    done = await exercise(cfg, tmp_path / "work")
    assert {r.backend for r in done.key_refs} == {"pkcs11"}


async def test_a_responder_starts_and_answers_without_any_key_material(softhsm: Path, tmp_path: Path) -> None:
    cfg = await init_pkcs11_ca(tmp_path / "ca", softhsm)
    done = await exercise(cfg, tmp_path / "work")
    # No PIN, no root PIN file, no HSM configuration: nothing a key could be reached with.
    (softhsm / "root.pin").rename(softhsm / "root.pin.hidden")
    try:
        env = clean_env(PIN_ENV, "SOFTHSM2_CONF")
        env["SOFTHSM2_CONF"] = str(tmp_path / "no-such-softhsm2.conf")
        with responder_alone(cfg.path, env) as url:
            assert f"{done.good}: good" in ask_responder(url, cfg, done.good)
            assert f"{done.revoked}: revoked" in ask_responder(url, cfg, done.revoked)
    finally:
        (softhsm / "root.pin.hidden").rename(softhsm / "root.pin")


async def test_a_wrong_pin_stops_a_signing_role_naming_key_and_certificate_but_not_the_pin(
    softhsm: Path, tmp_path: Path
) -> None:
    cfg = await init_pkcs11_ca(tmp_path / "ca", softhsm)
    env = clean_env(PIN_ENV)
    env[PIN_ENV] = "wrong-pin-7741"
    (softhsm / "root.pin").write_text("wrong-root-pin-1199\n")
    try:
        result = run_pca("serve", "--roles", "publisher", "--config", str(cfg.path), env=env)
    finally:
        (softhsm / "root.pin").write_text(ROOT_PIN + "\n")
    assert result.returncode == 1
    message = result.stderr
    assert "pkcs11:token=" + ROOT_TOKEN in message, message
    assert "CN=PCA Root CA" in message, message
    assert f"PIN from file {softhsm / 'root.pin'} is incorrect" in message, message
    for secret in ("wrong-pin-7741", "wrong-root-pin-1199", PIN, ROOT_PIN):
        assert secret not in result.stdout + result.stderr


async def test_init_names_missing_pkcs11_settings(softhsm: Path, tmp_path: Path) -> None:
    assert MODULE is not None
    result = run_pca(
        "init", "--dir", str(tmp_path / "ca"), "--key-backend", "pkcs11", "--pkcs11-module", MODULE,
        env=clean_env(),
    )  # fmt: skip
    assert result.returncode == 1
    assert "--pkcs11-token-label" in result.stderr and "--pkcs11-pin-env or --pkcs11-pin-file" in result.stderr
    assert not (tmp_path / "ca" / "pca.toml").exists()


async def test_an_external_issuers_signer_key_is_made_in_the_token_with_a_csr_openssl_accepts(
    softhsm: Path, tmp_path: Path
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from pca.runtime import open_runtime
    from revocation.clock import SystemClock
    from revocation.issuers import signer_csr
    from revocation.keys import generate_key

    cfg = await init_pkcs11_ca(tmp_path / "ca", softhsm)
    rt = open_runtime(cfg, SystemClock())
    try:
        issuing = {i.issuer_id: i for i in await rt.view.issuers()}["issuing-ca"]
    finally:
        rt.close()
    assert issuing.key_ref is not None
    key = generate_key(issuing.key_ref, "partner-ocsp-csr-test", "ec-p256", tmp_path)
    try:
        assert key.private_key_for_builder() is None  # the CSR is assembled around the token's signature
        csr_der = signer_csr(issuing.cert, key)
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        assert x509.load_der_x509_csr(csr_der).public_key().public_bytes(
            serialization.Encoding.DER, spki
        ) == key.public_key().public_bytes(serialization.Encoding.DER, spki)
    finally:
        key.close()
    path = tmp_path / "signer.csr"
    path.write_bytes(csr_der)
    assert "verify OK" in openssl("req", "-verify", "-noout", "-inform", "DER", "-in", str(path))


async def test_full_crls_made_in_the_publishers_child_process_sign_with_keys_in_the_token(
    softhsm: Path, tmp_path: Path
) -> None:
    """``pca serve`` makes full CRLs in a child process (``pca.roles.crl_worker``): it opens the
    token itself, with the PIN from the same environment variable or file."""
    from cryptography import x509

    from pca.roles.crl_worker import CRLWorker
    from publishers.objectstore import DirectoryStore
    from revocation import crl_layout

    cfg = await init_pkcs11_ca(tmp_path / "ca", softhsm)
    worker = CRLWorker(cfg)
    try:
        for issuer_id, cert in (("root-ca", "root-ca.pem"), ("issuing-ca", "issuing-ca.pem")):
            published = await worker(issuer_id, 0, 0)
            obj = await DirectoryStore(cfg.crl_dir).get(crl_layout.full_key(issuer_id))
            assert obj is not None
            crl = x509.load_der_x509_crl(obj.data)
            issuer = x509.load_pem_x509_certificate((cfg.data_dir / cert).read_bytes())
            assert crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
            assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == published.number
    finally:
        worker.close()


@pytest.mark.parametrize(
    ("race", "logged"),
    [
        (rotation_race, "destroyed: another process rotated the signer first"),
        (checkpoint_signer_race, "destroyed: another process recorded a signer first"),
    ],
    ids=["ocsp-signer-rotation", "checkpoint-signer"],
)
async def test_the_token_key_that_lost_a_race_is_destroyed(
    race: Callable[[Runtime], Awaitable[tuple[KeyRef, KeyRef]]],
    logged: str,
    softhsm: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = await init_pkcs11_ca(tmp_path / "ca", softhsm)
    with environ(**{"SOFTHSM2_CONF": str(softhsm / "softhsm2.conf"), PIN_ENV: PIN}):
        rt = open_runtime(cfg, SystemClock())
        try:
            won, lost = await race(rt)
        finally:
            rt.close()
        assert lost.backend == "pkcs11" and lost.token_label == TOKEN
        await asyncio.to_thread(lambda: open_key(won).close())
        with pytest.raises(KeyBackendError, match="no private key"):
            await asyncio.to_thread(open_key, lost)
    assert logged in caplog.text


# python-pkcs11 ends the operation that failed on the dead session in a __del__, which raises
# SessionHandleInvalid again: Python prints and ignores it ("Exception ignored in ...").
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_after_the_hsm_restarts_its_keys_sign_again_through_a_new_session(
    softhsm: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import pkcs11

    from revocation.keys import pkcs11 as backend

    cfg = await init_pkcs11_ca(tmp_path / "ca", softhsm)
    rt = open_runtime(cfg, SystemClock())
    try:
        authority = build_authority(rt)
        await authority.issue(IssueRequest(subject="CN=before", dns=["before.test"]), ACTOR)
        issuing = {i.issuer_id: i for i in await rt.view.issuers()}["issuing-ca"]
        assert issuing.key_ref is not None
        module = issuing.key_ref.module  # the library as the backend loaded it (pca init resolves the path)

        def restart() -> None:  # every session of this process dies, its login with it
            with backend._lock:
                pkcs11.lib(module).reinitialize()

        await asyncio.to_thread(restart)
        # The issuing CA's key, open since the first certificate, signs through a new session.
        after = await authority.issue(IssueRequest(subject="CN=after", dns=["after.test"]), ACTOR)
        after.certificate.verify_directly_issued_by(issuing.cert)
        # A key opened after the restart (the OCSP signer's) finds the token through it too.
        await asyncio.to_thread(restart)
        assert issuing.signer_key_ref is not None and issuing.signer_cert is not None
        await asyncio.to_thread(check_key_for_certificate, issuing.signer_key_ref, issuing.signer_cert, "the signer")
        # And a signer rotation generates its key through a new session.
        await asyncio.to_thread(restart)
        assert await authority.rotate_signers(ACTOR, force=True)
    finally:
        rt.close()
    assert "the session was lost (SessionHandleInvalid); opening a new one" in caplog.text
