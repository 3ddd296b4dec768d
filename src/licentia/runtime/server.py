"""The runtime daemon: one asyncio loop serving local programs and, in network mode, other
machines. This module puts its parts together and runs them; docs/architecture.md draws them.

- `connection`: one client connection (framing, limits), `router`: operation -> handler;
- `ident`: who a request comes from; `grants`: access, release, decrement and check on
  this machine's containers; `network`: seats held on network servers (client role);
- `housekeeping`: reaping, client-timeout expiry, rescans, the seat snapshot, the log's
  flushes; `events` and `queries`: what happened and what the status API shows;
- collaborators: `tokens`, `cloud`, `sync` (they see the runtime as `host.Runtime`).

Hot path: the request judged in memory against the cached container content and counted
in the seat table (`licentia.core.seats`, O(1)); the reply is written before anything
slow happens. Only changes that must survive a crash (unit decrements, the first use of
a usage period, a step of the container's clock) wait for the disk, batched by group
commit. The usage log, the seat snapshot and HTTP are off that path.

Listeners:
- Unix socket `HOME/runtime.sock` (programs on this machine; the kernel names the peer);
- loopback TCP (programs on this machine that cannot use the socket);
- network mode: TCP with TLS 1.3 for other machines and client runtimes;
- HTTP: status page and JSON API (`licentia.runtime.status`);
- UDP: discovery answers (network mode with discovery on).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import gc
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from licentia.core.seats import Event, ProcessId, SeatTable, Session
from licentia.fsutil import atomic_write
from licentia.model import AccessMode, Environment, ErrorCode, Fingerprint, LicentiaError
from licentia.protocol.frames import Message
from licentia.protocol.messages import CLIENT, REQUESTS, SUPPORTED_VERSIONS
from licentia.runtime import handles
from licentia.runtime.acl import AccessGate
from licentia.runtime.aclwatch import AclWatch
from licentia.runtime.borrow import Borrowing
from licentia.runtime.cloud import RuntimeCloud
from licentia.runtime.config import RuntimeConfig
from licentia.runtime.connection import Connection
from licentia.runtime.events import Events
from licentia.runtime.grants import LocalGrants
from licentia.runtime.home import RuntimeHome
from licentia.runtime.housekeeping import Housekeeping
from licentia.runtime.ident import Identities, PeerSearch, find_peer, identity_tokens, kernel_peer
from licentia.runtime.licenses import Changes, Loaded
from licentia.runtime.limits import AdmittingListener, ConnectionLimits
from licentia.runtime.network import NetworkClient
from licentia.runtime.portuser import in_use
from licentia.runtime.queries import Queries
from licentia.runtime.router import Handler, Router
from licentia.runtime.searchlist import DiscoveryResponder
from licentia.runtime.sync import CentralSync
from licentia.runtime.tokens import RuntimeContainers, RuntimeTokens
from licentia.runtime.usagelog import UsageLog
from licentia.sdk.proof import station_host_id

_T = TypeVar("_T")


class Runtime:
    def __init__(self, home: RuntimeHome, config: RuntimeConfig, *, fingerprint: Fingerprint,
                 machine_root: Path = Path("/")) -> None:
        self.home = home
        self.config = config
        self.fingerprint = fingerprint
        self.environment: Environment = fingerprint.environment
        self.machine_root = machine_root
        self.host_name = socket.gethostname()
        self.host_id = station_host_id(machine_root)
        self.seats = SeatTable()
        self.log: UsageLog | None = None
        self.gate: AccessGate | None = None  # the access list in force (set by `acl_watch`)
        self.acl_watch: AclWatch | None = None
        self.http: Any = None  # the HTTP port's service (`licentia.runtime.status.HttpService`)
        self.connections: set[Any] = set()
        self.connection_count = 0
        self.started_at = time.time()
        self.client_id = ""
        self.ports: dict[str, Any] = {}
        self.certificate_pin: str | None = None
        self.events = Events()
        self.identities = Identities(host_id=self.host_id, host_name=self.host_name, environment=self.environment,
                                     machine_root=machine_root)
        self.containers = RuntimeContainers(home.containers, fingerprint, group_commit=config.group_commit)
        self.tokens = RuntimeTokens(self)
        self.cloud = RuntimeCloud(self)
        self.central_sync = CentralSync(self)
        self.network = NetworkClient(self)
        self.housekeeping = Housekeeping(self)
        self.grants = LocalGrants(self)
        self.queries = Queries(self)
        self.borrowing = Borrowing(self)
        self._servers: list[asyncio.AbstractServer] = []
        self._listeners: list[AdmittingListener] = []
        self._datagram: asyncio.DatagramTransport | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: set[asyncio.Future[Any]] = set()
        self._stop: asyncio.Event | None = None
        self._lock_fd: int | None = None
        handlers: dict[str, Handler] = {
            "hello": self.op_hello,
            "access": self.grants.op_access,
            "release": self.grants.op_release,
            "decrement": self.grants.op_decrement,
            "check": self.grants.op_check,
            "keepalive": self.op_keepalive,
            "sessions": self.queries.op_sessions,
            "info": self.queries.op_info,
            "admin.release": self.queries.op_admin_release,
            "events": self.queries.op_events,
            "rescan": self.housekeeping.op_rescan,
            "borrow": self.borrowing.op_borrow,
            "borrow.import": self.borrowing.op_import,
            "borrow.return": self.borrowing.op_return,
            "borrow.list": self.borrowing.op_list,
            "borrow.take": self.borrowing.op_take,
            "borrow.give-back": self.borrowing.op_give_back,
        }
        if config.tmr_role == "upstream":  # a TMR upstream shows its constituents to its front ends
            from licentia.runtime.tmrupstream import TmrUpstream

            upstream = TmrUpstream(self)
            handlers["tmr.items"] = upstream.op_items
            handlers["tmr.prove"] = upstream.op_prove
        self.limits = ConnectionLimits(self)
        self.router = Router(handlers, self._note_problem, self._spawn, config)

    # ================================================================== life

    async def start(self) -> None:
        home, config = self.home, self.config
        home.ensure()
        self._take_lock()
        self.client_id = home.client_id()
        key = self._runtime_key()
        self.identities.use_key(key, identity_tokens(home))
        self.log = self.events.log = UsageLog(home.usage_log, key, rotate_bytes=config.log_rotate_bytes)
        self.log.on_pending = self.housekeeping.log_pending
        loop = asyncio.get_running_loop()
        now = int(time.time())
        result = await loop.run_in_executor(None, self.containers.scan_disk, now)
        self.containers.apply_scan(result)
        await self.tokens.start()
        self.housekeeping.restore()
        handles.install(self)  # no handle given twice, across crashes too
        self.borrowing.start(time.time())
        self.acl_watch = AclWatch(self)
        self.acl_watch.start()
        self._spawn(self.acl_watch.regroup())
        await self.cloud.start()
        self.network.reload_servers()
        self.log.note({"event": "start", "host": self.host_name, "pid": os.getpid(),
                       "containers": sorted(self.containers.loaded),
                       "sessions": len(self.seats) + len(self.network.remote)})
        try:
            await self._listen()
        except BaseException:
            await self.stop()  # nothing left behind: listeners, socket file, lock
            raise
        self.home.admin_token()  # the file the status page's 401 names exists from the start
        self._write_status()
        hk = self.housekeeping
        self._tasks = [
            loop.create_task(self._every(config.reap_interval, hk.reap_now)),
            loop.create_task(self._every(config.log_checkpoint_interval, hk.checkpoint_log)),
            loop.create_task(self._every(max(config.reap_interval, 1.0) * 2, hk.rescan)),
            loop.create_task(self.network.keepalive_loop()),
            loop.create_task(self._every(max(config.reap_interval, 1.0), self.borrowing.tick)),
            loop.create_task(self._every(1.0, self.acl_watch.tick)),
            loop.create_task(self._every(min(1.0, config.hello_timeout / 4), self.limits.sweep)),
        ]
        hk.reap_now()  # programs that ended while the runtime was down
        self.central_sync.start()
        # What start-up built lives as long as the runtime: keep it out of the collector's way,
        # and collect young objects less often (the license path makes few reference cycles).
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 50, 50)

    async def serve_forever(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        await self._stop.wait()

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for server in self._servers:
            server.close()
        if self.http is not None:
            await self.http.stop()
        for listener in self._listeners:
            listener.close()
        if self._datagram is not None:
            self._datagram.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        await self.network.close()
        await self.central_sync.stop()
        await self.cloud.stop()
        await self.tokens.stop()
        await self.housekeeping.stop()
        if self.log is not None:
            self.log.note({"event": "stop", "host": self.host_name,
                           "sessions": len(self.seats) + len(self.network.remote)})
            self.log.close()
        self.containers.close()
        if self.config.socket:
            with contextlib.suppress(OSError):
                sock_path = self.config.path(self.home.path, self.config.socket)
                if sock_path.is_socket():
                    sock_path.unlink()
        with contextlib.suppress(OSError):
            self.home.status_file.unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _take_lock(self) -> None:
        fd = os.open(self.home.state / "runtime.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            status = self.home.read_status() or {}
            raise LicentiaError(
                ErrorCode.ALREADY_EXISTS,
                f"a runtime already serves {self.home.path} (pid {status.get('pid', '?')})",
                "stop it first, or give this one another home with --home",
            ) from None
        self._lock_fd = fd

    def _runtime_key(self) -> bytes:
        path = self.home.runtime_key
        try:
            data = path.read_bytes()
            if len(data) == 32:
                return data
        except FileNotFoundError:
            pass
        from licentia.crypto import new_signing_key

        key = new_signing_key()
        atomic_write(path, key, mode=0o600)
        return key

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        config, home = self.config, self.home
        backlog = 1024
        if config.socket:
            path = config.path(home.path, config.socket)
            if path.is_socket() or path.exists():
                path.unlink()
            server = await loop.create_unix_server(lambda: Connection(self, "unix").protocol(), os.fspath(path),
                                                   backlog=backlog)
            os.chmod(path, 0o666)
            self._servers.append(server)
            self.ports["socket"] = str(path)
        if config.local_port >= 0:
            server = await _bound("the local TCP endpoint", config.local_address, config.local_port, "tcp",
                                  loop.create_server(lambda: Connection(self, "local").protocol(),
                                                     config.local_address, config.local_port, backlog=backlog,
                                                     reuse_address=True))
            self._servers.append(server)
            self.ports["local_port"] = _bound_port(server)
            self.ports["local_address"] = config.local_address
        if config.network:
            from licentia.runtime.tlsfiles import certificate_pin, server_context, server_files

            cert, key = server_files(home, config)
            ctx = server_context(cert, key)
            if config.tmr_role == "upstream":
                from licentia.runtime.tmrupstream import accept_front_ends

                ctx = accept_front_ends(ctx, config.path(home.path, config.tmr_front_end_ca))
            self.certificate_pin = certificate_pin(cert)
            # connections counted (and refused over the limits) before their TLS handshake
            try:
                sock = socket.create_server(
                    (config.network_address, config.network_port), backlog=backlog,
                    family=socket.AF_INET6 if ":" in config.network_address else socket.AF_INET)
            except OSError as exc:
                raise in_use(exc, "the network port", config.network_address, config.network_port, "tcp") from None
            listener = AdmittingListener(
                self.limits, sock, ctx, lambda: Connection(self, "network", admitted=True).protocol(), config.hello_timeout)
            listener.start()
            self._listeners.append(listener)
            port = listener.port()
            self.ports["network_port"] = port
            self.ports["network_address"] = config.network_address
            self.ports["certificate_pin"] = self.certificate_pin
            if config.discovery:
                transport, _ = await _bound("discovery", config.network_address, config.discovery_port, "udp",
                                            loop.create_datagram_endpoint(
                                                lambda: DiscoveryResponder(port, self.host_name),
                                                local_addr=(config.network_address, config.discovery_port),
                                                reuse_port=True))
                self._datagram = transport
                self.ports["discovery_port"] = transport.get_extra_info("sockname")[1]
        if config.http_port >= 0:
            self._servers.append(await self._http())

    async def _http(self) -> asyncio.AbstractServer:
        """WebAdmin, the JSON API and /metrics (`licentia.runtime.status`), HTTPS unless
        `[http] tls = false`."""
        from licentia.runtime.status import HttpService

        ctx = None
        if self.config.http_tls:
            from licentia.runtime.tlsfiles import server_files

            cert, key = server_files(self.home, self.config)
            ctx = http_context(cert, key)
        self.http = HttpService(self, ctx)
        server: asyncio.AbstractServer = await _bound("the status page (HTTP)", self.config.http_address,
                                                      self.config.http_port, "tcp", self.http.start())
        self.ports["http_port"] = _bound_port(server)
        self.ports["http_address"] = self.config.http_address
        self.ports["http_scheme"] = "https" if ctx is not None else "http"
        return server

    def _write_status(self) -> None:
        self.home.write_status({"pid": os.getpid(), "started_at": self.started_at, "host": self.host_name,
                                "network": self.config.network, **self.ports})

    async def _every(self, interval: float, job: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                result = job()
                if asyncio.iscoroutine(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep serving; say what failed
                self._note_problem(f"{getattr(job, '__name__', 'job')}: {exc!r}")

    # ================================================================== hello and keep-alive

    def op_hello(self, conn: Connection, msg: Message) -> Message | Awaitable[Message]:
        if not set(msg["versions"]) & set(SUPPORTED_VERSIONS):
            raise LicentiaError(ErrorCode.PROTOCOL_ERROR,
                                f"this runtime speaks protocol versions {list(SUPPORTED_VERSIONS)}")
        peer = kernel_peer(conn, msg["client"])
        if isinstance(peer, PeerSearch):  # a look through the user's processes: not on the loop
            return self._hello_after(conn, msg, peer)
        return self._hello(conn, msg, peer)

    async def _hello_after(self, conn: Connection, msg: Message, search: PeerSearch) -> Message:
        peer = await asyncio.get_running_loop().run_in_executor(None, find_peer, search)
        return self._hello(conn, msg, peer)

    def _hello(self, conn: Connection, msg: Message, peer: tuple[int, int, int] | None) -> Message:
        version = max(set(msg["versions"]) & set(SUPPORTED_VERSIONS))
        c: dict[str, Any] = msg["client"]
        ident = conn.ident = self.identities.identify(c, c.get("kind", "program"), listener=conn.listener,
                                                      peer=peer, peer_host=conn.peer_host,
                                                      number=self.connection_count)
        conn.forget_log_lines()
        conn.hello_at = time.time()
        reply: Message = {
            "id": msg["id"], "ok": True, "version": version, "server": self.host_name,
            "client_id": ident.client_id, "timeout": self.config.client_timeout,
            "keepalive": self.config.keepalive_for(self.config.client_timeout),
            "location": "network" if conn.listener == "network" else "local",
            "station": list(ident.station), "session": ident.session.value, "role": ident.role,
            # how the runtime knows the client still lives: its process, or its keep-alives
            "watch": "process" if ident.holder.process is not None else "keepalive"}
        if ident.secret is not None:
            reply["secret"] = ident.secret
            reply["resumed"] = bool(isinstance(c.get("resume"), dict) and c["resume"].get("client_id")
                                    == ident.client_id)
        return reply

    def op_keepalive(self, conn: Connection, msg: Message) -> Message:
        ident = conn.ident
        assert ident is not None
        reply: Message = {"id": msg["id"], "ok": True, "interval": self.config.keepalive_for(self.config.client_timeout),
                          "timeout": self.config.client_timeout, "lost": []}
        if ident.client_id is not None:  # only the sender's own seats: its id is the server's to give
            self.seats.heartbeat(ident.client_id, time.time())
            named = msg.get("handles", ())
            reply["lost"] = self.seats.not_held_by(ident.client_id, named)
            if msg.get("others") is True:  # seats taken on an earlier connection, not named (docs/protocol.md)
                reply["others"] = self.seats.taken_before(ident.client_id, conn.hello_at, named)
        return reply

    # ================================================================== what the parts call

    def check_process_soon(self, process: ProcessId) -> None:
        self.housekeeping.check_process_soon(process)

    def after_release(self, events: tuple[Event, ...]) -> None:
        self.housekeeping.after_release(events)

    def reap_now(self) -> None:
        self.housekeeping.reap_now()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _note_problem(self, text: str) -> None:
        if self.log is not None:
            self.log.note({"event": "problem", "detail": text[:500]})

    def _seats_changed(self) -> None:
        self.housekeeping.seats_changed()

    # the collaborators' view (licentia.runtime.host.Runtime)

    @property
    def denials(self) -> dict[int, int]:
        return self.grants.denials

    @property
    def recent(self) -> collections.deque[tuple[int, Event | dict[str, Any]]]:
        return self.events.recent

    @property
    def recent_seq(self) -> int:
        return self.events.seq

    @recent_seq.setter
    def recent_seq(self, value: int) -> None:
        self.events.seq = value

    @property
    def handle_events(self) -> dict[int, set[str]]:
        return self.events.handle_events

    @property
    def net_pids(self) -> dict[int, int]:
        return self.events.net_pids

    def _forget_later(self, handle: int, why: str) -> None:
        self.events.forget_later(handle, why)

    def _log_events(self, events: tuple[Event, ...]) -> None:
        self.events.log_events(events)

    def _log_decrement(self, sess: Session, units: int, remaining: int | None) -> None:
        self.events.log_decrement(sess, units, remaining)

    def _container_changes(self, changes: Changes) -> None:
        self.housekeeping.container_changes(changes)

    def _grant_reply(self, msg: Message, ld: Loaded, entry: Any, handle: int, mode: AccessMode,
                     local: bool) -> Message:
        return self.grants.grant_reply(msg, ld, entry, handle, mode, local)

    def _gone_reply(self, rid: int, handle: int) -> Message:
        return self.events.gone_reply(rid, handle)


async def _bound(what: str, address: str, port: int, proto: str, binding: Awaitable[_T]) -> _T:
    """`binding` awaited; a port another process holds is reported as such (1420, naming
    the process when /proc shows it), any other failure to listen as 1421: not as an OSError."""
    try:
        return await binding
    except OSError as exc:
        raise in_use(exc, what, address, port, proto) from None
def http_context(cert: Path, key: Path) -> Any:
    """TLS 1.2 and 1.3 for browsers on the HTTP port (the network port stays TLS 1.3 only)."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    except (OSError, ssl.SSLError) as exc:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"cannot load the certificate {cert}: {exc}") from None
    return ctx


def _bound_port(server: asyncio.AbstractServer) -> int:
    # uvloop's `sockets` is a list where asyncio's is a tuple: read it untyped
    sockets: Any = getattr(server, "sockets")  # noqa: B009
    return int(sockets[0].getsockname()[1])


__all__ = ["CLIENT", "REQUESTS", "Connection", "Runtime"]
