"""Signed artifacts: the envelope of `licentia.model.envelope` followed by an Ed25519 signature.

Sign bytes, not objects: the signature covers the exact header and body bytes, and the
body is decoded only after the signature verified.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from licentia.crypto.recipes import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, InvalidArtifact, sign, verify
from licentia.model import envelope


def sign_artifact(magic: bytes, version: int, body: bytes, private_key: bytes) -> bytes:
    return sign_artifact_with(magic, version, body, lambda data: sign(private_key, data))


def sign_artifact_with(
    magic: bytes, version: int, body: bytes, signer: Callable[[bytes], bytes]
) -> bytes:
    """Like `sign_artifact`, for keys that sign elsewhere (inside a token)."""
    framed = envelope.pack(magic, version, body)
    signature = signer(framed)
    if len(signature) != SIGNATURE_SIZE:
        raise InvalidArtifact()
    return framed + signature


def split_signed(
    data: bytes, magic: bytes, versions: Collection[int], *, what: str
) -> tuple[int, bytes, bytes, bytes]:
    """(version, body, signed bytes, signature) of a signed artifact, NOT yet verified.

    For artifacts whose verifying key is named inside the body (proof of possession).
    """
    version, body, signature = envelope.unpack(
        data, magic, versions, trailer=SIGNATURE_SIZE, what=what
    )
    return version, body, data[: len(data) - SIGNATURE_SIZE], signature


def open_signed_artifact(
    data: bytes, magic: bytes, versions: Collection[int], public_key: bytes, *, what: str
) -> tuple[int, bytes]:
    """(version, body) of an artifact signed by `public_key`; InvalidArtifact otherwise."""
    version, body, signed, signature = split_signed(data, magic, versions, what=what)
    verify(public_key, signed, signature)
    return version, body


def open_self_signed(
    data: bytes, magic: bytes, versions: Collection[int], *, what: str
) -> tuple[bytes, bytes]:
    """(signer's key, rest of the body) of an artifact whose body begins with the 32-byte
    Ed25519 key that signed it (proof of possession); InvalidArtifact otherwise."""
    _, body, signed, signature = split_signed(data, magic, versions, what=what)
    key = body[:PUBLIC_KEY_SIZE]
    if len(key) != PUBLIC_KEY_SIZE:
        raise InvalidArtifact()
    verify(key, signed, signature)
    return key, body[PUBLIC_KEY_SIZE:]


__all__ = [
    "InvalidArtifact", "open_self_signed", "open_signed_artifact", "sign_artifact", "sign_artifact_with", "split_signed",
]
