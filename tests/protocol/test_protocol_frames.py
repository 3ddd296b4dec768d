"""Frames: layout, the decoder's answers to bad input, and fuzzing."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from licentia.model import ErrorCode, LicentiaError
from licentia.protocol import (
    MAX_FRAME,
    VERSION_BYTE,
    FrameDecoder,
    ProtocolError,
    encode,
    error_frame,
    error_reply,
    raise_for_reply,
    reply_error,
)


def frame(body: bytes, version: int = VERSION_BYTE) -> bytes:
    return struct.pack(">IB", len(body) + 1, version) + body


def test_layout_is_length_version_msgpack() -> None:
    data = encode({"id": 7, "op": "release", "handle": 3})
    length, version = struct.unpack(">IB", data[:5])
    assert length == len(data) - 4 and version == 0xB1 == VERSION_BYTE
    assert msgpack.unpackb(data[5:]) == {"id": 7, "op": "release", "handle": 3}


def test_round_trip_many_frames_in_one_chunk_and_byte_by_byte() -> None:
    msgs = [{"id": i, "op": "access", "firm": 10, "nonce": bytes([i]) * 16, "x": [1.5, None, "é"]} for i in range(1, 6)]
    data = b"".join(encode(m) for m in msgs)
    assert FrameDecoder().feed(data) == msgs
    dec = FrameDecoder()
    out = []
    for i in range(len(data)):
        out += dec.feed(data[i : i + 1])
    assert out == msgs and dec.buffered == 0
    dec = FrameDecoder()
    assert dec.feed(memoryview(data)[:7]) == []
    assert dec.buffered == 7
    assert dec.feed(bytearray(data[7:])) == msgs


def test_oversize_frame_is_fatal_before_its_body_arrives() -> None:
    dec = FrameDecoder(max_frame=100)
    ok = encode({"id": 1})
    with pytest.raises(ProtocolError) as info:
        dec.feed(ok + struct.pack(">I", 101))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE and info.value.fatal
    assert info.value.messages == [{"id": 1}]
    assert dec.buffered == 0
    with pytest.raises(ProtocolError) as again:
        dec.feed(ok)
    assert again.value.fatal


def test_exactly_the_limit_is_accepted() -> None:
    body = msgpack.packb({"id": 1, "pad": b""})
    pad = 100 - 1 - len(body)  # a bin8 header stays 2 bytes up to 255
    data = encode({"id": 1, "pad": b"x" * pad}, max_frame=100)
    assert struct.unpack(">I", data[:4])[0] == 100
    assert FrameDecoder(max_frame=100).feed(data)[0]["pad"] == b"x" * pad


def test_empty_length_is_fatal() -> None:
    with pytest.raises(ProtocolError) as info:
        FrameDecoder().feed(b"\x00\x00\x00\x00\xb1")
    assert info.value.fatal and info.value.code is ErrorCode.PROTOCOL_ERROR


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (frame(msgpack.packb({"id": 2}), version=0xB2), "version byte 0xb2"),
        (frame(b"\xc1\xc1"), "not msgpack"),
        (frame(msgpack.packb({"id": 2}) + b"\x01"), "not msgpack"),  # extra data
        (frame(b"\x92\x01\x02"), "not a map"),
        (frame(msgpack.packb({"op": "x"})), "no integer id"),
        (frame(msgpack.packb({"id": True})), "no integer id"),
        (frame(msgpack.packb({"id": "1"})), "no integer id"),
        (frame(b"\x81\x01\x02"), "not msgpack"),  # integer map key
        (frame(b"\xdd\xff\xff\xff\xff"), "not msgpack"),  # array claiming 4G items
    ],
)
def test_bad_frames_are_skipped_with_an_error(bad: bytes, words: str) -> None:
    dec = FrameDecoder()
    before, after = encode({"id": 1}), encode({"id": 3})
    with pytest.raises(ProtocolError) as info:
        dec.feed(before + bad + after)
    err = info.value
    assert not err.fatal and words in err.message and err.code is ErrorCode.PROTOCOL_ERROR
    assert err.messages == [{"id": 1}] and err.request_id == 0
    assert dec.feed(b"") == [{"id": 3}]
    alone = FrameDecoder()  # one whole frame per read takes a fast path; it must fail the same way
    with pytest.raises(ProtocolError) as info:
        alone.feed(bad)
    assert info.value.message == err.message and not info.value.fatal and info.value.messages == []
    assert alone.feed(after) == [{"id": 3}] and alone.buffered == 0


def test_encode_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(ProtocolError) as info:
        encode({"id": 4, "blob": b"x" * MAX_FRAME})
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE and info.value.request_id == 4
    with pytest.raises(ProtocolError) as info:
        encode({"id": 5, "thing": object()})
    assert info.value.request_id == 5


def test_error_replies_round_trip() -> None:
    exc = LicentiaError(ErrorCode.NO_MORE_LICENSES, "all 5 seats are in use")
    (reply,) = FrameDecoder().feed(error_frame(exc, 9))
    assert reply == {"id": 9, "ok": False, "code": 212, "message": "all 5 seats are in use", "hint": exc.hint}
    back = reply_error(reply)
    assert back.code is ErrorCode.NO_MORE_LICENSES and back.message == exc.message
    with pytest.raises(LicentiaError) as info:
        raise_for_reply(reply)
    assert info.value.code is ErrorCode.NO_MORE_LICENSES
    assert raise_for_reply({"id": 1, "ok": True}) == {"id": 1, "ok": True}
    unknown = reply_error(error_reply(3, 4242, "from a newer server"))
    assert unknown.code is ErrorCode.INTERNAL and "4242" in unknown.message
    assert reply_error({"id": 3, "ok": False}).code is ErrorCode.PROTOCOL_ERROR
    perr = ProtocolError(ErrorCode.PROTOCOL_ERROR, "bad", request_id=12)
    assert FrameDecoder().feed(error_frame(perr))[0]["id"] == 12


# -- fuzzing -------------------------------------------------------------------------

scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=6,
)
messages = st.builds(
    lambda rid, extra: {**extra, "id": rid},
    st.integers(0, 2**32),
    st.dictionaries(st.text(max_size=8), values, max_size=5),
)


def drain(dec: FrameDecoder, data: bytes) -> tuple[list[dict[str, object]], int]:
    """Feed like a server does: go on after non-fatal errors, stop at a fatal one."""
    out: list[dict[str, object]] = []
    errors = 0
    while True:
        try:
            out += dec.feed(data)
            return out, errors
        except ProtocolError as exc:  # anything else fails the test
            out += exc.messages
            errors += 1
            if exc.fatal:
                return out, errors
            data = b""


bytes_fuzz = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
fuzz = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@bytes_fuzz
@given(st.binary(max_size=2000), st.integers(1, 64))
def test_random_bytes_only_ever_give_protocol_errors(data: bytes, chunk: int) -> None:
    dec = FrameDecoder(max_frame=4096)
    for i in range(0, len(data), chunk):
        _, errors = drain(dec, data[i : i + chunk])
        if errors and dec._failed:
            break


@fuzz
@given(st.lists(messages, min_size=1, max_size=6), st.data())
def test_valid_frames_split_anywhere_decode_the_same(msgs: list[dict[str, object]], data: st.DataObject) -> None:
    stream = b"".join(encode(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    dec = FrameDecoder()
    out: list[dict[str, object]] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out += dec.feed(stream[start:cut])
        start = cut
    assert out == msgs and dec.buffered == 0


@fuzz
@given(st.lists(messages, min_size=1, max_size=5), st.data())
def test_truncated_stream_gives_the_whole_frames_and_waits(msgs: list[dict[str, object]], data: st.DataObject) -> None:
    frames = [encode(m) for m in msgs]
    stream = b"".join(frames)
    cut = data.draw(st.integers(0, len(stream)))
    dec = FrameDecoder()
    out = dec.feed(stream[:cut])
    whole = 0
    total = 0
    for f in frames:
        if total + len(f) > cut:
            break
        total += len(f)
        whole += 1
    assert out == msgs[:whole] and dec.buffered == cut - total


@fuzz
@given(st.lists(messages, max_size=3), st.integers(4097, 2**32 - 1), st.binary(max_size=50))
def test_oversize_length_after_good_frames(msgs: list[dict[str, object]], length: int, tail: bytes) -> None:
    dec = FrameDecoder(max_frame=4096)
    stream = b"".join(encode(m) for m in msgs) + struct.pack(">I", length) + tail
    out, errors = drain(dec, stream)
    assert out == msgs and errors == 1


@fuzz
@given(st.lists(messages, min_size=1, max_size=4), st.lists(st.binary(min_size=1, max_size=30), max_size=4))
def test_garbage_frames_between_good_ones_disturb_nothing_else(
    msgs: list[dict[str, object]], junk: list[bytes]
) -> None:
    parts = []
    for i, m in enumerate(msgs):
        parts.append(encode(m))
        if i < len(junk):
            parts.append(frame(junk[i], version=VERSION_BYTE if junk[i][0] % 2 else 0x42))
    out, _ = drain(FrameDecoder(), b"".join(parts))
    # a junk body may happen to be a valid message; every real one comes through in order
    rest = iter(out)
    assert all(any(m == o for o in rest) for m in msgs)


@bytes_fuzz
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 255), st.binary(max_size=40)), max_size=8),
       st.integers(1, 16))
def test_small_random_headers_and_bodies(parts: list[tuple[int, int, bytes]], chunk: int) -> None:
    """Lengths that fit the limit but not the body, any version byte: resync or fail, never crash."""
    data = b"".join(struct.pack(">IB", n, v) + body for n, v, body in parts)
    dec = FrameDecoder(max_frame=64)
    for i in range(0, len(data), chunk):
        drain(dec, data[i : i + chunk])
        if dec._failed:
            break
    assert dec.buffered <= 64 + 4
