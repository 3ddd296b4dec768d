"""Named cryptographic operations: the only place licentia picks algorithms, nonces and key sizes.

Every operation that fails on its input raises `InvalidArtifact` and nothing else, with no
detail an attacker could use (which byte, which key). Callers translate it into a
`LicentiaError` with a stable code where the user can see it.

Choices:
- signatures: Ed25519 (firm keys, container keys);
- sealing: AES-256-GCM, 96-bit random nonces, a version byte leading the sealed blob;
- sealing to a public key: X25519 ephemeral-static + HKDF-SHA256 + AES-256-GCM;
- agreed keys: X25519 ephemeral-ephemeral + HKDF-SHA256, then HMAC-SHA256 (`KeyAgreement`, `MacKey`);
- key derivation: HKDF-SHA256 from keys, scrypt from passphrases;
- digests: SHA-256.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

# Primitives are imported where they are used: a protected program that only verifies
# a signature loads Ed25519 and nothing else of cryptography at start (not even hashlib,
# whose OpenSSL is another library to load).

KEY_SIZE = 32
SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 32
DIGEST_SIZE = 32
MAC_SIZE = 32
_NONCE_SIZE = 12

_SEAL_V1 = b"\x01"
_SEAL_TO_V1 = b"\x01"
_WRAP_V1 = b"\x01"
_WRAP_SCRYPT_LOG2_N = 15


class InvalidArtifact(Exception):
    """A signature, seal or wrapped key did not verify. Deliberately without detail."""

    def __init__(self) -> None:
        super().__init__("artifact failed verification")


# -- randomness and digests --------------------------------------------------------------


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def new_key() -> bytes:
    """A fresh random 256-bit symmetric key."""
    return os.urandom(KEY_SIZE)


def digest(data: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(data).digest()


def keyed_digest(key: bytes, data: bytes) -> bytes:
    import hashlib
    import hmac

    return hmac.new(key, data, hashlib.sha256).digest()


def equal(a: bytes, b: bytes) -> bool:
    import hmac

    return hmac.compare_digest(a, b)


def derive(key: bytes, info: bytes, length: int = KEY_SIZE) -> bytes:
    """A subkey for one purpose (`info` names it) from a master key."""
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=SHA256(), length=length, salt=None, info=info).derive(key)


# -- signatures --------------------------------------------------------------------------


def new_signing_key() -> bytes:
    """A fresh Ed25519 private key, as 32 raw bytes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def signing_public_key(private_key: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return (
        _ed_private(private_key)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def sign(private_key: bytes, data: bytes) -> bytes:
    return _ed_private(private_key).sign(data)


class Signer:
    """An Ed25519 private key loaded once, for a process that signs many messages with it
    (a runtime's proofs): `sign` rebuilds the key object on every call, this does not."""

    __slots__ = ("_key",)

    def __init__(self, private_key: bytes) -> None:
        self._key = _ed_private(private_key)

    def sign(self, data: bytes) -> bytes:
        """The same signature `sign(private_key, data)` makes."""
        return self._key.sign(data)


def verify(public_key: bytes, data: bytes, signature: bytes) -> None:
    """Raise InvalidArtifact unless `signature` is `public_key`'s over exactly `data`."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        raise InvalidArtifact()
    try:
        _ed_public(public_key).verify(signature, data)
    except Exception as exc:
        from cryptography.exceptions import InvalidSignature

        if isinstance(exc, InvalidSignature | ValueError):
            raise InvalidArtifact() from None
        raise


def _ed_public(public_key: bytes) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(public_key)


def key_id(public_key: bytes) -> str:
    """A short printable name for a public key (first 8 bytes of its digest, hex)."""
    return digest(public_key)[:8].hex()


def _ed_private(private_key: bytes) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if len(private_key) != KEY_SIZE:
        raise InvalidArtifact()
    return Ed25519PrivateKey.from_private_bytes(private_key)


# -- agreed keys: an ephemeral exchange, then MACs -------------------------------------------
#
# A protected program checks every answer of its runtime with these, and a runtime makes
# one for every proved answer after a connection's first: HMAC-SHA256, HKDF-SHA256 and
# X25519 from cryptography's public modules.


class MacKey:
    """An HMAC-SHA256 key set up once, for a process that makes or checks many MACs with it
    (a runtime answering a program's challenges, the program checking the answers): the
    keyed state is kept and copied per MAC (cryptography's `HMAC.copy`: about half the
    CPU of the standard `hmac`'s copy, docs/performance.md)."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives import hashes, hmac

        self._keyed = hmac.HMAC(key, hashes.SHA256())

    def tag(self, data: bytes) -> bytes:
        """HMAC-SHA256 of `data` (MAC_SIZE bytes)."""
        h = self._keyed.copy()
        h.update(data)
        return h.finalize()

    def matches(self, data: bytes, tag: bytes) -> bool:
        """Whether `tag` is the MAC of `data`, compared in constant time."""
        import hmac

        return type(tag) is bytes and len(tag) == MAC_SIZE and hmac.compare_digest(self.tag(data), tag)


def mac(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 of `data` under `key`."""
    import hashlib
    import hmac

    return hmac.digest(key, data, hashlib.sha256)


def _hkdf(secret: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) with no salt, KEY_SIZE bytes of output."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(secret)


class KeyAgreement:
    """One side of an ephemeral X25519 exchange: a fresh key pair whose `public` half goes
    to the peer, and `agree` for the key both sides then derive (HKDF-SHA256 over the
    shared secret with `info`, which should name both public halves and the purpose).

    Nothing authenticates the peer here: the caller signs or checks a signature over both
    public halves. The private half never leaves the object and is never stored."""

    __slots__ = ("_private", "public")

    def __init__(self) -> None:
        # an X25519 private key is any 32 random bytes (RFC 7748 clamps them): taken from
        # the system's generator, as every other key here, which also spares a program's
        # start the set-up of OpenSSL's own generator (some 2 ms)
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        secret = os.urandom(KEY_SIZE)
        private = X25519PrivateKey.from_private_bytes(secret)
        self._private = private
        self.public: bytes = private.public_key().public_bytes_raw()

    def agree(self, peer_public: bytes, info: bytes) -> bytes:
        """The agreed KEY_SIZE-byte key; InvalidArtifact for a peer key that is not one
        (wrong length, or a point that gives no shared secret)."""
        if type(peer_public) is not bytes or len(peer_public) != PUBLIC_KEY_SIZE:
            raise InvalidArtifact()
        try:
            shared = self._private.exchange(_x_public(peer_public))
        except ValueError:
            raise InvalidArtifact() from None
        return _hkdf(shared, info)


def _x_public(public_key: bytes) -> Any:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    return X25519PublicKey.from_public_bytes(public_key)


# -- symmetric sealing ---------------------------------------------------------------------


def seal(key: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """Encrypt and authenticate: version byte, nonce, ciphertext with tag."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(_NONCE_SIZE)
    return _SEAL_V1 + nonce + AESGCM(key).encrypt(nonce, plaintext, _SEAL_V1 + aad)


def unseal(key: bytes, sealed: bytes, aad: bytes = b"") -> bytes:
    """Open what `seal` made with the same key and aad, or raise InvalidArtifact."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(key) != KEY_SIZE or len(sealed) < 1 + _NONCE_SIZE + 16 or sealed[:1] != _SEAL_V1:
        raise InvalidArtifact()
    nonce, body = sealed[1 : 1 + _NONCE_SIZE], sealed[1 + _NONCE_SIZE :]
    try:
        return AESGCM(key).decrypt(nonce, body, _SEAL_V1 + aad)
    except InvalidTag:
        raise InvalidArtifact() from None


# -- sealing to a public key ---------------------------------------------------------------


def new_box_key() -> bytes:
    """A fresh X25519 private key (32 raw bytes) for receiving sealed messages."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def box_public_key(private_key: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return (
        X25519PrivateKey.from_private_bytes(private_key)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def seal_to(public_key: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """Encrypt for the holder of the X25519 private key that matches `public_key`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    if len(public_key) != PUBLIC_KEY_SIZE:
        raise InvalidArtifact()
    ephemeral = X25519PrivateKey.generate()
    eph_public = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    try:
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(public_key))
    except ValueError:
        raise InvalidArtifact() from None
    key = derive(shared, b"licentia seal-to v1" + eph_public + public_key)
    return _SEAL_TO_V1 + eph_public + seal(key, plaintext, aad)


def open_sealed(private_key: bytes, sealed: bytes, aad: bytes = b"") -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    if len(sealed) < 1 + PUBLIC_KEY_SIZE or sealed[:1] != _SEAL_TO_V1 or len(private_key) != KEY_SIZE:
        raise InvalidArtifact()
    eph_public = sealed[1 : 1 + PUBLIC_KEY_SIZE]
    own = X25519PrivateKey.from_private_bytes(private_key)
    try:
        shared = own.exchange(X25519PublicKey.from_public_bytes(eph_public))
    except ValueError:
        raise InvalidArtifact() from None
    own_public = own.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    key = derive(shared, b"licentia seal-to v1" + eph_public + own_public)
    return unseal(key, sealed[1 + PUBLIC_KEY_SIZE :], aad)


# -- passphrase wrapping -----------------------------------------------------------------


def wrap_with_passphrase(secret: bytes, passphrase: str, *, cost: int = _WRAP_SCRYPT_LOG2_N) -> bytes:
    """Encrypt `secret` under a key stretched from `passphrase` (scrypt). Never store keys bare."""
    if not passphrase:
        raise ValueError("an empty passphrase does not protect anything")
    salt = os.urandom(16)
    key = _stretch(passphrase, salt, cost)
    return _WRAP_V1 + bytes([cost]) + salt + seal(key, secret, b"licentia passphrase wrap")


def unwrap_with_passphrase(wrapped: bytes, passphrase: str) -> bytes:
    if len(wrapped) < 18 or wrapped[:1] != _WRAP_V1 or not 10 <= wrapped[1] <= 22:
        raise InvalidArtifact()
    cost, salt = wrapped[1], wrapped[2:18]
    return unseal(_stretch(passphrase, salt, cost), wrapped[18:], b"licentia passphrase wrap")


def _stretch(passphrase: str, salt: bytes, cost: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=KEY_SIZE, n=2**cost, r=8, p=1).derive(passphrase.encode())


# -- passwords ---------------------------------------------------------------------------

_PASSWORD_COST = 15  # scrypt n = 2**15, r = 8: 32 MiB and some 100 ms per try


def hash_password(password: str, *, cost: int = _PASSWORD_COST) -> str:
    """A stored form of `password` (scrypt with a random salt): `scrypt$COST$SALT$HASH`."""
    import base64

    if not password:
        raise ValueError("an empty password protects nothing")
    salt = os.urandom(16)
    digest_ = _stretch(password, salt, cost)
    b64 = base64.urlsafe_b64encode
    return f"scrypt${cost}${b64(salt).decode()}${b64(digest_).decode()}"


def check_password(stored: str, password: str) -> bool:
    """Whether `password` is the one `hash_password` made `stored` from (constant time)."""
    import base64

    try:
        kind, cost_text, salt_text, hash_text = stored.split("$")
        cost = int(cost_text)
        if kind != "scrypt" or not 10 <= cost <= 20:
            return False
        salt, expected = base64.urlsafe_b64decode(salt_text), base64.urlsafe_b64decode(hash_text)
    except ValueError:
        return False
    import hmac

    return hmac.compare_digest(_stretch(password, salt, cost), expected)


# -- hidden data -------------------------------------------------------------------------


def seal_hidden_data(firm_private_key: bytes, firm_code: int, data: bytes) -> bytes:
    """Hidden data travels in the item sealed under a key only the firm's private key gives."""
    key = derive(firm_private_key, b"licentia hidden data v1")
    return seal(key, data, firm_code.to_bytes(4, "big"))


def open_hidden_data(firm_private_key: bytes, firm_code: int, sealed: bytes) -> bytes:
    key = derive(firm_private_key, b"licentia hidden data v1")
    return unseal(key, sealed, firm_code.to_bytes(4, "big"))
