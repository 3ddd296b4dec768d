"""A small real server for the protocol tests: asyncio, built on FrameDecoder.

Ops: "echo" answers with the request's fields; "fail" answers with error `code`;
"hold" keeps its answer until a "flush" arrives, then the flush is answered first
and the held ones after it, last first (replies out of order, deterministically);
"silent" is never answered; "garbage" makes the server send bytes that are no frame;
"close" closes the connection without answering; "hello" picks the highest version
offered (99 when the client's program is "old-server"); "validate" checks the request
against the catalogue. Bad frames get an error frame; a fatal one closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator
from typing import Any

from licentia.model import ErrorCode, LicentiaError
from licentia.protocol import (
    FrameDecoder,
    ProtocolError,
    encode,
    error_frame,
    error_reply,
    validate_request,
)
from licentia.protocol.frames import Message


class EchoProtocol(asyncio.Protocol):
    def __init__(self, server: EchoServer) -> None:
        self.server = server
        self.decoder = FrameDecoder(server.max_frame)
        self.held: list[Message] = []
        self.transport: asyncio.Transport | None = None
        self.draining = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections += 1

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.draining:
            return  # after a fatal error: read and drop until the client closes
        while True:
            try:
                for msg in self.decoder.feed(data):
                    self.handle(msg)
                return
            except ProtocolError as exc:
                for msg in exc.messages:
                    self.handle(msg)
                self.server.errors.append(exc)
                if self.transport.is_closing():
                    return
                self.transport.write(error_frame(exc))
                if exc.fatal:
                    self.linger()
                    return
                data = b""

    def linger(self) -> None:
        """Close after a fatal error without losing the error frame: send it and a FIN,
        then drop what the client still sends until it closes (closing at once with
        unread input would send a reset, which may destroy the error frame in flight)."""
        assert self.transport is not None
        self.draining = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            asyncio.get_running_loop().call_later(5.0, self.transport.close)
        else:
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def handle(self, msg: Message) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        op = msg.get("op")
        rid = msg["id"]
        self.server.seen += 1
        if op == "echo":
            self.transport.write(encode({**msg, "ok": True}))
        elif op == "hello":
            old = msg.get("client", {}).get("program") == "old-server"
            self.transport.write(encode({"id": rid, "ok": True, "version": 99 if old else max(msg["versions"]),
                                         "client_id": f"c{self.server.connections}"}))
        elif op == "fail":
            self.transport.write(encode(error_reply(rid, msg.get("code", 212), "refused on purpose")))
        elif op == "hold":
            self.held.append(msg)
        elif op == "flush":
            self.transport.write(encode({"id": rid, "ok": True, "held": len(self.held)}))
            for held in reversed(self.held):
                self.transport.write(encode({**held, "ok": True}))
            self.held.clear()
        elif op == "silent":
            pass
        elif op == "garbage":
            self.transport.write(b"\x00\x00\x00\x03\x00\xc1\xc1")
        elif op == "close":
            self.transport.close()
        elif op == "validate":
            try:
                validate_request(msg["request"])
            except LicentiaError as exc:
                self.transport.write(error_frame(exc, rid))
            else:
                self.transport.write(encode({"id": rid, "ok": True}))
        else:
            self.transport.write(
                error_frame(LicentiaError(ErrorCode.PROTOCOL_ERROR, f"unknown op {op!r}"), rid)
            )


class EchoServer:
    """Runs the echo server on its own event loop thread."""

    def __init__(self, max_frame: int = 1 << 20) -> None:
        self.max_frame = max_frame
        self.loop = asyncio.new_event_loop()
        self.connections = 0
        self.seen = 0
        self.errors: list[ProtocolError] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def listen_tcp(self, ssl_context: ssl.SSLContext | None = None) -> tuple[str, int]:
        async def start() -> asyncio.AbstractServer:
            return await self.loop.create_server(lambda: EchoProtocol(self), "127.0.0.1", 0, ssl=ssl_context)

        server = self._run(start())
        self._servers.append(server)
        host, port = server.sockets[0].getsockname()[:2]
        return host, port

    def listen_unix(self, path: str) -> str:
        async def start() -> asyncio.AbstractServer:
            return await self.loop.create_unix_server(lambda: EchoProtocol(self), path)

        self._servers.append(self._run(start()))
        return path

    def close(self) -> None:
        async def stop() -> None:
            for s in self._servers:
                s.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(s.wait_closed(), 5)

        with contextlib.suppress(Exception):
            self._run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@contextlib.contextmanager
def running(max_frame: int = 1 << 20) -> Iterator[EchoServer]:
    server = EchoServer(max_frame)
    try:
        yield server
    finally:
        server.close()
