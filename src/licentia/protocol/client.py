"""Clients of the runtime's protocol: `Client` (blocking) and `AsyncClient` (asyncio).

Both send requests (maps with "op") and match replies by id, so several requests may
be in flight on one connection; an error reply raises the `LicentiaError` it carries.

The address is a Unix socket path (`/run/licentia/runtime.sock`, or `unix:PATH`) or
`host:port` (`[::1]:22350`; the port defaults to 22350); TLS when an
`ssl.SSLContext` is given (see `licentia.protocol.tls.client_context`).

This module stays cheap to import: a protected program pays for it at start. It
imports neither asyncio (`AsyncClient` loads `licentia.protocol.aio` on first use)
nor ssl nor cryptography, nor `typing`; `socket` and `threading` are the public
modules (their private C halves change from one Python release to the next).
"""

from __future__ import annotations

import socket
import threading
import time

from licentia.model.errors import ErrorCode, LicentiaError
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
    ProtocolError,
    encode,
    reply_error,
)
from licentia.protocol.messages import HELLO, SUPPORTED_VERSIONS

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from typing import Any

    from licentia.protocol.aio import AsyncClient as AsyncClient
    from licentia.protocol.frames import Message

__all__ = ["AsyncClient", "Client", "Endpoint", "connect_error", "parse_address"]

_RECV_SIZE = 1 << 16


class Client:
    """A blocking connection to a runtime or license server.

    `request(op, **fields)` sends and waits; `send()` and `receive()` pipeline several
    requests. Safe to share between threads (socket I/O is serialised; a reply read by
    one thread is handed to the thread waiting for it)."""

    def __init__(
        self,
        address: str | tuple[str, int] | Endpoint,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_frame: int = MAX_FRAME,
    ) -> None:
        self.endpoint = parse_address(address)
        self.timeout = timeout
        self.max_frame = max_frame
        self._decoder = FrameDecoder(max_frame)
        self._io = threading.Lock()  # serialises socket reads and writes
        self._state = threading.Lock()  # guards the fields below
        self._next_id = 1
        self._replies: dict[int, Message] = {}
        self._waiting: set[int] = set()
        self._broken: LicentiaError | None = None
        self._sock = self._connect(ssl_context, server_hostname)

    def _connect(self, ssl_context: ssl.SSLContext | None, server_hostname: str | None) -> socket.socket:
        ep = self.endpoint
        if ssl_context is not None:
            return self._connect_tls(ssl_context, server_hostname)
        sock: socket.socket | None = None
        try:
            if ep.path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                sock.connect(ep.path)
            else:
                sock = _tcp_connect(ep.host, ep.port, self.timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise connect_error(ep, exc) from None
        return sock

    def _connect_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None) -> socket.socket:
        ep = self.endpoint
        sock: socket.socket | None = None
        try:
            if ep.path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                sock.connect(ep.path)
            else:
                sock = socket.create_connection((ep.host, ep.port), timeout=self.timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise connect_error(ep, exc) from None
        try:
            return ssl_context.wrap_socket(sock, server_hostname=server_hostname or ep.host or "localhost")
        except OSError as exc:
            sock.close()
            gone = closed_early(exc) and not _accepts(ep, self.timeout)
            raise connect_error(ep, exc, handshake=True, server_gone=gone) from None

    # -- requests ------------------------------------------------------------

    def request(self, op: str, /, **fields: Any) -> Message:
        """Send one request and wait for its reply (raises `LicentiaError` on a refusal)."""
        return self.receive(self.send(op, **fields))

    def hello(self, client: dict[str, Any], versions: tuple[int, ...] = SUPPORTED_VERSIONS) -> Message:
        """Introduce this program (pid, pid_start, program, user, host, station...)."""
        reply = self.request(HELLO, versions=list(versions), client=client)
        if reply.get("version") not in versions:
            raise LicentiaError(
                ErrorCode.PROTOCOL_ERROR,
                f"the server chose protocol version {reply.get('version')!r}; this client speaks {list(versions)}",
            )
        return reply

    def send(self, op: str, /, **fields: Any) -> int:
        """Send a request without waiting; return its id for `receive()`."""
        with self._state:
            if self._broken is not None:
                raise _again(self._broken)
            rid = self._next_id
            self._next_id = rid + 1
            self._waiting.add(rid)
        msg: Message = {"id": rid, "op": op}
        msg.update(fields)
        try:
            frame = encode(msg, self.max_frame)
        except ProtocolError:
            with self._state:
                self._waiting.discard(rid)
            raise
        with self._io:
            try:
                self._sock.settimeout(self.timeout)
                self._sock.sendall(frame)
            except OSError as exc:
                self._fail(LicentiaError(ErrorCode.NETWORK_FAULT, f"sending to {self.endpoint} failed: {exc}"))
                raise _again(self._broken or LicentiaError(ErrorCode.NETWORK_FAULT, str(exc))) from None
        return rid

    def receive(self, request_id: int, timeout: float | None = None) -> Message:
        """Wait for the reply to `request_id`; raise its error if it is a refusal."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            with self._state:
                reply = self._replies.pop(request_id, None)
                if reply is not None:
                    self._waiting.discard(request_id)
                    if reply.get("ok") is True:
                        return reply
                    raise reply_error(reply)
                if request_id not in self._waiting:
                    raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"no request {request_id} is waiting")
                if self._broken is not None:
                    self._waiting.discard(request_id)
                    raise _again(self._broken)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._io.acquire(timeout=remaining):
                with self._state:
                    if request_id in self._replies:
                        continue
                    self._waiting.discard(request_id)  # a late reply will be dropped
                raise LicentiaError(
                    ErrorCode.NETWORK_FAULT, f"{self.endpoint} did not answer request {request_id} in time"
                )
            try:
                with self._state:
                    if request_id in self._replies or self._broken is not None:
                        continue
                self._read(max(deadline - time.monotonic(), 0.001))
            finally:
                self._io.release()

    def _read(self, timeout: float) -> None:
        """Read once (the I/O lock is held) and file the replies that arrived."""
        try:
            self._sock.settimeout(timeout)
            data = self._sock.recv(_RECV_SIZE)
        except TimeoutError:
            return
        except OSError as exc:
            self._fail(LicentiaError(ErrorCode.NETWORK_FAULT, f"reading from {self.endpoint} failed: {exc}"))
            return
        if not data:
            self._fail(LicentiaError(ErrorCode.NETWORK_FAULT, f"{self.endpoint} closed the connection"))
            return
        try:
            replies = self._decoder.feed(data)
        except ProtocolError as exc:
            self._file(exc.messages)
            self._fail(LicentiaError(ErrorCode.PROTOCOL_ERROR, f"unreadable reply from {self.endpoint}: {exc.message}"))
            return
        self._file(replies)

    def _file(self, replies: list[Message]) -> None:
        with self._state:
            for reply in replies:
                rid = reply["id"]
                if rid in self._waiting:
                    self._replies[rid] = reply
                elif rid == CONNECTION_ID and reply.get("ok") is not True:
                    self._broken = reply_error(reply)
        if self._broken is not None:
            self._close_socket()

    def _fail(self, error: LicentiaError) -> None:
        with self._state:
            if self._broken is None:
                self._broken = error
        self._close_socket()

    def _close_socket(self) -> None:
        try:  # noqa: SIM105 (contextlib is one more import at a program's start)
            self._sock.close()
        except OSError:
            pass

    # -- life ----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._broken is not None

    def close(self) -> None:
        self._fail(LicentiaError(ErrorCode.NETWORK_FAULT, "the client was closed"))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<licentia Client {self.endpoint}{' closed' if self.closed else ''}>"


def _tcp_connect(host: str, port: int, timeout: float) -> socket.socket:
    """A connected TCP socket to `host`:`port`: each address in turn, the last error raised."""
    return socket.create_connection((host, port), timeout=timeout)


def _accepts(ep: Endpoint, timeout: float) -> bool:
    """Whether the server still accepts connections (after it closed one in its handshake)."""
    try:
        _tcp_connect(ep.host, ep.port, min(timeout, 2.0)).close()
    except OSError:
        return False
    return True


def _again(error: LicentiaError) -> LicentiaError:
    """A fresh exception carrying the same refusal (an exception object is raised once)."""
    return LicentiaError(error.code, error.message, error.hint)


def __getattr__(name: str) -> Any:
    if name == "AsyncClient":
        from licentia.protocol.aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
