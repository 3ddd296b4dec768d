"""Shamir secret sharing over GF(2^8): field tables, round trips, thresholds, refusals."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import given, settings, strategies as st

from licentia.crypto import shamir
from licentia.crypto.shamir import combine, split

FAST = settings(max_examples=60, deadline=None)


def slow_mul(a: int, b: int) -> int:
    """GF(2^8) multiplication by shift-and-add, independent of the module's tables."""
    product = 0
    while b:
        if b & 1:
            product ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11B
        b >>= 1
    return product


def slow_eval(coefficients: list[int], x: int) -> int:
    """Evaluate sum(c_k x^k) over GF(2^8), term by term."""
    total = 0
    power = 1
    for c in coefficients:
        total ^= slow_mul(c, power)
        power = slow_mul(power, x)
    return total


def test_field_tables_agree_with_shift_and_add_multiplication() -> None:
    for a in range(256):
        for b in range(256):
            assert shamir._mul(a, b) == slow_mul(a, b)


def test_every_nonzero_element_has_an_inverse() -> None:
    for a in range(1, 256):
        assert slow_mul(a, shamir._div(1, a)) == 1


@FAST
@given(
    secret=st.binary(min_size=0, max_size=24),
    threshold=st.integers(1, 6),
    extra=st.integers(0, 6),
    data=st.data(),
)
def test_shares_are_the_polynomials_evaluated_at_x(
    secret: bytes, threshold: int, extra: int, data: st.DataObject
) -> None:
    count = threshold + extra
    randomness = data.draw(
        st.binary(min_size=(threshold - 1) * len(secret), max_size=(threshold - 1) * len(secret))
    )
    shares = split(secret, threshold, count, rng=lambda n: randomness[:n])
    assert [x for x, _ in shares] == list(range(1, count + 1))
    n = len(secret)
    for x, y in shares:
        expected = bytes(
            slow_eval([secret[i]] + [randomness[k * n + i] for k in range(threshold - 1)], x)
            for i in range(n)
        )
        assert y == expected


@FAST
@given(
    secret=st.binary(min_size=0, max_size=48),
    threshold=st.integers(1, 12),
    extra=st.integers(0, 12),
    data=st.data(),
)
def test_any_threshold_subset_rebuilds_the_secret(
    secret: bytes, threshold: int, extra: int, data: st.DataObject
) -> None:
    count = threshold + extra
    shares = split(secret, threshold, count)
    size = data.draw(st.integers(threshold, count))
    subset = data.draw(st.permutations(shares))[:size]
    assert combine(subset) == secret


@settings(max_examples=10, deadline=None)
@given(secret=st.binary(min_size=1, max_size=64), data=st.data())
def test_the_largest_split_round_trips(secret: bytes, data: st.DataObject) -> None:
    threshold = data.draw(st.integers(1, shamir.MAX_SHARES))
    shares = split(secret, threshold, shamir.MAX_SHARES)
    subset = data.draw(st.permutations(shares))[:threshold]
    assert combine(subset) == secret


@FAST
@given(
    secret=st.binary(min_size=16, max_size=48),
    threshold=st.integers(2, 12),
    extra=st.integers(0, 12),
    data=st.data(),
)
def test_fewer_than_threshold_shares_do_not_give_the_secret(
    secret: bytes, threshold: int, extra: int, data: st.DataObject
) -> None:
    # With the OS generator the result is a uniformly random string; for 16+ bytes a
    # collision with the secret has probability 2**-128.
    shares = split(secret, threshold, threshold + extra)
    size = data.draw(st.integers(1, threshold - 1))
    subset = data.draw(st.permutations(shares))[:size]
    assert combine(subset) != secret


def repeating(byte: int) -> Callable[[int], bytes]:
    """An rng that always answers with one byte value (to sweep a coefficient)."""
    return lambda n: bytes([byte]) * n


def test_threshold_minus_one_shares_are_consistent_with_every_secret() -> None:
    # Perfect secrecy, checked exhaustively for a one-byte secret at threshold 2: as the
    # random coefficient runs over the field, every share takes every value, whatever
    # the secret, so one share says nothing about it.
    for s in range(256):
        values: list[set[int]] = [set(), set(), set()]
        for a in range(256):
            for i, (_, y) in enumerate(split(bytes([s]), 2, 3, rng=repeating(a))):
                values[i].add(y[0])
        assert all(len(v) == 256 for v in values)


def test_threshold_one_makes_every_share_the_secret() -> None:
    secret = os.urandom(32)
    assert all(y == secret for _, y in split(secret, 1, 9))


def test_more_shares_than_needed_still_rebuild() -> None:
    secret = os.urandom(32)
    shares = split(secret, 3, 10)
    assert combine(shares) == secret
    assert combine(list(reversed(shares))) == secret


@pytest.mark.parametrize(
    ("threshold", "count"), [(0, 3), (4, 3), (1, 0), (1, 256), (-1, 5), (2, -3)]
)
def test_split_refuses_bad_parameters(threshold: int, count: int) -> None:
    with pytest.raises(ValueError):
        split(b"secret", threshold, count)


def test_split_refuses_a_short_rng() -> None:
    with pytest.raises(ValueError):
        split(b"secret", 3, 5, rng=lambda n: b"\x00" * (n - 1))


def test_split_refuses_non_int_parameters() -> None:
    with pytest.raises(TypeError):
        split(b"secret", True, 5)
    with pytest.raises(TypeError):
        split("secret", 2, 5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "shares",
    [
        [],
        [(1, b"ab"), (1, b"ab")],
        [(0, b"ab")],
        [(256, b"ab")],
        [(1, b"ab"), (2, b"abc")],
        [(1, "ab")],
        [(True, b"ab")],
        [(1, b"ab", 3)],
    ],
)
def test_combine_refuses_bad_shares(shares: list[tuple[int, bytes]]) -> None:
    with pytest.raises(ValueError):
        combine(shares)


@given(
    st.integers(1, 40),
    st.data(),
    st.binary(min_size=1, max_size=33),
)
def test_a_share_table_interpolates_any_subset_as_combine_does(count: int, data: st.DataObject, secret: bytes) -> None:
    from licentia.crypto.shamir import ShareTable, interpolate

    threshold = data.draw(st.integers(1, count))
    shares = split(secret, threshold, count)
    table = ShareTable(shares)
    subset = data.draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=count, unique=True))
    chosen = [shares[i] for i in subset]
    assert table.secret(subset) == combine(chosen) == interpolate(chosen, 0)
    if len(subset) >= threshold:
        assert table.secret(subset) == secret
        x = data.draw(st.integers(1, count))
        assert interpolate(chosen, x) == shares[x - 1][1]
