"""The runtime's limits on connections (docs/runtime.md, "Limits"): how many at once, in
total and per peer address, kept below the file-descriptor limit so that the Unix socket
is served when the TCP ports are full; bytes of incomplete frames held in total; the
hello timeout and the idle timeout of connections that hold no seat; the nesting depth
of a request's values.

`ConnectionLimits` is the runtime's one account of its connections: `admit` when one
opens (a refusal names why), `leave` when it closes, `buffered` as frames arrive, and
`sweep` now and then closes the silent ones."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol

from licentia.model import ErrorCode
from licentia.protocol.frames import CONNECTION_ID, error_reply
from licentia.runtime.config import RuntimeConfig

FD_RESERVE = 256  # descriptors kept for the Unix socket's connections, files and databases
MAX_DEPTH = 16  # nesting of maps and lists in a request (the catalogue needs 3)
# a connection's keep-alives are handled at most this often (seconds; clients send one every
# few seconds at most): one that comes sooner waits, the connection's reading paused
KEEPALIVE_PACE = 0.25


class LimitsHost(Protocol):
    config: RuntimeConfig
    connections: set[Any]
    seats: Any
    network: Any


def descriptor_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return int(soft)


class ConnectionLimits:
    def __init__(self, rt: LimitsHost) -> None:
        self.rt = rt
        config = rt.config
        fds = descriptor_limit()
        # TCP connections stop FD_RESERVE short of the descriptor limit: past it the newest
        # (unauthenticated: it has said nothing yet) is shed, and the Unix socket still accepts
        self.tcp_cap = max(1, min(config.max_connections, fds - FD_RESERVE))
        self.unix_cap = max(1, min(config.max_connections, fds - FD_RESERVE // 4))
        self.tcp = 0
        self.unix = 0
        self.per_peer: dict[str, int] = {}
        self.buffered = 0

    def admit(self, listener: str, peer_host: str) -> str:
        """Count a new connection; '' when it may stay, else why it may not."""
        config = self.rt.config
        if listener == "unix":
            if self.unix >= self.unix_cap:
                return f"the runtime serves {self.unix_cap} connections on its Unix socket already"
            self.unix += 1
            return ""
        if self.tcp >= self.tcp_cap:
            return f"the runtime serves {self.tcp_cap} TCP connections already"
        if listener == "network":
            n = self.per_peer.get(peer_host, 0)
            if n >= config.max_connections_per_peer:
                return f"{peer_host} has {n} connections to this server already"
            self.per_peer[peer_host] = n + 1
        self.tcp += 1
        return ""

    def leave(self, listener: str, peer_host: str, buffered: int) -> None:
        self.buffered -= buffered
        if listener == "unix":
            self.unix -= 1
            return
        self.tcp -= 1
        if listener == "network":
            n = self.per_peer.get(peer_host, 0) - 1
            if n > 0:
                self.per_peer[peer_host] = n
            else:
                self.per_peer.pop(peer_host, None)

    def over_buffer(self, delta: int) -> bool:
        """Account `delta` bytes held (or freed); True when the total is over the limit."""
        self.buffered += delta
        return delta > 0 and self.buffered > self.rt.config.max_buffered

    def sweep(self) -> None:
        """Close connections that have not said hello within the hello timeout, and those
        that hold no seat and were silent for the idle timeout."""
        rt = self.rt
        config = rt.config
        now = time.monotonic()
        hello_before = now - config.hello_timeout
        idle_before = now - config.idle_timeout
        for conn in list(rt.connections):
            if conn.ident is None:
                if conn.opened < hello_before:
                    conn.close_with(error_reply(CONNECTION_ID, ErrorCode.CONNECTION_TIMEOUT,
                                                f"no hello within {config.hello_timeout:g} s"))
            elif conn.last_active < idle_before and not self.holds(conn.ident):
                conn.close_with(error_reply(CONNECTION_ID, ErrorCode.CONNECTION_TIMEOUT,
                                            f"silent for {config.idle_timeout:g} s and holding no seat"))

    def holds(self, ident: Any) -> bool:
        """Whether the client of `ident` holds a seat here or through this runtime."""
        rt = self.rt
        holder = ident.holder
        if rt.seats.holds(holder):
            return True
        return any(hold.holder.same_as(holder) for hold in rt.network.remote.values())


class AdmittingListener:
    """The network port. A connection is counted, or refused over the limits, as it is
    accepted, before its TLS handshake: one over them costs no handshake and no memory
    (it is closed at once: before TLS there is no way to tell the client why)."""

    def __init__(self, limits: ConnectionLimits, sock: socket.socket, context: ssl.SSLContext,
                 factory: Callable[[], asyncio.Protocol], handshake_timeout: float) -> None:
        self.limits = limits
        self.sock = sock
        self.context = context
        self.factory = factory
        self.handshake_timeout = handshake_timeout
        self.tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        sock.setblocking(False)

    def start(self) -> None:
        if not self._closed:
            asyncio.get_running_loop().add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(64):  # a bounded step; the rest on the next turn
            try:
                conn, addr = self.sock.accept()
            except BlockingIOError:
                return
            except OSError:  # out of descriptors, say: accept again shortly
                loop.remove_reader(self.sock.fileno())
                loop.call_later(0.1, self.start)
                return
            peer = str(addr[0]) if isinstance(addr, tuple) and addr else ""
            if self.limits.admit("network", peer):
                conn.close()
                continue
            conn.setblocking(False)
            task = loop.create_task(self._handshake(conn, peer))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _handshake(self, conn: socket.socket, peer: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(self.factory, conn, ssl=self.context,
                                               ssl_handshake_timeout=self.handshake_timeout)
        except (Exception, asyncio.CancelledError):  # the connection never began: uncount it
            self.limits.leave("network", peer, 0)
            with contextlib.suppress(OSError):
                conn.close()

    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
        for task in list(self.tasks):
            task.cancel()


def too_deep(value: Any, depth: int = MAX_DEPTH) -> bool:
    """Whether `value` nests maps and lists deeper than `depth` (without recursion)."""
    # only maps and lists go on the stack: a flat list of 1,024 handles is one step, and an
    # item of a container at the bound is one level too deep whatever its type
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if d > depth:
            return True
        t = type(v)
        if t is dict:
            if v and d >= depth:
                return True
            stack.extend((x, d + 1) for x in v.values() if type(x) in _NESTING)
            stack.extend((k, d + 1) for k in v if type(k) in _NESTING)
        elif t is list or t is tuple:
            if v and d >= depth:
                return True
            if not _NESTING.isdisjoint(map(type, v)):
                stack.extend((x, d + 1) for x in v if type(x) in _NESTING)
    return False


_NESTING = frozenset((dict, list, tuple))
