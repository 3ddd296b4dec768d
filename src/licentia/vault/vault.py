"""The certificate vault on one PKCS#11 token: entries, modes, CA work and the three provisioning options.

An *entry* is everything on the token under one label: a key pair (made inside the
token, or brought in by option 2 or 3) and/or an X.509 certificate. The token also holds
two internal objects whose labels start with ``licentia-`` (reserved): the vault's state
(a private CKO_DATA object, JSON) and, once a request was made, the transport key of
option 3.

Modes (kept in the state object):
- ``vendor``: no limit on entries, no PIN rule; the mode for a CA or an ISV's tokens;
- ``user``: a fixed number of certificate slots (8 by default) and a PIN that must be
  changed before first use, as a token prepared by a vendor for a customer.

Provisioning (the vault's three options):
1. key made in the device (`keygen`), `csr` to the CA, CA `sign`s, `import` the
   certificate back; the private key never exists outside a token;
2. CA makes key and certificate and delivers a password-protected PKCS#12 file
   (`export_pkcs12` / `import_pkcs12`); the private key travels outside a secure device
   (`PKCS12_WARNING`);
3. the device makes a `request` (its transport public key); the CA makes key and
   certificate and returns a `package` encrypted to that transport key and signed by
   the CA key; only the target token can `unpackage` it, and the private key is
   unwrapped inside the token.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final, Literal

from asn1crypto import x509 as asn1_x509

from licentia.containers.pkcs11 import (
    KeyKind,
    KeyPairInfo,
    KeyUse,
    TokenSession,
    key_identifier,
    open_session,
    public_key_kind,
)
from licentia.crypto import x509 as recipes
from licentia.model import ErrorCode, LicentiaError
from licentia.vault.package import Package, Request, decode_package, kek_context
from licentia.vault.x509build import (
    CertInfo,
    build_certificate,
    build_csr,
    parse_subject,
    read_certificate,
    read_csr,
)

STATE_LABEL: Final = "licentia-vault"
TRANSPORT_LABEL: Final = "licentia-transport"
RESERVED_PREFIX: Final = "licentia-"
USER_SLOTS: Final = 8
VAULT_KINDS: Final = (KeyKind.EC_P256, KeyKind.RSA_2048, KeyKind.RSA_3072)

PKCS12_WARNING: Final = (
    "WARNING: with option 2 the private key was made by the CA in software and travels in "
    "this PKCS#12 file: until it is inside the target token it can be copied or altered. "
    "Use it only where the transport and the machines on the way are trusted; delete the "
    "file (and any copies in caches, mail folders and trash) once imported. Prefer a key "
    "made in the device (option 1) or an encrypted package (option 3)."
)
ED25519_WARNING: Final = (
    "note: this token also holds Ed25519 keys; the OpenSSL pkcs11 engine (libp11 0.4.12) "
    "then finds no private key on it at all. Keep TLS keys on a token without Ed25519 keys."
)

Mode = Literal["user", "vendor"]
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class VaultState:
    mode: Mode
    slots: int | None  # None: no limit
    pin_change_required: bool

    def encode(self) -> bytes:
        return json.dumps(
            {
                "format": 1,
                "mode": self.mode,
                "slots": self.slots,
                "pin_change_required": self.pin_change_required,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> VaultState:
        try:
            raw = json.loads(data)
            if raw.get("format") != 1 or raw["mode"] not in ("user", "vendor"):
                raise ValueError
            slots = raw["slots"]
            if slots is not None and (not isinstance(slots, int) or slots < 1):
                raise ValueError
            return cls(raw["mode"], slots, bool(raw["pin_change_required"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise LicentiaError(
                ErrorCode.TOKEN_FAILURE,
                f"the vault state object '{STATE_LABEL}' on this token is damaged",
                hint="re-initialise it with `licentia vault init --force` (entries stay)",
            ) from None


@dataclass(frozen=True)
class Entry:
    label: str
    id: bytes
    key: KeyPairInfo | None
    certificate: CertInfo | None
    authority: bool

    @property
    def kind(self) -> KeyKind | None:
        if self.key is not None:
            return self.key.kind
        return public_key_kind(self.certificate.public_key) if self.certificate else None

    @property
    def role(self) -> str:
        if self.key is None:
            return "trusted CA" if self.authority else "certificate"
        if self.certificate is None:
            return "key"
        return "CA" if self.certificate.is_ca else "key+certificate"


def check_label(label: str) -> str:
    if not _LABEL_RE.fullmatch(label) or label.startswith(RESERVED_PREFIX):
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER,
            f"{label!r} is not a usable label",
            hint="use 1-64 letters, digits, '.', '_', '@' or '-', not starting with 'licentia-'",
        )
    return label


class TokenSigner:
    """A `Signer` for one key pair on a token."""

    def __init__(self, session: TokenSession, pair: KeyPairInfo) -> None:
        self._session = session
        self.pair = pair

    @property
    def kind(self) -> KeyKind:
        return self.pair.kind

    def sign(self, data: bytes) -> bytes:
        return self._session.sign(self.pair.label, data)


# -- opening ------------------------------------------------------------------------------


def initialize(
    session: TokenSession, mode: Mode = "vendor", *, slots: int | None = None, force: bool = False
) -> VaultState:
    """Make the token a vault (write its state object). User mode requires a PIN change."""
    if session.get_data(STATE_LABEL) is not None and not force:
        raise LicentiaError(
            ErrorCode.TOKEN_OBJECT_EXISTS,
            f"token '{session.info.label}' is already a licentia vault",
            hint="pass --force to set the mode again (entries stay)",
        )
    if mode == "user":
        state = VaultState("user", slots or USER_SLOTS, True)
    else:
        state = VaultState("vendor", slots, False)
    if state.slots is not None and not 1 <= state.slots <= 64:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "the number of slots must be 1 to 64")
    used = Vault(session, state).slots_used
    if state.slots is not None and used > state.slots:
        raise LicentiaError(
            ErrorCode.VAULT_SLOTS_FULL,
            f"token '{session.info.label}' holds {used} entries, more than the {state.slots} "
            f"certificate slots of {state.mode} mode; nothing was changed",
            hint=f"delete {used - state.slots} entries first (`licentia vault delete LABEL`), "
            f"or give --slots {used} or more",
        )
    session.put_data(STATE_LABEL, state.encode())
    return state


@contextmanager
def open_vault(
    module: str | None = None,
    *,
    token: str | None = None,
    slot: int | None = None,
    pin: str,
    for_pin_change: bool = False,
) -> Iterator[Vault]:
    """Log in to a token and open its vault; refuses if the PIN must be changed first."""
    with open_session(module, label=token, slot=slot, pin=pin) as session:
        data = session.get_data(STATE_LABEL)
        if data is None:
            raise LicentiaError(
                ErrorCode.VAULT_NOT_INITIALIZED,
                f"token '{session.info.label}' is not a licentia vault yet",
            )
        state = VaultState.decode(data)
        must_change = state.pin_change_required or session.info.pin_to_be_changed
        if must_change and not for_pin_change:
            raise LicentiaError(
                ErrorCode.PIN_CHANGE_REQUIRED,
                f"the PIN of token '{session.info.label}' is the initial one and must be "
                "changed before first use",
            )
        yield Vault(session, state)


class Vault:
    """Operations on one opened vault token."""

    def __init__(self, session: TokenSession, state: VaultState) -> None:
        self.session = session
        self.state = state

    @property
    def token_label(self) -> str:
        return self.session.info.label

    @property
    def token_serial(self) -> str:
        return self.session.info.serial

    # -- entries ----------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        keys = {
            p.label: p for p in self.session.key_pairs() if not p.label.startswith(RESERVED_PREFIX)
        }
        certs = {
            c.label: c
            for c in self.session.certificates()
            if not c.label.startswith(RESERVED_PREFIX)
        }
        out = []
        for label in sorted(set(keys) | set(certs)):
            key, cert = keys.get(label), certs.get(label)
            info = read_certificate(cert.der) if cert else None
            out.append(
                Entry(
                    label=label,
                    id=key.id if key else cert.id if cert else b"",
                    key=key,
                    certificate=info,
                    authority=bool(cert and cert.authority),
                )
            )
        return out

    def entry(self, label: str) -> Entry:
        for e in self.entries():
            if e.label == label:
                return e
        raise LicentiaError(
            ErrorCode.TOKEN_OBJECT_NOT_FOUND, f"vault '{self.token_label}' has no entry '{label}'"
        )

    @property
    def slots_used(self) -> int:
        return len(self.entries())

    def _claim_slot(self, label: str) -> None:
        """Refuse a new entry whose label exists or that does not fit the slots."""
        check_label(label)
        labels = {e.label for e in self.entries()}
        if label in labels:
            raise LicentiaError(
                ErrorCode.TOKEN_OBJECT_EXISTS,
                f"vault '{self.token_label}' already has an entry '{label}'",
            )
        if self.state.slots is not None and len(labels) >= self.state.slots:
            raise LicentiaError(
                ErrorCode.VAULT_SLOTS_FULL,
                f"vault '{self.token_label}' uses all of its {self.state.slots} certificate slots",
            )

    def delete(self, label: str) -> int:
        check_label(label)
        count = self.session.delete_objects(label, ("private-key", "public-key", "certificate"))
        if count == 0:
            raise LicentiaError(
                ErrorCode.TOKEN_OBJECT_NOT_FOUND,
                f"vault '{self.token_label}' has no entry '{label}'",
            )
        return count

    # -- option 1: key in the device, CSR, certificate back -----------------------------

    def keygen(self, label: str, kind: KeyKind = KeyKind.EC_P256) -> KeyPairInfo:
        kind = _vault_kind(kind)
        self._claim_slot(label)
        return self.session.generate_keypair(kind, label)

    def csr(
        self, label: str, subject: str, *, dns: Sequence[str] = (), ips: Sequence[str] = ()
    ) -> bytes:
        """A PKCS#10 request (DER) for the key pair `label`, signed inside the token."""
        pair = self.session.key_pair(label)
        return build_csr(
            pair.public_key,
            parse_subject(subject),
            TokenSigner(self.session, pair),
            dns=dns,
            ips=ips,
        )

    def import_certificate(
        self,
        data: bytes,
        *,
        label: str | None = None,
        authority: bool = False,
        replace: bool = False,
    ) -> Entry:
        """Store a certificate: next to its key pair when the token holds the matching key,
        else as a certificate of its own (`authority` marks a trusted CA).

        `replace` renews: a key's old certificate gives way to the new one (stored first,
        so a failure leaves the old one in place).
        """
        info = read_certificate(data)
        pairs = [p for p in self.session.key_pairs() if p.public_key == info.public_key]
        pairs = [p for p in pairs if not p.label.startswith(RESERVED_PREFIX)]
        if pairs:
            pair = pairs[0]
            if label is not None and label != pair.label:
                raise LicentiaError(
                    ErrorCode.INVALID_PARAMETER,
                    f"the certificate belongs to the key '{pair.label}', not '{label}'",
                )
            old = [c.der for c in self.session.certificates() if c.label == pair.label]
            if info.der in old:
                raise LicentiaError(
                    ErrorCode.TOKEN_OBJECT_EXISTS,
                    f"key '{pair.label}' already has this certificate",
                )
            if old and not replace:
                raise LicentiaError(
                    ErrorCode.TOKEN_OBJECT_EXISTS,
                    f"key '{pair.label}' already has a certificate",
                    hint="to renew it, import the new one with --replace",
                )
            self.session.put_certificate(pair.label, pair.id, info.der, authority=False)
            for der in old:
                self.session.delete_certificate(der)
            return self.entry(pair.label)
        if label is None:
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER,
                "no key on this token matches the certificate; give it a --label to store it alone",
            )
        if any(c.der == info.der for c in self.session.certificates()):
            raise LicentiaError(
                ErrorCode.TOKEN_OBJECT_EXISTS, "this certificate is already on the token"
            )
        self._claim_slot(label)
        self.session.put_certificate(
            label, key_identifier(info.public_key), info.der, authority=authority or info.is_ca
        )
        return self.entry(label)

    def certificate(self, label: str) -> bytes:
        entry = self.entry(label)
        if entry.certificate is None:
            raise LicentiaError(
                ErrorCode.TOKEN_OBJECT_NOT_FOUND,
                f"entry '{label}' has a key but no certificate yet",
            )
        return entry.certificate.der

    # -- CA work ------------------------------------------------------------------------

    def ca_init(
        self, label: str, subject: str, *, kind: KeyKind = KeyKind.EC_P256, days: int, now: datetime
    ) -> bytes:
        """A CA key pair in this token and its self-signed certificate (DER), stored here."""
        pair = self.keygen(label, kind)
        try:
            der = build_certificate(
                subject=parse_subject(subject),
                public_key=pair.public_key,
                issuer=None,
                issuer_public_key=pair.public_key,
                signer=TokenSigner(self.session, pair),
                serial=recipes.serial_number(),
                now=now,
                days=days,
                ca=True,
            )
            self.session.put_certificate(label, pair.id, der, authority=True)
        except BaseException:
            self.session.delete_objects(label)
            raise
        return der

    def _ca(self, label: str) -> tuple[TokenSigner, CertInfo]:
        entry = self.entry(label)
        if entry.key is None or entry.certificate is None or not entry.certificate.is_ca:
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER,
                f"entry '{label}' is not a CA here (it needs a key and a CA certificate)",
                hint="make one with `licentia vault ca-init`",
            )
        return TokenSigner(self.session, entry.key), entry.certificate

    def issue(
        self,
        ca_label: str,
        public_key: bytes,
        subject: bytes,
        *,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        days: int,
        now: datetime,
    ) -> bytes:
        """An end-entity certificate (DER) for `public_key`, signed by the CA key `ca_label`."""
        signer, ca_cert = self._ca(ca_label)
        if now >= ca_cert.not_after:
            raise LicentiaError(
                ErrorCode.EXPIRED,
                f"the CA certificate '{ca_label}' expired on {ca_cert.not_after:%Y-%m-%d}",
            )
        ca_tbs = _subject_der(ca_cert.der)
        return build_certificate(
            subject=subject,
            public_key=public_key,
            issuer=ca_tbs,
            issuer_public_key=ca_cert.public_key,
            signer=signer,
            serial=recipes.serial_number(),
            now=now,
            days=days,
            dns=dns,
            ips=ips,
        )

    def sign_csr(self, ca_label: str, csr: bytes, *, days: int, now: datetime) -> bytes:
        """Verify a CSR and issue its certificate (subject and alternative names copied)."""
        request = read_csr(csr)
        if public_key_kind(request.public_key) not in (*VAULT_KINDS, KeyKind.ED25519):
            raise LicentiaError(
                ErrorCode.CSR_INVALID, "the request's key is of a kind licentia does not certify"
            )
        return self.issue(
            ca_label,
            request.public_key,
            request.subject,
            dns=request.dns,
            ips=request.ips,
            days=days,
            now=now,
        )

    def ca_certificate(self, ca_label: str) -> bytes:
        return self._ca(ca_label)[1].der

    # -- option 2: PKCS#12 ------------------------------------------------------------

    def export_pkcs12(
        self,
        ca_label: str,
        subject: str,
        password: str,
        *,
        name: str,
        kind: KeyKind = KeyKind.EC_P256,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        days: int,
        now: datetime,
    ) -> bytes:
        """CA side of option 2: a software key, its certificate and the CA certificate as PKCS#12."""
        pkcs8, spki = recipes.generate_private_key(_soft_kind(kind))
        cert = self.issue(
            ca_label, spki, parse_subject(subject), dns=dns, ips=ips, days=days, now=now
        )
        try:
            return recipes.pkcs12_pack(name, pkcs8, cert, [self.ca_certificate(ca_label)], password)
        except recipes.RecipeError:
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER, "a PKCS#12 file needs a non-empty password"
            ) from None

    def import_pkcs12(self, data: bytes, password: str, *, label: str | None = None) -> Entry:
        """Device side of option 2: put key and certificate of a PKCS#12 file into the token.

        The CA certificates in the file are not trusted automatically; import them with
        `import_certificate(..., authority=True)` after checking them.
        """
        try:
            pkcs8, cert_der, _chain, name = recipes.pkcs12_open(data, password)
        except recipes.RecipeError:
            raise LicentiaError(
                ErrorCode.WRONG_PASSPHRASE,
                "the PKCS#12 file does not open with this password (or is damaged, or holds no key)",
                hint="check the password the CA gave with the file",
            ) from None
        info = read_certificate(cert_der)
        if recipes.public_key_of(pkcs8) != info.public_key:
            raise LicentiaError(
                ErrorCode.CERTIFICATE_INVALID,
                "the key in the PKCS#12 file does not match its certificate",
            )
        label = label or name or ""
        self._claim_slot(label)
        kind = _vault_kind(public_key_kind(info.public_key))
        key_id = key_identifier(info.public_key)
        self.session.import_private_key(pkcs8, kind, label, key_id)
        self._finish_import(label, key_id, info)
        return self.entry(label)

    def _finish_import(self, label: str, key_id: bytes, info: CertInfo) -> None:
        """Public key object and certificate for an imported private key; check they fit."""
        try:
            self.session.create_public_key(label, key_id, info.public_key)
            pair = self.session.key_pair(label)
            probe = os.urandom(32)
            if not recipes.verify_signature(
                info.public_key, probe, self.session.sign(label, probe)
            ):
                raise LicentiaError(
                    ErrorCode.CERTIFICATE_INVALID,
                    "the imported key does not sign for its certificate's public key",
                )
            self.session.put_certificate(label, pair.id, info.der)
        except BaseException:
            self.session.delete_objects(label)
            raise

    # -- option 3: request, package, unpackage ------------------------------------------

    def request(self) -> bytes:
        """Target side of option 3: this token's transport public key as a request file.

        The transport key (EC P-256, derive only, non-extractable) is made on first use
        and kept for later packages; it is not a certificate slot.
        """
        pairs = [p for p in self.session.key_pairs() if p.label == TRANSPORT_LABEL]
        pair = (
            pairs[0]
            if pairs
            else self.session.generate_keypair(KeyKind.EC_P256, TRANSPORT_LABEL, use=KeyUse.DERIVE)
        )
        return Request(self.token_label, self.token_serial, pair.public_key).encode()

    def package(
        self,
        ca_label: str,
        request: bytes,
        subject: str,
        *,
        label: str,
        kind: KeyKind = KeyKind.EC_P256,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        days: int,
        now: datetime,
    ) -> bytes:
        """CA side of option 3: key, certificate, encrypted to the request's token, CA-signed."""
        req = Request.decode(request)
        check_label(label)
        if public_key_kind(req.transport_key) is not KeyKind.EC_P256:
            raise LicentiaError(
                ErrorCode.VAULT_PACKAGE_INVALID, "the request's transport key is not EC P-256"
            )
        signer, ca_cert = self._ca(ca_label)
        pkcs8, spki = recipes.generate_private_key(_soft_kind(kind))
        cert = self.issue(
            ca_label, spki, parse_subject(subject), dns=dns, ips=ips, days=days, now=now
        )
        transport_id = key_identifier(req.transport_key)
        context = kek_context(req.token_serial, transport_id, kind, label, cert)
        point, wrapped = recipes.seal_private_key(req.transport_key, pkcs8, context)
        del pkcs8
        package = Package(
            req.token_serial, transport_id, point, kind, label, cert, ca_cert.der, wrapped
        )
        return package.encode(signer.sign(package.signed_part()))

    def unpackage(self, data: bytes, *, trusted_ca: bytes | None = None) -> Entry:
        """Target side of option 3: verify, check the target, unwrap the key inside the token.

        The package's CA certificate must equal `trusted_ca` or a CA certificate already
        stored in this vault as trusted; its signature must verify; and it must have been
        made for this token's transport key.
        """
        package, signed, signature = decode_package(data)
        trusted = [c.der for c in self.session.certificates() if c.authority]
        if trusted_ca is not None:
            trusted.append(read_certificate(trusted_ca).der)
        if not trusted:
            raise LicentiaError(
                ErrorCode.CA_NOT_TRUSTED, "this vault trusts no CA yet, and none was given"
            )
        if package.ca_certificate not in trusted:
            raise LicentiaError(
                ErrorCode.CA_NOT_TRUSTED, "the package was not made by a CA this vault trusts"
            )
        ca = read_certificate(package.ca_certificate)
        if not recipes.verify_signature(ca.public_key, signed, signature):
            raise LicentiaError(
                ErrorCode.VAULT_PACKAGE_INVALID,
                "the package's signature does not verify: it was altered after the CA signed it",
            )
        if not recipes.certificate_signed_by(package.certificate, package.ca_certificate):
            raise LicentiaError(
                ErrorCode.VAULT_PACKAGE_INVALID,
                "the certificate in the package is not issued by its CA",
            )
        pairs = [p for p in self.session.key_pairs() if p.label == TRANSPORT_LABEL]
        local_id = key_identifier(pairs[0].public_key) if pairs else b""
        if package.target_serial != self.token_serial or package.transport_key_id != local_id:
            raise LicentiaError(
                ErrorCode.VAULT_PACKAGE_WRONG_TOKEN,
                f"the package was made for token serial {package.target_serial} "
                f"(transport key {package.transport_key_id.hex()[:16]}), this is token "
                f"'{self.token_label}' serial {self.token_serial}"
                + ("" if pairs else " which has made no request"),
            )
        info = read_certificate(package.certificate)
        if public_key_kind(info.public_key) is not package.kind:
            raise LicentiaError(
                ErrorCode.VAULT_PACKAGE_INVALID,
                "the package's key kind does not match its certificate",
            )
        self._claim_slot(package.label)
        context = kek_context(
            package.target_serial,
            package.transport_key_id,
            package.kind,
            package.label,
            package.certificate,
        )
        kek = self.session.derive_unwrapping_key(
            TRANSPORT_LABEL,
            package.ephemeral_point,
            recipes.kek_input(
                context, package.ephemeral_point, recipes.p256_point(pairs[0].public_key)
            ),
        )
        key_id = key_identifier(info.public_key)
        try:
            self.session.unwrap_private_key(
                kek, package.wrapped_key, package.kind, package.label, key_id
            )
        finally:
            kek.destroy()
        self._finish_import(package.label, key_id, info)
        return self.entry(package.label)

    # -- PIN ----------------------------------------------------------------------------

    def change_pin(self, old: str, new: str) -> VaultState:
        if new == old:
            raise LicentiaError(ErrorCode.PIN_INVALID, "the new PIN is the same as the old one")
        if len(new) < 4:
            raise LicentiaError(ErrorCode.PIN_INVALID, "the new PIN is shorter than 4 characters")
        self.session.change_pin(old, new)
        if self.state.pin_change_required:
            self.state = replace(self.state, pin_change_required=False)
            self.session.put_data(STATE_LABEL, self.state.encode())
        return self.state

    @property
    def openssl_compatible(self) -> bool:
        """False when Ed25519 keys on this token keep the OpenSSL engine from finding any key."""
        return not self.session.has_ed25519_keys


def _subject_der(cert_der: bytes) -> bytes:
    return bytes(asn1_x509.Certificate.load(cert_der)["tbs_certificate"]["subject"].dump())


def _vault_kind(kind: KeyKind | str | None) -> KeyKind:
    try:
        chosen = KeyKind(kind) if kind is not None else None
    except ValueError:
        chosen = None
    if chosen not in VAULT_KINDS or chosen is None:
        raise LicentiaError(
            ErrorCode.MECHANISM_NOT_SUPPORTED,
            f"the vault keeps {', '.join(VAULT_KINDS)} keys, not {kind}",
            hint="Ed25519 licensing keys belong on their own token (see docs/vault.md)",
        )
    return chosen


def _soft_kind(kind: KeyKind) -> recipes.SoftKeyKind:
    chosen = _vault_kind(kind)
    if chosen is KeyKind.EC_P256:
        return "ec-p256"
    return "rsa-2048" if chosen is KeyKind.RSA_2048 else "rsa-3072"
