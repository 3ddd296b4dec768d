"""Item evaluation: every option, with `now` as a parameter."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from licentia.core.clock import CLOCK_SKEW, CLOCK_STEP, VirtualClock
from licentia.core.evaluate import begin_use, decrement, evaluate, status_of
from licentia.model import (
    ErrorCode,
    ItemRequest,
    ItemState,
    ItemStatus,
    LicentiaError,
    ProductItem,
    VersionRange,
)

T0 = 1_800_000_000
CLOCK = VirtualClock()


def judge(item: ProductItem, state: ItemState | None = None, now: int = T0, **req: object):
    state = state if state is not None else ItemState.initial(item, T0)
    return evaluate(item, state, ItemRequest(**req), CLOCK, now)  # type: ignore[arg-type]


def test_plain_item_is_valid() -> None:
    v = judge(ProductItem(product_code=1))
    assert v.ok and v.status is ItemStatus.VALID


def test_expiration_and_activation() -> None:
    item = ProductItem(product_code=1, activates_at=T0 + 10, expires_at=T0 + 100)
    assert judge(item, now=T0).error is ErrorCode.NOT_YET_ACTIVE
    assert judge(item, now=T0 + 10).ok
    assert judge(item, now=T0 + 99).ok
    v = judge(item, now=T0 + 100)
    assert v.error is ErrorCode.EXPIRED and v.status is ItemStatus.EXPIRED
    assert int(ErrorCode.EXPIRED) == 35 and int(ErrorCode.NOT_YET_ACTIVE) == 37


def test_usage_period_starts_at_first_use() -> None:
    item = ProductItem(product_code=1, usage_period=3600)
    state = ItemState.initial(item, T0)
    assert judge(item, state, now=T0 + 10**6).ok  # not started: no limit yet
    started = begin_use(item, state, T0 + 50)
    assert started.usage_started_at == T0 + 50
    assert begin_use(item, started, T0 + 60) is started  # starts only once
    assert judge(item, started, now=T0 + 3649).ok
    assert judge(item, started, now=T0 + 3650).error is ErrorCode.USAGE_PERIOD_OVER


def test_unit_counter() -> None:
    item = ProductItem(product_code=1, units=3)
    state = ItemState.initial(item, T0)
    state = decrement(item, state, 2)
    assert state.units_remaining == 1
    with pytest.raises(LicentiaError) as e:
        decrement(item, state, 2)
    assert e.value.code is ErrorCode.NOT_ENOUGH_UNITS
    state = decrement(item, state, 1)
    v = judge(item, state)
    assert v.error is ErrorCode.UNITS_USED_UP and v.status is ItemStatus.USED_UP
    assert int(ErrorCode.UNITS_USED_UP) == 32


def test_feature_map_version_maintenance_vm() -> None:
    item = ProductItem(
        product_code=1,
        feature_map=0b0101,
        versions=VersionRange.parse("2.0-3"),
        maintenance_from=T0 - 1000,
        maintenance_until=T0 + 1000,
        vm_allowed=False,
    )
    assert judge(item, feature_code=0b0100).ok
    assert judge(item, feature_code=0b0010).error is ErrorCode.FEATURE_MAP_INCOMPATIBLE
    assert judge(item, version=(3, 9, 2)).ok
    assert judge(item, version=(4, 0)).error is ErrorCode.VERSION_NOT_PERMITTED
    assert judge(item, version=(1, 9)).error is ErrorCode.VERSION_NOT_PERMITTED
    assert judge(item, release_date=T0).ok
    assert judge(item, release_date=T0 + 2000).error is ErrorCode.MAINTENANCE_OVER
    assert judge(item, release_date=T0 - 2000).error is ErrorCode.MAINTENANCE_NOT_STARTED
    assert judge(item, in_vm=True).error is ErrorCode.VM_NOT_ALLOWED
    assert int(ErrorCode.VM_NOT_ALLOWED) == 273


def test_disabled_and_locked_come_first() -> None:
    item = ProductItem(product_code=1, disabled=True, expires_at=T0 + 1)
    assert judge(item, now=T0 + 5).error is ErrorCode.ITEM_DISABLED
    locked = ItemState.initial(item, T0).with_(locked=True)
    assert judge(item, locked).status is ItemStatus.LOCKED


def test_checkpoint_lapses_unless_renewed() -> None:
    item = ProductItem(product_code=1, checkpoint_period=86400)
    state = ItemState.initial(item, T0)
    assert judge(item, state, now=T0 + 86399).ok
    assert judge(item, state, now=T0 + 86400).error is ErrorCode.CHECKPOINT_LAPSED
    renewed = state.with_(checkpoint_at=T0 + 86000)
    assert judge(item, renewed, now=T0 + 86400).ok


def test_clock_set_back_fails_time_limited_items_closed() -> None:
    clock = VirtualClock().observe(T0 + 10_000)
    back = clock.observe(T0)
    assert back.manipulated
    limited = ProductItem(product_code=1, expires_at=T0 + 100_000)
    unlimited = ProductItem(product_code=2)
    v = evaluate(limited, ItemState(), ItemRequest(), back, T0)
    assert v.error is ErrorCode.CLOCK_MANIPULATED
    assert evaluate(unlimited, ItemState(), ItemRequest(), back, T0).ok


def test_expired_item_stays_expired_when_clock_turned_back_within_skew() -> None:
    item = ProductItem(product_code=1, expires_at=T0 + 100)
    clock = VirtualClock().observe(T0 + 200)
    # Within the skew no manipulation is flagged, but the mark still judges the item.
    clock = clock.observe(T0 + 200 - CLOCK_SKEW + 1)
    assert not clock.manipulated
    assert evaluate(item, ItemState(), ItemRequest(), clock, T0 + 50).error is ErrorCode.EXPIRED


@given(
    marks=st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=30),
)
def test_clock_never_moves_back_and_detects_any_setback(marks: list[int]) -> None:
    clock = VirtualClock()
    highest = 0
    for t in marks:
        before = clock
        clock = clock.observe(t)
        assert clock.high_water >= before.high_water
        if t + CLOCK_SKEW < highest:
            assert clock.manipulated
        highest = max(highest, t)
    assert max(marks) - CLOCK_STEP < clock.high_water <= max(marks) or max(marks) == 0


@given(now=st.integers(min_value=0, max_value=2 * 10**9), back=st.integers(min_value=CLOCK_SKEW + 1, max_value=10**8))
def test_signed_time_heals_a_manipulated_clock(now: int, back: int) -> None:
    clock = VirtualClock().observe(now + back)
    clock = clock.observe(now)
    assert clock.manipulated
    healed = clock.heal(now, now)
    assert not healed.manipulated
    # A stale signed time (replayed) does not undo a newer one.
    assert healed.heal(now - 10, now) == healed


def test_status_of_reports_valid_until() -> None:
    item = ProductItem(product_code=1, expires_at=T0 + 500, usage_period=100)
    state = begin_use(item, ItemState.initial(item, T0), T0)
    assert status_of(item, state, CLOCK, T0).valid_until == T0 + 100


def test_a_tmr_constituent_is_refused_outside_a_tmr_upstream() -> None:
    # one of three constituents copied into an ordinary container is not a license of its own
    item = ProductItem(product_code=1, quantity=5, tmr_id=7)
    v = judge(item)
    assert v.error is ErrorCode.REDUNDANCY_SERVER_MISSING and "TMR license 7" in v.reason
    state = ItemState.initial(item, T0)
    assert evaluate(item, state, ItemRequest(), CLOCK, T0, tmr_upstream=True).ok
    # its own validity still comes first
    expired = ProductItem(product_code=1, tmr_id=7, expires_at=T0 - 1)
    assert evaluate(expired, ItemState(), ItemRequest(), CLOCK, T0, tmr_upstream=True).error is ErrorCode.EXPIRED
