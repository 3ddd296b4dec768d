"""A TMR license's proofs may come from any of its three constituents, and only from them:
the vendor-signed item names the three containers (serial and public key), and a program
refuses a proof from any other container of the firm (109) however it is dressed.

The licenses and proofs are real (the vendor's and the containers' Ed25519 keys); what is
tested is the program's check, `licentia.sdk.verify`."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from hypothesis import given, settings, strategies as st

from licentia.core.licenses import License, issue_license
from licentia.crypto import new_signing_key, signing_public_key
from licentia.crypto.recipes import sign
from licentia.model import ContainerSerial, ErrorCode, LicentiaError, ProductItem
from licentia.model.envelope import decode_map, encode
from licentia.sdk.proof import proof_message
from licentia.sdk.verify import Verified, verify_grant, verify_proof

FIRM = 10_001
PRODUCT = 9
NOW = 1_700_000_000


@dataclass(frozen=True)
class Box:
    """A container as a program sees it: a serial and a key that signs its proofs."""

    serial: str
    private: bytes

    @property
    def public(self) -> bytes:
        return signing_public_key(self.private)


def box(n: int) -> Box:
    return Box(f"130-{1_000_000 + n}", new_signing_key())


VENDOR = new_signing_key()
OTHER_VENDOR = new_signing_key()
C1, C2, C3 = box(1), box(2), box(3)  # TMR license 1's constituents
E1, E2, E3 = box(11), box(12), box(13)  # TMR license 2's
ORDINARY = box(20)  # an ordinary container of the same firm, same product


def tmr_item(tmr_id: int, boxes: tuple[Box, ...]) -> ProductItem:
    named = tuple(sorted((b.serial, b.public) for b in boxes))
    return ProductItem(product_code=PRODUCT, quantity=3, units=100, tmr_id=tmr_id, tmr_constituents=named)


def license_of(b: Box, item: ProductItem, item_id: int = 1, firm_key: bytes = VENDOR) -> bytes:
    return issue_license(License(ContainerSerial.parse(b.serial), b.public, FIRM, item_id, item, NOW), firm_key)


TMR1 = tmr_item(1, (C1, C2, C3))
TMR2 = tmr_item(2, (E1, E2, E3))


def answer(b: Box, lic: bytes, nonce: bytes, handle: int = 77, units: int = 90, item_id: int = 1,
           signer: Box | None = None) -> dict[str, object]:
    """An answer as a TMR front end relays it: the proving constituent's license and its
    signature over the challenge (by `signer`'s key, when an attacker's)."""
    message = proof_message(nonce, handle, b.serial, FIRM, item_id, units, None)
    return {"handle": handle, "units": units, "valid_until": None, "container": b.serial, "item": item_id,
            "license": lic, "container_key": b.public, "proof": sign((signer or b).private, message)}


def granted(b: Box = C1, item: ProductItem = TMR1) -> Verified:
    nonce = os.urandom(32)
    return verify_grant(signing_public_key(VENDOR), FIRM, PRODUCT, nonce, answer(b, license_of(b, item), nonce))


def prove(held: Verified, reply_of: Box, lic: bytes, **kw: object) -> Verified:
    nonce = os.urandom(32)
    return verify_proof(held, nonce, answer(reply_of, lic, nonce, **kw))  # type: ignore[arg-type]


def refused(call: object) -> str:
    with pytest.raises(LicentiaError) as info:
        call()  # type: ignore[operator]
    assert info.value.code is ErrorCode.SECURITY_PROBLEM
    return info.value.message


def test_any_named_constituent_proves_the_held_license() -> None:
    held = granted(C1)
    for b, item_id in ((C2, 1), (C3, 4), (C1, 1)):  # each upstream in turn (its own item id), and back
        held = prove(held, b, license_of(b, TMR1, item_id=item_id), item_id=item_id)
        assert held.serial == b.serial and held.item_id == item_id and held.units == 90


def test_a_fourth_container_is_refused() -> None:
    held = granted(C1)
    # an ordinary container of the same firm, licensed the same product
    assert "not a constituent" in refused(lambda: prove(held, ORDINARY, license_of(ORDINARY, ProductItem(
        product_code=PRODUCT, quantity=3, units=100))))
    # a valid constituent of another TMR license of the firm
    assert "not a constituent" in refused(lambda: prove(held, E1, license_of(E1, TMR2)))
    # a container the vendor signed TMR id 1 for, but in another set (not named by the held license)
    stray = tmr_item(1, (ORDINARY, C2, C3))
    assert "not a constituent" in refused(lambda: prove(held, ORDINARY, license_of(ORDINARY, stray)))
    # a named constituent's license, but the proof signed by another key
    assert "does not verify" in refused(lambda: prove(held, C2, license_of(C2, TMR1), signer=ORDINARY))
    # a named constituent's serial without its license, or with one another firm key signed
    nonce = os.urandom(32)
    bare = answer(C2, license_of(C2, TMR1), nonce)
    del bare["license"]
    assert "without its license" in refused(lambda: verify_proof(held, nonce, bare))
    assert "not signed by firm" in refused(lambda: prove(held, C2, license_of(C2, TMR1, firm_key=OTHER_VENDOR)))
    # the held license is still the first one: nothing refused changed it
    assert held.serial == C1.serial


def test_a_tmr_license_naming_no_constituents_accepts_only_its_own_container() -> None:
    old = ProductItem(product_code=PRODUCT, quantity=3, units=100, tmr_id=1)
    held = granted(C1, old)
    assert prove(held, C1, license_of(C1, old)).serial == C1.serial
    assert "names no constituents" in refused(lambda: prove(held, C2, license_of(C2, old)))


@settings(max_examples=40, deadline=None)
@given(first=st.sampled_from((C1, C2, C3)), then=st.sampled_from((C1, C2, C3, E1, E2, ORDINARY)),
       handle=st.integers(1, 2**53), units=st.integers(0, 100))
def test_a_proof_is_accepted_exactly_from_the_three_named(first: Box, then: Box, handle: int, units: int) -> None:
    held = granted(first)
    item = TMR2 if then in (E1, E2) else TMR1 if then is not ORDINARY else tmr_item(1, (ORDINARY, C2, C3))
    nonce = os.urandom(32)
    reply = answer(then, license_of(then, item), nonce, handle=handle, units=units)
    if then in (C1, C2, C3):
        assert verify_proof(held, nonce, reply).serial == then.serial
    else:
        refused(lambda: verify_proof(held, nonce, reply))


def test_the_item_names_three_different_constituents_and_round_trips() -> None:
    assert ProductItem.from_dict(decode_map(encode(TMR1.to_dict()))) == TMR1
    named = TMR1.tmr_constituents
    for bad in (named[:2], (named[0], named[0], named[1]), ((named[0][0], b"short"), named[1], named[2])):
        with pytest.raises(LicentiaError) as info:
            ProductItem(product_code=PRODUCT, tmr_id=1, tmr_constituents=bad)
        assert info.value.code is ErrorCode.INVALID_LICENSE_PARAMETER
    with pytest.raises(LicentiaError):  # only a TMR item names constituents
        ProductItem(product_code=PRODUCT, tmr_constituents=named)
    for wrong in ("130-1", [["130-1"]], [[["not", "hashable"], b"k" * 32]] * 3, [[1, 2]] * 3):
        with pytest.raises(LicentiaError) as info:
            ProductItem.from_dict({"product_code": PRODUCT, "tmr_id": 1, "tmr_constituents": wrong})
        assert info.value.code is ErrorCode.WRONG_CONTENT
