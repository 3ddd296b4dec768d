"""The runtime's HTTP port (22352): WebAdmin, the JSON API and `/metrics`
(`licentia.runtime.webadmin.app`), served by uvicorn's h11 protocol inside the runtime's
own event loop, off the license path.

HTTPS by default, with the runtime's certificate (`tls/server.crt`, made at first start, or
`[network] certificate`); `[http] tls = false` serves plain HTTP (for a TLS proxy in front).

Limits, all in `[http]` of runtime.toml (docs/runtime.md):
- `limit_concurrency` (64): connections and requests at once; past it uvicorn answers 503;
- `timeout_keep_alive` (5 s): an idle keep-alive connection is closed;
- `head_timeout` (10 s): a new connection that has not sent a whole request head by then is
  closed (uvicorn has no such timeout of its own: slow partial requests would stay open);
- `max_head` (16 KiB): request line and headers (h11's `max_incomplete_event_size`); past it
  the connection gets 400 and is closed, as is a malformed request or `Content-Length`;
- `max_body` (64 KiB): request bodies, checked against `Content-Length` before reading and
  while a chunked body arrives (413);
- a TLS handshake must finish within 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any

import uvicorn

from licentia.runtime.webadmin.app import AdminHost, WebAdmin

HANDSHAKE_TIMEOUT = 10.0


class HttpService:
    """uvicorn's protocol on a server socket of the runtime's loop (no uvicorn main loop, no
    signal handlers: the runtime owns both)."""

    def __init__(self, rt: AdminHost, ssl_context: ssl.SSLContext | None) -> None:
        cfg = rt.config
        self.webadmin = WebAdmin(rt, secure=ssl_context is not None)
        self.config = uvicorn.Config(
            self.webadmin.asgi, host=cfg.http_address, port=cfg.http_port, http="h11", ws="none",
            lifespan="off", interface="asgi3", log_level="warning", access_log=False, proxy_headers=False, server_header=False,
            limit_concurrency=cfg.http_limit_concurrency, timeout_keep_alive=cfg.http_timeout_keep_alive,
            h11_max_incomplete_event_size=cfg.http_max_head, timeout_graceful_shutdown=2)
        self.config.load()
        self.server = uvicorn.Server(self.config)
        self.ssl_context = ssl_context
        self.head_timeout = cfg.http_head_timeout
        self._listener: asyncio.AbstractServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        logging.getLogger("uvicorn.error").setLevel(logging.ERROR)  # errors answer 400/500, not tracebacks

    async def start(self) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        server, config = self.server, self.config

        head_timeout = self.head_timeout

        def protocol() -> asyncio.Protocol:
            proto: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=server.server_state, app_state={}, _loop=loop)
            loop.call_later(head_timeout, _drop_if_silent, proto)
            return proto

        await server.on_tick(0)  # the Date header
        self._listener = await loop.create_server(
            protocol, config.host, config.port, ssl=self.ssl_context, reuse_address=True, backlog=128,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT if self.ssl_context is not None else None)
        self._ticker = loop.create_task(self._tick())
        return self._listener

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.server.on_tick(0)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._listener is not None:
            self._listener.close()
        for conn in list(self.server.server_state.connections):
            conn.shutdown()
        tasks: Any = list(self.server.server_state.tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)


def _drop_if_silent(proto: Any) -> None:
    """A connection with no whole request head yet (h11's first cycle not begun) is closed."""
    transport = getattr(proto, "transport", None)
    if getattr(proto, "cycle", None) is None and transport is not None and not transport.is_closing():
        transport.close()
