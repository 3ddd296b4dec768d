"""Using an item of a container: the core decides, the container persists before the answer.

These work on any container that offers `transact(change)` (soft now; token and cloud
follow the same shape).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from licentia.core.content import ContainerContent, ItemEntry
from licentia.core.evaluate import begin_use, decrement, evaluate
from licentia.model import ErrorCode, ItemRequest, LicentiaError, Verdict

T = TypeVar("T")


class Transactional(Protocol):
    def transact(self, change: Callable[[ContainerContent], tuple[ContainerContent, T]]) -> T: ...


def find_item(content: ContainerContent, firm_code: int, product_code: int, request: ItemRequest, now: int) -> tuple[ItemEntry, Verdict]:
    """The first item of firm/product that grants `request`, else the most telling refusal."""
    entries = content.find(firm_code, product_code)
    if not entries:
        raise LicentiaError(
            ErrorCode.ENTRY_NOT_FOUND,
            f"container {content.serial} holds no license for firm {firm_code}, product {product_code}",
        )
    first: tuple[ItemEntry, Verdict] | None = None
    for entry in entries:
        verdict = evaluate(entry.item, entry.state, request, content.clock, now)
        if verdict.ok:
            return entry, verdict
        first = first or (entry, verdict)
    assert first is not None
    return first


def use_item(container: Transactional, firm_code: int, product_code: int, request: ItemRequest, now: int) -> ItemEntry:
    """Grant `request` on an item: clock observed, item judged, first use recorded, durably."""

    def change(content: ContainerContent) -> tuple[ContainerContent, ItemEntry | LicentiaError]:
        content = content.with_clock(content.clock.observe(now))
        entry, verdict = find_item(content, firm_code, product_code, request, now)
        if not verdict.ok:
            assert verdict.error is not None
            return content, LicentiaError(verdict.error, verdict.reason)
        state = begin_use(entry.item, entry.state, now)
        if state != entry.state:
            content = content.with_item_state(firm_code, entry.item_id, state)
            entry = content.firms[firm_code].items[entry.item_id]
        return content, entry

    result = container.transact(change)
    if isinstance(result, LicentiaError):
        raise result
    return result


def spend_units(container: Transactional, firm_code: int, item_id: int, units: int, now: int) -> int:
    """Decrement the unit counter of an item, durably; returns the units that remain."""

    def change(content: ContainerContent) -> tuple[ContainerContent, int]:
        content = content.with_clock(content.clock.observe(now))
        firm = content.firm(firm_code)
        entry = firm.items.get(item_id)
        if entry is None:
            raise LicentiaError(ErrorCode.ENTRY_NOT_FOUND, f"no item {item_id} of firm {firm_code}")
        verdict = evaluate(entry.item, entry.state, ItemRequest(), content.clock, now)
        verdict.raise_if_refused()
        state = decrement(entry.item, entry.state, units)
        remaining = state.units_remaining if state.units_remaining is not None else 0
        return content.with_item_state(firm_code, item_id, state), remaining

    return container.transact(change)


def set_user_fields(
    container: Transactional,
    firm_code: int,
    item_id: int,
    *,
    text: str | None = None,
    user_data: bytes | None = None,
) -> None:
    """Write the user-writable options of an item (text, user data); vendor options stay."""
    from licentia.model.item import DATA_MAX, TEXT_MAX

    if text is not None and len(text.encode()) > TEXT_MAX:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"text is longer than {TEXT_MAX} bytes")
    if user_data is not None and len(user_data) > DATA_MAX:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"user data is longer than {DATA_MAX} bytes")

    def change(content: ContainerContent) -> tuple[ContainerContent, None]:
        entry = content.firm(firm_code).items.get(item_id)
        if entry is None:
            raise LicentiaError(ErrorCode.ENTRY_NOT_FOUND, f"no item {item_id} of firm {firm_code}")
        state = entry.state
        if text is not None:
            state = state.with_(text=text)
        if user_data is not None:
            state = state.with_(user_data=user_data)
        return content.with_item_state(firm_code, item_id, state), None

    container.transact(change)
