"""`AsyncClient`: the asyncio client (a Protocol, not streams: half the CPU per request).

    async with await AsyncClient.connect("/run/licentia/runtime.sock") as client:
        reply = await client.request("access", firm=10, product=13, mode="per-access")

Requests may overlap freely (`asyncio.gather`); replies are matched by id.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from licentia.model import ErrorCode, LicentiaError
from licentia.protocol.endpoint import (
    DEFAULT_TIMEOUT,
    Endpoint,
    closed_early,
    connect_error,
    parse_address,
)
from licentia.protocol.frames import (
    CONNECTION_ID,
    MAX_FRAME,
    FrameDecoder,
    Message,
    ProtocolError,
    encode,
    reply_error,
)
from licentia.protocol.messages import HELLO, SUPPORTED_VERSIONS

if TYPE_CHECKING:
    import ssl

__all__ = ["AsyncClient"]


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, endpoint: Endpoint, max_frame: int) -> None:
        self.endpoint = endpoint
        self.decoder = FrameDecoder(max_frame)
        self.pending: dict[int, asyncio.Future[Message]] = {}
        self.transport: asyncio.Transport | None = None
        self.broken: LicentiaError | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            replies = self.decoder.feed(data)
        except ProtocolError as exc:
            self._deliver(exc.messages)
            self.fail(LicentiaError(ErrorCode.PROTOCOL_ERROR, f"unreadable reply from {self.endpoint}: {exc.message}"))
            return
        self._deliver(replies)

    def _deliver(self, replies: list[Message]) -> None:
        pending = self.pending
        for reply in replies:
            fut = pending.pop(reply["id"], None)
            if fut is not None:
                if not fut.done():
                    if reply.get("ok") is True:
                        fut.set_result(reply)
                    else:
                        fut.set_exception(reply_error(reply))
            elif reply["id"] == CONNECTION_ID and reply.get("ok") is not True:
                self.fail(reply_error(reply))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(LicentiaError(ErrorCode.NETWORK_FAULT, f"{self.endpoint} closed the connection"))
        if not self.closed.done():
            self.closed.set_result(None)

    def fail(self, error: LicentiaError) -> None:
        if self.broken is None:
            self.broken = error
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(LicentiaError(error.code, error.message, error.hint))
        if self.transport is not None:
            self.transport.close()


class AsyncClient:
    """An asyncio connection to a runtime or license server. Make one with `connect()`."""

    def __init__(self, protocol: _ClientProtocol, timeout: float | None, max_frame: int) -> None:
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.max_frame = max_frame
        self._next_id = 1

    @classmethod
    async def connect(
        cls,
        address: str | tuple[str, int] | Endpoint,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_frame: int = MAX_FRAME,
    ) -> AsyncClient:
        ep = parse_address(address)
        loop = asyncio.get_running_loop()
        protocol = _ClientProtocol(ep, max_frame)
        try:
            if ep.path is not None:
                coro = loop.create_unix_connection(lambda: protocol, ep.path)
            else:
                coro = loop.create_connection(lambda: protocol, ep.host, ep.port)
            transport, _ = await asyncio.wait_for(coro, timeout)
        except (TimeoutError, OSError) as exc:
            raise connect_error(ep, exc) from None
        if ssl_context is not None:
            try:
                tls = await loop.start_tls(
                    transport, protocol, ssl_context,
                    server_hostname=server_hostname or ep.host or "localhost",
                    ssl_handshake_timeout=timeout,
                )
            except (TimeoutError, OSError) as exc:
                transport.close()
                gone = closed_early(exc) and not await _accepts(ep, timeout)
                raise connect_error(ep, exc, handshake=True, server_gone=gone) from None
            if tls is None:
                transport.close()
                raise connect_error(ep, ConnectionError("the connection closed"), handshake=True,
                                    server_gone=not await _accepts(ep, timeout))
            protocol.transport = tls
        return cls(protocol, timeout, max_frame)

    @property
    def endpoint(self) -> Endpoint:
        return self._protocol.endpoint

    def send(self, op: str, /, **fields: Any) -> asyncio.Future[Message]:
        """Send a request; the future resolves to its reply (or its refusal)."""
        return self._send(op, fields)[1]

    def _send(self, op: str, fields: dict[str, Any]) -> tuple[int, asyncio.Future[Message]]:
        protocol = self._protocol
        if protocol.broken is not None:
            err = protocol.broken
            raise LicentiaError(err.code, err.message, err.hint)
        rid = self._next_id
        self._next_id = rid + 1
        msg: Message = {"id": rid, "op": op}
        msg.update(fields)
        frame = encode(msg, self.max_frame)
        fut: asyncio.Future[Message] = self._loop.create_future()
        protocol.pending[rid] = fut
        protocol.transport.write(frame)  # type: ignore[union-attr]
        return rid, fut

    async def request(self, op: str, /, *, timeout: float | None = -1.0, **fields: Any) -> Message:
        """Send one request and wait for its reply (raises `LicentiaError` on a refusal).
        `timeout` defaults to the client's; None waits for ever."""
        rid, fut = self._send(op, fields)
        if timeout is not None and timeout < 0:
            timeout = self.timeout
        if timeout is None:
            return await fut
        timer = self._loop.call_later(timeout, self._expire, rid, fut)
        try:
            return await fut
        finally:
            timer.cancel()

    def _expire(self, rid: int, fut: asyncio.Future[Message]) -> None:
        if self._protocol.pending.get(rid) is fut:
            del self._protocol.pending[rid]
        if not fut.done():
            fut.set_exception(
                LicentiaError(ErrorCode.NETWORK_FAULT, f"{self.endpoint} did not answer request {rid} in time")
            )

    async def hello(self, client: dict[str, Any], versions: tuple[int, ...] = SUPPORTED_VERSIONS) -> Message:
        reply = await self.request(HELLO, versions=list(versions), client=client)
        if reply.get("version") not in versions:
            raise LicentiaError(
                ErrorCode.PROTOCOL_ERROR,
                f"the server chose protocol version {reply.get('version')!r}; this client speaks {list(versions)}",
            )
        return reply

    @property
    def closed(self) -> bool:
        return self._protocol.broken is not None

    async def close(self) -> None:
        self._protocol.fail(LicentiaError(ErrorCode.NETWORK_FAULT, "the client was closed"))
        await self._protocol.closed

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<licentia AsyncClient {self.endpoint}{' closed' if self.closed else ''}>"


async def _accepts(ep: Endpoint, timeout: float | None) -> bool:
    """Whether the server still accepts connections (after it closed one in its handshake)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(ep.host, ep.port), min(timeout or 2.0, 2.0))
    except (TimeoutError, OSError):
        return False
    writer.close()
    return True
