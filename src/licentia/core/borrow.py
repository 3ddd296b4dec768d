"""Borrowing: a seat of a network server moved, for a limited time, into a client machine's
own soft container. Pure: no sockets, no files; the clock is a parameter.

Three signed artifacts carry a borrow (docs/protocol.md, "Borrowing"):

- a request (`LCBQ`), made and signed by the client container: which firm and product,
  for how long, the client container's serial and public key, and the item id the seat
  will have there. Its signature proves the client holds that container's key.
- a certificate (`LCBW`), made by the server and signed by the server container's key. It
  embeds the vendor-signed license of the server's item verbatim (which names the server
  container's public key), the client container's serial, key and item id, and the
  borrow's end. Whoever holds the firm's public key checks the chain: the firm signed the
  license, the license names the server container's key, that key signed the certificate,
  the certificate names the client container's key, and that key signs every proof the
  client runtime gives a program. The server cannot make a license; it can only lend one
  the vendor made for it.
- a return receipt (`LCBT`), signed by the client container once the borrowed item is gone
  from it; the server frees the seat when it sees one, at most once.

Decisions: may an item be borrowed and until when (`decide`), which item the borrowed
seat becomes in the client container (`borrowed_item`), when a borrow has ended
(`ended`), and what a return changes (`give_back`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Any

from licentia.core.content import ContainerContent, FirmEntry, ItemEntry
from licentia.core.licenses import LICENSE_MAGIC, LICENSE_VERSION, License, read_license
from licentia.crypto import InvalidArtifact, signing_public_key
from licentia.crypto.artifacts import (
    open_self_signed,
    open_signed_artifact,
    sign_artifact,
    split_signed,
)
from licentia.crypto.recipes import SIGNATURE_SIZE
from licentia.model import ErrorCode, ItemState, LicentiaError, ProductItem, envelope as env

REQUEST_MAGIC = b"LCBQ"
CERTIFICATE_MAGIC = b"LCBW"
RETURN_MAGIC = b"LCBT"
VERSION = 1

KEY_SIZE = 32
ITEM_BASE = 1 << 30  # borrowed items get ids from here up in the client container
MIN_SECONDS = 1
BOOK_FORMAT = "licentia.borrows"
BOOK_VERSION = 1

ACTIVE, RETURNED, EXPIRED = "active", "returned", "expired"
_LEN = struct.Struct(">I")


def _invalid(what: str) -> LicentiaError:
    return LicentiaError(ErrorCode.BORROW_INVALID, f"the borrow {what} does not verify or is malformed")


# ============================================================================ decisions


def decide(item: ProductItem, seconds: int, cap: int | None, now: int) -> int:
    """The end of a borrow of `item` for `seconds` from `now`, or a refusal.

    `cap` is the administrator's longest borrow (None: no cap of the server's own). The
    end never passes the item's own expiry."""
    if item.tmr_id is not None:
        raise LicentiaError(ErrorCode.BORROW_TMR, f"product {item.product_code} is a TMR item (TMR id {item.tmr_id})")
    if item.borrow_max <= 0:
        raise LicentiaError(ErrorCode.BORROW_NOT_ALLOWED,
                            f"product {item.product_code} has no borrow maximum: the vendor does not allow borrowing it")
    if item.units is not None:
        raise LicentiaError(ErrorCode.BORROW_NOT_ALLOWED,
                            f"product {item.product_code} counts units; units cannot be borrowed",
                            "use it over the network")
    if item.quantity == 0:
        raise LicentiaError(ErrorCode.BORROW_NOT_ALLOWED,
                            f"product {item.product_code} is a local-only license (quantity 0)",
                            "only network seats can be borrowed")
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < MIN_SECONDS:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"a borrow lasts at least {MIN_SECONDS} second")
    longest = item.borrow_max if cap is None else min(item.borrow_max, cap)
    if seconds > longest:
        who = "the item's borrow maximum" if cap is None or item.borrow_max <= cap else "the administrator's cap"
        raise LicentiaError(ErrorCode.BORROW_TOO_LONG,
                            f"{seconds} s is longer than {who}: at most {longest} s ({_human(longest)})")
    if item.expires_at is not None and item.expires_at <= now:
        raise LicentiaError(ErrorCode.EXPIRED, f"product {item.product_code} has expired")
    until = now + seconds
    return until if item.expires_at is None else min(until, item.expires_at)


def borrowed_item(item: ProductItem, until: int) -> ProductItem:
    """The item a borrowed seat is in the client container: the vendor's options, for that
    machine alone (quantity 0), ending with the borrow, never lent on."""
    expires = until if item.expires_at is None else min(item.expires_at, until)
    return replace(item, quantity=0, expires_at=expires, borrow_max=0)


def ended(until: int, now: int, clock_high_water: int = 0) -> bool:
    """Has a borrow ending at `until` ended? The container's clock counts too: a clock set
    back does not bring a borrowed seat back to life."""
    return max(now, clock_high_water) >= until


def client_item_id(firm: FirmEntry | None) -> int:
    """The id a new borrowed item gets in the client container (never one used before)."""
    if firm is None:
        return ITEM_BASE
    used = [i for i in (*firm.items, *firm.retired) if i >= ITEM_BASE]
    return max(used) + 1 if used else ITEM_BASE


def _human(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# ============================================================================ requests


@dataclass(frozen=True)
class BorrowRequest:
    borrow_id: str
    client_serial: str
    client_key: bytes
    client_item: int
    firm_code: int
    product_code: int
    seconds: int
    host: str
    user: str
    made_at: int


def make_request(req: BorrowRequest, client_sign_key: bytes) -> bytes:
    if signing_public_key(client_sign_key) != req.client_key:
        raise LicentiaError(ErrorCode.INTERNAL, "a borrow request must be signed by the key it names")
    body = req.client_key + env.encode({
        "borrow_id": req.borrow_id, "client_serial": req.client_serial, "client_item": req.client_item,
        "firm_code": req.firm_code, "product_code": req.product_code, "seconds": req.seconds,
        "host": req.host, "user": req.user, "made_at": req.made_at,
    })
    return sign_artifact(REQUEST_MAGIC, VERSION, body, client_sign_key)


def read_request(data: bytes) -> BorrowRequest:
    """Verify a request against the client key it names (proof of possession), then decode."""
    try:
        key, rest = open_self_signed(data, REQUEST_MAGIC, {VERSION}, what="borrow request")
        f = env.decode_map(rest, what="borrow request")
        return BorrowRequest(
            borrow_id=_text(f["borrow_id"], 64), client_serial=_text(f["client_serial"], 64), client_key=key,
            client_item=_int(f["client_item"]), firm_code=_int(f["firm_code"]), product_code=_int(f["product_code"]),
            seconds=_int(f["seconds"]), host=_text(f["host"], 256), user=_text(f["user"], 256),
            made_at=_int(f["made_at"]))
    except (InvalidArtifact, LicentiaError, KeyError, TypeError, ValueError):
        raise _invalid("request") from None


# ============================================================================ certificates


@dataclass(frozen=True)
class Certificate:
    borrow_id: str
    license: bytes  # the server item's vendor-signed license, verbatim
    firm_public_key: bytes  # as the server knows it (a client that knows the firm pins its own)
    server_serial: str
    server_host: str
    server_item: int
    client_serial: str
    client_key: bytes
    client_item: int
    borrowed_at: int
    until: int
    host: str
    user: str


def issue_certificate(cert: Certificate, server_sign_key: bytes) -> bytes:
    """Sign `cert` with the server container's key. Body: the license, length-prefixed (read
    and verified before anything else), then the rest."""
    rest = env.encode({
        "borrow_id": cert.borrow_id, "firm_public_key": cert.firm_public_key, "server_serial": cert.server_serial,
        "server_host": cert.server_host, "server_item": cert.server_item, "client_serial": cert.client_serial,
        "client_key": cert.client_key, "client_item": cert.client_item, "borrowed_at": cert.borrowed_at,
        "until": cert.until, "host": cert.host, "user": cert.user,
    })
    body = _LEN.pack(len(cert.license)) + cert.license + rest
    return sign_artifact(CERTIFICATE_MAGIC, VERSION, body, server_sign_key)


def embedded_firm_key(data: bytes) -> bytes:
    """The firm key a certificate carries (NOT verified: the caller verifies with it, or with
    the key it already pinned for the firm)."""
    try:
        _, body, _, _ = split_signed(data, CERTIFICATE_MAGIC, {VERSION}, what="borrow certificate")
        (n,) = _LEN.unpack_from(body)
        f = env.decode_map(body[_LEN.size + n:], what="borrow certificate")
        return _key(f["firm_public_key"])
    except (InvalidArtifact, LicentiaError, KeyError, TypeError, ValueError, struct.error):
        raise _invalid("certificate") from None


def read_certificate(data: bytes, firm_public_key: bytes) -> tuple[Certificate, License]:
    """Verify the chain firm -> license -> server container -> certificate; decode."""
    try:
        _, body, _, _ = split_signed(data, CERTIFICATE_MAGIC, {VERSION}, what="borrow certificate")
        (n,) = _LEN.unpack_from(body)
        license_bytes = body[_LEN.size:_LEN.size + n]
        if len(license_bytes) != n:
            raise InvalidArtifact()
        lic = read_license(license_bytes, firm_public_key)  # the firm signed it
        open_signed_artifact(data, CERTIFICATE_MAGIC, {VERSION}, lic.container_public_key,
                             what="borrow certificate")  # the container it names signed this
        f = env.decode_map(body[_LEN.size + n:], what="borrow certificate")
        cert = Certificate(
            borrow_id=_text(f["borrow_id"], 64), license=license_bytes, firm_public_key=_key(f["firm_public_key"]),
            server_serial=_text(f["server_serial"], 64), server_host=_text(f["server_host"], 256),
            server_item=_int(f["server_item"]), client_serial=_text(f["client_serial"], 64),
            client_key=_key(f["client_key"]), client_item=_int(f["client_item"]),
            borrowed_at=_int(f["borrowed_at"]), until=_int(f["until"]), host=_text(f["host"], 256),
            user=_text(f["user"], 256))
    except (InvalidArtifact, LicentiaError, KeyError, TypeError, ValueError, struct.error):
        raise _invalid("certificate") from None
    if cert.server_serial != str(lic.serial) or cert.server_item != lic.item_id or cert.until <= cert.borrowed_at:
        raise _invalid("certificate")
    return cert, lic


def peek_certificate(data: bytes) -> dict[str, Any]:
    """The fields of a certificate stored in a container (verified when it was loaded), for display."""
    try:
        _, body, _, _ = split_signed(data, CERTIFICATE_MAGIC, {VERSION}, what="borrow certificate")
        (n,) = _LEN.unpack_from(body)
        return env.decode_map(body[_LEN.size + n:], what="borrow certificate")
    except (InvalidArtifact, LicentiaError, struct.error):
        return {}


def is_certificate(data: bytes) -> bool:
    return data[:4] == CERTIFICATE_MAGIC


def borrowed_entry(data: bytes, firm_public_key: bytes, serial: str, container_public_key: bytes,
                   firm_code: int) -> tuple[int, ProductItem]:
    """The item id and item of a certificate stored in the container `serial`: it must be
    lent to this very container, by a license of this firm."""
    cert, lic = read_certificate(data, firm_public_key)
    if cert.client_serial != serial or cert.client_key != container_public_key:
        raise LicentiaError(ErrorCode.LICENSE_INVALID,
                            f"a borrowed seat was lent to container {cert.client_serial}, not {serial}")
    if lic.firm_code != firm_code:
        raise LicentiaError(ErrorCode.LICENSE_INVALID, "a borrowed seat names another firm")
    return cert.client_item, borrowed_item(lic.item, cert.until)


# ============================================================================ the client container


def import_certificate(content: ContainerContent, data: bytes, firm_public_key: bytes, now: int
                       ) -> tuple[ContainerContent, Certificate]:
    """`content` with the borrowed seat of certificate `data` added. A firm the container
    already knows keeps its pinned key; a new firm is pinned to `firm_public_key`."""
    serial = str(content.serial)
    known = content.firms.get(_certificate_firm(data))
    key = known.firm_public_key if known is not None else firm_public_key
    cert, lic = read_certificate(data, key)
    if cert.client_serial != serial or cert.client_key != signing_public_key(content.sign_key):
        raise LicentiaError(ErrorCode.BORROW_INVALID, f"this borrow was made for container {cert.client_serial}, "
                            f"not {serial}")
    if ended(cert.until, now, content.clock.high_water):
        raise LicentiaError(ErrorCode.BORROW_ENDED, f"borrow {cert.borrow_id} ended before it was imported")
    firm = known if known is not None else FirmEntry(lic.firm_code, key)
    for entry in firm.items.values():
        if is_certificate(entry.license) and peek_certificate(entry.license).get("borrow_id") == cert.borrow_id:
            return content, cert  # imported already: nothing changes
    if cert.client_item in firm.items or cert.client_item in firm.retired:
        raise LicentiaError(ErrorCode.BORROW_INVALID, f"item id {cert.client_item} is taken in container {serial}",
                            "make a new borrow request")
    entry = ItemEntry(cert.client_item, data, borrowed_item(lic.item, cert.until), ItemState())
    items = dict(firm.items)
    items[cert.client_item] = entry
    content = content.with_clock(content.clock.observe(now)).with_firm(replace(firm, items=items))
    return content, cert


def _certificate_firm(data: bytes) -> int:
    try:
        _, body, _, _ = split_signed(data, CERTIFICATE_MAGIC, {VERSION}, what="borrow certificate")
        (n,) = _LEN.unpack_from(body)
        _, license_body, _ = env.unpack(body[_LEN.size:_LEN.size + n], LICENSE_MAGIC, {LICENSE_VERSION},
                                        trailer=SIGNATURE_SIZE, what="license")
        return _int(env.decode_map(license_body, what="license")["firm_code"])  # which key to verify with
    except (InvalidArtifact, LicentiaError, KeyError, TypeError, ValueError, struct.error):
        raise _invalid("certificate") from None


def held(content: ContainerContent) -> list[tuple[int, ItemEntry, dict[str, Any]]]:
    """The borrowed seats in `content`: (firm, entry, certificate fields)."""
    return [(fc, e, peek_certificate(e.license)) for fc, e in content.entries() if is_certificate(e.license)]


def remove_borrowed(content: ContainerContent, borrow_id: str) -> tuple[ContainerContent, dict[str, Any] | None]:
    """`content` without the borrowed seat `borrow_id` (its item id retired); None when it holds none."""
    for fc, entry, fields in held(content):
        if fields.get("borrow_id") == borrow_id:
            firm = content.firms[fc]
            items = dict(firm.items)
            del items[entry.item_id]
            retired = dict(firm.retired)
            retired[entry.item_id] = entry.item.product_code
            return content.with_firm(replace(firm, items=items, retired=retired)), fields
    return content, None


# ============================================================================ returns


@dataclass(frozen=True)
class Return:
    borrow_id: str
    client_serial: str
    client_key: bytes
    returned_at: int


def make_return(ret: Return, client_sign_key: bytes) -> bytes:
    body = ret.client_key + env.encode({"borrow_id": ret.borrow_id, "client_serial": ret.client_serial,
                                        "returned_at": ret.returned_at})
    return sign_artifact(RETURN_MAGIC, VERSION, body, client_sign_key)


def read_return(data: bytes) -> Return:
    try:
        key, rest = open_self_signed(data, RETURN_MAGIC, {VERSION}, what="borrow return")
        f = env.decode_map(rest, what="borrow return")
        return Return(_text(f["borrow_id"], 64), _text(f["client_serial"], 64), key, _int(f["returned_at"]))
    except (InvalidArtifact, LicentiaError, KeyError, TypeError, ValueError):
        raise _invalid("return") from None


# ============================================================================ the server's book


@dataclass(frozen=True)
class Record:
    """A seat the server lent: counted taken while `state` is active."""

    borrow_id: str
    container: str
    firm: int
    product: int
    item: int
    client_serial: str
    client_key: bytes
    client_item: int
    host: str
    user: str
    borrowed_at: int
    until: int
    certificate: bytes
    state: str = ACTIVE
    ended_at: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"borrow_id": self.borrow_id, "container": self.container, "firm": self.firm, "product": self.product,
                "item": self.item, "client_serial": self.client_serial, "client_key": self.client_key.hex(),
                "client_item": self.client_item, "host": self.host, "user": self.user,
                "borrowed_at": self.borrowed_at, "until": self.until, "certificate": self.certificate.hex(),
                "state": self.state, "ended_at": self.ended_at}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        state = str(d["state"])
        if state not in (ACTIVE, RETURNED, EXPIRED):
            raise ValueError(state)
        return cls(str(d["borrow_id"]), str(d["container"]), int(d["firm"]), int(d["product"]), int(d["item"]),
                   str(d["client_serial"]), bytes.fromhex(d["client_key"]), int(d["client_item"]), str(d["host"]),
                   str(d["user"]), int(d["borrowed_at"]), int(d["until"]), bytes.fromhex(d["certificate"]), state,
                   None if d.get("ended_at") is None else int(d["ended_at"]))


def due(records: dict[str, Record], now: int) -> list[str]:
    """The active borrows whose time has ended at `now`."""
    return sorted(b for b, r in records.items() if r.state == ACTIVE and ended(r.until, now))


def expire(record: Record, now: int) -> Record:
    if record.state != ACTIVE:
        return record
    return replace(record, state=EXPIRED, ended_at=now)


def give_back(record: Record, ret: Return, now: int) -> tuple[Record, bool]:
    """The record after return receipt `ret`, and whether this return freed the seat.

    Only the client container the seat was lent to can return it, and only once: a second
    receipt (or one after the borrow ended) changes nothing."""
    if ret.borrow_id != record.borrow_id or ret.client_key != record.client_key \
            or ret.client_serial != record.client_serial:
        raise LicentiaError(ErrorCode.BORROW_INVALID,
                            f"this return was not signed by container {record.client_serial}, which holds the seat")
    if record.state != ACTIVE:
        return record, False
    return replace(record, state=RETURNED, ended_at=now), True


def book_to_doc(records: dict[str, Record]) -> dict[str, Any]:
    return {"format": BOOK_FORMAT, "version": BOOK_VERSION,
            "borrows": [r.to_dict() for _, r in sorted(records.items())]}


def book_from_doc(doc: Any) -> dict[str, Record]:
    if not isinstance(doc, dict) or doc.get("format") != BOOK_FORMAT or doc.get("version") != BOOK_VERSION:
        raise LicentiaError(ErrorCode.WRONG_CONTENT, "the borrow book is not a licentia.borrows file of version 1")
    try:
        records = [Record.from_dict(d) for d in doc["borrows"]]
    except (KeyError, TypeError, ValueError):
        raise LicentiaError(ErrorCode.WRONG_CONTENT, "the borrow book has malformed entries") from None
    return {r.borrow_id: r for r in records}


# ============================================================================ helpers


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected an integer")
    return value


def _text(value: Any, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise TypeError("expected text")
    return value


def _key(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) != KEY_SIZE:
        raise TypeError("expected a 32-byte key")
    return value


__all__ = [
    "ACTIVE", "CERTIFICATE_MAGIC", "EXPIRED", "ITEM_BASE", "RETURNED", "BorrowRequest", "Certificate", "Record",
    "Return", "book_from_doc", "book_to_doc", "borrowed_entry", "borrowed_item", "client_item_id", "decide", "due",
    "embedded_firm_key", "ended", "expire", "give_back", "held", "import_certificate", "is_certificate",
    "issue_certificate", "make_request", "make_return", "peek_certificate", "read_certificate", "read_request",
    "read_return", "remove_borrowed",
]
