"""The outer shape of every persisted or transmitted artifact: magic, version, length, body.

    magic (4 bytes) | version (1 byte) | body length (4 bytes, big-endian) | body | trailer

The trailer is whatever the artifact's kind appends (a signature, a checksum). Reading
checks all three header fields and the exact length, so a truncated, extended or foreign
file is refused before anything in it is believed.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from typing import Any

import msgpack

from licentia.model.errors import ErrorCode, LicentiaError

HEADER = struct.Struct(">4sBI")
MAX_BODY = 16 * 1024 * 1024


def pack(magic: bytes, version: int, body: bytes) -> bytes:
    if len(magic) != 4 or not 0 <= version <= 255:
        raise ValueError("magic must be 4 bytes and version one byte")
    return HEADER.pack(magic, version, len(body)) + body


def unpack(
    data: bytes, magic: bytes, versions: Collection[int], *, trailer: int = 0, what: str = "file"
) -> tuple[int, bytes, bytes]:
    """Return (version, body, trailer bytes) of an artifact, or refuse it as invalid."""
    if len(data) < HEADER.size:
        raise _invalid(what, "it is too short")
    got_magic, version, length = HEADER.unpack_from(data)
    if got_magic != magic:
        raise _invalid(what, "it is not of this kind")
    if version not in versions:
        raise _invalid(what, f"its format version {version} is not supported here")
    if length > MAX_BODY or len(data) != HEADER.size + length + trailer:
        raise _invalid(what, "its length does not match its header (truncated or extended)")
    body = data[HEADER.size : HEADER.size + length]
    return version, body, data[HEADER.size + length :]


def _invalid(what: str, why: str) -> LicentiaError:
    return LicentiaError(ErrorCode.LICENSE_INVALID, f"the {what} is invalid: {why}")


def encode(obj: Any) -> bytes:
    """The one encoding of structured bodies: msgpack, binary-safe, no custom types."""
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def decode(data: bytes, *, what: str = "file") -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_BODY)
    except Exception:
        raise _invalid(what, "its contents cannot be read") from None


def decode_map(data: bytes, *, what: str = "file") -> dict[str, Any]:
    obj = decode(data, what=what)
    if not isinstance(obj, dict):
        raise _invalid(what, "its contents have the wrong shape")
    return obj
