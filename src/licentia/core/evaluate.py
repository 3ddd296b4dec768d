"""May this item be used now, and if not, why: every item option judged in one place.

Pure functions of the signed item, its state, the request, the virtual clock and `now`.
The order of checks is fixed so a refusal names the most fundamental reason first:
locked, disabled, clock, not yet active, expired, usage period, checkpoint, units,
feature map, version, maintenance, virtual machine.

State changes (a usage period starting at first use, a unit decrement) are returned as a
new `ItemState`; the shell persists it atomically before it answers.
"""

from __future__ import annotations

import datetime as _dt

from licentia.core.clock import VirtualClock
from licentia.model import (
    ErrorCode,
    ItemRequest,
    ItemState,
    ItemStatus,
    LicentiaError,
    ProductItem,
    Verdict,
    format_version,
)


def valid_until(item: ProductItem, state: ItemState) -> int | None:
    """The earliest moment the item stops being valid by time, if any."""
    ends = []
    if item.expires_at is not None:
        ends.append(item.expires_at)
    if item.usage_period is not None and state.usage_started_at is not None:
        ends.append(state.usage_started_at + item.usage_period)
    if item.checkpoint_period is not None and state.checkpoint_at is not None:
        ends.append(state.checkpoint_at + item.checkpoint_period)
    return min(ends) if ends else None


def evaluate(
    item: ProductItem,
    state: ItemState,
    request: ItemRequest,
    clock: VirtualClock,
    now: int,
    *,
    tmr_upstream: bool = False,
) -> Verdict:
    """Judge the item for `request` at system time `now` under the container's clock.

    An item with a TMR id is one of three constituents of a TMR license: it is served only
    by an upstream server of a TMR system (`tmr_upstream=True`) to its front ends; anywhere
    else it is refused with 130, so one constituent copied into an ordinary container is
    not a license of its own."""
    until = valid_until(item, state)

    def refuse(status: ItemStatus, code: ErrorCode, reason: str) -> Verdict:
        return Verdict(status, code, reason, until)

    if state.locked:
        return refuse(ItemStatus.LOCKED, ErrorCode.LOCKED, "the vendor locked this license")
    if item.disabled:
        return refuse(ItemStatus.DISABLED, ErrorCode.ITEM_DISABLED, "the license is disabled")
    if item.time_limited and clock.manipulated:
        return refuse(
            ItemStatus.EXPIRED,
            ErrorCode.CLOCK_MANIPULATED,
            "the system clock was set back; time-limited licenses stay closed until a signed time heals the container",
        )
    # Judge time by the later of the system clock and the container's mark.
    t = max(now, clock.high_water)
    if item.activates_at is not None and t < item.activates_at:
        return refuse(
            ItemStatus.NOT_YET_ACTIVE,
            ErrorCode.NOT_YET_ACTIVE,
            f"the license becomes active at {_iso(item.activates_at)}",
        )
    if item.expires_at is not None and t >= item.expires_at:
        return refuse(ItemStatus.EXPIRED, ErrorCode.EXPIRED, f"the license expired at {_iso(item.expires_at)}")
    if (
        item.usage_period is not None
        and state.usage_started_at is not None
        and t >= state.usage_started_at + item.usage_period
    ):
        end = state.usage_started_at + item.usage_period
        return refuse(ItemStatus.EXPIRED, ErrorCode.USAGE_PERIOD_OVER, f"the usage period ended at {_iso(end)}")
    if (
        item.checkpoint_period is not None
        and state.checkpoint_at is not None
        and t >= state.checkpoint_at + item.checkpoint_period
    ):
        end = state.checkpoint_at + item.checkpoint_period
        return refuse(
            ItemStatus.EXPIRED,
            ErrorCode.CHECKPOINT_LAPSED,
            f"the checkpoint license was due for renewal at {_iso(end)}",
        )
    if state.units_remaining is not None and state.units_remaining <= 0:
        return refuse(ItemStatus.USED_UP, ErrorCode.UNITS_USED_UP, "no units remain")
    # From here on the item itself is valid; what follows judges the request against it.
    if item.tmr_id is not None and not tmr_upstream:
        return Verdict(
            ItemStatus.VALID,
            ErrorCode.REDUNDANCY_SERVER_MISSING,
            f"this is one constituent of TMR license {item.tmr_id}; it is served only through a TMR front end",
            until,
        )
    if request.feature_code & item.feature_map != request.feature_code:
        return Verdict(
            ItemStatus.VALID,
            ErrorCode.FEATURE_MAP_INCOMPATIBLE,
            f"feature code {request.feature_code:#x} is not in the feature map {item.feature_map:#x}",
            until,
        )
    if request.version is not None and item.versions is not None and not item.versions.admits(request.version):
        return Verdict(
            ItemStatus.VALID,
            ErrorCode.VERSION_NOT_PERMITTED,
            f"version {format_version(request.version)} is outside the permitted range {item.versions}",
            until,
        )
    maintenance = _maintenance(item, request)
    if maintenance is not None:
        return Verdict(ItemStatus.VALID, maintenance[0], maintenance[1], until)
    if request.in_vm and not item.vm_allowed:
        return Verdict(
            ItemStatus.VALID,
            ErrorCode.VM_NOT_ALLOWED,
            "the vendor does not allow this license in a virtual machine",
            until,
        )
    return Verdict(ItemStatus.VALID, None, "", until)


def status_of(item: ProductItem, state: ItemState, clock: VirtualClock, now: int) -> Verdict:
    """The item's own status, independent of any request."""
    return evaluate(item, state, ItemRequest(), clock, now)


def _maintenance(item: ProductItem, request: ItemRequest) -> tuple[ErrorCode, str] | None:
    if request.release_date is None:
        return None
    if item.maintenance_from is None and item.maintenance_until is None:
        return None
    if item.maintenance_from is not None and request.release_date < item.maintenance_from:
        return ErrorCode.MAINTENANCE_NOT_STARTED, (
            f"this release ({_iso(request.release_date)}) predates the maintenance period "
            f"starting {_iso(item.maintenance_from)}"
        )
    if item.maintenance_until is not None and request.release_date > item.maintenance_until:
        return ErrorCode.MAINTENANCE_OVER, (
            f"this release ({_iso(request.release_date)}) is newer than the maintenance period "
            f"ending {_iso(item.maintenance_until)}"
        )
    return None


def begin_use(item: ProductItem, state: ItemState, now: int) -> ItemState:
    """The state after a granted access: a usage period starts at first use."""
    if item.usage_period is not None and state.usage_started_at is None:
        return state.with_(usage_started_at=now)
    return state


def decrement(item: ProductItem, state: ItemState, units: int) -> ItemState:
    """The state after spending `units` from the unit counter, or a refusal."""
    if units < 0:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "units to decrement must not be negative")
    if item.units is None or state.units_remaining is None:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "this license has no unit counter")
    if state.units_remaining <= 0:
        raise LicentiaError(ErrorCode.UNITS_USED_UP, "no units remain")
    if units > state.units_remaining:
        raise LicentiaError(
            ErrorCode.NOT_ENOUGH_UNITS,
            f"{units} units requested but only {state.units_remaining} remain",
        )
    return state.with_(units_remaining=state.units_remaining - units)


def _iso(t: int) -> str:
    # Pure formatting of a UTC timestamp (no clock read).
    return _dt.datetime.fromtimestamp(t, _dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
