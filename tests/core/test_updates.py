"""The request / update / receipt cycle: order, replay, tampering, foreign files."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings, strategies as st

from licentia.core import updates as U
from licentia.core.content import ContainerContent
from licentia.core.licenses import License, issue_license
from licentia.crypto import new_box_key, new_signing_key, signing_public_key
from licentia.model import ContainerSerial, ErrorCode, LicentiaError, ProductItem

T0 = 1_800_000_000
FIRM = 10_001
FIRM_KEY = new_signing_key()


def new_content(number: int = 42) -> ContainerContent:
    c = ContainerContent(ContainerSerial(130, number), T0, new_signing_key(), new_box_key())
    return c.with_clock(c.clock.observe(T0))


def update_for(content: ContainerContent, *ops: U.Operation, key: bytes = FIRM_KEY, firm: int = FIRM, now: int = T0) -> bytes:
    request = U.read_request(U.make_request(content, firm, now, {}))
    return U.issue_update(request, firm, key, list(ops), now)


def apply(content: ContainerContent, data: bytes, now: int = T0, in_vm: bool = False) -> U.Applied:
    return U.apply_update(content, data, now, in_vm=in_vm)


def refused(code: ErrorCode, content: ContainerContent, data: bytes, **kw: object) -> None:
    with pytest.raises(LicentiaError) as e:
        apply(content, data, **kw)  # type: ignore[arg-type]
    assert e.value.code is code, e.value


def test_full_cycle_adds_changes_removes() -> None:
    c = new_content()
    a = apply(c, update_for(c, U.PutItem(1, ProductItem(product_code=7, units=10))))
    assert a.counter == 1 and a.content.find(FIRM, 7)[0].state.units_remaining == 10
    receipt = U.read_receipt(a.receipt, signing_public_key(c.sign_key))
    assert receipt.update_counter == 1 and [s.item_id for s in receipt.items] == [1]
    b = apply(a.content, update_for(a.content, U.PutItem(1, ProductItem(product_code=7, units=20))))
    assert b.content.find(FIRM, 7)[0].state.units_remaining == 20
    d = apply(b.content, update_for(b.content, U.RemoveItem(1)))
    assert d.content.find(FIRM, 7) == [] and d.counter == 3


def test_same_update_twice_is_refused_and_changes_nothing() -> None:
    c = new_content()
    data = update_for(c, U.PutItem(1, ProductItem(product_code=7)))
    a = apply(c, data)
    refused(ErrorCode.UPDATE_TOO_OLD, a.content, data)


def test_out_of_order_update_is_refused() -> None:
    c = new_content()
    first = update_for(c, U.PutItem(1, ProductItem(product_code=7)))
    a = apply(c, first)
    second = update_for(a.content, U.PutItem(2, ProductItem(product_code=8)))
    # `second` expects step 1; the original container is at step 0: an update is missing.
    refused(ErrorCode.UPDATE_TOO_NEW, c, second)


def test_update_for_another_container_is_refused() -> None:
    c, other = new_content(1), new_content(2)
    refused(ErrorCode.UPDATE_WRONG_CONTAINER, other, update_for(c, U.PutItem(1, ProductItem(product_code=7))))


def test_update_signed_by_another_firm_key_is_refused() -> None:
    c = new_content()
    a = apply(c, update_for(c, U.PutItem(1, ProductItem(product_code=7))))
    request = U.read_request(U.make_request(a.content, FIRM, T0, {}))
    # The vendor side refuses to sign with another key for a firm the container pinned ...
    with pytest.raises(LicentiaError) as e:
        U.issue_update(request, FIRM, new_signing_key(), [U.PutItem(2, ProductItem(product_code=8))], T0)
    assert e.value.code is ErrorCode.UPDATE_WRONG_FIRM
    # ... and a forger who leaves the pinned key out is refused by the container.
    forged = U.issue_update(
        dataclasses.replace(request, firm_public_key=None), FIRM, new_signing_key(),
        [U.PutItem(2, ProductItem(product_code=8))], T0,
    )
    refused(ErrorCode.UPDATE_WRONG_FIRM, a.content, forged)


def test_vm_denied_item_is_refused_in_a_vm() -> None:
    c = new_content()
    refused(ErrorCode.VM_NOT_ALLOWED, c, update_for(c, U.PutItem(1, ProductItem(product_code=7, vm_allowed=False))), in_vm=True)


def test_license_copied_from_another_container_is_refused() -> None:
    c, other = new_content(1), new_content(2)
    lic = issue_license(License(other.serial, signing_public_key(other.sign_key), FIRM, 1, ProductItem(product_code=7), T0), FIRM_KEY)
    from licentia.core.licenses import check_license_for, read_license

    with pytest.raises(LicentiaError) as e:
        check_license_for(read_license(lic, signing_public_key(FIRM_KEY)), c.serial, signing_public_key(c.sign_key), FIRM)
    assert e.value.code is ErrorCode.LICENSE_INVALID


def test_lock_and_signed_time_heal() -> None:
    c = new_content()
    a = apply(c, update_for(c, U.PutItem(1, ProductItem(product_code=7, expires_at=T0 + 10**6))))
    set_back = a.content.with_clock(a.content.clock.observe(T0 + 100_000).observe(T0))
    assert set_back.clock.manipulated
    healed = apply(set_back, update_for(set_back, U.LockFirm(), now=T0 + 50), now=T0 + 60)
    assert not healed.content.clock.manipulated
    assert healed.content.find(FIRM, 7)[0].state.locked


_C0 = new_content(7)
_UPDATE = update_for(_C0, U.PutItem(1, ProductItem(product_code=7, units=5, hidden_data=b"x")))
_APPLIED = apply(_C0, _UPDATE)
_REQUEST = U.make_request(_APPLIED.content, FIRM, T0, {"kind": "bare metal"})


@settings(max_examples=150)
@given(st.data())
def test_any_flipped_byte_in_any_artifact_is_invalid(data: st.DataObject) -> None:
    which = data.draw(st.sampled_from(["update", "receipt", "request"]))
    blob = {"update": _UPDATE, "receipt": _APPLIED.receipt, "request": _REQUEST}[which]
    pos = data.draw(st.integers(min_value=0, max_value=len(blob) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    bad = bytearray(blob)
    bad[pos] ^= 1 << bit
    with pytest.raises(LicentiaError) as e:
        if which == "update":
            apply(_C0, bytes(bad))
        elif which == "receipt":
            U.read_receipt(bytes(bad), signing_public_key(_C0.sign_key))
        else:
            U.read_request(bytes(bad))
    # A flipped serial or firm field in an update may first be caught as "wrong container"
    # or "wrong firm": still a refusal that changes nothing.
    assert e.value.code in (ErrorCode.LICENSE_INVALID, ErrorCode.UPDATE_WRONG_CONTAINER, ErrorCode.UPDATE_WRONG_FIRM)


@given(st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=12))
def test_updates_apply_exactly_once_and_in_order(order: list[int]) -> None:
    """Make a chain of six updates, then offer them in a random order: only the next one applies."""
    c = new_content(9)
    chain = []
    state = c
    for i in range(6):
        data = update_for(state, U.PutItem(i + 1, ProductItem(product_code=100 + i)))
        chain.append(data)
        state = apply(state, data).content
    current = c
    applied = 0
    for idx in order:
        try:
            current = apply(current, chain[idx]).content
        except LicentiaError as e:
            assert idx != applied
            assert e.code is (ErrorCode.UPDATE_TOO_OLD if idx < applied else ErrorCode.UPDATE_TOO_NEW)
        else:
            assert idx == applied
            applied += 1
        assert current.firms.get(FIRM) is None or current.firms[FIRM].update_counter == applied
