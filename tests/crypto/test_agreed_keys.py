"""Agreed keys and MACs: the X25519 exchange both sides run, HKDF-SHA256 over its secret,
and HMAC-SHA256, checked against the standard `hmac` module, cryptography's HKDF and the
RFCs' test vectors."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings, strategies as st

from licentia.crypto import recipes
from licentia.crypto.recipes import InvalidArtifact, KeyAgreement, MacKey


@settings(max_examples=200, deadline=None)
@given(key=st.binary(max_size=200), data=st.binary(max_size=300))
def test_mac_is_hmac_sha256(key: bytes, data: bytes) -> None:
    expected = hmac.new(key, data, hashlib.sha256).digest()
    assert MacKey(key).tag(data) == expected == recipes.mac(key, data)
    assert MacKey(key).matches(data, expected)
    kept = MacKey(key)  # the keyed state is copied per MAC, never consumed
    assert [kept.tag(data), kept.tag(b"other"), kept.tag(data)] == [expected, recipes.mac(key, b"other"), expected]


def test_mac_matches_rfc_4231() -> None:
    # RFC 4231, test cases 2 and 6 (a key longer than the block)
    assert recipes.mac(b"Jefe", b"what do ya want for nothing?").hex() == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    assert recipes.mac(b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First").hex() == (
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=100), tag=st.binary(max_size=40), index=st.integers(min_value=0, max_value=31))
def test_a_mac_that_differs_in_any_way_does_not_match(data: bytes, tag: bytes, index: int) -> None:
    key = MacKey(b"k" * 32)
    good = key.tag(data)
    flipped = good[:index] + bytes([good[index] ^ 0x01]) + good[index + 1 :]
    assert not key.matches(data, flipped)
    assert not key.matches(data + b"x", good)
    assert not key.matches(data, good[:-1]) and not key.matches(data, good + b"\x00")
    assert key.matches(data, tag) is (tag == good)


def test_agreement_both_sides_derive_the_same_key_as_hkdf() -> None:
    a, b = KeyAgreement(), KeyAgreement()
    assert a.public != b.public and len(a.public) == recipes.PUBLIC_KEY_SIZE
    info = b"licentia test" + a.public + b.public
    key = a.agree(b.public, info)
    assert key == b.agree(a.public, info) and len(key) == recipes.KEY_SIZE
    assert key != a.agree(b.public, info + b"!")  # info separates purposes
    assert key != KeyAgreement().agree(b.public, info)  # a fresh pair agrees another key


@settings(max_examples=100, deadline=None)
@given(secret=st.binary(min_size=1, max_size=80), info=st.binary(max_size=120))
def test_the_derivation_is_hkdf_sha256(secret: bytes, info: bytes) -> None:
    expected = HKDF(algorithm=SHA256(), length=32, salt=None, info=info).derive(secret)
    assert recipes._hkdf(secret, info) == expected == recipes.derive(secret, info)


def test_the_derivation_matches_rfc_5869() -> None:
    # RFC 5869, test case 3 (no salt, no info), first 32 bytes of its OKM
    ikm = bytes.fromhex("0b" * 22)
    assert recipes._hkdf(ikm, b"").hex() == "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"


@pytest.mark.parametrize("peer", [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x01" * 31, id="short"),
    pytest.param(b"\x01" * 33, id="long"),
    pytest.param(bytes(32), id="the-zero-point"),
    pytest.param((1).to_bytes(32, "little"), id="a-low-order-point"),
    pytest.param("a" * 32, id="text"),
])
def test_a_peer_key_that_gives_no_secret_is_refused(peer: bytes) -> None:
    with pytest.raises(InvalidArtifact):
        KeyAgreement().agree(peer, b"info")
