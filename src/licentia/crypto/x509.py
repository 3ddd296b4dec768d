"""Recipes for the certificate vault: the few software-side steps that need `cryptography.hazmat`.

Keys that live in a token never pass through here; this module only handles what the CA
side makes in software (options 2 and 3 of the vault's provisioning) and what anyone may
check with a public key.

Choices:
- key kinds: EC P-256 ("ec-p256"), RSA 2048 and 3072 ("rsa-2048", "rsa-3072"), e = 65537;
- signatures: ECDSA with SHA-256 (DER), RSASSA-PKCS1-v1_5 with SHA-256, Ed25519;
- certificate serial numbers: 159 random bits (positive, at most 20 octets);
- PKCS#12: the best encryption the installed cryptography offers (AES-256-CBC, PBKDF2);
- sealing a private key to a token (vault packages, option 3): ephemeral-static ECDH on
  P-256, then KEK = AES-256-ECB keyed with the shared secret over SHA-256 of a context
  (so the target token can derive the same KEK inside itself with CKM_ECDH1_DERIVE
  followed by CKM_AES_ECB_ENCRYPT_DATA), then AES key wrap with padding (RFC 5649) of the
  PKCS#8 private key, which the token unwraps inside itself with CKM_AES_KEY_WRAP_PAD.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from cryptography.hazmat.primitives.serialization import pkcs12

SoftKeyKind = Literal["ec-p256", "rsa-2048", "rsa-3072"]
SOFT_KEY_KINDS: Final[tuple[SoftKeyKind, ...]] = ("ec-p256", "rsa-2048", "rsa-3072")

# The hash every vault signature uses, named as asn1crypto names it.
SIGNATURE_DIGEST: Final = "sha256"
RSA_PUBLIC_EXPONENT: Final = 65537

_KEK_LABEL: Final = b"licentia vault package v1 kek\x00"
_P256_POINT_SIZE: Final = 65


class RecipeError(ValueError):
    """Input a recipe cannot use (wrong password, damaged data, unsupported key). No detail."""


def digest(data: bytes) -> bytes:
    """SHA-256, the digest under every vault signature."""
    return hashlib.sha256(data).digest()


def key_identifier(subject_public_key: bytes) -> bytes:
    """RFC 5280 method 1 key identifier: SHA-1 of the subjectPublicKey bits (20 bytes).

    Used as the certificate's SKI and as the CKA_ID that ties a token's key pair to its
    certificate, as OpenSC and most PKCS#11 tools expect.
    """
    return hashlib.sha1(subject_public_key, usedforsecurity=False).digest()


def serial_number() -> int:
    """A fresh certificate serial number: 159 random bits, never zero."""
    return (int.from_bytes(os.urandom(20), "big") >> 1) | 1


def generate_private_key(kind: SoftKeyKind) -> tuple[bytes, bytes]:
    """A software key pair for a CA to deliver: (PKCS#8 DER private key, SPKI DER public key)."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind == "ec-p256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif kind == "rsa-2048":
        key = rsa.generate_private_key(RSA_PUBLIC_EXPONENT, 2048)
    elif kind == "rsa-3072":
        key = rsa.generate_private_key(RSA_PUBLIC_EXPONENT, 3072)
    else:  # pragma: no cover - Literal guards it
        raise RecipeError()
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pkcs8, spki


def public_key_of(pkcs8: bytes) -> bytes:
    """The SPKI DER public key that belongs to a PKCS#8 DER private key."""
    try:
        key = serialization.load_der_private_key(pkcs8, password=None)
    except (ValueError, TypeError):
        raise RecipeError() from None
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def verify_signature(spki: bytes, data: bytes, signature: bytes) -> bool:
    """True when `signature` over `data` verifies under the SPKI DER public key.

    ECDSA signatures are DER with SHA-256, RSA ones PKCS#1 v1.5 with SHA-256, Ed25519 raw.
    """
    try:
        key = serialization.load_der_public_key(spki)
    except (ValueError, TypeError):
        return False
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def certificate_signed_by(cert_der: bytes, issuer_der: bytes) -> bool:
    """True when `cert_der` names `issuer_der`'s subject as issuer and carries its signature."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        issuer = x509.load_der_x509_certificate(issuer_der)
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# -- PKCS#12 (option 2: key and certificate delivered as a file) ----------------------------


def pkcs12_pack(
    name: str, pkcs8: bytes, cert_der: bytes, chain: Sequence[bytes], password: str
) -> bytes:
    """A password-protected PKCS#12 file holding the key, its certificate and the chain."""
    if not password:
        raise RecipeError()
    try:
        key = serialization.load_der_private_key(pkcs8, password=None)
        cert = x509.load_der_x509_certificate(cert_der)
        cas = [x509.load_der_x509_certificate(c) for c in chain]
    except (ValueError, TypeError):
        raise RecipeError() from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise RecipeError()
    return pkcs12.serialize_key_and_certificates(
        name.encode("utf-8"),
        key,
        cert,
        cas,
        serialization.BestAvailableEncryption(password.encode("utf-8")),
    )


def pkcs12_open(data: bytes, password: str) -> tuple[bytes, bytes, list[bytes], str | None]:
    """(PKCS#8 DER key, certificate DER, chain DERs, friendly name) from a PKCS#12 file."""
    try:
        bundle = pkcs12.load_pkcs12(data, password.encode("utf-8") if password else None)
    except (ValueError, TypeError):
        raise RecipeError() from None
    if bundle.key is None or bundle.cert is None:
        raise RecipeError()
    if not isinstance(bundle.key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise RecipeError()
    pkcs8 = bundle.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert = bundle.cert.certificate.public_bytes(serialization.Encoding.DER)
    chain = [
        c.certificate.public_bytes(serialization.Encoding.DER) for c in bundle.additional_certs
    ]
    name = bundle.cert.friendly_name
    return pkcs8, cert, chain, name.decode("utf-8", "replace") if name else None


# -- sealing a private key to a token (option 3) --------------------------------------------


def kek_input(context: bytes, ephemeral_point: bytes, recipient_point: bytes) -> bytes:
    """The 32 bytes the shared secret encrypts (AES-256-ECB) into the key-encryption key.

    Both sides compute it; the token side passes it to CKM_AES_ECB_ENCRYPT_DATA.
    """
    return hashlib.sha256(
        _KEK_LABEL + len(context).to_bytes(4, "big") + context + ephemeral_point + recipient_point
    ).digest()


def seal_private_key(recipient_spki: bytes, pkcs8: bytes, context: bytes) -> tuple[bytes, bytes]:
    """Wrap a PKCS#8 key for the holder of an EC P-256 key: (ephemeral point, wrapped key).

    The ephemeral point is the uncompressed X9.62 point (65 bytes); `context` is bound
    into the key-encryption key (the package header, the target's identity).
    """
    try:
        recipient = serialization.load_der_public_key(recipient_spki)
    except (ValueError, TypeError):
        raise RecipeError() from None
    if not isinstance(recipient, ec.EllipticCurvePublicKey) or not isinstance(
        recipient.curve, ec.SECP256R1
    ):
        raise RecipeError()
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    shared = ephemeral.exchange(ec.ECDH(), recipient)
    eph_point = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    recipient_point = recipient.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    encryptor = Cipher(algorithms.AES(shared), modes.ECB()).encryptor()
    kek = encryptor.update(kek_input(context, eph_point, recipient_point)) + encryptor.finalize()
    return eph_point, aes_key_wrap_with_padding(kek, pkcs8)


def wrap_for_import(pkcs8: bytes) -> tuple[bytes, bytes]:
    """(one-time AES-256 key, RFC 5649 wrap of the PKCS#8 key under it).

    How a software key enters a token: the caller creates the one-time key as a session
    object and the token unwraps the key inside itself with CKM_AES_KEY_WRAP_PAD.
    """
    kek = os.urandom(32)
    return kek, aes_key_wrap_with_padding(kek, pkcs8)


def p256_point(spki: bytes) -> bytes:
    """The uncompressed point (65 bytes) of an EC P-256 SPKI DER public key."""
    try:
        key = serialization.load_der_public_key(spki)
    except (ValueError, TypeError):
        raise RecipeError() from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise RecipeError()
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert len(point) == _P256_POINT_SIZE
    return point
