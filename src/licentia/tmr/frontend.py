"""The TMR front end, `licentia tmr serve` (docs/tmr.md): the virtual container 131-… on
the network port, for client runtimes and programs, exactly like a network server.

It is built from the runtime's parts: `Connection` (framing, limits), `Router` (validation,
one handler per operation), `Identities`/`acting_for` (who asks), the server TLS of
`tlsfiles`. What differs is behind the handlers:

- the items are what at least two of the three upstreams report identically (`virtual`),
  polled over mutual TLS (the front end's client certificate) every `poll_interval`;
- seats, handles and unit counters are in etcd (`seats.SeatStore`): every grant, release
  and decrement is one etcd transaction; each client runtime's seats hang on its etcd
  lease, refreshed by its keep-alives. The front end keeps nothing that matters: its twin
  serves the same handles at the same time, and either can die.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from licentia.core.clock import VirtualClock
from licentia.core.evaluate import evaluate, valid_until
from licentia.core.seats import ItemKey
from licentia.fsutil import atomic_write
from licentia.model import (
    AccessMode,
    Environment,
    ErrorCode,
    ItemRequest,
    ItemState,
    LicentiaError,
    parse_version,
)
from licentia.protocol.aio import AsyncClient
from licentia.protocol.frames import Message
from licentia.protocol.messages import SUPPORTED_VERSIONS
from licentia.protocol.tls import client_context
from licentia.runtime.config import RuntimeConfig
from licentia.runtime.connection import Connection
from licentia.runtime.ident import Ident, Identities, acting_for
from licentia.runtime.limits import ConnectionLimits
from licentia.runtime.router import Handler, Router
from licentia.runtime.tlsfiles import certificate_pin
from licentia.tmr.config import FrontEndConfig, load_config
from licentia.tmr.seats import SeatStore
from licentia.tmr.virtual import Constituent, VirtualItem, decide, parse_report

__all__ = ["FrontEnd", "FrontEndConfig", "load_config", "run"]

MODES = {m.value: m for m in AccessMode}


class _SeatsInEtcd:
    """What the runtime's connection parts ask of a seat table, for a front end whose seats
    live in etcd: a request refreshes nothing here (a client's lease is kept alive by its
    keep-alives), and an identified client counts as holding seats (they are in etcd), so
    the idle timeout never closes a front end's client connection."""

    def heartbeat(self, client_id: str, now: float) -> None:
        return None

    def holds(self, holder: Any) -> bool:
        return True


class _NoUpstreamSeats:
    """A front end forwards no seats to other servers."""

    def __init__(self) -> None:
        self.remote: dict[int, Any] = {}


@dataclass
class UpstreamState:
    address: str
    client: AsyncClient | None = None
    reachable: bool | None = None
    error: str = ""
    constituents: list[Constituent] | None = None
    checked_at: float = 0.0


class FrontEnd:
    """A front end; its duck-typed `ConnectionHost` side serves `Connection`s."""

    def __init__(self, config: FrontEndConfig) -> None:
        self.fe = config
        self.config = RuntimeConfig(client_timeout=config.client_timeout,  # the parts' limits
                                    max_connections_per_peer=config.max_connections_per_peer)
        self.connections: set[Any] = set()
        self.connection_count = 0
        self.host_name = socket.gethostname()
        self.identities = Identities(host_id=f"tmr:{self.host_name}", host_name=self.host_name,
                                     environment=Environment(), machine_root=Path("/"))
        self.store = SeatStore(config.etcd, prefix=config.prefix, call_timeout=1.0, op_timeout=4.0, count=False)
        self.upstreams = {a: UpstreamState(a) for a in config.upstreams}
        self.items: list[VirtualItem] = []
        self.etcd_health: dict[str, bool] = {}
        self.ports: dict[str, Any] = {}
        self.started_at = time.time()
        self.problems: list[str] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: set[asyncio.Future[Any]] = set()
        self._stop: asyncio.Event | None = None
        handlers: dict[str, Handler] = {
            "hello": self.op_hello, "keepalive": self.op_keepalive, "access": self.op_access,
            "release": self.op_release, "decrement": self.op_decrement, "check": self.op_check,
            "info": self.op_info,
        }
        self.seats = _SeatsInEtcd()
        self.network = _NoUpstreamSeats()
        self.limits = ConnectionLimits(self)  # connections, buffers and the hello timeout
        self.router = Router(handlers, self._note_problem, self._spawn, self.config)

    # ================================================================== life

    async def start(self) -> None:
        from licentia.runtime.tlsfiles import server_context

        fe = self.fe
        fe.home.mkdir(parents=True, exist_ok=True)
        cert, key = self._server_files()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Connection(self, "network").protocol(), fe.address, fe.port,
                                          ssl=server_context(cert, key), backlog=1024, reuse_address=True,
                                          ssl_handshake_timeout=10.0)
        self._servers.append(server)
        try:  # identities shared with the twin front end (and this one restarted): kept in etcd
            self.identities.use_key(await self.store.identity_key(), {})
        except LicentiaError as exc:
            print(f"tmr: no shared identity key from etcd ({exc}): clients moving here get new ids",
                  file=sys.stderr, flush=True)
        sockets: Any = getattr(server, "sockets")  # noqa: B009
        self.ports = {"network_port": int(sockets[0].getsockname()[1]), "network_address": fe.address,
                      "certificate_pin": certificate_pin(cert)}
        await self.poll()
        self._tasks = [loop.create_task(self._poll_loop()), loop.create_task(self._sweep_loop())]
        self.write_status()
        # as a runtime does: what start-up built stays out of the collector's way, and young
        # objects (many per etcd call) are collected less often
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 50, 50)

    def _server_files(self) -> tuple[Path, Path]:
        from licentia.crypto.tls import self_signed_server_certificate

        cert, key = self.fe.home / "server.crt", self.fe.home / "server.key"
        if not (cert.exists() and key.exists()):
            names = [self.host_name, "localhost", "127.0.0.1", "::1"]
            cert_pem, key_pem = self_signed_server_certificate(f"licentia TMR front end {self.host_name}", names,
                                                               int(time.time()))
            atomic_write(key, key_pem, mode=0o600)
            atomic_write(cert, cert_pem, mode=0o644)
        return cert, key

    async def serve_forever(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        await self._stop.wait()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        for up in self.upstreams.values():
            if up.client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(up.client.close(), 1.0)
        await self.store.close()
        with contextlib.suppress(OSError):
            (self.fe.home / "front-end.json").unlink()

    # ================================================================== the upstreams

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.config.hello_timeout / 4))
            self.limits.sweep()

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.fe.poll_interval)
            try:
                await self.poll()
                self.write_status()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep serving; say what failed
                self._note_problem(f"poll: {exc!r}")

    async def poll(self) -> None:
        """Ask every upstream for its constituents and every etcd member for its health,
        at once; then decide the virtual container."""
        ups = list(self.upstreams.values())
        health = await asyncio.gather(*(self._ask(up) for up in ups), *(_etcd_health(u) for u in self.fe.etcd))
        self.etcd_health = dict(zip(self.fe.etcd, health[len(ups):], strict=True))
        self.items = decide({up.address: up.constituents for up in ups})

    async def _ask(self, up: UpstreamState) -> bool:
        timeout = max(0.5, self.fe.poll_interval * 2)
        try:
            if up.client is None or up.client.closed:
                up.client = None
                c = await AsyncClient.connect(up.address, ssl_context=self._upstream_context(up.address),
                                              timeout=timeout)
                try:
                    await c.hello({"kind": "runtime", "client_id": f"tmr-front-end-{self.host_name}",
                                   "host": self.host_name})
                except LicentiaError:
                    await c.close()
                    raise
                up.client = c
            reply = await up.client.request("tmr.items", timeout=timeout)
        except LicentiaError as exc:
            if up.client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(up.client.close(), 1.0)
                up.client = None
            up.reachable, up.error, up.constituents = False, f"{int(exc.code)}: {exc.message}", None
            return False
        up.reachable, up.error, up.checked_at = True, "", time.time()
        up.constituents = parse_report(up.address, reply.get("items") or [])
        return True

    def _upstream_context(self, address: str) -> ssl.SSLContext:
        fe = self.fe
        if fe.upstream_ca is not None:
            ctx = client_context(ca_file=fe.upstream_ca)
        else:
            safe = "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in address)
            ctx = client_context(pin_file=fe.home / "pins" / f"{safe}.pin")
        try:
            ctx.load_cert_chain(os.fspath(fe.certificate), os.fspath(fe.private_key))
        except (OSError, ssl.SSLError) as exc:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER,
                                f"cannot load the front end's client certificate {fe.certificate}: {exc}") from None
        return ctx

    # ================================================================== requests

    def op_hello(self, conn: Connection, msg: Message) -> Awaitable[Message]:
        return self._hello(conn, msg)

    async def _hello(self, conn: Connection, msg: Message) -> Message:
        if not set(msg["versions"]) & set(SUPPORTED_VERSIONS):
            raise LicentiaError(ErrorCode.PROTOCOL_ERROR, f"this front end speaks protocol versions {list(SUPPORTED_VERSIONS)}")
        version = max(set(msg["versions"]) & set(SUPPORTED_VERSIONS))
        c: dict[str, Any] = msg["client"]
        ident = self.identities.identify(c, c.get("kind", "program"), listener="network", peer=None,
                                         peer_host=conn.peer_host, number=conn.number)
        assert ident.client_id is not None
        timeout = self.fe.client_timeout
        await self.store.open_client(ident.client_id, timeout)
        conn.ident = ident
        conn.hello_at = time.time()
        return {"id": msg["id"], "ok": True, "version": version, "server": self.host_name,
                "client_id": ident.client_id, "timeout": timeout, "keepalive": self.config.keepalive_for(timeout),
                "location": "network", "station": list(ident.station), "session": ident.session.value,
                "tmr": self.fe.serial, **({"secret": ident.secret} if ident.secret is not None else {})}

    def op_keepalive(self, conn: Connection, msg: Message) -> Awaitable[Message]:
        return self._keepalive(conn, msg)

    async def _keepalive(self, conn: Connection, msg: Message) -> Message:
        ident = _ident(conn)
        alive = await self.store.keep_alive(ident.client_id or "")
        handles = list(msg.get("handles", ()))
        lost = handles
        if alive and handles:  # each handle still this client's (it may have been freed elsewhere)
            sessions = await asyncio.gather(*(self.store.session(h) for h in handles))
            lost = [h for h, sess in zip(handles, sessions, strict=True)
                    if sess is None or sess.holder.client_id != ident.client_id]
        timeout = self.fe.client_timeout
        reply = {"id": msg["id"], "ok": True, "interval": self.config.keepalive_for(timeout), "timeout": timeout,
                 "lost": lost}
        if alive and msg.get("others") is True:  # seats taken on an earlier connection, not named (docs/protocol.md)
            named = set(handles)
            reply["others"] = [sess.handle for sess in await self.store.sessions()
                               if sess.holder.client_id == ident.client_id and sess.handle not in named
                               and sess.since < conn.hello_at]
        return reply

    def find(self, firm: int, product: int) -> VirtualItem:
        """The virtual item of `firm` and `product`: 130 when it is missing (fewer than two
        constituents), 200 when no upstream knows it."""
        known = [v for v in self.items if v.firm == firm and v.product == product]
        for v in known:
            if v.available and v.error is None:
                return v
        for v in known:
            if v.available:
                assert v.error is not None
                raise LicentiaError(ErrorCode(v.error), f"container {self.fe.serial}: {v.reason}")
        if known:
            raise LicentiaError(ErrorCode.REDUNDANCY_SERVER_MISSING,
                                f"TMR license {known[0].tmr_id} (firm {firm}, product {product}): {known[0].reason}")
        raise LicentiaError(ErrorCode.ENTRY_NOT_FOUND,
                            f"no license for firm {firm}, product {product} in TMR container {self.fe.serial}")

    def key_of(self, v: VirtualItem) -> ItemKey:
        return ItemKey(self.fe.serial, v.firm, v.product, v.tmr_id)

    def op_access(self, conn: Connection, msg: Message) -> Awaitable[Message]:
        return self._access(conn, msg)

    async def _access(self, conn: Connection, msg: Message) -> Message:
        ident = acting_for(_ident(conn), msg)
        v = self.find(msg["firm"], msg["product"])
        assert v.item is not None
        mode = MODES[msg.get("mode", "per-access")]
        now = time.time()
        # the request against the item (features, versions, maintenance, VM); the item's own
        # validity is the upstreams' verdict, its units the store's
        units = await self.store.units(self.key_of(v), v.item)
        version = msg.get("version")
        request = ItemRequest(feature_code=msg.get("feature", 0), version=parse_version(version) if version else None,
                              release_date=msg.get("release_date"), in_vm=ident.in_vm)
        verdict = evaluate(v.item, ItemState(units_remaining=units), request, VirtualClock(), int(now),
                           tmr_upstream=True)
        if verdict.error is not None:
            raise LicentiaError(verdict.error, f"TMR license {v.tmr_id}: {verdict.reason}")
        grant = await self.store.access(key=self.key_of(v), quantity=v.item.quantity, mode=mode,
                                        station=ident.station, holder=ident.holder, session=ident.session, now=now)
        until = valid_until(v.item, ItemState())
        reply = {"id": msg["id"], "ok": True, "handle": grant.handle, "container": self.fe.serial, "item": v.tmr_id,
                 "location": "network", "server": self.host_name, "mode": mode.value, "valid_until": until,
                 "units": units, "tmr_id": v.tmr_id, "virtual_container": self.fe.serial}
        return await self._proved(reply, v, msg, grant.handle)

    async def _proved(self, reply: Message, v: VirtualItem, msg: Message, handle: int) -> Message:
        """`reply` with the proof a program's challenge (`nonce`) asks for: signed by one
        agreeing upstream's constituent (the first of the configured order that answers),
        with its license and container key, as a network server's own container would."""
        nonce = msg.get("nonce")
        if not isinstance(nonce, bytes):
            return reply
        fields: dict[str, Any] = {"firm": v.firm, "tmr_id": v.tmr_id, "nonce": nonce, "handle": handle}
        for name in ("units", "valid_until"):
            if reply.get(name) is not None:
                fields[name] = reply[name]
        last: LicentiaError | None = None
        for address in self.fe.upstreams:
            up = self.upstreams[address]
            if address not in v.agreeing or up.client is None or up.client.closed:
                continue
            try:
                proof = await up.client.request("tmr.prove", timeout=max(1.0, self.fe.poll_interval * 2), **fields)
            except LicentiaError as exc:
                last = exc
                continue
            for name in ("license", "container", "item", "container_key", "proof"):
                reply[name] = proof[name]
            return reply
        raise LicentiaError(ErrorCode.REDUNDANCY_SERVER_MISSING,
                            f"no upstream of TMR license {v.tmr_id} proves the answer"
                            + (f": {last.message}" if last is not None else ""))

    async def _held(self, conn: Connection, handle: int) -> tuple[Ident, Any, VirtualItem]:
        ident = _ident(conn)
        sess = await self.store.session(handle)
        if sess is None and await self.store.keep_alive(ident.client_id or ""):
            sess = await self.store.session(handle)  # its lease may have been put back (SeatStore.keep_alive)
        if sess is None or sess.holder.client_id != ident.client_id:
            raise LicentiaError(ErrorCode.INVALID_HANDLE, f"handle {handle} is not held by this client")
        key = sess.key
        v = self.find(key.firm_code, key.product_code)
        return ident, sess, v

    def op_release(self, conn: Connection, msg: Message) -> Awaitable[Message]:
        return self._release(conn, msg)

    async def _release(self, conn: Connection, msg: Message) -> Message:
        await self.store.release(msg["handle"], time.time(), holder=_ident(conn).holder)
        return {"id": msg["id"], "ok": True}

    def op_decrement(self, conn: Connection, msg: Message) -> Awaitable[Message]:
        return self._decrement(conn, msg)

    async def _decrement(self, conn: Connection, msg: Message) -> Message:
        ident, _sess, v = await self._held(conn, msg["handle"])
        assert v.item is not None
        # no receipt: the protocol's request ids are per connection (two decrements through
        # the twins could share one), and a client runtime does not repeat a decrement
        left = await self.store.decrement(self.key_of(v), v.item, msg["units"], client_id=ident.client_id or "",
                                          request_id=None)
        reply = {"id": msg["id"], "ok": True, "units": left, "valid_until": valid_until(v.item, ItemState())}
        return await self._proved(reply, v, msg, msg["handle"])

    def op_check(self, conn: Connection, msg: Message) -> Awaitable[Message]:
        return self._check(conn, msg)

    async def _check(self, conn: Connection, msg: Message) -> Message:
        try:
            _, _, v = await self._held(conn, msg["handle"])
        except LicentiaError as exc:
            if exc.code is ErrorCode.INVALID_HANDLE:
                return {"id": msg["id"], "ok": True, "valid": False, "events": ["license-gone"],
                        "reason": exc.message}
            if exc.code is ErrorCode.REDUNDANCY_SERVER_MISSING:
                return {"id": msg["id"], "ok": True, "valid": False, "events": ["license-gone"],
                        "reason": exc.message}
            raise
        assert v.item is not None
        units = await self.store.units(self.key_of(v), v.item)
        reply = {"id": msg["id"], "ok": True, "valid": True, "events": [], "units": units,
                 "valid_until": valid_until(v.item, ItemState())}
        return await self._proved(reply, v, msg, msg["handle"])

    def op_info(self, conn: Connection, msg: Message) -> Message:
        return {"id": msg["id"], "ok": True, **self.status()}

    # ================================================================== status

    def status(self) -> dict[str, Any]:
        """What `licentia tmr status` and front-end.json show."""
        ups: list[dict[str, Any]] = []
        for name, up in self.upstreams.items():
            ups.append({"address": name, "reachable": up.reachable, "error": up.error, "checked_at": up.checked_at})
        by_up: dict[str, dict[str, str]] = {a: {} for a in self.upstreams}
        items = []
        for v in self.items:
            label = f"{v.firm}/{v.tmr_id}"
            for a in self.upstreams:
                by_up[a][label] = "identical" if a in v.agreeing else (
                    "unreachable" if not self.upstreams[a].reachable else "differs or missing")
            items.append({"firm": v.firm, "tmr_id": v.tmr_id, "product": v.product, "available": v.available,
                          "upstreams": list(v.agreeing), "error": v.error, "reason": v.reason,
                          "quantity": v.item.quantity if v.item is not None else None})
        for row in ups:
            row["constituents"] = by_up[row["address"]]
        return {"serial": self.fe.serial, "server": self.host_name, "pid": os.getpid(),
                "started_at": self.started_at, "upstreams": ups, "items": items,
                "etcd": [{"endpoint": e, "healthy": h} for e, h in self.etcd_health.items()], **self.ports}

    def write_status(self) -> None:
        atomic_write(self.fe.home / "front-end.json", json.dumps(self.status(), indent=1).encode(), mode=0o644)

    # ================================================================== what the parts call

    def check_process_soon(self, process: Any) -> None:
        pass  # a front end serves over the network only: no process of its own machine to watch

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _note_problem(self, text: str) -> None:
        self.problems = [*self.problems[-19:], text[:500]]


def _ident(conn: Connection) -> Ident:
    ident = conn.ident
    assert ident is not None
    return ident


async def _etcd_health(endpoint: str) -> bool:
    """etcd's own /health answer of one member (True: it is in a cluster with a leader)."""
    hostport = endpoint.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 1.0)
    except (OSError, TimeoutError, ValueError):
        return False
    try:
        writer.write(f"GET /health HTTP/1.0\r\nHost: {hostport}\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(4096), 1.5)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
    _, _, body = data.partition(b"\r\n\r\n")
    try:
        return bool(json.loads(body).get("health") == "true")
    except ValueError:
        return False


async def run(config: FrontEndConfig) -> None:
    fe = FrontEnd(config)
    await fe.start()
    try:
        await fe.serve_forever()
    finally:
        await fe.stop()

