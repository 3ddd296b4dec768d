"""Client mode: this runtime's connections to the network servers of its search list.

One TLS connection per server, opened on first need and again after it breaks. The
runtime says who it is once (`hello` with kind `runtime`, proving the client id the
server issued it before, kept in the home under state/servers/) and
then forwards its programs' requests, each naming the program it acts for. Seats taken
on a server are kept alive by this runtime's keep-alives for as long as the programs
holding them live.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from licentia.model import ErrorCode, LicentiaError
from licentia.protocol.aio import AsyncClient
from licentia.protocol.frames import Message
from licentia.runtime.config import RuntimeConfig
from licentia.runtime.home import RuntimeHome
from licentia.runtime.ident import load_identity, save_identity
from licentia.runtime.tlsfiles import client_context_for

UNREACHABLE = frozenset({ErrorCode.NETWORK_FAULT, ErrorCode.SERVER_NOT_FOUND, ErrorCode.NO_LOCAL_RUNTIME})


class Upstream:
    def __init__(self, address: str, home: RuntimeHome, config: RuntimeConfig, client_id: str, host_id: str) -> None:
        self.address = address
        self.home = home
        self.config = config
        self.client_id = client_id
        self.host_id = host_id
        self._client: AsyncClient | None = None
        self._lock = asyncio.Lock()
        self.server_timeout = 120.0
        self.reachable: bool | None = None  # None: never tried
        self.last_error: LicentiaError | None = None
        self.tmr = ""  # a TMR front end's virtual container (its twins serve the same seats)
        self.connections = 0  # connections made: each new one asks the server for forgotten seats

    @property
    def keepalive_interval(self) -> float:
        return self.config.keepalive_for(self.server_timeout)

    async def client(self) -> AsyncClient:
        c = self._client
        if c is not None and not c.closed:
            return c
        async with self._lock:
            c = self._client
            if c is not None and not c.closed:
                return c
            try:
                ctx = client_context_for(self.home, self.config, self.address)
                c = await AsyncClient.connect(self.address, ssl_context=ctx, timeout=self.config.connect_timeout)
                hello: dict[str, Any] = {"kind": "runtime", "host": socket.gethostname(),
                                         "station": {"host_id": self.host_id}}
                resume = load_identity(self.home, self.address)
                if resume is not None:
                    hello["resume"] = resume
                reply = await c.hello(hello)
                save_identity(self.home, self.address, reply)
            except LicentiaError as exc:
                self.reachable = False
                self.last_error = exc
                raise
            timeout = reply.get("timeout")
            if isinstance(timeout, int | float) and timeout > 0:
                self.server_timeout = float(timeout)
            self.tmr = str(reply.get("tmr") or "")
            self._client = c
            self.connections += 1
            self.reachable = True
            self.last_error = None
            return c

    async def request(self, op: str, /, **fields: Any) -> Message:
        for attempt in (1, 2):
            c = await self.client()
            try:
                return await c.request(op, timeout=self.config.connect_timeout + 5.0, **fields)
            except LicentiaError as exc:
                if exc.code is ErrorCode.CONNECTION_TIMEOUT and attempt == 1:
                    await self.close()  # closed by the server for silence: connect again, once
                    continue
                if exc.code in UNREACHABLE or c.closed:
                    self.reachable = False
                    self.last_error = exc
                    await self.close()
                raise
        raise AssertionError("unreachable")

    async def adopt_identity(self, identity: dict[str, Any]) -> None:
        """Prove `identity` (issued by a TMR twin of this server, which shares its identity
        key: docs/tmr.md) from the next connection on, so this server knows our seats."""
        save_identity(self.home, self.address, identity)
        await self.close()

    async def close(self) -> None:
        c, self._client = self._client, None
        if c is not None:
            with contextlib.suppress(TimeoutError, LicentiaError, OSError):
                await asyncio.wait_for(c.close(), 2.0)


def unreachable(exc: LicentiaError) -> bool:
    return exc.code in UNREACHABLE or exc.code is ErrorCode.SECURITY_PROBLEM
