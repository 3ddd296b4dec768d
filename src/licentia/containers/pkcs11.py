"""Low-level access to PKCS#11 tokens: modules, tokens, login, keys, data and certificate objects.

This is the one place licentia talks Cryptoki (through python-pkcs11). It knows nothing of
licenses or certificates' meaning; the token container and the certificate vault build on
it. Everything a caller sees is plain: key kinds are strings, public keys are SPKI DER,
signatures are in their usual wire encoding (ECDSA as DER), and every PKCS#11 failure
becomes a `LicentiaError` with a stable code.

Rules kept here:
- private keys are generated (or unwrapped) inside the token as sensitive and
  non-extractable; nothing here can read a private key's value;
- a PIN is tried exactly once per call: no retry loop, and a token that already reports
  its user PIN locked is not asked again;
- the module path comes from the caller, else $LICENTIA_PKCS11_MODULE, else SoftHSM2 in
  the usual Debian places.

SoftHSM2 reads $SOFTHSM2_CONF when the module is initialised. A process that changes it
(tests that make a throw-away token each) gets the module re-initialised on the next
`load_module`, which closes any session still open on the old token store.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pkcs11
from asn1crypto import core as asn1_core, keys as asn1_keys, x509 as asn1_x509
from pkcs11 import (
    Attribute,
    CertificateType,
    KeyType,
    Mechanism,
    MechanismFlag,
    ObjectClass,
    TokenFlag,
    exceptions as p11e,
)
from pkcs11.attributes import AttributeMapper, handle_ulong
from pkcs11.constants import DEFAULT
from pkcs11.util.ec import encode_ecdsa_signature

from licentia.crypto.x509 import key_identifier as _ski, wrap_for_import
from licentia.model import ErrorCode, LicentiaError

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Module

MODULE_ENV: Final = "LICENTIA_PKCS11_MODULE"
SOFTHSM_PATHS: Final[tuple[str, ...]] = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/lib/pkcs11/libsofthsm2.so",
)
DEFAULT_APPLICATION: Final = "licentia"

_P256_PARAMS: Final = bytes.fromhex("06082a8648ce3d030107")  # OID secp256r1
_ED25519_PARAMS: Final = bytes.fromhex("06032b6570")  # OID 1.3.101.112
# Some tools (pkcs11-tool) name the curve instead: PrintableString "edwards25519".
_ED25519_NAMED: Final = bytes.fromhex("130c") + b"edwards25519"
_SHA256_DIGEST_INFO: Final = bytes.fromhex("3031300d060960864801650304020105000420")


class KeyKind(StrEnum):
    EC_P256 = "ec-p256"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    ED25519 = "ed25519"

    @property
    def is_rsa(self) -> bool:
        return self in (KeyKind.RSA_2048, KeyKind.RSA_3072)


class KeyUse(StrEnum):
    SIGN = "sign"  # signing keys (certificates, TLS, licensing)
    DERIVE = "derive"  # ECDH transport keys (vault packages)


def _attribute_mapper() -> AttributeMapper:
    # python-pkcs11 0.10 cannot pack CKA_CERTIFICATE_CATEGORY (a CK_ULONG); teach it.
    mapper = AttributeMapper()
    mapper.register_handler(Attribute.CERTIFICATE_CATEGORY, *handle_ulong)
    return mapper


# -- modules ------------------------------------------------------------------------------

# python-pkcs11 initialises a module with C_Initialize(NULL): that tells the module the
# application never calls it from two threads at once, so it does no locking of its own
# (SoftHSM2 then corrupts its heap when, say, a runtime's scan and a signature overlap).
# Every call into a module from this process therefore holds this lock. Re-entrant: the
# functions below call each other.
_lock = threading.RLock()
_conf_at_init: dict[str, str | None] = {}
# How many times each module was initialised again in this process. A session belongs to
# the generation it was opened in: C_Finalize ended it, and its handle may since name a
# session on another token, so it is never used (nor closed) again.
_generation: dict[str, int] = {}


def find_module(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The PKCS#11 module to load: `explicit`, else $LICENTIA_PKCS11_MODULE, else SoftHSM2."""
    chosen = str(explicit) if explicit else os.environ.get(MODULE_ENV, "")
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            raise LicentiaError(
                ErrorCode.PKCS11_MODULE_NOT_FOUND, f"the PKCS#11 module {path} does not exist"
            )
        return path
    for candidate in SOFTHSM_PATHS:
        if Path(candidate).is_file():
            return Path(candidate)
    raise LicentiaError(
        ErrorCode.PKCS11_MODULE_NOT_FOUND,
        "no PKCS#11 module was named and libsofthsm2.so is not installed in the usual places",
    )


def load_module(path: str | os.PathLike[str] | None = None) -> Module:
    """Load (once per process) and initialise a PKCS#11 module."""
    so = str(find_module(path))
    conf = os.environ.get("SOFTHSM2_CONF")
    with _lock:
        try:
            lib = pkcs11.lib(so)
            if so in _conf_at_init and _conf_at_init[so] != conf:
                lib.reinitialize()
                _generation[so] = _generation.get(so, 0) + 1
        except p11e.PKCS11Error as exc:
            raise LicentiaError(
                ErrorCode.PKCS11_MODULE_NOT_FOUND, f"the PKCS#11 module {so} failed to load: {exc}"
            ) from None
        _conf_at_init[so] = conf
    return lib


def reinitialize(path: str | os.PathLike[str] | None = None) -> None:
    """Finalise and initialise a loaded module again, closing its sessions.

    SoftHSM2 reads its token directory at C_Initialize: tokens another process made
    (softhsm2-util) appear in this process only after this. A module not loaded yet is
    left alone.
    """
    so = str(find_module(path))
    with _lock:
        if so in _conf_at_init:
            _generation[so] = _generation.get(so, 0) + 1
            try:
                pkcs11.lib(so).reinitialize()
            except p11e.PKCS11Error as exc:
                raise _failure("re-initialising the PKCS#11 module", exc) from None
            _conf_at_init[so] = os.environ.get("SOFTHSM2_CONF")


# -- tokens -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenInfo:
    slot_id: int
    label: str
    serial: str
    manufacturer: str
    model: str
    flags: int

    @property
    def initialized(self) -> bool:
        return bool(self.flags & TokenFlag.TOKEN_INITIALIZED)

    @property
    def user_pin_initialized(self) -> bool:
        return bool(self.flags & TokenFlag.USER_PIN_INITIALIZED)

    @property
    def pin_locked(self) -> bool:
        return bool(self.flags & TokenFlag.USER_PIN_LOCKED)

    @property
    def pin_to_be_changed(self) -> bool:
        return bool(self.flags & TokenFlag.USER_PIN_TO_BE_CHANGED)

    @property
    def pin_state(self) -> str:
        return pin_state(self.flags)


def pin_state(flags: int) -> str:
    """What the token says about its user PIN retry counter, in words."""
    if flags & TokenFlag.USER_PIN_LOCKED:
        return "locked"
    if flags & TokenFlag.USER_PIN_FINAL_TRY:
        return "final try"
    if flags & TokenFlag.USER_PIN_COUNT_LOW:
        return "count low"
    return "ok"


def wrong_pin_message(label: str, flags: int) -> str:
    """The message for a refused PIN, naming what the token reports about remaining tries."""
    state = pin_state(flags)
    if state == "locked":
        return f"wrong PIN for token '{label}'; the token has now locked its user PIN"
    if state == "final try":
        return (
            f"wrong PIN for token '{label}'; the token reports ONE try left "
            "(CKF_USER_PIN_FINAL_TRY): another wrong PIN locks it"
        )
    if state == "count low":
        return (
            f"wrong PIN for token '{label}'; the token reports that wrong PINs have been "
            "entered since the last good login (CKF_USER_PIN_COUNT_LOW)"
        )
    return f"wrong PIN for token '{label}'"


def unattended_refusal(info: TokenInfo) -> LicentiaError | None:
    """Why a program that tries a PIN on its own (a listing, the runtime) must not try it now.

    A locked PIN is never tried (1101). On its final try, a stale PIN would lock it, so
    only a PIN a person gives for this one command is tried (1100 until then).
    `CKF_USER_PIN_COUNT_LOW` alone is no reason: it only says wrong PINs were entered since
    the last good login (SoftHSM2 reports it after a single wrong PIN), so the PIN is tried
    once and the caller says tries were used (`count_low_note`).
    """
    state = info.pin_state
    if state == "locked":
        return LicentiaError(
            ErrorCode.PIN_LOCKED,
            f"token '{info.label}' reports its user PIN locked (CKF_USER_PIN_LOCKED); no PIN was tried",
        )
    if state == "final try":
        return LicentiaError(
            ErrorCode.PIN_INCORRECT,
            f"token '{info.label}' reports ONE PIN try left (CKF_USER_PIN_FINAL_TRY); no PIN was "
            "tried, so that a stale PIN cannot lock it",
            hint="give the right PIN once yourself, e.g. `licentia container show SERIAL --pin-file FILE`",
        )
    return None


def count_low_note(info: TokenInfo) -> str:
    """What to say after logging in to a token that reported wrong PINs entered; '' if none."""
    if info.pin_state != "count low":
        return ""
    return (
        f"wrong PINs had been entered on token '{info.label}' since its last good login "
        "(CKF_USER_PIN_COUNT_LOW): tries were used; this login with the right PIN resets the count "
        "on most tokens"
    )


def _info(token: pkcs11.Token) -> TokenInfo:
    return TokenInfo(
        slot_id=int(token.slot.slot_id),
        label=token.label,
        serial=token.serial.decode("ascii", "replace").strip()
        if isinstance(token.serial, bytes)
        else str(token.serial).strip(),
        manufacturer=token.manufacturer_id,
        model=token.model,
        flags=int(token.flags),
    )


def list_tokens(module: str | os.PathLike[str] | None = None) -> list[TokenInfo]:
    """Every initialised token the module offers, in slot order."""
    lib = load_module(module)
    found: list[TokenInfo] = []
    try:
        with _lock:
            for slot in lib.get_slots(token_present=True):
                info = _info(slot.get_token())
                if info.initialized:
                    found.append(info)
    except p11e.PKCS11Error as exc:
        # SoftHSM2 answers GeneralError for the whole list once a token's directory is
        # gone: `licentia.containers.token.refresh_slots` re-reads the slots
        raise _failure("listing tokens", exc) from None
    return found


def find_token(lib: Module, *, label: str | None = None, slot: int | None = None) -> pkcs11.Token:
    """The token with this label or in this slot; the only token when neither is given."""
    try:
        with _lock:
            tokens = [s.get_token() for s in lib.get_slots(token_present=True)]
    except p11e.PKCS11Error as exc:
        raise _failure("listing tokens", exc) from None
    tokens = [t for t in tokens if int(t.flags) & TokenFlag.TOKEN_INITIALIZED]
    if slot is not None:
        tokens = [t for t in tokens if int(t.slot.slot_id) == slot]
    if label is not None:
        tokens = [t for t in tokens if t.label == label]
    if len(tokens) == 1:
        return tokens[0]
    wanted = (
        " and ".join(
            part
            for part in (
                f"label '{label}'" if label is not None else "",
                f"slot {slot}" if slot is not None else "",
            )
            if part
        )
        or "any label"
    )
    if not tokens:
        raise LicentiaError(ErrorCode.TOKEN_NOT_FOUND, f"no initialised token with {wanted}")
    names = ", ".join(f"'{t.label}' (slot {t.slot.slot_id})" for t in tokens)
    raise LicentiaError(
        ErrorCode.TOKEN_NOT_FOUND,
        f"{len(tokens)} tokens match {wanted}: {names}; name one with --token LABEL or --slot N",
    )


# -- objects seen from outside -------------------------------------------------------------


@dataclass(frozen=True)
class KeyPairInfo:
    label: str
    id: bytes
    kind: KeyKind
    public_key: bytes  # SPKI DER
    extractable: bool
    local: bool  # generated inside the token (not imported)


@dataclass(frozen=True)
class CertificateObject:
    label: str
    id: bytes
    der: bytes
    authority: bool


@dataclass(frozen=True)
class ObjectInfo:
    object_class: str  # "private-key", "public-key", "secret-key", "certificate", "data"
    label: str
    id: bytes
    key_kind: KeyKind | None
    application: str | None


_CLASS_NAMES: Final[dict[int, str]] = {
    ObjectClass.PRIVATE_KEY: "private-key",
    ObjectClass.PUBLIC_KEY: "public-key",
    ObjectClass.SECRET_KEY: "secret-key",
    ObjectClass.CERTIFICATE: "certificate",
    ObjectClass.DATA: "data",
}


# -- sessions -----------------------------------------------------------------------------


@contextmanager
def open_session(
    module: str | os.PathLike[str] | None = None,
    *,
    label: str | None = None,
    slot: int | None = None,
    pin: str,
    rw: bool = True,
) -> Iterator[TokenSession]:
    """Open a session on one token and log the user in with `pin` (tried exactly once)."""
    lib = load_module(module)
    so = str(find_module(module))
    token = find_token(lib, label=label, slot=slot)
    info = _info(token)
    if info.pin_locked:
        raise LicentiaError(
            ErrorCode.PIN_LOCKED,
            f"token '{info.label}' reports its user PIN locked (CKF_USER_PIN_LOCKED); "
            "no PIN was tried",
        )
    try:
        with _lock:
            generation = _generation.get(so, 0)
            session = token.open(rw=rw, user_pin=pin, attribute_mapper=_attribute_mapper())
    except p11e.PinIncorrect:
        flags = _fresh_flags(lib, info)
        code = ErrorCode.PIN_LOCKED if pin_state(flags) == "locked" else ErrorCode.PIN_INCORRECT
        raise LicentiaError(code, wrong_pin_message(info.label, flags)) from None
    except p11e.PinLocked:
        raise LicentiaError(
            ErrorCode.PIN_LOCKED, f"token '{info.label}' has locked its user PIN"
        ) from None
    except p11e.PinExpired:
        raise LicentiaError(
            ErrorCode.PIN_CHANGE_REQUIRED, f"token '{info.label}' requires a new user PIN"
        ) from None
    except (p11e.PinLenRange, p11e.PinInvalid):
        raise LicentiaError(
            ErrorCode.PIN_INCORRECT,
            f"token '{info.label}' refused the PIN's length or characters",
        ) from None
    except p11e.UserPinNotInitialized:
        raise LicentiaError(
            ErrorCode.TOKEN_FAILURE,
            f"token '{info.label}' has no user PIN yet",
            hint="the security officer must set one first (softhsm2-util --init-token ... --pin)",
        ) from None
    except p11e.PKCS11Error as exc:
        raise _failure(f"logging in to token '{info.label}'", exc) from None
    try:
        yield TokenSession(session, _info(token), so, generation)
    finally:
        with _lock, suppress(p11e.PKCS11Error):
            if _generation.get(so, 0) == generation:
                session.close()


@contextmanager
def open_public_session(
    module: str | os.PathLike[str] | None = None,
    *,
    label: str | None = None,
    slot: int | None = None,
) -> Iterator[TokenSession]:
    """A read-only session without login: it sees public objects only and tries no PIN.

    Used to recognise tokens (e.g. a token container's public description) without
    spending a PIN try on a token that may belong to something else.
    """
    lib = load_module(module)
    so = str(find_module(module))
    token = find_token(lib, label=label, slot=slot)
    try:
        with _lock:
            generation = _generation.get(so, 0)
            session = token.open(rw=False, attribute_mapper=_attribute_mapper())
    except p11e.PKCS11Error as exc:
        raise _failure(f"opening token '{token.label}'", exc) from None
    try:
        yield TokenSession(session, _info(token), so, generation)
    finally:
        with _lock, suppress(p11e.PKCS11Error):
            if _generation.get(so, 0) == generation:
                session.close()


def _fresh_flags(lib: Module, info: TokenInfo) -> int:
    try:
        with _lock:
            for slot in lib.get_slots(token_present=True):
                if int(slot.slot_id) == info.slot_id:
                    return int(slot.get_token().flags)
    except p11e.PKCS11Error:
        pass
    return info.flags


def _failure(what: str, exc: BaseException) -> LicentiaError:
    name = type(exc).__name__
    if isinstance(
        exc, p11e.MechanismInvalid | p11e.MechanismParamInvalid | p11e.FunctionNotSupported
    ):
        return LicentiaError(ErrorCode.MECHANISM_NOT_SUPPORTED, f"{what}: the token says {name}")
    return LicentiaError(ErrorCode.TOKEN_FAILURE, f"{what}: the token says {name} {exc}".rstrip())


class TokenSession:
    """A logged-in session on one token. Use through `open_session`."""

    def __init__(self, session: pkcs11.Session, info: TokenInfo, module: str = "", generation: int = 0) -> None:
        self._s = session
        self.info = info
        self._module = module
        self._generation = generation

    @property
    def stale(self) -> bool:
        """The module was initialised again since this session was opened: it is over."""
        return _generation.get(self._module, 0) != self._generation

    # -- keys ---------------------------------------------------------------------------

    def generate_keypair(
        self, kind: KeyKind, label: str, *, use: KeyUse = KeyUse.SIGN, id: bytes | None = None
    ) -> KeyPairInfo:
        """A new key pair stored on the token; the private half sensitive and non-extractable.

        The CKA_ID is `id` or, by default, the SHA-1 of the public key bits (as a
        certificate's subject key identifier), so tools pair key and certificate.
        """
        kind = KeyKind(kind)
        if use is KeyUse.DERIVE and kind is not KeyKind.EC_P256:
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER, "transport (derive) keys are EC P-256 only"
            )
        private_template = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
        }
        public_template = {Attribute.TOKEN: True, Attribute.PRIVATE: False}
        caps = (
            MechanismFlag.DERIVE
            if use is KeyUse.DERIVE
            else MechanismFlag.SIGN | MechanismFlag.VERIFY
        )
        temp_id = id or os.urandom(16)
        try:
            if kind.is_rsa:
                bits = 2048 if kind is KeyKind.RSA_2048 else 3072
                pub, priv = self._s.generate_keypair(
                    KeyType.RSA,
                    bits,
                    store=True,
                    label=label,
                    id=temp_id,
                    capabilities=caps,
                    public_template={**public_template, Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01"},
                    private_template=private_template,
                )
            else:
                edwards = kind is KeyKind.ED25519
                params = self._s.create_domain_parameters(
                    KeyType.EC_EDWARDS if edwards else KeyType.EC,
                    {Attribute.EC_PARAMS: _ED25519_PARAMS if edwards else _P256_PARAMS},
                    local=True,
                )
                pub, priv = params.generate_keypair(
                    store=True,
                    label=label,
                    id=temp_id,
                    capabilities=caps,
                    mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN if edwards else None,
                    public_template=public_template,
                    private_template=private_template,
                )
        except p11e.PKCS11Error as exc:
            raise _failure(f"generating a {kind} key pair", exc) from None
        spki = _spki_of(pub, kind)
        key_id = id or key_identifier(spki)
        if key_id != temp_id:
            try:
                pub[Attribute.ID] = key_id
                priv[Attribute.ID] = key_id
            except p11e.PKCS11Error as exc:
                raise _failure("setting the key pair's id", exc) from None
        return KeyPairInfo(label, key_id, kind, spki, extractable=False, local=True)

    def key_pairs(self) -> list[KeyPairInfo]:
        """Every private key on the token with its public key (from the public key object,
        else from the private key's own attributes where the token exposes them)."""
        found: list[KeyPairInfo] = []
        try:
            for priv in list(self._s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})):
                kind = _kind_of(priv)
                if kind is None:
                    continue
                label = str(priv[Attribute.LABEL])
                key_id = bytes(priv[Attribute.ID])
                spki = self._public_key_for(priv, kind, label, key_id)
                found.append(
                    KeyPairInfo(
                        label,
                        key_id,
                        kind,
                        spki,
                        extractable=bool(priv[Attribute.EXTRACTABLE]),
                        local=bool(priv[Attribute.LOCAL]),
                    )
                )
        except p11e.PKCS11Error as exc:
            raise _failure("listing keys", exc) from None
        return found

    def key_pair(self, label: str) -> KeyPairInfo:
        for pair in self.key_pairs():
            if pair.label == label:
                return pair
        raise LicentiaError(
            ErrorCode.TOKEN_OBJECT_NOT_FOUND,
            f"token '{self.info.label}' holds no private key labelled '{label}'",
        )

    def _public_key_for(self, priv: Any, kind: KeyKind, label: str, key_id: bytes) -> bytes:
        for pub in list(
            self._s.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: key_id})
        ):
            if _kind_of(pub) is kind:
                return _spki_of(pub, kind)
        if kind.is_rsa:
            return _rsa_spki(bytes(priv[Attribute.MODULUS]), bytes(priv[Attribute.PUBLIC_EXPONENT]))
        return b""

    def _private_key(self, label: str) -> Any:
        try:
            keys = list(
                self._s.get_objects(
                    {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}
                )
            )
        except p11e.PKCS11Error as exc:
            raise _failure("finding a key", exc) from None
        if not keys:
            raise LicentiaError(
                ErrorCode.TOKEN_OBJECT_NOT_FOUND,
                f"token '{self.info.label}' holds no private key labelled '{label}'",
            )
        if len(keys) > 1:
            raise LicentiaError(
                ErrorCode.TOKEN_OBJECT_EXISTS,
                f"token '{self.info.label}' holds {len(keys)} private keys labelled '{label}'",
                hint="delete the extra ones with pkcs11-tool --delete-object",
            )
        return keys[0]

    def sign(self, label: str, data: bytes) -> bytes:
        """Sign `data` with the private key `label` inside the token.

        EC P-256: ECDSA over SHA-256, DER-encoded; RSA: PKCS#1 v1.5 over SHA-256;
        Ed25519: pure EdDSA (64 bytes).
        """
        priv = self._private_key(label)
        kind = _kind_of(priv)
        if not hasattr(priv, "sign"):  # python-pkcs11 offers sign() only when CKA_SIGN is true
            raise LicentiaError(
                ErrorCode.MECHANISM_NOT_SUPPORTED, f"key '{label}' is not allowed to sign"
            )
        try:
            if kind is KeyKind.EC_P256:
                raw = priv.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA)
                return bytes(encode_ecdsa_signature(raw))
            if kind is not None and kind.is_rsa:
                info = _SHA256_DIGEST_INFO + hashlib.sha256(data).digest()
                return bytes(priv.sign(info, mechanism=Mechanism.RSA_PKCS))
            if kind is KeyKind.ED25519:
                return bytes(priv.sign(data, mechanism=Mechanism.EDDSA))
        except p11e.PKCS11Error as exc:
            raise _failure(f"signing with key '{label}'", exc) from None
        raise LicentiaError(
            ErrorCode.MECHANISM_NOT_SUPPORTED,
            f"key '{label}' is of a kind licentia cannot sign with",
        )

    def create_public_key(self, label: str, id: bytes, spki: bytes) -> None:
        """Store a public key object (for keys that arrived without one, e.g. unwrapped)."""
        info = asn1_keys.PublicKeyInfo.load(spki)
        algorithm = info["algorithm"]["algorithm"].native
        attrs: dict[Attribute, Any] = {
            Attribute.CLASS: ObjectClass.PUBLIC_KEY,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.LABEL: label,
            Attribute.ID: id,
            Attribute.VERIFY: True,
        }
        if algorithm == "ec":
            attrs[Attribute.KEY_TYPE] = KeyType.EC
            attrs[Attribute.EC_PARAMS] = info["algorithm"]["parameters"].dump()
            attrs[Attribute.EC_POINT] = asn1_core.OctetString(
                bytes(info["public_key"].native)
            ).dump()
        elif algorithm == "rsa":
            pub = info["public_key"].parsed
            attrs[Attribute.KEY_TYPE] = KeyType.RSA
            attrs[Attribute.MODULUS] = _int_bytes(pub["modulus"].native)
            attrs[Attribute.PUBLIC_EXPONENT] = _int_bytes(pub["public_exponent"].native)
        else:
            raise LicentiaError(
                ErrorCode.MECHANISM_NOT_SUPPORTED, f"cannot store a {algorithm} public key"
            )
        try:
            self._s.create_object(attrs)
        except p11e.PKCS11Error as exc:
            raise _failure("storing a public key", exc) from None

    # -- transport keys and unwrapping (vault packages) ----------------------------------

    def derive_unwrapping_key(self, label: str, peer_point: bytes, kek_input: bytes) -> Any:
        """A session AES-256 key-encryption key derived inside the token.

        ECDH (CKM_ECDH1_DERIVE, no KDF) of the private key `label` with `peer_point`,
        used as an AES key to encrypt `kek_input` (CKM_AES_ECB_ENCRYPT_DATA); the result
        can only unwrap. It matches `licentia.crypto.x509.seal_private_key`.
        """
        priv = self._private_key(label)
        secret = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False}
        try:
            shared = priv.derive_key(
                KeyType.AES,
                256,
                mechanism=Mechanism.ECDH1_DERIVE,
                mechanism_param=(pkcs11.KDF.NULL, None, peer_point),
                capabilities=MechanismFlag.DERIVE,
                template=secret,
            )
            kek = shared.derive_key(
                KeyType.AES,
                256,
                mechanism=Mechanism.AES_ECB_ENCRYPT_DATA,
                mechanism_param=kek_input,
                capabilities=MechanismFlag.UNWRAP,
                template=secret,
            )
            shared.destroy()
        except p11e.PKCS11Error as exc:
            raise _failure("deriving the package key", exc) from None
        return kek

    def unwrap_private_key(
        self, kek: Any, wrapped: bytes, kind: KeyKind, label: str, id: bytes
    ) -> None:
        """Unwrap a PKCS#8 private key (AES key wrap with padding) into a token object.

        The key lands sensitive and non-extractable, for signing only. A wrong key or
        altered data fails inside the token (RFC 5649 integrity check).
        """
        drop: dict[Attribute, Any] = {
            a: DEFAULT
            for a in (Attribute.ENCRYPT, Attribute.VERIFY, Attribute.WRAP, Attribute.DERIVE)
        }
        drop.update(
            {
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.PRIVATE: True,
                Attribute.DECRYPT: False,
                Attribute.UNWRAP: False,
            }
        )
        try:
            kek.unwrap_key(
                ObjectClass.PRIVATE_KEY,
                KeyType.RSA if kind.is_rsa else KeyType.EC,
                wrapped,
                id=id,
                label=label,
                mechanism=Mechanism.AES_KEY_WRAP_PAD,
                store=True,
                capabilities=MechanismFlag.SIGN,
                template=drop,
            )
        except (
            p11e.WrappedKeyInvalid,
            p11e.GeneralError,
            p11e.EncryptedDataInvalid,
            p11e.WrappedKeyLenRange,
            p11e.DataInvalid,
            p11e.FunctionFailed,
        ):
            raise LicentiaError(
                ErrorCode.VAULT_PACKAGE_INVALID,
                "the wrapped private key did not unwrap inside the token",
            ) from None
        except p11e.PKCS11Error as exc:
            raise _failure("unwrapping a private key", exc) from None

    def import_private_key(self, pkcs8: bytes, kind: KeyKind, label: str, id: bytes) -> None:
        """Put a software private key (PKCS#8 DER) into the token, non-extractable from now on.

        The key is wrapped under a one-time session key and unwrapped inside the token,
        so the same path serves every key type the token can unwrap.
        """
        value, wrapped = wrap_for_import(pkcs8)
        try:
            kek = self._s.create_object(
                {
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: KeyType.AES,
                    Attribute.TOKEN: False,
                    Attribute.VALUE: value,
                    Attribute.UNWRAP: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                }
            )
        except p11e.PKCS11Error as exc:
            raise _failure("making an import key", exc) from None
        try:
            self.unwrap_private_key(kek, wrapped, kind, label, id)
        finally:
            kek.destroy()

    # -- data objects -----------------------------------------------------------------

    def _data_objects(self, label: str | None, application: str | None) -> list[Any]:
        template: dict[Attribute, Any] = {Attribute.CLASS: ObjectClass.DATA}
        if label is not None:
            template[Attribute.LABEL] = label
        if application is not None:
            template[Attribute.APPLICATION] = application
        try:
            return list(self._s.get_objects(template))
        except p11e.PKCS11Error as exc:
            raise _failure("finding data objects", exc) from None

    def put_data(
        self,
        label: str,
        value: bytes,
        *,
        application: str = DEFAULT_APPLICATION,
        private: bool = True,
        replace: bool = True,
    ) -> None:
        """Store `value` as a CKO_DATA object; an existing one with this label is replaced.

        Tokens that let CKA_VALUE change (C_SetAttributeValue) update in place; others
        (SoftHSM2 keeps a data object's value read-only) get the new object first and
        lose the old one after, so a crash in between leaves the old value or both.
        """
        existing = self._data_objects(label, application)
        if existing and not replace:
            raise LicentiaError(
                ErrorCode.TOKEN_OBJECT_EXISTS,
                f"token '{self.info.label}' already holds data labelled '{label}'",
            )
        try:
            if existing:
                with suppress(p11e.AttributeReadOnly):
                    existing[0][Attribute.VALUE] = value
                    for extra in existing[1:]:
                        extra.destroy()
                    return
            self._s.create_object(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: private,
                    Attribute.LABEL: label,
                    Attribute.APPLICATION: application,
                    Attribute.VALUE: value,
                }
            )
            for old in existing:
                old.destroy()
        except p11e.PKCS11Error as exc:
            raise _failure(f"storing data '{label}'", exc) from None

    def get_data(self, label: str, *, application: str = DEFAULT_APPLICATION) -> bytes | None:
        found = self._data_objects(label, application)
        if not found:
            return None
        try:
            return bytes(found[0][Attribute.VALUE])
        except p11e.PKCS11Error as exc:
            raise _failure(f"reading data '{label}'", exc) from None

    def delete_data(self, label: str, *, application: str = DEFAULT_APPLICATION) -> int:
        found = self._data_objects(label, application)
        try:
            for obj in found:
                obj.destroy()
        except p11e.PKCS11Error as exc:
            raise _failure(f"deleting data '{label}'", exc) from None
        return len(found)

    # -- certificates -----------------------------------------------------------------

    def put_certificate(
        self, label: str, id: bytes, der: bytes, *, authority: bool = False
    ) -> None:
        """Store an X.509 certificate object (public, readable without login)."""
        try:
            cert = asn1_x509.Certificate.load(der)
            tbs = cert["tbs_certificate"]
            subject, issuer = tbs["subject"].dump(), tbs["issuer"].dump()
            serial = asn1_core.Integer(tbs["serial_number"].native).dump()
        except (ValueError, TypeError, KeyError):
            raise LicentiaError(
                ErrorCode.CERTIFICATE_INVALID, "the certificate is not DER X.509"
            ) from None
        try:
            self._s.create_object(
                {
                    Attribute.CLASS: ObjectClass.CERTIFICATE,
                    Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: False,
                    Attribute.LABEL: label,
                    Attribute.ID: id,
                    Attribute.SUBJECT: subject,
                    Attribute.ISSUER: issuer,
                    Attribute.SERIAL_NUMBER: serial,
                    Attribute.VALUE: der,
                    Attribute.CERTIFICATE_CATEGORY: 2 if authority else 1,
                }
            )
        except p11e.PKCS11Error as exc:
            raise _failure(f"storing certificate '{label}'", exc) from None

    def certificates(self) -> list[CertificateObject]:
        try:
            return [
                CertificateObject(
                    label=str(obj[Attribute.LABEL]),
                    id=bytes(obj[Attribute.ID]),
                    der=bytes(obj[Attribute.VALUE]),
                    authority=_category(obj) == 2,
                )
                for obj in self._s.get_objects(
                    {
                        Attribute.CLASS: ObjectClass.CERTIFICATE,
                        Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
                    }
                )
            ]
        except p11e.PKCS11Error as exc:
            raise _failure("listing certificates", exc) from None

    def delete_certificate(self, der: bytes) -> int:
        """Destroy the certificate objects holding exactly `der`; how many went."""
        try:
            found = [
                obj
                for obj in list(self._s.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE}))
                if bytes(obj[Attribute.VALUE]) == der
            ]
            for obj in found:
                obj.destroy()
        except p11e.PKCS11Error as exc:
            raise _failure("deleting a certificate", exc) from None
        return len(found)

    # -- any object -------------------------------------------------------------------

    def objects(self) -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        try:
            for obj in self._s.get_objects():
                cls = int(obj[Attribute.CLASS])
                name = _CLASS_NAMES.get(cls)
                if name is None:
                    continue
                key_kind = _kind_of(obj) if name in ("private-key", "public-key") else None
                application = str(obj[Attribute.APPLICATION]) if name == "data" else None
                found.append(
                    ObjectInfo(
                        name,
                        str(obj[Attribute.LABEL]),
                        b"" if name == "data" else bytes(obj[Attribute.ID]),
                        key_kind,
                        application,
                    )
                )
        except p11e.PKCS11Error as exc:
            raise _failure("listing objects", exc) from None
        return found

    def delete_objects(self, label: str, classes: Sequence[str] | None = None) -> int:
        """Destroy every object with this label (of the given classes); how many went."""
        wanted = {c for c, n in _CLASS_NAMES.items() if classes is None or n in classes}
        count = 0
        try:
            for obj in list(self._s.get_objects({Attribute.LABEL: label})):
                if int(obj[Attribute.CLASS]) in wanted:
                    obj.destroy()
                    count += 1
        except p11e.PKCS11Error as exc:
            raise _failure(f"deleting '{label}'", exc) from None
        return count

    # -- PIN ----------------------------------------------------------------------------

    def change_pin(self, old: str, new: str) -> None:
        """C_SetPIN for the logged-in user. The old PIN is tried once."""
        try:
            self._s.set_pin(old, new)
        except p11e.PinIncorrect:
            flags = self._token_flags()
            code = ErrorCode.PIN_LOCKED if pin_state(flags) == "locked" else ErrorCode.PIN_INCORRECT
            raise LicentiaError(code, wrong_pin_message(self.info.label, flags)) from None
        except (p11e.PinLenRange, p11e.PinInvalid, p11e.PinTooWeak):
            raise LicentiaError(
                ErrorCode.PIN_INVALID, f"token '{self.info.label}' refused the new PIN"
            ) from None
        except p11e.PKCS11Error as exc:
            raise _failure("changing the PIN", exc) from None

    def _token_flags(self) -> int:
        try:
            return int(self._s.token.slot.get_token().flags)
        except p11e.PKCS11Error:
            return self.info.flags

    @property
    def has_ed25519_keys(self) -> bool:
        return any(o.key_kind is KeyKind.ED25519 for o in self.objects())

    # -- presence and data labels (token containers) ----------------------------------

    def still_present(self) -> bool:
        """Whether this session's token is still in its slot (C_GetTokenInfo answers, same
        serial and label). A pulled token, a slot the module lost, or a token store that
        vanished all answer False."""
        try:
            current = _info(self._s.token.slot.get_token())
        except p11e.PKCS11Error:
            return False
        return (current.serial, current.label) == (self.info.serial, self.info.label)

    def data_labels(self, *, application: str = DEFAULT_APPLICATION, prefix: str = "") -> list[str]:
        """The labels of `application`'s data objects that start with `prefix`, sorted."""
        try:
            labels = [str(obj[Attribute.LABEL]) for obj in self._data_objects(None, application)]
        except p11e.PKCS11Error as exc:
            raise _failure("listing data objects", exc) from None
        return sorted(label for label in labels if label.startswith(prefix))


# -- encodings ----------------------------------------------------------------------------


def _serialised(method: Any) -> Any:
    presence = method.__name__ == "still_present"

    @functools.wraps(method)
    def call(self: TokenSession, *args: Any, **kwargs: Any) -> Any:
        with _lock:
            if self.stale:  # its handle may name another session now: never use it
                if presence:
                    return False
                raise LicentiaError(
                    ErrorCode.TOKEN_FAILURE,
                    f"the session on token '{self.info.label}' ended when the PKCS#11 module "
                    "re-read its slots",
                )
            return method(self, *args, **kwargs)

    return call


# every call of a session into its module holds `_lock` (see there)
for _name, _method in list(vars(TokenSession).items()):
    if callable(_method) and not _name.startswith("__") and not isinstance(_method, property):
        setattr(TokenSession, _name, _serialised(_method))
del _name, _method


def _int_bytes(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def _category(obj: Any) -> int:
    try:
        return int(obj[Attribute.CERTIFICATE_CATEGORY])
    except (p11e.PKCS11Error, TypeError, ValueError):
        return 0


def _kind_of(key: Any) -> KeyKind | None:
    try:
        key_type = key[Attribute.KEY_TYPE]
        if key_type == KeyType.RSA:
            bits = len(bytes(key[Attribute.MODULUS])) * 8
            return {2048: KeyKind.RSA_2048, 3072: KeyKind.RSA_3072}.get(bits)
        if key_type == KeyType.EC:
            return KeyKind.EC_P256 if bytes(key[Attribute.EC_PARAMS]) == _P256_PARAMS else None
        if key_type == KeyType.EC_EDWARDS:
            params = bytes(key[Attribute.EC_PARAMS])
            return KeyKind.ED25519 if params in (_ED25519_PARAMS, _ED25519_NAMED) else None
    except (p11e.PKCS11Error, KeyError):
        return None
    return None


def _rsa_spki(modulus: bytes, exponent: bytes) -> bytes:
    return bytes(
        asn1_keys.PublicKeyInfo(
            {
                "algorithm": {"algorithm": "rsa", "parameters": asn1_core.Null()},
                "public_key": asn1_keys.RSAPublicKey(
                    {
                        "modulus": int.from_bytes(modulus, "big"),
                        "public_exponent": int.from_bytes(exponent, "big"),
                    }
                ),
            }
        ).dump()
    )


def _spki_of(pub: Any, kind: KeyKind) -> bytes:
    if kind.is_rsa:
        return _rsa_spki(bytes(pub[Attribute.MODULUS]), bytes(pub[Attribute.PUBLIC_EXPONENT]))
    point = bytes(asn1_core.OctetString.load(bytes(pub[Attribute.EC_POINT])).native)
    if kind is KeyKind.ED25519:
        algorithm: dict[str, Any] = {"algorithm": "ed25519"}
    else:
        algorithm = {"algorithm": "ec", "parameters": ("named", "secp256r1")}
    return bytes(asn1_keys.PublicKeyInfo({"algorithm": algorithm, "public_key": point}).dump())


def public_key_kind(spki: bytes) -> KeyKind | None:
    """The kind of an SPKI DER public key, or None for one licentia does not use."""
    try:
        info = asn1_keys.PublicKeyInfo.load(spki)
        algorithm = info["algorithm"]["algorithm"].native
        if algorithm == "rsa":
            bits = info["public_key"].parsed["modulus"].native.bit_length()
            return {2048: KeyKind.RSA_2048, 3072: KeyKind.RSA_3072}.get(bits)
        if algorithm == "ec":
            curve = info["algorithm"]["parameters"].chosen.native
            return KeyKind.EC_P256 if curve == "secp256r1" else None
        if algorithm == "ed25519":
            return KeyKind.ED25519
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return None


def key_identifier(spki: bytes) -> bytes:
    """The CKA_ID licentia gives a key pair: SHA-1 of the public key bits (the SKI)."""
    return _ski(bytes(asn1_keys.PublicKeyInfo.load(spki)["public_key"].contents[1:]))
