"""Reply frames assembled from kept parts must be the bytes msgpack itself would write."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, strategies as st

from licentia.runtime.replies import ok_frame, packed_uint


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_packed_uint_is_msgpacks_own_encoding(n: int) -> None:
    assert packed_uint(n) == msgpack.packb(n)


@pytest.mark.parametrize("n", [0, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0xFFFFFFFF, 0x100000000, 2**64 - 1])
def test_packed_uint_at_every_width_boundary(n: int) -> None:
    assert packed_uint(n) == msgpack.packb(n)
    assert msgpack.unpackb(packed_uint(n)) == n


@pytest.mark.parametrize("n", [-1, 2**64])
def test_packed_uint_refuses_what_it_cannot_encode(n: int) -> None:
    with pytest.raises((ValueError, OverflowError)):
        packed_uint(n)


@given(st.integers(min_value=1, max_value=2**64 - 1))
def test_ok_frame_decodes_to_the_ok_reply(rid: int) -> None:
    frame = ok_frame(packed_uint(rid))
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert msgpack.unpackb(frame[5:]) == {"id": rid, "ok": True}
