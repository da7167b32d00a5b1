"""Signing keys in a PKCS#11 token (python-pkcs11); tested against SoftHSM2.

Keys are generated inside the token as private, sensitive, never-extractable
objects; what leaves the token is the public half, a label and an id.

ECDSA: the host hashes (SHA-256 or SHA-384) and the token signs the digest with
CKM_ECDSA, which every token offers (SoftHSM2 2.6 has no CKM_ECDSA_SHA256). The
token returns r||s; X.509, OCSP and CRLs want the DER ``ECDSA-Sig-Value``, so it
is re-encoded. RSA: CKM_SHA256_RSA_PKCS, whose output goes into the BIT STRING as is.

Sessions: a PKCS#11 login belongs to the application and the token, and closing
a logged-in session logs every session out. So each process keeps one logged-in
session per (module, token) for its lifetime, shared by every key on that token,
and key generation opens a short read/write session that inherits the login.
python-pkcs11 initialises the module without OS locking, so every call made in
this process holds one lock. The pre-signer gets its parallelism from its worker
processes, each with its own session.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import pkcs11
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import exceptions as p11err
from pkcs11.constants import Attribute, MechanismFlag, ObjectClass
from pkcs11.mechanisms import KeyType, Mechanism
from pkcs11.types import Object, Session, SignMixin
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from revocation.errors import ConfigError, KeyBackendError
from revocation.keys.base import ExternalKey, KeyRef, PublicKey, read_secret

log = logging.getLogger("pca.keys")

_CURVES = {"ec-p256": "secp256r1", "ec-p384": "secp384r1"}

T = TypeVar("T")

_lock = threading.RLock()
_sessions: dict[tuple[str, str], Session] = {}


def _token_name(ref: KeyRef) -> str:
    return f"PKCS#11 token {ref.token_label!r} (module {ref.module})"


def _secret_source(ref: KeyRef) -> str:
    return f"environment variable {ref.pin_env}" if ref.pin_env else f"file {ref.pin_file}"


# Errors that a token reports while another process is reading or writing its files at the
# same moment (SoftHSM2's file store, e.g. two pre-signer workers starting together): they go
# away when tried again. A wrong or locked PIN is never among them and is never retried.
# A token that is not found is retried too: SoftHSM2 can miss it while another process writes.
_TRANSIENT = (
    p11err.GeneralError,
    p11err.UserPinNotInitialized,
    p11err.DeviceError,
    p11err.TokenNotRecognised,
    p11err.NoSuchToken,
)
_ATTEMPTS = 6

# What a token answers when the session it had is gone (the HSM restarted, the module was
# reinitialised, the token was pulled and put back): a new session, logged in, finds the key
# again. Tried once per call; what still fails is reported.
_SESSION_LOST = (
    p11err.SessionHandleInvalid,
    p11err.SessionClosed,
    p11err.DeviceError,
    p11err.DeviceRemoved,
    p11err.TokenNotPresent,
    p11err.UserNotLoggedIn,
    p11err.ObjectHandleInvalid,
    p11err.KeyHandleInvalid,
)


def _on_live_session(ref: KeyRef, action: Callable[[Session], T]) -> T:
    """``action`` on this process's session on the token of ``ref``, and once more on a new one if that
    session was lost; the caller holds ``_lock``."""
    session = _login_session(ref)
    try:
        return action(session)
    except _SESSION_LOST as exc:
        _drop_session(ref, session, exc)
    return action(_login_session(ref))


def _drop_session(ref: KeyRef, session: Session, exc: Exception) -> None:
    """Forget this process's session on the token of ``ref`` if it is still ``session``; the caller holds
    ``_lock``. The next ``_login_session`` opens a new one and logs in."""
    log.warning("%s: the session was lost (%s); opening a new one", _token_name(ref), type(exc).__name__)
    if _sessions.get((ref.module, ref.token_label)) is session:
        del _sessions[(ref.module, ref.token_label)]
        with contextlib.suppress(p11err.PKCS11Error):
            session.close()


def _login_session(ref: KeyRef) -> Session:
    """This process's logged-in session on the token of ``ref``; the caller holds ``_lock``."""
    if not ref.module or not ref.token_label:
        raise ConfigError(f"PKCS#11 key reference {ref.to_dict()} needs 'module' and 'token_label'")
    session = _sessions.get((ref.module, ref.token_label))
    if session is not None:
        return session
    if not ref.pin_env and not ref.pin_file:
        raise ConfigError(f"PKCS#11 key {ref.describe()} names no PIN source (pin_env or pin_file)")
    pin = read_secret(ref.pin_env, ref.pin_file, f"PIN of {_token_name(ref)}")
    try:
        text = (pin or b"").decode()
    except UnicodeDecodeError:
        raise KeyBackendError(f"the PIN of {_token_name(ref)} from {_secret_source(ref)} is not UTF-8") from None
    attempt = 0
    while True:
        try:
            session = _sessions[(ref.module, ref.token_label)] = _log_in(ref, text)
            return session
        except _TRANSIENT as exc:
            attempt += 1
            if attempt < _ATTEMPTS:
                log.warning("%s answered %s; trying again", _token_name(ref), type(exc).__name__)
                time.sleep(0.05 * 2**attempt)
                if not any(module == ref.module for module, _ in _sessions):
                    # What the module read at initialisation may be the half-written state; reading
                    # it again needs a fresh initialisation, which no open session of ours can mind.
                    with contextlib.suppress(p11err.PKCS11Error):
                        pkcs11.lib(ref.module).reinitialize()
                continue
            if isinstance(exc, p11err.NoSuchToken):
                raise KeyBackendError(
                    f"no {_token_name(ref)}: is the token initialised and the module configured "
                    "(SOFTHSM2_CONF for SoftHSM)?"
                ) from None
            raise KeyBackendError(f"cannot log in to {_token_name(ref)}: {type(exc).__name__}") from None


def _log_in(ref: KeyRef, pin: str) -> Session:
    try:
        token = pkcs11.lib(ref.module).get_token(token_label=ref.token_label)
    except _TRANSIENT:
        raise
    except p11err.PKCS11Error as exc:
        raise KeyBackendError(f"cannot reach {_token_name(ref)}: {type(exc).__name__}: {exc}") from exc
    # Errors of the login are reported by type only and without their cause attached: whatever
    # the module puts into a message stays out of our logs.
    try:
        return token.open(user_pin=pin)
    except (p11err.PinIncorrect, p11err.PinInvalid, p11err.PinLenRange):
        raise KeyBackendError(
            f"login to {_token_name(ref)} failed: the PIN from {_secret_source(ref)} is incorrect"
        ) from None
    except p11err.PinLocked:
        raise KeyBackendError(f"login to {_token_name(ref)} failed: the PIN is locked") from None
    except _TRANSIENT:
        raise
    except p11err.PKCS11Error as exc:
        raise KeyBackendError(f"login to {_token_name(ref)} failed: {type(exc).__name__}") from None


def _search(ref: KeyRef) -> dict[Attribute, Any]:
    if not ref.label and not ref.object_id:
        raise ConfigError(f"PKCS#11 key reference {ref.to_dict()} needs 'label' or 'object_id'")
    attrs: dict[Attribute, Any] = {}
    if ref.label:
        attrs[Attribute.LABEL] = ref.label
    if ref.object_id:
        try:
            attrs[Attribute.ID] = bytes.fromhex(ref.object_id)
        except ValueError:
            raise ConfigError(f"PKCS#11 key {ref.describe()}: object_id must be hex") from None
    return attrs


def _find(session: Session, ref: KeyRef, object_class: ObjectClass) -> Object:
    attrs = {**_search(ref), Attribute.CLASS: object_class}
    kind = "private" if object_class == ObjectClass.PRIVATE_KEY else "public"
    try:
        found = list(session.get_objects(attrs))
    except _SESSION_LOST:
        raise
    except p11err.PKCS11Error as exc:
        raise KeyBackendError(f"cannot search {_token_name(ref)}: {type(exc).__name__}: {exc}") from exc
    if not found:
        raise KeyBackendError(f"no {kind} key {ref.describe()} in {_token_name(ref)}")
    if len(found) > 1:
        raise KeyBackendError(f"{len(found)} {kind} keys match {ref.describe()}; name one by object_id")
    return found[0]


def _public_key(obj: Object, key_type: KeyType, ref: KeyRef) -> PublicKey:
    try:
        if key_type == KeyType.EC:
            public = serialization.load_der_public_key(encode_ec_public_key(cast(Any, obj)))
        elif key_type == KeyType.RSA:
            modulus = int.from_bytes(obj[Attribute.MODULUS], "big")
            exponent = int.from_bytes(obj[Attribute.PUBLIC_EXPONENT], "big")
            public = rsa.RSAPublicNumbers(exponent, modulus).public_key()
        else:
            raise KeyBackendError(f"PKCS#11 key {ref.describe()} has unsupported type {key_type!r}")
    except (p11err.PKCS11Error, ValueError) as exc:
        raise KeyBackendError(f"cannot read the public key of {ref.describe()}: {exc}") from exc
    if not isinstance(public, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise KeyBackendError(f"PKCS#11 key {ref.describe()} has an unsupported public key")
    return public


class Pkcs11Key(ExternalKey):
    """A private key object in a token, used through this process's session."""

    def __init__(self, ref: KeyRef, private: SignMixin, public: PublicKey, session: Session) -> None:
        super().__init__(ref, public)
        self._closed = False
        self._bind(private, session)

    def _bind(self, private: SignMixin, session: Session) -> None:
        self._private, self._session = private, session
        self._raw: Callable[[bytes], bytes]
        if isinstance(self._public, ec.EllipticCurvePublicKey):
            digest = hashlib.sha384 if isinstance(self._hash, hashes.SHA384) else hashlib.sha256
            self._raw = lambda data: _ecdsa_der(private.sign(digest(data).digest(), mechanism=Mechanism.ECDSA))
        else:
            self._raw = lambda data: private.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS)

    def sign_many(self, data: Sequence[bytes]) -> list[bytes]:
        # One session, one operation at a time: a token signs sequentially per session anyway,
        # and the pre-signer runs one such session in each of its worker processes.
        with _lock:
            if self._closed:
                raise KeyBackendError(f"PKCS#11 key {self._ref.describe()} is closed")
            try:
                try:
                    return [self._raw(item) for item in data]
                except _SESSION_LOST as exc:
                    _drop_session(self._ref, self._session, exc)
                    session = _login_session(self._ref)
                    self._bind(cast(SignMixin, _find(session, self._ref, ObjectClass.PRIVATE_KEY)), session)
                    return [self._raw(item) for item in data]
            except p11err.PKCS11Error as exc:
                raise KeyBackendError(
                    f"PKCS#11 key {self._ref.describe()} failed to sign: {type(exc).__name__}: {exc}"
                ) from exc

    def close(self) -> None:
        # The session is shared by every key on the token and lives as long as the process.
        self._closed = True

    def attributes(self, names: Sequence[Attribute]) -> dict[Attribute, Any]:
        """Attributes of the private key object (for checks such as EXTRACTABLE and SENSITIVE)."""
        with _lock:
            return {name: cast(Object, self._private)[name] for name in names}


def _ecdsa_der(raw: bytes) -> bytes:
    """PKCS#11 ECDSA output (r||s, each half the length) as a DER ECDSA-Sig-Value."""
    half = len(raw) // 2
    return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


def _open_locked(ref: KeyRef) -> Pkcs11Key:
    try:
        return _on_live_session(ref, lambda session: _open_in(session, ref))
    except _SESSION_LOST as exc:
        raise KeyBackendError(f"cannot use {_token_name(ref)}: {type(exc).__name__}: {exc}") from exc


def _open_in(session: Session, ref: KeyRef) -> Pkcs11Key:
    private = _find(session, ref, ObjectClass.PRIVATE_KEY)
    public_obj = _find(session, ref, ObjectClass.PUBLIC_KEY)
    try:
        key_type = KeyType(private[Attribute.KEY_TYPE])
        can_sign = bool(private[Attribute.SIGN])
    except _SESSION_LOST:
        raise
    except (p11err.PKCS11Error, ValueError) as exc:
        raise KeyBackendError(f"cannot read the attributes of {ref.describe()}: {exc}") from exc
    if not can_sign:
        raise KeyBackendError(f"PKCS#11 key {ref.describe()} is not allowed to sign (CKA_SIGN is false)")
    return Pkcs11Key(ref, cast(SignMixin, private), _public_key(public_obj, key_type, ref), session)


def open_pkcs11_key(ref: KeyRef) -> Pkcs11Key:
    with _lock:
        return _open_locked(ref)


def generate_pkcs11_key(template: KeyRef, name: str, algorithm: str) -> Pkcs11Key:
    """Generate a key pair inside the token of ``template``: private, sensitive, never extractable."""
    object_id = secrets.token_bytes(8)
    ref = KeyRef(
        "pkcs11",
        module=template.module,
        token_label=template.token_label,
        label=f"{name}-{object_id[:4].hex()}",
        object_id=object_id.hex(),
        pin_env=template.pin_env,
        pin_file=template.pin_file,
    )
    private_template = {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True,
    }
    public_template = {Attribute.TOKEN: True, Attribute.VERIFY: True}
    options: dict[str, Any] = {
        "id": object_id,
        "label": ref.label,
        "store": True,
        "capabilities": MechanismFlag.SIGN | MechanismFlag.VERIFY,
        "private_template": private_template,
        "public_template": public_template,
    }
    if algorithm not in _CURVES and not algorithm.startswith("rsa-"):
        raise ConfigError(f"key algorithm {algorithm!r} is not supported by the PKCS#11 backend")

    def generate(login: Session) -> None:
        # A read/write session opened without a PIN shares the login; closing it logs nobody out.
        with login.token.open(rw=True) as rw:
            if algorithm in _CURVES:
                params = rw.create_domain_parameters(
                    KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVES[algorithm])}, local=True
                )
                params.generate_keypair(**options)
            else:
                rw.generate_keypair(KeyType.RSA, int(algorithm[4:]), **options)

    with _lock:
        try:
            _on_live_session(ref, generate)
        except p11err.PKCS11Error as exc:
            raise KeyBackendError(
                f"cannot generate a {algorithm} key {ref.label!r} in {_token_name(ref)}: {type(exc).__name__}: {exc}"
            ) from exc
        return _open_locked(ref)


def destroy_pkcs11_key(ref: KeyRef) -> None:
    """Destroy the key pair of ``ref`` in its token (C_DestroyObject on the private and public key)."""

    def destroy(login: Session) -> None:
        with login.token.open(rw=True) as rw:
            for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                for obj in list(rw.get_objects({**_search(ref), Attribute.CLASS: object_class})):
                    obj.destroy()

    with _lock:
        try:
            _on_live_session(ref, destroy)
        except p11err.PKCS11Error as exc:
            raise KeyBackendError(
                f"cannot destroy key {ref.describe()} in {_token_name(ref)}: {type(exc).__name__}: {exc}"
            ) from exc
