"""What a container holds once opened: its keys, virtual clock, firm items and product items.

Every container kind (soft file, token, cloud, virtual) presents its contents as a
`ContainerContent`; the update cycle and item evaluation work on it without knowing where
it is stored. Product items arrive as vendor-signed licenses (`licentia.core.licenses`),
which are kept verbatim so any reader can verify them again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from licentia.core.clock import VirtualClock
from licentia.crypto import box_public_key, open_sealed, sign, signing_public_key
from licentia.model import ContainerSerial, ErrorCode, ItemState, LicentiaError, ProductItem


class ContainerKeys(Protocol):
    """The container's own keys, wherever they live (in the sealed file, inside a token).

    Ed25519 signs requests, receipts and answers to a program's challenge; X25519 opens
    the operations of update files sealed to the container.
    """

    @property
    def sign_public(self) -> bytes: ...

    @property
    def box_public(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...

    def open_sealed(self, sealed: bytes, aad: bytes) -> bytes: ...


@dataclass(frozen=True)
class SoftwareKeys:
    """Keys held as bytes (a soft container keeps them inside its sealed state)."""

    sign_key: bytes = field(repr=False)
    box_key: bytes = field(repr=False)

    @property
    def sign_public(self) -> bytes:
        return signing_public_key(self.sign_key)

    @property
    def box_public(self) -> bytes:
        return box_public_key(self.box_key)

    def sign(self, data: bytes) -> bytes:
        return sign(self.sign_key, data)

    def open_sealed(self, sealed: bytes, aad: bytes) -> bytes:
        return open_sealed(self.box_key, sealed, aad)


@dataclass(frozen=True)
class ItemEntry:
    item_id: int
    license: bytes  # vendor-signed license artifact, verbatim
    item: ProductItem  # decoded from `license` after its signature verified
    state: ItemState


@dataclass(frozen=True)
class FirmEntry:
    firm_code: int
    firm_public_key: bytes  # pinned at the first update of this firm
    update_counter: int = 0
    text: str = ""
    items: dict[int, ItemEntry] = field(default_factory=dict)
    # item id -> product code of every item ever removed: an id names one product for the
    # container's whole life, so usage-log entries and receipts never become ambiguous
    retired: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerContent:
    serial: ContainerSerial
    created_at: int
    sign_key: bytes = field(repr=False)  # Ed25519 private key; b"" when it lives in a token
    box_key: bytes = field(repr=False)  # X25519 private key (updates are sealed to it)
    clock: VirtualClock = field(default_factory=VirtualClock)
    firms: dict[int, FirmEntry] = field(default_factory=dict)

    def software_keys(self) -> SoftwareKeys:
        """The keys kept in the content itself (soft containers)."""
        if not self.sign_key:
            raise LicentiaError(ErrorCode.INTERNAL, "this container's signing key lives in a token")
        return SoftwareKeys(self.sign_key, self.box_key)

    def firm(self, firm_code: int) -> FirmEntry:
        try:
            return self.firms[firm_code]
        except KeyError:
            raise LicentiaError(
                ErrorCode.ENTRY_NOT_FOUND,
                f"container {self.serial} holds no licenses of firm {firm_code}",
            ) from None

    def with_firm(self, entry: FirmEntry) -> ContainerContent:
        firms = dict(self.firms)
        firms[entry.firm_code] = entry
        return replace(self, firms=firms)

    def with_item_state(self, firm_code: int, item_id: int, state: ItemState) -> ContainerContent:
        firm = self.firm(firm_code)
        items = dict(firm.items)
        items[item_id] = replace(items[item_id], state=state)
        return self.with_firm(replace(firm, items=items))

    def with_clock(self, clock: VirtualClock) -> ContainerContent:
        return self if clock == self.clock else replace(self, clock=clock)

    def entries(self) -> list[tuple[int, ItemEntry]]:
        return [(fc, e) for fc, firm in sorted(self.firms.items()) for _, e in sorted(firm.items.items())]

    def find(self, firm_code: int, product_code: int) -> list[ItemEntry]:
        firm = self.firms.get(firm_code)
        if firm is None:
            return []
        return [e for _, e in sorted(firm.items.items()) if e.item.product_code == product_code]

    # -- encoding: plain types for msgpack. Items are stored as their signed license bytes
    #    and decoded again (after verification) by `licentia.core.stored.load_content`.

    def to_dict(self) -> dict[str, Any]:
        return {
            "serial": str(self.serial),
            "created_at": self.created_at,
            "sign_key": self.sign_key,
            "box_key": self.box_key,
            "clock": self.clock.to_dict(),
            "firms": [
                {
                    "firm_code": f.firm_code,
                    "firm_public_key": f.firm_public_key,
                    "update_counter": f.update_counter,
                    "text": f.text,
                    "items": [
                        {"item_id": e.item_id, "license": e.license, "state": e.state.to_dict()}
                        for e in f.items.values()
                    ],
                    "retired": [[i, product] for i, product in sorted(f.retired.items())],
                }
                for f in self.firms.values()
            ],
        }
