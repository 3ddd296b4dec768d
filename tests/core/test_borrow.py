"""The borrowing decisions and artifacts of `licentia.core.borrow`, and the SDK's check of a
borrowed seat's proof chain."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from licentia.core import borrow as B
from licentia.core.content import ContainerContent
from licentia.core.licenses import License, issue_license
from licentia.crypto import new_signing_key, signing_public_key
from licentia.model import ContainerSerial, ErrorCode, LicentiaError, ProductItem
from licentia.sdk.verify import verify_license

FIRM = 10_001
NOW = 1_800_000_000


@given(seconds=st.integers(1, 10**7), borrow_max=st.integers(1, 10**7), cap=st.one_of(st.none(), st.integers(1, 10**7)),
       expires=st.one_of(st.none(), st.integers(NOW + 1, NOW + 10**7)))
def test_a_borrow_never_outlasts_the_item_the_cap_or_the_expiry(seconds: int, borrow_max: int, cap: int | None,
                                                                 expires: int | None) -> None:
    item = ProductItem(product_code=7, borrow_max=borrow_max, expires_at=expires)
    longest = borrow_max if cap is None else min(borrow_max, cap)
    try:
        until = B.decide(item, seconds, cap, NOW)
    except LicentiaError as exc:
        assert exc.code == ErrorCode.BORROW_TOO_LONG and seconds > longest
        return
    assert seconds <= longest and until <= NOW + seconds and (expires is None or until <= expires)
    assert B.borrowed_item(item, until).expires_at == until and B.borrowed_item(item, until).quantity == 0


def test_items_that_are_never_lent() -> None:
    for item, code in ((ProductItem(product_code=7, borrow_max=99, tmr_id=3), ErrorCode.BORROW_TMR),
                       (ProductItem(product_code=7), ErrorCode.BORROW_NOT_ALLOWED),
                       (ProductItem(product_code=7, borrow_max=99, units=5), ErrorCode.BORROW_NOT_ALLOWED)):
        with pytest.raises(LicentiaError) as info:
            B.decide(item, 10, None, NOW)
        assert info.value.code == code


def _chain(server_key: bytes, signer: bytes | None = None) -> tuple[bytes, bytes, bytes]:
    firm_key = new_signing_key()
    client_key = new_signing_key()
    lic = issue_license(License(ContainerSerial.parse("130-1000"), signing_public_key(server_key), FIRM, 1,
                                ProductItem(product_code=7, borrow_max=86400), NOW), firm_key)
    cert = B.issue_certificate(B.Certificate("b1", lic, signing_public_key(firm_key), "130-1000", "server", 1,
                                             "130-2000", signing_public_key(client_key), B.ITEM_BASE, NOW,
                                             NOW + 3600, "host", "user"), signer or server_key)
    return cert, signing_public_key(firm_key), client_key


def test_the_chain_from_firm_to_client_container_verifies() -> None:
    server_key = new_signing_key()
    cert, firm_public, client_key = _chain(server_key)
    got, lic = B.read_certificate(cert, firm_public)
    assert got.client_key == signing_public_key(client_key) and lic.item.product_code == 7
    signed = verify_license(firm_public, FIRM, cert)  # what the protected program checks
    assert signed.serial == "130-2000" and signed.container_key == signing_public_key(client_key)
    assert signed.item["expires_at"] == NOW + 3600 and signed.item["quantity"] == 0


def test_a_certificate_not_signed_by_the_licensed_container_is_refused() -> None:
    # a server (or anyone) with some key of its own cannot lend a license made for another container
    cert, firm_public, _ = _chain(new_signing_key(), signer=new_signing_key())
    with pytest.raises(LicentiaError) as info:
        B.read_certificate(cert, firm_public)
    assert info.value.code == ErrorCode.BORROW_INVALID
    with pytest.raises(LicentiaError) as info:
        verify_license(firm_public, FIRM, cert)
    assert info.value.code == ErrorCode.SECURITY_PROBLEM


def test_a_seat_is_given_back_once_and_only_by_its_container() -> None:
    client = new_signing_key()
    rec = B.Record("b1", "130-1000", FIRM, 7, 1, "130-2000", signing_public_key(client), B.ITEM_BASE, "h", "u",
                   NOW, NOW + 60, b"")
    ret = B.read_return(B.make_return(B.Return("b1", "130-2000", signing_public_key(client), NOW + 5), client))
    after, freed = B.give_back(rec, ret, NOW + 5)
    assert freed and after.state == B.RETURNED
    assert B.give_back(after, ret, NOW + 6) == (after, False)
    assert B.due({"b1": after}, NOW + 999) == [] and B.due({"b1": rec}, NOW + 60) == ["b1"]
    stranger = new_signing_key()
    forged = B.read_return(B.make_return(B.Return("b1", "130-2000", signing_public_key(stranger), NOW), stranger))
    with pytest.raises(LicentiaError) as info:
        B.give_back(rec, forged, NOW)
    assert info.value.code == ErrorCode.BORROW_INVALID
    assert B.book_from_doc(B.book_to_doc({"b1": after})) == {"b1": after}


def _content(serial: str, key: bytes) -> ContainerContent:
    return ContainerContent(ContainerSerial.parse(serial), NOW, key, b"\x00" * 32)


def test_a_certificate_goes_into_its_own_container_only_and_once() -> None:
    server_key = new_signing_key()
    cert, firm_public, client_key = _chain(server_key)
    other = _content("130-2000", new_signing_key())  # same serial, another key: a copy elsewhere
    with pytest.raises(LicentiaError) as info:
        B.import_certificate(other, cert, firm_public, NOW)
    assert info.value.code == ErrorCode.BORROW_INVALID
    mine = _content("130-2000", client_key)
    with_seat, _ = B.import_certificate(mine, cert, firm_public, NOW)
    [(firm, entry, fields)] = B.held(with_seat)
    assert (firm, entry.item_id, fields["borrow_id"]) == (FIRM, B.ITEM_BASE, "b1")
    assert entry.item.expires_at == NOW + 3600 and entry.item.quantity == 0
    assert B.import_certificate(with_seat, cert, firm_public, NOW)[0] is with_seat  # again: nothing changes
    with pytest.raises(LicentiaError) as info:
        B.import_certificate(mine, cert, firm_public, NOW + 3600)  # ended before it arrived
    assert info.value.code == ErrorCode.BORROW_ENDED
    without, gone = B.remove_borrowed(with_seat, "b1")
    assert gone is not None and B.held(without) == []
    assert B.client_item_id(without.firms[FIRM]) == B.ITEM_BASE + 1  # an id is never used twice
    with pytest.raises(LicentiaError):  # nor a returned seat brought back with its old certificate
        B.import_certificate(without, cert, firm_public, NOW)
