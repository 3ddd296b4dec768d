"""The keys and records of the TMR seat store (`licentia.tmr.seats`) as bytes: key segments,
the handles that name a slot, and the msgpack records of granted handles, each with a
version. Pure: no etcd here."""

from __future__ import annotations

import secrets
import zlib
from typing import Any

import msgpack

from licentia.core.seats import Holder, ItemKey, Session, Station
from licentia.model import AccessMode, ErrorCode, LicentiaError

__all__ = [
    "HANDLE_BITS", "ITEM_NUMBER_BITS", "RECORD_VERSION", "SLOT_INDEX_BITS", "SLOT_RECORD", "handle_record", "item_number_of",
    "key_segment", "pack", "range_end", "session_from_record", "session_from_slot", "slot_handle", "slot_parts",
    "slot_record", "station_segment", "unknown_session", "unpack",
]

RECORD_VERSION = 1
HANDLE_BITS = 53  # handles fit an IEEE double (JSON, WebAdmin) and are never 0
# a slot handle: bit 52 set, random bits, the item's number, the slot's index
SLOT_INDEX_BITS = 20  # items of a larger quantity keep h/ records
ITEM_NUMBER_BITS = 12  # an item whose number another item took keeps h/ records
SLOT_RANDOM_BITS = HANDLE_BITS - 1 - ITEM_NUMBER_BITS - SLOT_INDEX_BITS
SLOT_RECORD = 0x97  # the first byte of a slot's own record (a msgpack array of 7)


def key_segment(text: str) -> bytes:
    """A key segment: any text, with no '/' (percent-encoded like a URL path segment)."""
    out = text.encode()
    if any(b in out for b in b"/%\x00"):
        out = out.replace(b"%", b"%25").replace(b"/", b"%2F").replace(b"\x00", b"%00")
    return out


def station_segment(station: Station) -> bytes:
    return bytes(msgpack.packb(list(station))).hex().encode()


def pack(value: Any) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


def unpack(data: bytes) -> Any:
    value = msgpack.unpackb(data, raw=False)
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        value[0] = value[0].decode()
    return value


def range_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def item_number_of(item: bytes) -> int:
    """An item's number in its slot handles: a checksum of its key (the same on every front
    end; a bucket, not a secret)."""
    return zlib.crc32(item) % (1 << ITEM_NUMBER_BITS)


def slot_handle(number: int, index: int) -> int:
    """A handle that owns slot `index` of item `number`: bit 52 set, random bits, the number,
    the index."""
    random_bits = secrets.randbits(SLOT_RANDOM_BITS)
    return (
        (1 << (HANDLE_BITS - 1)) | (random_bits << (ITEM_NUMBER_BITS + SLOT_INDEX_BITS))
        | (number << SLOT_INDEX_BITS) | index
    )


def slot_parts(handle: int) -> tuple[int, int] | None:
    """(item number, slot index) of a slot handle, or None for any other handle."""
    if not (1 << (HANDLE_BITS - 1)) <= handle < (1 << HANDLE_BITS):
        return None
    return (handle >> SLOT_INDEX_BITS) & ((1 << ITEM_NUMBER_BITS) - 1), handle & ((1 << SLOT_INDEX_BITS) - 1)


def slot_record(sess: Session) -> bytes:
    """A per-access grant's record, kept as its slot's value (`SLOT_RECORD` first)."""
    h = sess.holder
    return pack([
        RECORD_VERSION, sess.handle, list(sess.key), sess.mode.value, list(sess.station),
        [h.client_id, h.program, h.user, h.host], sess.since,
    ])


def session_from_slot(data: bytes) -> Session:
    try:
        version, handle, key, mode, station, holder, since = msgpack.unpackb(data, raw=False)
        if version != RECORD_VERSION:
            raise ValueError(f"record version {version}")
        client_id, program, user, host = holder
        return Session(
            handle, ItemKey(*key), AccessMode(mode), Station(*station),
            Holder.network(client_id, program=program, user=user, host=host), since,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise LicentiaError(ErrorCode.WRONG_CONTENT, f"a TMR slot record is damaged: {exc}") from None


def handle_record(sess: Session, slot: bytes | None, share_key: bytes | None) -> bytes:
    """A grant's record under h/<handle> (per-station and uncounted grants): its seat's slot
    and, per station, the station's share key."""
    h = sess.holder
    return pack([
        RECORD_VERSION, list(sess.key), sess.mode.value, list(sess.station),
        [h.client_id, h.program, h.user, h.host], sess.since, slot, share_key,
    ])


def session_from_record(handle: int, data: bytes) -> tuple[Session, str | None, bytes | None]:
    try:
        version, key, mode, station, holder, since, slot, share_key = msgpack.unpackb(data, raw=False)
        if version != RECORD_VERSION:
            raise ValueError(f"record version {version}")
        client_id, program, user, host = holder
        sess = Session(
            handle, ItemKey(*key), AccessMode(mode), Station(*station),
            Holder.network(client_id, program=program, user=user, host=host), since,
        )
        slot_text = slot.decode() if isinstance(slot, bytes) else slot
        return sess, slot_text, share_key
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise LicentiaError(ErrorCode.WRONG_CONTENT, f"the TMR seat record of handle {handle} is damaged: {exc}") from None


def unknown_session(handle: int) -> Session:
    return Session(handle, ItemKey("", 0, 1), AccessMode.PER_ACCESS, Station(""), Holder.network("?"), 0.0)
