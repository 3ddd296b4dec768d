"""Reply frames assembled from kept parts must be the bytes msgpack itself would write."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, strategies as st

from licentia.runtime.replies import map_head_id, ok_frame, packed_bin_fields, packed_uint


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


@given(st.dictionaries(st.text(max_size=300), st.binary(max_size=70_000), max_size=4))
def test_packed_bin_fields_are_msgpacks_map_entries(fields: dict[str, bytes]) -> None:
    header = len(msgpack.packb(len(fields) * [None])) - len(fields)  # a map's header is as long as an array's
    assert packed_bin_fields(fields) == msgpack.packb(fields)[header:]


@given(st.integers(min_value=0, max_value=15))
def test_map_head_id_starts_a_map_whose_first_key_is_id(count: int) -> None:
    fields = {"id": 1, **{f"f{i}": i for i in range(count - 1)}} if count else {}
    packed = msgpack.packb(fields)
    assert map_head_id(count)[:1] == packed[:1]
    if count:
        assert packed.startswith(map_head_id(count))
