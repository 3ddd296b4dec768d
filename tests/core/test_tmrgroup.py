"""The TMR group cycle in the core: group request, group update, each part applied, group receipt."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from licentia.core import tmrgroup as G, updates as U
from licentia.core.content import ContainerContent
from licentia.crypto import new_box_key, new_signing_key
from licentia.model import ContainerSerial, ErrorCode, LicentiaError, ProductItem

T0 = 1_800_000_000
FIRM = 10_001
FIRM_KEY = new_signing_key()
ITEM = ProductItem(product_code=9, quantity=10, units=500)


def new_content(number: int) -> ContainerContent:
    c = ContainerContent(ContainerSerial(130, number), T0, new_signing_key(), new_box_key())
    return c.with_clock(c.clock.observe(T0))


def group_of(contents: list[ContainerContent], firm: int = FIRM) -> bytes:
    return G.make_group_request([U.make_request(c, firm, T0, {}) for c in contents])


def issued(contents: list[ContainerContent], tmr_id: int = 1) -> bytes:
    group = G.read_group_request(group_of(contents))
    return G.issue_group_update(group, FIRM, FIRM_KEY, ITEM, tmr_id, T0)


def refused(code: ErrorCode, fn: object, *args: object) -> LicentiaError:
    with pytest.raises(LicentiaError) as e:
        fn(*args)  # type: ignore[operator]
    assert e.value.code is code, e.value
    return e.value


_THREE = [new_content(n) for n in (1, 2, 3)]
_GROUP_UPDATE = issued(_THREE)


def test_group_request_holds_three_distinct_containers_of_one_firm() -> None:
    a, b, c = _THREE
    refused(ErrorCode.TMR_GROUP_INVALID, group_of, [a, b])
    refused(ErrorCode.TMR_GROUP_INVALID, group_of, [a, a, b])
    mixed = [U.make_request(a, FIRM, T0, {}), U.make_request(b, FIRM, T0, {}), U.make_request(c, FIRM + 1, T0, {})]
    err = refused(ErrorCode.TMR_GROUP_INVALID, G.make_group_request, mixed)
    assert "different firms" in err.message
    group = G.read_group_request(group_of(_THREE))
    assert [str(r.serial) for r in group.requests] == [str(x.serial) for x in _THREE]


def test_each_container_applies_its_part_and_the_receipts_confirm_all_three() -> None:
    group = G.read_group_update(_GROUP_UPDATE)
    receipts = []
    for content in _THREE:
        part = G.part_for(group, [content.serial])
        applied = U.apply_update(content, part.update, T0, in_vm=False)
        [entry] = applied.content.firms[FIRM].items.values()
        assert entry.item.tmr_id == 1 and entry.item_id == part.item_id
        receipts.append(applied.receipt)
    check = G.check_group_receipt(group, G.read_group_receipt(G.make_group_receipt(receipts)))
    assert check.complete and len(check.confirmed) == 3

    # one missing, one twice, one of a container outside the group: each named
    outsider = new_content(4)
    ordinary = U.issue_update(U.read_request(U.make_request(outsider, FIRM, T0, {})), FIRM, FIRM_KEY,
                              [U.PutItem(1, ITEM)], T0)
    stranger = U.apply_update(outsider, ordinary, T0, in_vm=False).receipt
    partial = G.check_group_receipt(group, G.read_group_receipt(G.make_group_receipt([receipts[0], receipts[0], stranger])))
    assert not partial.complete
    text = "\n".join(partial.problems)
    assert f"container {_THREE[0].serial}: two receipts" in text
    assert f"container {outsider.serial}: not a constituent" in text
    assert f"container {_THREE[1].serial}: no receipt" in text and f"container {_THREE[2].serial}: no receipt" in text


def test_a_part_does_not_apply_to_another_container() -> None:
    group = G.read_group_update(_GROUP_UPDATE)
    part = G.part_for(group, [_THREE[0].serial])
    with pytest.raises(LicentiaError) as e:
        U.apply_update(_THREE[1], part.update, T0, in_vm=False)
    assert e.value.code is ErrorCode.UPDATE_WRONG_CONTAINER
    err = refused(ErrorCode.TMR_GROUP_NO_PART, G.part_for, group, [new_content(7).serial])
    assert "none of them is here" in err.message


def test_a_receipt_of_another_step_is_reported_by_its_container() -> None:
    # step 1 for all three, then a second group update applied by two only
    group1 = G.read_group_update(_GROUP_UPDATE)
    contents, first = [], []
    for content in _THREE:
        applied = U.apply_update(content, G.part_for(group1, [content.serial]).update, T0, in_vm=False)
        contents.append(applied.content)
        first.append(applied.receipt)
    group2 = G.read_group_update(issued(contents, tmr_id=2))
    second = [U.apply_update(c, G.part_for(group2, [c.serial]).update, T0, in_vm=False).receipt for c in contents[:2]]
    check = G.check_group_receipt(group2, G.read_group_receipt(G.make_group_receipt([*second, first[2]])))
    assert check.problems == (
        f"container {_THREE[2].serial}: the receipt is for step 1; its part of this group update is step 2",
    )


@settings(max_examples=100)
@given(st.data())
def test_any_flipped_byte_of_a_group_update_is_refused(data: st.DataObject) -> None:
    pos = data.draw(st.integers(min_value=0, max_value=len(_GROUP_UPDATE) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    bad = bytearray(_GROUP_UPDATE)
    bad[pos] ^= 1 << bit
    with pytest.raises(LicentiaError) as e:
        G.read_group_update(bytes(bad))
    assert e.value.code is ErrorCode.LICENSE_INVALID


def test_a_group_update_of_another_firm_key_is_refused() -> None:
    refused(ErrorCode.UPDATE_WRONG_FIRM, G.read_group_update, _GROUP_UPDATE, b"\x01" * 32)
