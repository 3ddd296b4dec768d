"""The fuzz targets of fuzz/ under hypothesis: short runs of the same functions atheris runs
for hours (`make fuzz`), from random bytes and from mutations of valid inputs. A target
raises only for a finding (an exception other than the parser's typed error, or a 5xx from
central); what the runs found is kept below as regressions."""

from __future__ import annotations

import base64
import struct

import msgpack
import pytest
from fuzz import seeds, targets
from hypothesis import HealthCheck, given, settings, strategies as st

from licentia.model import ErrorCode
from licentia.protocol.frames import MAX_STR, VERSION_BYTE, FrameDecoder, ProtocolError
from licentia.protocol.messages import validate_request

SEEDS = seeds.seeds()


@st.composite
def inputs(draw: st.DrawFn, name: str) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=600))
    data = bytearray(draw(st.sampled_from(SEEDS[name])))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 3))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == 0 and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == 1:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == 2:
            del data[pos : pos + draw(st.integers(1, 16))]
        else:
            data = data[: pos + 1]
    return bytes(data)


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_target_raises_only_for_findings(name: str) -> None:
    target = targets.TARGETS[name]

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(inputs(name))
    def run(data: bytes) -> None:
        target(data)

    run()


def test_every_seed_is_accepted_deep_enough() -> None:
    """The seeds reach past the signatures: a re-signed request decodes to a request."""
    for name, items in SEEDS.items():
        for data in items:
            targets.TARGETS[name](data)


def _frame(body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, VERSION_BYTE) + body


def test_an_op_nested_1000_deep_is_refused_not_a_recursion_error() -> None:
    """validate_request put repr(op) in its message: RecursionError at ~1,000 levels."""
    body = b"\x82\xa2id\x01\xa2op" + b"\x91" * 1020 + b"\xc0"
    (msg,) = FrameDecoder().feed(_frame(body))
    with pytest.raises(ProtocolError) as exc:
        validate_request(msg)
    assert exc.value.code == ErrorCode.PROTOCOL_ERROR and "of type list" in exc.value.message
    targets.frames(b"\x3f" + _frame(body))


@pytest.mark.parametrize("value", [
    "x" * (MAX_STR + 1),  # a string over the bound
    [0] * (1 << 16 | 1),  # an array over the bound
    {str(i): 0 for i in range((1 << 12) + 1)},  # a map over the bound
    msgpack.ExtType(1, b"x"),  # an extension type
])
def test_frame_bodies_are_bounded_before_validation(value: object) -> None:
    body = msgpack.packb({"id": 1, "op": "hello", "x": value})
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as exc:
        decoder.feed(_frame(body))
    assert not exc.value.fatal and "not msgpack" in exc.value.message
    assert decoder.feed(_frame(msgpack.packb({"id": 2, "op": "hello"}))) == [{"id": 2, "op": "hello"}]


@pytest.mark.parametrize("ops", [
    b"\x91\x81\xa2op" + b"\x91" * 1015 + b"\xc0",  # an operation named by a list 1,015 deep
    b"\x91\x82\xa2op\xa4text\xa4text" + b"\x91" * 1015 + b"\xc0",  # a firm text that is such a list
])
def test_update_operations_nested_1000_deep_are_refused_not_a_recursion_error(ops: bytes) -> None:
    """The same deep input through `update_file` (operations sealed inside a valid update):
    the refusal put repr(op) in its message, and the firm text went through str()."""
    targets.update_file(b"\x02" + ops)


FOUND = [  # atheris inputs: a serial that was not text raised AttributeError in ContainerSerial.parse
    ("container_file", "AYamc2VyaWFsMqpjcmVhdGVkX2F0zmhO4YCoc2lnbl9rZXnEIGvpI3a552lQ+ZoRgz/aADjUTyiM7dal+TvKBy/hEBsOp2F0ZWRfYXTAqXNpZ25lZF9hdMClZmlybXOQ"),
    ("receipt_file", "AYamc2VyaWFszzEzMC00MjQyqWZpcm0EY29kZc4AW42KrnVwZGF0ZV9jb3VudGVyAa11cGRhdGVfZGlnZXN0xCCVHe9vXJYpVjo9qsVn0kreDCDch9QzS7RgEORGZxi3jKVpdGVtc5GDp2l0ZW1faWQBrHByb2R1Y3RfY29kZSqmZGlnZXN0xCClq/EGHyDjYPcve2UOHvXBpXiUOUhhS4cYlxSy7pC5/aphcHBsaWVkX2F0zmhO4YE="),
    ("request_file", "AYimc2VyaWFsyzEzMS00MjQyqWZpcm1fY29kZc4AW42KrnVwZGF0ZV9jb3VudGVyAKpib3hfcHVibGljxCDDiVDxNvTo2s8or1X8zvxF2ZisglFkcRYkT5SuQIr4fK9maXJtX3B1YmxpY19rZXnApWl0ZW1zkKpjcmVhdGVkX2F0zmhO4YCrZW52aXJvbm1lbnSBqGhvc3RuYW1lpGZ1eno="),
]


@pytest.mark.parametrize(("name", "data"), FOUND)
def test_what_the_atheris_runs_found(name: str, data: str) -> None:
    targets.TARGETS[name](base64.b64decode(data))
