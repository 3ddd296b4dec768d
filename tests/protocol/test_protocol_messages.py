"""The message catalogue, its documentation, and the client's import cost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from licentia.model import ErrorCode
from licentia.protocol import ProtocolError, validate_request
from licentia.protocol.messages import REPLIES, REQUESTS, reply, request

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

GOOD = [
    request(1, "hello", versions=[1], client={
        "kind": "program", "pid": 4242, "pid_start": 1731234567.25, "program": "cad", "user": "ann",
        "host": "pc-a", "station": {"host_id": "h-1", "vm_id": "", "session_id": "3"},
        "session": "remote desktop", "in_vm": False}),
    request(2, "access", firm=10, product=13, mode="per-station", feature=4, version="2.1",
            nonce=b"\x01" * 16, where="local-first"),
    request(3, "access", firm=10, product=13),
    request(4, "release", handle=7),
    request(5, "decrement", handle=7, units=3),
    request(6, "check", handle=7, nonce=b"n"),
    request(7, "keepalive"),
    request(8, "keepalive", handles=[1, 2]),
    request(9, "sessions", firm=10),
    request(10, "info", what="containers"),
    request(11, "admin.release", handle=7),
    request(12, "events", since=0, limit=100),
    request(13, "release", handle=7, added_by_a_newer_client=True),  # unknown fields are ignored
    request(14, "rescan"),
    request(15, "borrow", firm=10, product=13, seconds=86400, server="srv:22350", container="130-1", offline=True),
    request(16, "borrow.import", certificate=b"LCBW"),
    request(17, "borrow.return", borrow="b1", offline=False),
    request(18, "borrow.list"),
    request(19, "borrow.take", request=b"LCBQ"),
    request(20, "borrow.give-back", receipt=b"LCBT"),
    request(21, "tmr.items"),
    request(22, "tmr.prove", firm=10, tmr_id=1, nonce=b"n" * 32, handle=7, units=5),
]


@pytest.mark.parametrize("msg", GOOD, ids=lambda m: f"{m['id']}-{m['op']}")
def test_good_requests(msg: dict[str, object]) -> None:
    assert validate_request(msg) == msg["op"]


@pytest.mark.parametrize(
    ("msg", "code", "words"),
    [
        ({"id": 0, "op": "release", "handle": 1}, ErrorCode.PROTOCOL_ERROR, "id"),
        ({"id": 3, "op": "fly"}, ErrorCode.PROTOCOL_ERROR, "unknown operation"),
        ({"id": 3}, ErrorCode.PROTOCOL_ERROR, "unknown operation"),
        ({"id": 3, "op": "release"}, ErrorCode.INVALID_PARAMETER, "handle is missing"),
        ({"id": 3, "op": "release", "handle": True}, ErrorCode.INVALID_PARAMETER, "handle must be an integer"),
        ({"id": 3, "op": "borrow", "firm": 1, "product": 2}, ErrorCode.INVALID_PARAMETER, "seconds is missing"),
        ({"id": 3, "op": "borrow.take", "request": "text"}, ErrorCode.INVALID_PARAMETER, "request must be bytes"),
        ({"id": 3, "op": "access", "firm": 1, "product": 2, "mode": "sometimes"}, ErrorCode.INVALID_PARAMETER,
         "mode must be one of"),
        ({"id": 3, "op": "access", "firm": 1, "product": 2, "where": 1}, ErrorCode.INVALID_PARAMETER, "where"),
        ({"id": 3, "op": "hello", "versions": [1], "client": {"station": {"vm_id": "x"}}},
         ErrorCode.INVALID_PARAMETER, "client.station.host_id is missing"),
        ({"id": 3, "op": "hello", "versions": [1, "2"], "client": {}}, ErrorCode.INVALID_PARAMETER, "versions[1]"),
        ({"id": 3, "op": "hello", "versions": 1, "client": {}}, ErrorCode.INVALID_PARAMETER, "must be a list"),
        ({"id": 3, "op": "hello", "versions": [1], "client": []}, ErrorCode.INVALID_PARAMETER, "must be a map"),
        ({"id": 3, "op": "hello", "versions": [1], "client": {"pid_start": "x"}}, ErrorCode.INVALID_PARAMETER,
         "an integer or a number"),
    ],
)
def test_bad_requests(msg: dict[str, object], code: ErrorCode, words: str) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_request(msg)
    assert info.value.code is code and words in info.value.message and not info.value.fatal
    if msg["id"] == 3:
        assert info.value.request_id == 3


@given(st.lists(st.one_of(st.integers(), st.booleans(), st.floats(allow_nan=False), st.text(max_size=2),
                          st.none()), max_size=40))
def test_a_keepalive_names_integers_only_and_the_first_other_is_named(handles: list[object]) -> None:
    msg = request(1, "keepalive", handles=handles)
    bad = [i for i, h in enumerate(handles) if type(h) is not int]
    if not bad:
        assert validate_request(msg) == "keepalive"
        return
    with pytest.raises(ProtocolError) as caught:
        validate_request(msg)
    assert caught.value.code == ErrorCode.INVALID_PARAMETER
    assert f"handles[{bad[0]}]" in caught.value.message


def test_every_op_is_tested_and_documented() -> None:
    assert {m["op"] for m in GOOD} == set(REQUESTS) == set(REPLIES)
    text = DOCS.read_text()
    for op, spec in REQUESTS.items():
        assert f"`{op}`" in text, op
        for field in spec:
            assert f"`{field}`" in text, (op, field)


def test_reply_builder() -> None:
    assert reply(4, handle=9) == {"id": 4, "ok": True, "handle": 9}


def test_the_blocking_client_imports_neither_asyncio_nor_ssl_nor_cryptography() -> None:
    code = (
        "import sys, licentia.protocol.client as c\n"
        "print(sorted(m for m in ('asyncio', 'ssl', 'cryptography') if m in sys.modules))\n"
        "c.AsyncClient\n"
        "print('asyncio' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True"


def test_the_access_modes_on_the_wire_are_the_models_and_the_client_does_not_load_the_enums() -> None:
    from licentia.model import AccessMode
    from licentia.protocol.messages import MODES

    assert tuple(m.value for m in AccessMode) == MODES
    code = "import sys, licentia.protocol.client\nprint('licentia.model.states' in sys.modules)\n"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
