"""Replies encoded as frames without building the reply map: the parts of a reply that
stay the same are encoded once by who keeps them, the request id and handle each time."""

from __future__ import annotations

import struct
from typing import Final

from licentia.protocol.frames import VERSION_BYTE

FRAME_HEAD: Final = struct.Struct(">IB")  # licentia.protocol.frames: length, version byte
_OK_HEAD: Final = b"\x82\xa2id"  # {"id": ..., "ok": True}
_OK_TAIL: Final = b"\xa2ok\xc3"


def frame(*parts: bytes) -> bytes:
    """A frame whose msgpack body is the concatenation of `parts`."""
    body = b"".join(parts)
    return FRAME_HEAD.pack(len(body) + 1, VERSION_BYTE) + body


# {"id": rid, "ok": True} by the length of the encoded id (msgpack: 1, 2, 3, 5 or 9 bytes)
_OK_START: Final = {n: FRAME_HEAD.pack(len(_OK_HEAD) + n + len(_OK_TAIL) + 1, VERSION_BYTE) + _OK_HEAD
                    for n in (1, 2, 3, 5, 9)}


def ok_frame(packed_id: bytes) -> bytes:
    """`{"id": rid, "ok": True}` as a frame, from the msgpack of `rid`."""
    return _OK_START[len(packed_id)] + packed_id + _OK_TAIL


def packed_uint(n: int) -> bytes:
    """msgpack's encoding of the non-negative int `n` (a request id, a handle, units left),
    the same bytes as `msgpack.packb(n)`: the shortest of positive fixint, uint 8, 16, 32
    and 64. Made here rather than by a Packer, whose call costs more than the encoding."""
    if n < 0x100:
        if n < 0:
            raise ValueError(f"{n} is negative")
        return _UINT8[n]
    if n < 0x10000:
        return b"\xcd" + n.to_bytes(2, "big")
    if n < 0x100000000:
        return b"\xce" + n.to_bytes(4, "big")
    return b"\xcf" + n.to_bytes(8, "big")  # OverflowError beyond 64 bits, as msgpack raises


# 0..255: a positive fixint below 0x80, else a uint 8
_UINT8: Final = tuple(bytes((i,)) if i < 0x80 else bytes((0xCC, i)) for i in range(0x100))


def map_head_id(count: int) -> bytes:
    """The header of a map of `count` entries (at most 15: a fixmap) and the key of its
    first entry, "id" (a reply's first entry is the id of the request it answers)."""
    return _MAP_HEAD_ID[count]


def packed_bin_fields(fields: dict[str, bytes]) -> bytes:
    """The entries of `fields` (text keys, binary values: the proof fields of a reply) as
    msgpack writes them inside a map: `msgpack.packb(fields)` without the map's header."""
    out: list[bytes] = []
    for key, value in fields.items():
        raw = key.encode()
        out.append(_str_head(len(raw)))
        out.append(raw)
        out.append(_bin_head(len(value)))
        out.append(value)
    return b"".join(out)


def _str_head(n: int) -> bytes:
    if n < 0x20:
        return _FIXSTR[n]
    if n < 0x100:
        return b"\xd9" + _BYTE[n]
    if n < 0x10000:
        return b"\xda" + n.to_bytes(2, "big")
    return b"\xdb" + n.to_bytes(4, "big")


def _bin_head(n: int) -> bytes:
    if n < 0x100:
        return b"\xc4" + _BYTE[n]
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


_BYTE: Final = tuple(bytes((i,)) for i in range(0x100))
_FIXSTR: Final = tuple(bytes((0xA0 | n,)) for n in range(0x20))
_MAP_HEAD_ID: Final = tuple(bytes((0x80 | n,)) + b"\xa2id" for n in range(0x10))
