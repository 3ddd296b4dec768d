"""Both clients against a real asyncio server on 127.0.0.1 and on a Unix socket."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import tempfile
import threading
from collections.abc import Iterator

import pytest
from proto_echo import EchoServer, running

from licentia.model import ErrorCode, LicentiaError
from licentia.protocol import FrameDecoder, encode
from licentia.protocol.client import AsyncClient, Client, Endpoint, parse_address


@pytest.fixture(scope="module")
def server() -> Iterator[EchoServer]:
    with running(max_frame=64 * 1024) as srv:
        yield srv


@pytest.fixture(scope="module")
def tcp(server: EchoServer) -> tuple[str, int]:
    return server.listen_tcp()


@pytest.fixture(scope="module")
def unix_path(server: EchoServer) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as d:
        yield server.listen_unix(os.path.join(d, "runtime.sock"))


@pytest.fixture(params=["tcp", "unix"])
def address(request: pytest.FixtureRequest, tcp: tuple[str, int], unix_path: str) -> str:
    return f"{tcp[0]}:{tcp[1]}" if request.param == "tcp" else unix_path


# -- the blocking client ------------------------------------------------------------


def test_sync_request_and_refusal(address: str) -> None:
    with Client(address) as c:
        reply = c.request("echo", firm=10, nonce=b"\x00" * 16)
        assert reply["ok"] is True and reply["firm"] == 10 and reply["nonce"] == b"\x00" * 16
        with pytest.raises(LicentiaError) as info:
            c.request("fail", code=212)
        assert info.value.code is ErrorCode.NO_MORE_LICENSES and info.value.message == "refused on purpose"
        with pytest.raises(LicentiaError) as info:
            c.request("fail", code=4321)
        assert info.value.code is ErrorCode.INTERNAL and "4321" in info.value.message
        assert c.request("echo", n=2)["n"] == 2  # a refusal leaves the connection usable


def test_sync_several_requests_in_flight_answered_out_of_order(address: str) -> None:
    with Client(address) as c:
        held = [c.send("hold", n=i) for i in range(5)]
        flush = c.send("flush")
        # collect in an order unlike the server's (flush first, then held last-first)
        for i, rid in enumerate(held):
            assert c.receive(rid)["n"] == i
        assert c.receive(flush)["held"] == 5
        assert len(set(held)) == 5 and flush > max(held)


def test_sync_client_shared_by_threads(tcp: tuple[str, int]) -> None:
    errors: list[BaseException] = []
    with Client(tcp) as c:
        def worker(k: int) -> None:
            try:
                for i in range(40):
                    assert c.request("echo", k=k, i=i)["i"] == i
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors


def test_sync_timeout_keeps_the_connection(address: str) -> None:
    with Client(address, timeout=5.0) as c:
        rid = c.send("silent")
        with pytest.raises(LicentiaError) as info:
            c.receive(rid, timeout=0.05)
        assert info.value.code is ErrorCode.NETWORK_FAULT
        assert c.request("echo", after="timeout")["after"] == "timeout"
        with pytest.raises(LicentiaError) as info:
            c.receive(rid)  # given up: no longer waiting
        assert info.value.code is ErrorCode.INVALID_PARAMETER


def test_sync_server_closing_or_garbage_breaks_the_connection(address: str) -> None:
    for op, code in (("close", ErrorCode.NETWORK_FAULT), ("garbage", ErrorCode.PROTOCOL_ERROR)):
        c = Client(address)
        pending = c.send("hold")
        with pytest.raises(LicentiaError) as info:
            c.request(op)
        assert info.value.code is code
        assert c.closed
        with pytest.raises(LicentiaError):
            c.receive(pending)
        with pytest.raises(LicentiaError) as info:
            c.request("echo")
        assert info.value.code is code


def test_sync_connect_failures_name_what_is_missing() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(LicentiaError) as info:
        Client(("127.0.0.1", port), timeout=2)
    assert info.value.code is ErrorCode.SERVER_NOT_FOUND
    with tempfile.TemporaryDirectory() as d, pytest.raises(LicentiaError) as info:
        Client(os.path.join(d, "none.sock"))
    assert info.value.code is ErrorCode.NO_LOCAL_RUNTIME


def test_hello_checks_the_version(address: str) -> None:
    with Client(address) as c:
        assert c.hello({"pid": os.getpid(), "program": "test"})["version"] == 1
        with pytest.raises(LicentiaError) as info:
            c.hello({"program": "old-server"})
        assert info.value.code is ErrorCode.PROTOCOL_ERROR and "99" in info.value.message

    async def main() -> None:
        async with await AsyncClient.connect(address) as c:
            assert (await c.hello({"program": "test"}))["version"] == 1
            with pytest.raises(LicentiaError):
                await c.hello({"program": "old-server"})

    asyncio.run(main())


# -- the asyncio client -------------------------------------------------------------


def test_async_many_requests_in_flight(address: str) -> None:
    async def main() -> None:
        async with await AsyncClient.connect(address) as c:
            replies = await asyncio.gather(*(c.request("echo", i=i) for i in range(200)))
            assert [r["i"] for r in replies] == list(range(200))
            held = [c.send("hold", n=i) for i in range(4)]
            flushed = await c.request("flush")
            assert flushed["held"] == 4
            assert [(await f)["n"] for f in held] == [0, 1, 2, 3]
            with pytest.raises(LicentiaError) as info:
                await c.request("fail", code=213)
            assert info.value.code is ErrorCode.EXCLUSIVE_CONFLICT
            with pytest.raises(LicentiaError) as info:
                await c.request("silent", timeout=0.05)
            assert info.value.code is ErrorCode.NETWORK_FAULT
            assert (await c.request("echo", x=1))["x"] == 1

    asyncio.run(main())


def test_async_close_and_garbage_fail_pending_requests(address: str) -> None:
    async def main() -> None:
        for op, code in (("close", ErrorCode.NETWORK_FAULT), ("garbage", ErrorCode.PROTOCOL_ERROR)):
            c = await AsyncClient.connect(address)
            pending = c.send("hold")
            with pytest.raises(LicentiaError) as info:
                await c.request(op)
            assert info.value.code is code
            with pytest.raises(LicentiaError):
                await pending
            assert c.closed
            with pytest.raises(LicentiaError):
                c.send("echo")
            await c.close()

    asyncio.run(main())


def test_async_connect_failures() -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory() as d:
            with pytest.raises(LicentiaError) as info:
                await AsyncClient.connect("unix:" + os.path.join(d, "none.sock"))
            assert info.value.code is ErrorCode.NO_LOCAL_RUNTIME

    asyncio.run(main())


# -- the server side: bad frames from one client disturb no other ---------------------


def raw_exchange(tcp: tuple[str, int], data: bytes) -> tuple[list[dict[str, object]], bool]:
    """Send raw bytes; return the replies read until the server closes or goes quiet."""
    dec = FrameDecoder()
    out: list[dict[str, object]] = []
    with socket.create_connection(tcp, timeout=30) as s:
        s.sendall(data)
        s.sendall(encode({"id": 99, "op": "echo"}))
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                return out, False
            except ConnectionResetError:
                return out, True
            if not chunk:
                return out, True
            out += dec.feed(chunk)
            if any(m["id"] == 99 for m in out):
                return out, False


def test_malformed_frame_gets_an_error_frame_and_the_connection_goes_on(
    server: EchoServer, tcp: tuple[str, int]
) -> None:
    with Client(tcp) as bystander:
        bad = struct.pack(">IB", 3, 0xB1) + b"\xc1\xc1"
        replies, closed = raw_exchange(tcp, encode({"id": 1, "op": "echo"}) + bad)
        assert not closed
        assert [r["id"] for r in replies] == [1, 0, 99]
        assert replies[1]["ok"] is False and replies[1]["code"] == ErrorCode.PROTOCOL_ERROR
        assert bystander.request("echo", still="here")["still"] == "here"


def test_oversize_frame_gets_an_error_frame_and_a_closed_connection(
    server: EchoServer, tcp: tuple[str, int]
) -> None:
    with Client(tcp) as bystander:
        replies, closed = raw_exchange(tcp, struct.pack(">IB", 64 * 1024 + 1, 0xB1) + b"\x00" * 100)
        assert closed
        assert [(r["id"], r["code"]) for r in replies] == [(0, ErrorCode.FRAME_TOO_LARGE)]
        assert bystander.request("echo", still="here")["still"] == "here"


def test_messages_are_validated_by_the_catalogue(tcp: tuple[str, int]) -> None:
    with Client(tcp) as c:
        c.request("validate", request={"id": 1, "op": "release", "handle": 5})
        with pytest.raises(LicentiaError) as info:
            c.request("validate", request={"id": 1, "op": "release", "handle": "5"})
        assert info.value.code is ErrorCode.INVALID_PARAMETER and "handle" in info.value.message


# -- addresses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("/run/licentia/runtime.sock", Endpoint("/run/licentia/runtime.sock")),
        ("unix:rel.sock", Endpoint("rel.sock")),
        ("lic1.example.org", Endpoint(None, "lic1.example.org", 22350)),
        ("lic1:4000", Endpoint(None, "lic1", 4000)),
        ("[::1]:4000", Endpoint(None, "::1", 4000)),
        ("[::1]", Endpoint(None, "::1", 22350)),
        ("fe80::1", Endpoint(None, "fe80::1", 22350)),
        (("127.0.0.1", 9), Endpoint(None, "127.0.0.1", 9)),
    ],
)
def test_addresses(text: str | tuple[str, int], endpoint: Endpoint) -> None:
    assert parse_address(text) == endpoint


@pytest.mark.parametrize("bad", ["", "host:0", "host:70000", "host:http", "[::1", "[::1]x", ("h", True)])
def test_bad_addresses(bad: str | tuple[str, int]) -> None:
    with pytest.raises(LicentiaError) as info:
        parse_address(bad)
    assert info.value.code is ErrorCode.INVALID_PARAMETER
