"""The runtime under hostile load and bad input: limits, pipelined bad frames, deep or odd
values, handles across a SIGKILL. Real runtimes, raw sockets."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from tests.runtime.harness import Procs, Program, Runtime, Vendor, make_home, wait_for

from licentia.model import ErrorCode, ProductItem
from licentia.protocol.frames import FrameDecoder, encode

PRODUCT = 31


def frame(msg: dict[Any, Any]) -> bytes:
    body = msgpack.packb(msg)
    return struct.pack(">IB", len(body) + 1, 0xB1) + body


def raw(version: int, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, version) + body


class Raw:
    """A bare connection speaking frames (no SDK): what an attacker or a broken client sends."""

    def __init__(self, address: str | tuple[str, int], *, tls: bool = False) -> None:
        sock = socket.socket(socket.AF_UNIX if isinstance(address, str) else socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(20)
        sock.connect(address)
        if tls:  # an attacker does not check the server: only the handshake done
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(sock, server_hostname="licentia")
        self.sock = sock
        self.decoder = FrameDecoder(16 << 20)
        self.pending: list[dict[str, Any]] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> dict[str, Any] | None:
        """The next reply; None when the runtime closed the connection."""
        while not self.pending:
            data = self.sock.recv(1 << 16)
            if not data:
                return None
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    def hello(self, **client: Any) -> dict[str, Any]:
        self.send(frame({"id": 1, "op": "hello", "versions": [1], "client": {"kind": "program", **client}}))
        reply = self.read()
        assert reply is not None and reply["ok"], reply
        return reply

    def closed(self) -> bool:
        """Whether the runtime closed the connection (replies before the close are skipped)."""
        while True:
            try:
                if self.read() is None:
                    return True
            except OSError:
                return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def served(tmp_path: Path, root: Path, vendor: Vendor, procs: Procs) -> Iterator[tuple[Runtime, Path]]:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=PRODUCT, quantity=1000, units=100)])
    yield Runtime(procs, home, root), home


@pytest.fixture
def timed(tmp_path: Path, root: Path, vendor: Vendor, procs: Procs) -> Iterator[tuple[Runtime, Path]]:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=PRODUCT, quantity=1000, units=100)])
    yield Runtime(procs, home, root, "--hello-timeout", "2", "--idle-timeout", "3"), home


def local(rt: Runtime) -> tuple[str, int]:
    return ("127.0.0.1", int(rt.status["local_port"]))


def test_two_bad_frames_in_one_read_every_request_between_and_after_is_answered(
        served: tuple[Runtime, Path], vendor: Vendor) -> None:
    rt, _ = served
    c = Raw(rt.socket)
    c.hello()
    access = {"op": "access", "firm": vendor.firm, "product": PRODUCT}
    c.send(raw(0xB2, b"\x81\xa2id\x02") + frame({"id": 3, **access}) + raw(0xB1, b"\xc1")
           + frame({"id": 5, **access}) + frame({"id": 6, **access}))
    replies = [c.read() for _ in range(5)]
    assert all(r is not None for r in replies), replies
    by_id = {r["id"]: r for r in replies if r is not None and r["id"] in (3, 5, 6)}
    assert sorted(by_id) == [3, 5, 6] and all(r["ok"] for r in by_id.values()), replies
    assert [r["code"] for r in replies if r is not None and not r["ok"]] == [1008, 1008]


@pytest.mark.parametrize("request_body", [
    pytest.param({"id": 2, "op": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}, id="nested-op"),
    pytest.param({"id": 2, "op": "access", "firm": 1, "product": 1, "client": {b"k": 1}}, id="bytes-key-client"),
    pytest.param({"id": 2, b"op": "access"}, id="bytes-key"),
    pytest.param({"id": 2, "op": "keepalive", "handles": [1.5]}, id="float-handle"),
])
def test_odd_requests_get_a_clean_error_not_an_internal_one(served: tuple[Runtime, Path],
                                                           request_body: dict[Any, Any]) -> None:
    rt, _ = served
    c = Raw(rt.socket)
    c.hello()
    c.send(frame(request_body))
    reply = c.read()
    assert reply is not None and reply["id"] == 2 and not reply["ok"], reply
    assert reply["code"] != ErrorCode.INTERNAL, reply


def test_a_thousand_deep_op_gives_a_clean_error(served: tuple[Runtime, Path]) -> None:
    rt, _ = served
    c = Raw(rt.socket)
    c.hello()
    body = b"\x82\xa2id\x02\xa2op" + b"\x91" * 1000 + b"\x90"
    c.send(raw(0xB1, body))
    reply = c.read()
    assert reply is not None and reply["id"] in (0, 2) and reply["code"] in (105, 1008), reply
    assert "RecursionError" not in rt.output()
    c.send(frame({"id": 3, "op": "sessions"}))  # and the connection goes on
    answered = c.read()
    assert answered is not None and answered["id"] == 3


def test_hello_with_a_float_pid_start_as_documented(served: tuple[Runtime, Path], vendor: Vendor) -> None:
    rt, _ = served
    c = Raw(local(rt))
    c.send(frame({"id": 1, "op": "hello", "versions": [1],
                  "client": {"kind": "program", "pid": os.getpid(), "pid_start": 1731234567.25}}))
    reply = c.read()
    assert reply is not None and (reply["ok"] or reply["code"] == 105), reply


def test_frames_over_the_program_limit_close_the_connection(served: tuple[Runtime, Path]) -> None:
    rt, _ = served
    c = Raw(local(rt))
    c.send(struct.pack(">IB", 1 << 20, 0xB1) + b"\x00" * 1000)  # a 1 MiB frame announced
    reply = c.read()
    assert reply is not None and reply["code"] == 1009, reply
    assert c.closed()


def test_a_connection_that_never_says_hello_is_closed(timed: tuple[Runtime, Path]) -> None:
    rt, _ = timed
    c = Raw(local(rt))
    reply = c.read()  # nothing sent: the runtime says why and closes
    assert reply is not None and reply["code"] == 1402, reply
    assert c.closed()


def test_an_idle_connection_holding_nothing_is_closed_one_holding_a_seat_is_not(
        timed: tuple[Runtime, Path], vendor: Vendor, procs: Procs, root: Path) -> None:
    rt, home = timed
    # the holder is another process: the kernel names every connection of one process as
    # the same holder, so this test's own connections would count as holding its seat
    holding = Program(procs, root, {"LICENTIA_HOME": str(home)}, firm_code=vendor.firm, product_code=PRODUCT,
                      verify=False)
    assert holding.granted, holding.first
    idle = Raw(local(rt))
    idle.hello()
    reply = idle.read()
    assert reply is not None and reply["code"] == 1402, reply
    assert idle.closed()
    assert holding.ask("check")["valid"] is True  # silent as long, but holding a seat: still served


def test_connections_over_the_per_peer_limit_are_refused_and_the_unix_socket_still_serves(
        tmp_path: Path, root: Path, vendor: Vendor, procs: Procs) -> None:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=PRODUCT, quantity=10)])
    rt = Runtime(procs, home, root, "--max-connections", "5")
    held = [Raw(local(rt)) for _ in range(5)]
    for c in held:
        c.hello()
    extra = Raw(local(rt))
    reply = extra.read()
    assert reply is not None and reply["code"] == 1400, reply
    assert extra.closed()
    unix = Raw(rt.socket)
    unix.hello()
    unix.send(frame({"id": 2, "op": "access", "firm": vendor.firm, "product": PRODUCT}))
    answered = unix.read()
    assert answered is not None and answered["ok"], answered


def test_a_tls_connection_that_never_says_hello_is_closed(tmp_path: Path, root: Path, vendor: Vendor,
                                                          procs: Procs) -> None:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=PRODUCT, quantity=10)])
    rt = Runtime(procs, home, root, "--network", "--network-port", "0", "--hello-timeout", "2")
    c = Raw(("127.0.0.1", int(rt.status["network_port"])), tls=True)  # the handshake done, then silence
    reply = c.read()
    assert reply is not None and reply["code"] == 1402, reply
    assert c.closed()


class FewDescriptors(Procs):
    """Children started with a limit of 400 open files."""

    def spawn(self, args: list[str], **kwargs: Any) -> Any:
        return super().spawn(["prlimit", "--nofile=400:400", "--", *args], **kwargs)


def test_at_the_descriptor_limit_new_tcp_connections_are_shed_and_the_unix_socket_serves(
        tmp_path: Path, root: Path, vendor: Vendor) -> None:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=PRODUCT, quantity=10)])
    procs = FewDescriptors()
    try:
        rt = Runtime(procs, home, root)
        flood = [Raw(local(rt)) for _ in range(450)]  # more than the runtime's descriptors
        newest = flood[-1].read()
        assert newest is not None and newest["code"] == 1400, newest
        unix = Raw(rt.socket)
        unix.hello()
        unix.send(frame({"id": 2, "op": "access", "firm": vendor.firm, "product": PRODUCT}))
        answered = unix.read()
        assert answered is not None and answered["ok"], answered
        for c in flood:
            c.close()
    finally:
        procs.close()


def test_a_keepalive_naming_too_many_handles_is_refused(served: tuple[Runtime, Path]) -> None:
    rt, _ = served
    c = Raw(rt.socket)
    c.hello()
    c.send(encode({"id": 2, "op": "keepalive", "handles": list(range(1, 2000))}))
    reply = c.read()
    assert reply is not None and reply["code"] == 1401, reply


def test_many_pipelined_requests_are_all_answered_in_bounded_turns(served: tuple[Runtime, Path]) -> None:
    rt, _ = served
    c = Raw(rt.socket)
    c.hello()
    c.send(b"".join(frame({"id": i, "op": "check", "handle": 10**9}) for i in range(2, 502)))
    ids = []
    for _ in range(500):
        reply = c.read()
        assert reply is not None, reply
        ids.append(reply["id"])
    assert ids == list(range(2, 502))
    # keep-alives sent back to back are paced, not refused: each is answered
    c.send(b"".join(frame({"id": i, "op": "keepalive"}) for i in range(600, 604)))
    assert [r["id"] for r in (c.read(), c.read(), c.read(), c.read()) if r is not None and r["ok"]] == \
        [600, 601, 602, 603]


def test_no_handle_is_given_twice_after_a_sigkill(tmp_path: Path, root: Path, vendor: Vendor, procs: Procs) -> None:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=PRODUCT, quantity=1000)])
    # a long snapshot delay: the snapshot on disk is older than the handles given
    rt = Runtime(procs, home, root, "--snapshot-delay", "600")
    c = Raw(rt.socket)
    c.hello()
    given = set()
    for i in range(20):
        c.send(frame({"id": 10 + i, "op": "access", "firm": vendor.firm, "product": PRODUCT}))
        reply = c.read()
        assert reply is not None and reply["ok"], reply
        given.add(reply["handle"])
    c.close()
    rt.stop(signal.SIGKILL)
    rt.start()
    c = Raw(rt.socket)
    c.hello()
    for i in range(20):
        c.send(frame({"id": 10 + i, "op": "access", "firm": vendor.firm, "product": PRODUCT}))
        reply = c.read()
        assert reply is not None and reply["ok"], reply
        assert reply["handle"] not in given


def test_check_and_decrement_count_as_keepalives(tmp_path: Path, root: Path, vendor: Vendor, procs: Procs) -> None:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=PRODUCT, quantity=10, units=1000)])
    rt = Runtime(procs, home, root, "--network", "--network-port", "0", "--client-timeout", "5")
    from licentia.protocol.client import Client

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with Client(("127.0.0.1", int(rt.status["network_port"])), ssl_context=ctx, server_hostname="licentia",
                timeout=20) as client:
        client.hello({"kind": "runtime", "host": "other"})
        handle = client.request("access", firm=vendor.firm, product=PRODUCT)["handle"]
        deadline = time.monotonic() + 12  # beyond the client timeout of 5 s, with checks only
        while time.monotonic() < deadline:
            assert client.request("check", handle=handle)["valid"]
            time.sleep(0.5)
        assert rt.sessions(), "the seat was freed although the client asked all along"


def test_a_server_that_drops_the_tls_handshake_is_a_network_fault_not_a_security_problem() -> None:
    import threading

    from licentia.model import LicentiaError
    from licentia.protocol.client import Client

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def drop() -> None:  # a server that dies in the handshake: it read the ClientHello, then it is gone
        conn, _ = listener.accept()
        listener.close()
        conn.recv(1 << 16)
        conn.close()

    t = threading.Thread(target=drop, daemon=True)
    t.start()
    ctx = ssl.create_default_context()
    with pytest.raises(LicentiaError) as caught:
        Client(("127.0.0.1", port), ssl_context=ctx, server_hostname="licentia", timeout=20).hello({"kind": "program"})
    t.join(20)
    assert caught.value.code == ErrorCode.NETWORK_FAULT, caught.value


def test_the_network_port_refuses_connections_over_the_per_peer_limit_before_tls(
        tmp_path: Path, root: Path, vendor: Vendor, procs: Procs) -> None:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=PRODUCT, quantity=10)])
    rt = Runtime(procs, home, root, "--network", "--network-port", "0", "--max-connections-per-peer", "3")
    address = ("127.0.0.1", int(rt.status["network_port"]))
    held = [Raw(address, tls=True) for _ in range(3)]
    for c in held:
        c.hello(kind="runtime", host="other")
    with pytest.raises(OSError):  # closed at once: no handshake for a fourth
        Raw(address, tls=True)
    held.pop().close()
    wait_for("the closed connection to be uncounted", lambda: _connects(address))


def _connects(address: tuple[str, int]) -> bool:
    try:
        c = Raw(address, tls=True)
    except OSError:
        return False
    c.hello(kind="runtime", host="other")
    c.close()
    return True


def test_a_program_silent_past_the_idle_timeout_connects_again(timed: tuple[Runtime, Path], vendor: Vendor,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _, home = timed
    monkeypatch.setenv("LICENTIA_HOME", str(home))
    from licentia.sdk.access import access

    access(vendor.firm, PRODUCT, verify=False).release()  # its connection now holds nothing
    time.sleep(3 + 2)  # past the idle timeout (3 s) and the sweep after it: the runtime closed it (1402)
    lic = access(vendor.firm, PRODUCT, verify=False)
    assert lic.handle > 0
    lic.release()
