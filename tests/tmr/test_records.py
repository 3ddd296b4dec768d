"""The TMR seat store's handles and records (`licentia.tmr.records`): properties."""

from __future__ import annotations

from hypothesis import given, strategies as st

from licentia.core.seats import Holder, ItemKey, Session, Station
from licentia.model import AccessMode
from licentia.tmr.records import (
    HANDLE_BITS,
    ITEM_NUMBER_BITS,
    SLOT_INDEX_BITS,
    SLOT_RECORD,
    handle_record,
    item_number_of,
    session_from_record,
    session_from_slot,
    slot_handle,
    slot_parts,
    slot_record,
)

numbers = st.integers(0, (1 << ITEM_NUMBER_BITS) - 1)
indexes = st.integers(0, (1 << SLOT_INDEX_BITS) - 1)
texts = st.text(max_size=40)


@given(numbers, indexes)
def test_a_slot_handle_names_its_item_number_and_slot(number: int, index: int) -> None:
    handle = slot_handle(number, index)
    assert 0 < handle < 1 << HANDLE_BITS  # an IEEE double holds it exactly
    assert slot_parts(handle) == (number, index)


@given(st.integers(1, (1 << (HANDLE_BITS - 1)) - 1))
def test_the_other_handles_are_no_slot_handles(handle: int) -> None:
    """The h/ handles (`secrets.randbits(HANDLE_BITS - 1) | 1`) never look like slot handles."""
    assert slot_parts(handle) is None


@given(st.binary(min_size=1, max_size=80))
def test_an_items_number_fits_its_bits(item: bytes) -> None:
    assert 0 <= item_number_of(item) < 1 << ITEM_NUMBER_BITS
    assert item_number_of(item) == item_number_of(bytes(item))


@given(numbers, indexes, texts, st.integers(1, 2**31), texts, texts, texts, st.floats(0, 4e9))
def test_records_give_back_the_session(number: int, index: int, container: str, product: int, station: str,
                                       client: str, program: str, since: float) -> None:
    sess = Session(slot_handle(number, index), ItemKey(container, 10_001, product, 1), AccessMode.PER_ACCESS,
                   Station(station), Holder.network(client, program=program), since)
    data = slot_record(sess)
    assert data[0] == SLOT_RECORD  # told apart from the "<handle> <client>" seats of h/ records
    assert session_from_slot(data) == sess
    back, slot, share = session_from_record(sess.handle, handle_record(sess, b"000007", None))
    assert (back, slot, share) == (sess, "000007", None)
