"""The group update of a TMR license's three constituents: group request → group update → group receipt.

A TMR license exists three times, once in each upstream's constituent container, and the
three move together:

- A **group request** (magic LCGR) holds the three containers' own request files (each
  still signed by its container; nothing else is signed). It is refused unless they are
  three distinct containers asking for the same firm.
- A **group update** (LCGU) is written by the vendor and signed with the firm key: one
  ordinary update file (LCUP) per constituent, each putting the same item under one TMR id,
  and in the clear per part the container, its signing key, the item id, the step the part
  leaves the container at and the digest of the license it puts. Each upstream applies the
  part for the container it holds with the ordinary update checks (`updates.apply_update`):
  a part never applies to another container.
- A **group receipt** (LCGC) holds the receipts the three upstreams wrote. The vendor checks
  it against the group update: every constituent confirmed at its part's step, holding the
  TMR item; a missing or mismatched part is reported by its container.

Pure: bytes in, bytes or decisions out; the clock is a parameter.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

from licentia.core.updates import (
    PutItem,
    Receipt,
    Request,
    issue_update_with_licenses,
    peek_update,
    read_receipt,
    read_request,
)
from licentia.crypto import InvalidArtifact, digest, signing_public_key
from licentia.crypto.artifacts import sign_artifact, split_signed
from licentia.crypto.recipes import verify
from licentia.model import ContainerSerial, ErrorCode, LicentiaError, ProductItem, envelope as env

GROUP_REQUEST_MAGIC, GROUP_UPDATE_MAGIC, GROUP_RECEIPT_MAGIC = b"LCGR", b"LCGU", b"LCGC"
VERSION = 1
CONSTITUENTS = 3
# Fixed prefix of a group update body, readable before verification: firm code, firm public key.
_GROUP_PREFIX = struct.Struct(">I32s")


# -- group requests ------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupRequest:
    firm_code: int
    requests: tuple[Request, ...]


def make_group_request(request_files: Sequence[bytes]) -> bytes:
    """The group request of three constituent containers' request files (each verified)."""
    _check_constituents([read_request(data) for data in request_files])
    return env.pack(GROUP_REQUEST_MAGIC, VERSION, env.encode({"requests": list(request_files)}))


def read_group_request(data: bytes) -> GroupRequest:
    _, body, _ = env.unpack(data, GROUP_REQUEST_MAGIC, {VERSION}, what="group request file")
    fields = env.decode_map(body, what="group request file")
    raw = fields.get("requests")
    if not isinstance(raw, list) or not all(isinstance(r, bytes) for r in raw):
        raise _invalid("group request file", "its fields are malformed")
    requests = [read_request(r) for r in raw]
    _check_constituents(requests)
    return GroupRequest(requests[0].firm_code, tuple(requests))


def _check_constituents(requests: Sequence[Request]) -> None:
    if len(requests) != CONSTITUENTS:
        raise LicentiaError(
            ErrorCode.TMR_GROUP_INVALID,
            f"a TMR group holds the requests of three constituent containers, not {len(requests)}",
        )
    firms = sorted({r.firm_code for r in requests})
    if len(firms) != 1:
        raise LicentiaError(
            ErrorCode.TMR_GROUP_INVALID, f"the three requests ask for different firms: {', '.join(map(str, firms))}"
        )
    serials = [str(r.serial) for r in requests]
    if len(set(serials)) != CONSTITUENTS or len({r.sign_public for r in requests}) != CONSTITUENTS:
        raise LicentiaError(
            ErrorCode.TMR_GROUP_INVALID,
            f"the three constituents must be three different containers, not {', '.join(serials)}",
        )


def tmr_item(item: ProductItem, tmr_id: int, requests: Sequence[Request]) -> ProductItem:
    """`item` as one TMR license: under `tmr_id`, naming the three constituent containers
    (serial and container public key, in serial order) that the vendor signs it for, so a
    program accepts a proof from any of them and from no other container."""
    _check_constituents(requests)
    named = tuple(sorted((str(r.serial), r.sign_public) for r in requests))
    return replace(item, tmr_id=tmr_id, tmr_constituents=named)


# -- group updates -------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupPart:
    serial: ContainerSerial
    sign_public: bytes
    item_id: int
    counter_to: int
    license_digest: bytes
    update: bytes  # an ordinary update file (LCUP) for this container alone


@dataclass(frozen=True)
class GroupUpdate:
    firm_code: int
    firm_public_key: bytes
    tmr_id: int
    product_code: int
    issued_at: int
    parts: tuple[GroupPart, ...]

    def serials(self) -> list[str]:
        return [str(p.serial) for p in self.parts]


def issue_group_update(
    group: GroupRequest,
    firm_code: int,
    firm_private_key: bytes,
    item: ProductItem,
    tmr_id: int,
    now: int,
    *,
    item_id: int | None = None,
) -> bytes:
    """One group update: the same item under `tmr_id` for each of the group's containers,
    naming the three (`tmr_item`)."""
    item = tmr_item(item, tmr_id, group.requests)
    parts: list[tuple[Request, int, bytes, bytes]] = []
    for request in group.requests:
        iid = item_id if item_id is not None else request.next_item_id()
        update, (license_bytes,) = issue_update_with_licenses(
            request, firm_code, firm_private_key, [PutItem(iid, item)], now
        )
        parts.append((request, iid, update, license_bytes))
    return sign_group_update(firm_code, firm_private_key, tmr_id, item.product_code, now, parts)


def sign_group_update(
    firm_code: int,
    firm_private_key: bytes,
    tmr_id: int,
    product_code: int,
    now: int,
    parts: Sequence[tuple[Request, int, bytes, bytes]],
) -> bytes:
    """The group update of three updates already issued, one per constituent: (its request,
    the TMR item's id in it, the update file, the TMR item's license in that update). Central
    issues each part as the container's next update (with whatever else is due to it)."""
    _check_constituents([request for request, _, _, _ in parts])
    body = {"tmr_id": tmr_id, "product_code": product_code, "issued_at": now, "parts": [
        {"serial": str(request.serial), "sign_public": request.sign_public, "item_id": iid,
         "counter_to": request.update_counter + 1, "license_digest": digest(license_bytes), "update": update}
        for request, iid, update, license_bytes in parts
    ]}
    prefix = _GROUP_PREFIX.pack(firm_code, signing_public_key(firm_private_key))
    return sign_artifact(GROUP_UPDATE_MAGIC, VERSION, prefix + env.encode(body), firm_private_key)


def is_group_request(data: bytes) -> bool:
    return data[: len(GROUP_REQUEST_MAGIC)] == GROUP_REQUEST_MAGIC


def is_group_receipt(data: bytes) -> bool:
    return data[: len(GROUP_RECEIPT_MAGIC)] == GROUP_RECEIPT_MAGIC


def read_group_update(data: bytes, firm_public_key: bytes | None = None) -> GroupUpdate:
    """Verify a group update's firm signature (and, given, that it is this firm key's) and decode it."""
    what = "group update file"
    _, body, signed, signature = split_signed(data, GROUP_UPDATE_MAGIC, {VERSION}, what=what)
    if len(body) < _GROUP_PREFIX.size:
        raise _invalid(what, "it is too short")
    firm_code, key = _GROUP_PREFIX.unpack_from(body)
    if firm_public_key is not None and key != firm_public_key:
        raise LicentiaError(ErrorCode.UPDATE_WRONG_FIRM, f"the group update is not signed by firm {firm_code}'s key")
    try:
        verify(key, signed, signature)
    except InvalidArtifact:
        raise _invalid(what, "its signature does not verify (altered or forged)") from None
    fields = env.decode_map(body[_GROUP_PREFIX.size :], what=what)
    try:
        parts = tuple(
            GroupPart(
                serial=ContainerSerial.parse(p["serial"]),
                sign_public=_b(p["sign_public"]),
                item_id=int(p["item_id"]),
                counter_to=int(p["counter_to"]),
                license_digest=_b(p["license_digest"]),
                update=_b(p["update"]),
            )
            for p in fields["parts"]
        )
        group = GroupUpdate(firm_code, key, int(fields["tmr_id"]), int(fields["product_code"]),
                            int(fields["issued_at"]), parts)
    except (KeyError, TypeError, ValueError, LicentiaError):
        raise _invalid(what, "its fields are malformed") from None
    if len(parts) != CONSTITUENTS or len({p.serial for p in parts}) != CONSTITUENTS:
        raise _invalid(what, "it does not hold three parts for three containers")
    for part in parts:
        header = peek_update(part.update)
        if header.serial != part.serial or header.firm_code != firm_code or header.firm_public_key != key:
            raise _invalid(what, f"its part for container {part.serial} is an update for another container or firm")
    return group


def part_for(group: GroupUpdate, held: Collection[ContainerSerial]) -> GroupPart:
    """The part for the one constituent container among `held`, or a refusal saying why."""
    found = [p for p in group.parts if p.serial in held]
    if not found:
        raise LicentiaError(
            ErrorCode.TMR_GROUP_NO_PART,
            f"this group update (TMR license {group.tmr_id}) is for containers {', '.join(group.serials())}; "
            "none of them is here",
        )
    if len(found) > 1:
        raise LicentiaError(
            ErrorCode.TMR_GROUP_INVALID,
            f"containers {', '.join(str(p.serial) for p in found)} are all here; "
            "name the one to update (each upstream holds one constituent)",
        )
    return found[0]


# -- group receipts ------------------------------------------------------------------------


def make_group_receipt(receipt_files: Sequence[bytes]) -> bytes:
    """The group receipt of the upstreams' receipt files (each verified; checked by the vendor)."""
    if not receipt_files:
        raise LicentiaError(ErrorCode.TMR_GROUP_INVALID, "a group receipt needs the constituents' receipt files")
    for data in receipt_files:
        read_receipt(data)
    return env.pack(GROUP_RECEIPT_MAGIC, VERSION, env.encode({"receipts": list(receipt_files)}))


def read_group_receipt(data: bytes) -> tuple[Receipt, ...]:
    _, body, _ = env.unpack(data, GROUP_RECEIPT_MAGIC, {VERSION}, what="group receipt file")
    fields = env.decode_map(body, what="group receipt file")
    raw = fields.get("receipts")
    if not isinstance(raw, list) or not all(isinstance(r, bytes) for r in raw):
        raise _invalid("group receipt file", "its fields are malformed")
    return tuple(read_receipt(r) for r in raw)


@dataclass(frozen=True)
class GroupCheck:
    tmr_id: int
    confirmed: tuple[str, ...]  # "container S at step N"
    problems: tuple[str, ...]  # one line per missing or mismatched part, naming its container

    @property
    def complete(self) -> bool:
        return not self.problems


def check_group_receipt(group: GroupUpdate, receipts: Sequence[Receipt]) -> GroupCheck:
    """Whether every constituent applied its part of `group`: its step, its update, the TMR item."""
    problems: list[str] = []
    by_serial: dict[ContainerSerial, Receipt] = {}
    ours = {p.serial for p in group.parts}
    for rc in receipts:
        if rc.serial not in ours:
            problems.append(f"container {rc.serial}: not a constituent of TMR license {group.tmr_id}'s group update")
        elif rc.serial in by_serial:
            problems.append(f"container {rc.serial}: two receipts")
        else:
            by_serial[rc.serial] = rc
    confirmed: list[str] = []
    for part in group.parts:
        name = f"container {part.serial}"
        r = by_serial.get(part.serial)
        if r is None:
            problems.append(f"{name}: no receipt (its upstream has not applied its part, or its receipt is missing)")
        elif r.sign_public != part.sign_public:
            problems.append(f"{name}: the receipt was not signed by that container")
        elif r.firm_code != group.firm_code:
            problems.append(f"{name}: the receipt is for firm {r.firm_code}, not {group.firm_code}")
        elif r.update_counter != part.counter_to or r.update_digest != digest(part.update):
            problems.append(
                f"{name}: the receipt is for step {r.update_counter}"
                + ("" if r.update_counter != part.counter_to else " of another update")
                + f"; its part of this group update is step {part.counter_to}"
            )
        elif not any(i.item_id == part.item_id and i.digest == part.license_digest for i in r.items):
            problems.append(f"{name}: it does not hold TMR license {group.tmr_id}'s item (item {part.item_id})")
        else:
            confirmed.append(f"{name} at step {part.counter_to}, item {part.item_id}")
    return GroupCheck(group.tmr_id, tuple(confirmed), tuple(problems))


def _invalid(what: str, why: str) -> LicentiaError:
    return LicentiaError(ErrorCode.LICENSE_INVALID, f"the {what} is invalid: {why}")


def _b(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError("expected bytes")
    return value
