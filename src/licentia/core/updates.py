"""The license update cycle: request file → update file → receipt file.

Everything that decides whether an update may change a container lives here; the
container back ends only load and store what this module returns.

- A **request** (magic LCRQ) is written by the container and signed with its own key: its
  serial, its public keys, and per firm the update counter and the items it holds.
- An **update** (LCUP) is written by the vendor for exactly one container and signed with
  the firm key. It carries the counter it expects and the counter it leaves, a signed time,
  and operations sealed to the container's box key (so hidden data and licenses travel
  encrypted). Each update applies once and in order: a replay is 229, a gap is 228.
- A **receipt** (LCRC) is written by the container after it applied an update, signed with
  its key, naming the new counter, the digest of the update and the items it now holds.

The container pins a firm's public key at that firm's first update; later updates must
be signed by the same key.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from licentia.core.content import ContainerContent, ContainerKeys, FirmEntry, ItemEntry
from licentia.core.licenses import License, check_license_for, issue_license, read_license
from licentia.crypto import InvalidArtifact, digest, seal_to, signing_public_key
from licentia.crypto.artifacts import (
    open_self_signed,
    sign_artifact,
    sign_artifact_with,
    split_signed,
)
from licentia.crypto.recipes import verify
from licentia.model import (
    ContainerSerial,
    ErrorCode,
    Fingerprint,
    ItemState,
    LicentiaError,
    ProductItem,
    envelope as env,
)

REQUEST_MAGIC, UPDATE_MAGIC, RECEIPT_MAGIC = b"LCRQ", b"LCUP", b"LCRC"
VERSION = 1
# Fixed prefix of an update body, readable before verification to choose the key:
# firm code, serial mask, serial number, firm public key.
_UPDATE_PREFIX = struct.Struct(">IBI32s")
# Fixed prefix of request and receipt bodies: the container's signing public key.
_CONTAINER_PREFIX = struct.Struct(">32s")


# -- requests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemSummary:
    item_id: int
    product_code: int
    digest: bytes


@dataclass(frozen=True)
class Request:
    serial: ContainerSerial
    firm_code: int
    update_counter: int
    sign_public: bytes
    box_public: bytes
    firm_public_key: bytes | None  # None until the firm's first update
    items: tuple[ItemSummary, ...]
    created_at: int
    environment: dict[str, Any] = field(default_factory=dict)
    retired_item_ids: tuple[int, ...] = ()  # ids of removed items, never to be given again
    clock_set_back: bool = False  # the container saw its clock set back: it asks for signed time

    def next_item_id(self) -> int:
        """The id a new item of this firm gets: one above every id the container ever held."""
        return max((*(s.item_id for s in self.items), *self.retired_item_ids), default=0) + 1


def request_environment(fingerprint: Fingerprint, hostname: str | None, firm_code: int) -> dict[str, Any]:
    """What a request says about the machine its container is on (signed with the request).

    The environment kind and hypervisor, the host name (lower-cased) and the machine id
    (systemd's /etc/machine-id) as a hash salted with the firm code: a vendor can tell "the
    same machine" without learning the id, and two vendors cannot correlate their
    customers' machines. Every request, file or online, carries the same fields.
    """
    env: dict[str, Any] = {"kind": fingerprint.environment.kind.value, "hypervisor": fingerprint.environment.hypervisor}
    if hostname and hostname.strip():
        env["hostname"] = hostname.strip().lower()
    machine_id = fingerprint.by_name().get("machine-id")
    if machine_id is not None and machine_id.value:
        salted = b"licentia machine-id\x00" + str(firm_code).encode() + b"\x00" + machine_id.value
        env["machine_id"] = digest(salted).hex()[:32]
    return env


def make_request(
    content: ContainerContent,
    firm_code: int,
    now: int,
    environment: dict[str, Any],
    keys: ContainerKeys | None = None,
) -> bytes:
    keys = keys or content.software_keys()
    firm = content.firms.get(firm_code)
    sign_public = keys.sign_public
    body = {
        "serial": str(content.serial),
        "firm_code": firm_code,
        "update_counter": firm.update_counter if firm else 0,
        "box_public": keys.box_public,
        "firm_public_key": firm.firm_public_key if firm else None,
        "items": _summaries(firm),
        "created_at": now,
        "environment": environment,
        "retired_item_ids": sorted(firm.retired) if firm else [],
        "clock_set_back": content.clock.manipulated,
    }
    payload = _CONTAINER_PREFIX.pack(sign_public) + env.encode(body)
    return sign_artifact_with(REQUEST_MAGIC, VERSION, payload, keys.sign)


def read_request(data: bytes) -> Request:
    """Verify a request's self-signature (proof it came from the container) and decode it."""
    body = _open_container_signed(data, REQUEST_MAGIC, "request file")
    sign_public, fields = body
    try:
        return Request(
            serial=ContainerSerial.parse(fields["serial"]),
            firm_code=int(fields["firm_code"]),
            update_counter=int(fields["update_counter"]),
            sign_public=sign_public,
            box_public=_b(fields["box_public"]),
            firm_public_key=None if fields["firm_public_key"] is None else _b(fields["firm_public_key"]),
            items=tuple(ItemSummary(int(i["item_id"]), int(i["product_code"]), _b(i["digest"])) for i in fields["items"]),
            created_at=int(fields["created_at"]),
            environment=dict(fields.get("environment") or {}),
            retired_item_ids=tuple(int(i) for i in fields.get("retired_item_ids") or ()),
            clock_set_back=fields.get("clock_set_back") is True,
        )
    except (KeyError, TypeError, ValueError, LicentiaError):
        raise _invalid("request file", "its fields are malformed") from None


# -- updates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PutItem:
    """Add an item, or replace the item with the same id (its usage state starts afresh)."""

    item_id: int
    item: ProductItem


@dataclass(frozen=True)
class RemoveItem:
    item_id: int


@dataclass(frozen=True)
class LockFirm:
    """Lock every item of the firm in this container (a lost or stolen container)."""


@dataclass(frozen=True)
class UnlockFirm:
    pass


@dataclass(frozen=True)
class RenewCheckpoint:
    """Restart the checkpoint period of every checkpoint item of the firm."""


@dataclass(frozen=True)
class SetFirmText:
    text: str


Operation = PutItem | RemoveItem | LockFirm | UnlockFirm | RenewCheckpoint | SetFirmText


def issue_update(
    request: Request,
    firm_code: int,
    firm_private_key: bytes,
    operations: Sequence[Operation],
    now: int,
) -> bytes:
    """The update file that moves `request`'s container one step forward for `firm_code`."""
    return issue_update_with_licenses(request, firm_code, firm_private_key, operations, now)[0]


def issue_update_with_licenses(
    request: Request,
    firm_code: int,
    firm_private_key: bytes,
    operations: Sequence[Operation],
    now: int,
) -> tuple[bytes, tuple[bytes, ...]]:
    """Like `issue_update`, also returning the licenses it puts (sealed inside the update)."""
    if request.firm_code != firm_code:
        raise LicentiaError(
            ErrorCode.UPDATE_WRONG_FIRM,
            f"the request is for firm {request.firm_code}, not {firm_code}",
        )
    firm_public = signing_public_key(firm_private_key)
    if request.firm_public_key is not None and request.firm_public_key != firm_public:
        raise LicentiaError(
            ErrorCode.UPDATE_WRONG_FIRM,
            f"the container already trusts another key for firm {firm_code}",
        )
    ops: list[dict[str, Any]] = []
    licenses: list[bytes] = []
    for op in operations:
        if isinstance(op, PutItem):
            lic = License(request.serial, request.sign_public, firm_code, op.item_id, op.item, now)
            licenses.append(issue_license(lic, firm_private_key))
            ops.append({"op": "put", "license": licenses[-1]})
        elif isinstance(op, RemoveItem):
            ops.append({"op": "remove", "item_id": op.item_id})
        elif isinstance(op, LockFirm):
            ops.append({"op": "lock"})
        elif isinstance(op, UnlockFirm):
            ops.append({"op": "unlock"})
        elif isinstance(op, RenewCheckpoint):
            ops.append({"op": "renew-checkpoint"})
        else:
            ops.append({"op": "text", "text": op.text})
    sealed = seal_to(request.box_public, env.encode(ops), str(request.serial).encode())
    body = {
        "counter_from": request.update_counter,
        "counter_to": request.update_counter + 1,
        "issued_at": now,
        "operations": sealed,
    }
    prefix = _UPDATE_PREFIX.pack(firm_code, request.serial.mask, request.serial.number, firm_public)
    return sign_artifact(UPDATE_MAGIC, VERSION, prefix + env.encode(body), firm_private_key), tuple(licenses)


@dataclass(frozen=True)
class UpdateHeader:
    """What can be read from an update file without the container: for display and routing."""

    firm_code: int
    serial: ContainerSerial
    firm_public_key: bytes


def peek_update(data: bytes) -> UpdateHeader:
    _, body, _, _ = split_signed(data, UPDATE_MAGIC, {VERSION}, what="update file")
    if len(body) < _UPDATE_PREFIX.size:
        raise _invalid("update file", "it is too short")
    firm_code, mask, number, firm_public = _UPDATE_PREFIX.unpack_from(body)
    try:
        serial = ContainerSerial(mask, number)
    except LicentiaError:
        raise _invalid("update file", "it names no valid container") from None
    return UpdateHeader(firm_code, serial, firm_public)


@dataclass(frozen=True)
class Applied:
    content: ContainerContent
    receipt: bytes
    firm_code: int
    counter: int
    changes: tuple[str, ...]


def apply_update(
    content: ContainerContent,
    data: bytes,
    now: int,
    *,
    in_vm: bool,
    keys: ContainerKeys | None = None,
) -> Applied:
    """Check an update against the container and return the new content and its receipt.

    Nothing is changed on refusal; the caller persists `Applied.content` atomically.
    """
    keys = keys or content.software_keys()
    header = peek_update(data)
    if header.serial != content.serial:
        raise LicentiaError(
            ErrorCode.UPDATE_WRONG_CONTAINER,
            f"the update is for container {header.serial}, this is {content.serial}",
        )
    firm = content.firms.get(header.firm_code)
    if firm is not None and firm.firm_public_key != header.firm_public_key:
        raise LicentiaError(
            ErrorCode.UPDATE_WRONG_FIRM,
            f"the update is not signed by the key this container trusts for firm {header.firm_code}",
        )
    _, body, signed, signature = split_signed(data, UPDATE_MAGIC, {VERSION}, what="update file")
    try:
        verify(header.firm_public_key, signed, signature)
    except InvalidArtifact:
        raise _invalid("update file", "its signature does not verify (altered or forged)") from None
    fields = env.decode_map(body[_UPDATE_PREFIX.size :], what="update file")
    try:
        counter_from = int(fields["counter_from"])
        counter_to = int(fields["counter_to"])
        issued_at = int(fields["issued_at"])
        sealed = _b(fields["operations"])
    except (KeyError, TypeError, ValueError):
        raise _invalid("update file", "its fields are malformed") from None
    current = firm.update_counter if firm else 0
    if counter_to != counter_from + 1:
        raise _invalid("update file", "its counters are inconsistent")
    if counter_to <= current:
        raise LicentiaError(
            ErrorCode.UPDATE_TOO_OLD,
            f"this update (step {counter_to}) was already applied; the container is at step {current}",
        )
    if counter_from > current:
        raise LicentiaError(
            ErrorCode.UPDATE_TOO_NEW,
            f"this update expects step {counter_from} but the container is at step {current}; an earlier update is missing",
        )
    try:
        ops = env.decode(keys.open_sealed(sealed, str(content.serial).encode()), what="update file")
    except InvalidArtifact:
        raise _invalid("update file", "its contents cannot be opened by this container") from None
    if not isinstance(ops, list):
        raise _invalid("update file", "its operations are malformed")

    sign_public = keys.sign_public
    entry = firm or FirmEntry(header.firm_code, header.firm_public_key)
    items = dict(entry.items)
    retired = dict(entry.retired)
    text = entry.text
    changes: list[str] = []
    for op in ops:
        if not isinstance(op, dict):
            raise _invalid("update file", "an operation is malformed")
        kind = op.get("op")
        if kind == "put":
            license_bytes = _b(op.get("license"))
            lic = read_license(license_bytes, header.firm_public_key)
            check_license_for(lic, content.serial, sign_public, header.firm_code)
            if in_vm and not lic.item.vm_allowed:
                raise LicentiaError(
                    ErrorCode.VM_NOT_ALLOWED,
                    f"product {lic.item.product_code} may not be used in a virtual machine and this is one",
                )
            was = retired.get(lic.item_id)
            if was is not None and was != lic.item.product_code:
                raise LicentiaError(
                    ErrorCode.UPDATE_FAILED,
                    f"the update gives item id {lic.item_id} to product {lic.item.product_code}, but that id was "
                    f"product {was}'s, which was removed; item ids are never reused",
                    "ask the vendor for an update made from a fresh request (it gives the new item a new id)",
                )
            retired.pop(lic.item_id, None)
            old = items.get(lic.item_id)
            state = ItemState.initial(lic.item, now)
            if old is not None:
                state = state.with_(text=old.state.text, user_data=old.state.user_data, locked=old.state.locked)
            items[lic.item_id] = ItemEntry(lic.item_id, license_bytes, lic.item, state)
            changes.append(f"{'changed' if old else 'added'} item {lic.item_id} (product {lic.item.product_code})")
        elif kind == "remove":
            item_id = int(op.get("item_id", -1))
            removed = items.pop(item_id, None)
            if removed is None:
                raise LicentiaError(ErrorCode.ENTRY_NOT_FOUND, f"the update removes item {item_id}, which this container does not hold")
            retired[item_id] = removed.item.product_code
            changes.append(f"removed item {item_id}")
        elif kind in ("lock", "unlock"):
            for item_id, e in items.items():
                items[item_id] = replace(e, state=e.state.with_(locked=kind == "lock"))
            changes.append(f"{kind}ed all items of firm {header.firm_code}")
        elif kind == "renew-checkpoint":
            for item_id, e in items.items():
                if e.item.checkpoint_period is not None:
                    items[item_id] = replace(e, state=e.state.with_(checkpoint_at=max(now, issued_at)))
            changes.append("renewed checkpoint licenses")
        elif kind == "text":
            text = op.get("text", "")
            if not isinstance(text, str):
                raise _invalid("update file", "its firm text is not text")
            changes.append("set the firm text")
        else:  # named without repr: a value may nest 1,000 deep
            named = repr(kind[:64]) if isinstance(kind, str) else f"of type {type(kind).__name__}"
            raise _invalid("update file", f"it holds an unknown operation {named}")

    new_firm = FirmEntry(header.firm_code, header.firm_public_key, counter_to, text, items, retired)
    new_content = content.with_firm(new_firm).with_clock(content.clock.heal(issued_at, now).observe(now))
    receipt = _make_receipt(new_content, new_firm, digest(data), now, keys)
    return Applied(new_content, receipt, header.firm_code, counter_to, tuple(changes))


# -- receipts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Receipt:
    serial: ContainerSerial
    firm_code: int
    update_counter: int
    update_digest: bytes
    items: tuple[ItemSummary, ...]
    applied_at: int
    sign_public: bytes


def _make_receipt(
    content: ContainerContent, firm: FirmEntry, update_digest: bytes, now: int, keys: ContainerKeys
) -> bytes:
    sign_public = keys.sign_public
    body = {
        "serial": str(content.serial),
        "firm_code": firm.firm_code,
        "update_counter": firm.update_counter,
        "update_digest": update_digest,
        "items": _summaries(firm),
        "applied_at": now,
    }
    payload = _CONTAINER_PREFIX.pack(sign_public) + env.encode(body)
    return sign_artifact_with(RECEIPT_MAGIC, VERSION, payload, keys.sign)


def read_receipt(data: bytes, expected_sign_public: bytes | None = None) -> Receipt:
    sign_public, fields = _open_container_signed(data, RECEIPT_MAGIC, "receipt file")
    if expected_sign_public is not None and sign_public != expected_sign_public:
        raise _invalid("receipt file", "it was signed by another container")
    try:
        return Receipt(
            serial=ContainerSerial.parse(fields["serial"]),
            firm_code=int(fields["firm_code"]),
            update_counter=int(fields["update_counter"]),
            update_digest=_b(fields["update_digest"]),
            items=tuple(ItemSummary(int(i["item_id"]), int(i["product_code"]), _b(i["digest"])) for i in fields["items"]),
            applied_at=int(fields["applied_at"]),
            sign_public=sign_public,
        )
    except (KeyError, TypeError, ValueError, LicentiaError):
        raise _invalid("receipt file", "its fields are malformed") from None


# -- helpers -------------------------------------------------------------------------------


def _summaries(firm: FirmEntry | None) -> list[dict[str, Any]]:
    if firm is None:
        return []
    return [
        {"item_id": e.item_id, "product_code": e.item.product_code, "digest": digest(e.license)}
        for e in firm.items.values()
    ]


def _open_container_signed(data: bytes, magic: bytes, what: str) -> tuple[bytes, dict[str, Any]]:
    try:
        sign_public, rest = open_self_signed(data, magic, {VERSION}, what=what)
    except InvalidArtifact:
        raise _invalid(what, "its signature does not verify (altered, or too short)") from None
    return sign_public, env.decode_map(rest, what=what)


def _invalid(what: str, why: str) -> LicentiaError:
    return LicentiaError(ErrorCode.LICENSE_INVALID, f"the {what} is invalid: {why}")


def _b(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError("expected bytes")
    return value
