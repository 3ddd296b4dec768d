"""A container's content as stored: rebuilt with every license verified again, the
vendor's licenses (`licentia.core.licenses`) and seats borrowed from a network server
(`licentia.core.borrow`)."""

from __future__ import annotations

from typing import Any

from licentia.core.borrow import borrowed_entry, is_certificate
from licentia.core.clock import VirtualClock
from licentia.core.content import ContainerContent, FirmEntry, ItemEntry
from licentia.core.licenses import check_license_for, read_license
from licentia.model import ContainerSerial, ErrorCode, ItemState, LicentiaError


def load_content(data: dict[str, Any], container_public_key: bytes) -> ContainerContent:
    """Rebuild content from its stored form, verifying every license again."""
    try:
        serial = ContainerSerial.parse(data["serial"])
        firms: dict[int, FirmEntry] = {}
        for f in data["firms"]:
            firm_code = int(f["firm_code"])
            firm_key = _bytes(f["firm_public_key"])
            items: dict[int, ItemEntry] = {}
            for raw in f["items"]:
                raw_license = _bytes(raw["license"])
                if is_certificate(raw_license):  # a seat borrowed from a network server
                    item_id, item = borrowed_entry(raw_license, firm_key, str(serial), container_public_key, firm_code)
                    items[item_id] = ItemEntry(item_id, raw_license, item, ItemState.from_dict(raw["state"]))
                    continue
                lic = read_license(raw_license, firm_key)
                check_license_for(lic, serial, container_public_key, firm_code)
                items[lic.item_id] = ItemEntry(
                    lic.item_id, raw_license, lic.item, ItemState.from_dict(raw["state"])
                )
            retired = {int(i): int(product) for i, product in f.get("retired", ())}
            firms[firm_code] = FirmEntry(
                firm_code, firm_key, int(f["update_counter"]), str(f["text"]), items, retired
            )
        return ContainerContent(
            serial=serial,
            created_at=int(data["created_at"]),
            sign_key=_bytes(data["sign_key"]),
            box_key=_bytes(data["box_key"]),
            clock=VirtualClock.from_dict(data["clock"]),
            firms=firms,
        )
    except (KeyError, TypeError, ValueError):
        raise LicentiaError(ErrorCode.LICENSE_INVALID, "the container's contents are malformed") from None


def _bytes(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError("expected bytes")
    return value


__all__ = ["load_content"]
