"""The runtime daemon: one asyncio loop serving local programs and, in network mode, other machines.

Hot path: an asyncio `Protocol` per connection, msgpack frames (`licentia.protocol`), the
request judged in memory against the cached container content and counted in the seat
table (`licentia.core.seats`, O(1)); the reply is written before anything slow happens.
Only changes that must survive a crash (unit decrements, the first use of a usage period,
a step of the container's clock) wait for the disk, batched by group commit. The usage
log, the seat snapshot and HTTP are off that path: log entries are flushed every few
milliseconds, the snapshot is written shortly after a change, HTTP is another listener.

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
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from licentia.binding import detect_session
from licentia.core.evaluate import status_of, valid_until
from licentia.core.seats import (
    Event,
    Holder,
    ItemKey,
    ProcessId,
    ReleaseReason,
    SeatRefused,
    SeatTable,
    Session,
    Station,
)
from licentia.fsutil import atomic_write
from licentia.model import (
    AccessMode,
    ContainerStatus,
    Environment,
    ErrorCode,
    Fingerprint,
    ItemRequest,
    LicentiaError,
    SessionKind,
    parse_version,
)
from licentia.protocol.frames import (
    CONNECTION_ID,
    VERSION_BYTE,
    FrameDecoder,
    Message,
    ProtocolError,
    encode,
    error_reply,
)
from licentia.protocol.messages import (
    CLIENT,
    REQUESTS,
    SUPPORTED_VERSIONS,
    validate_request,
)
from licentia.runtime import procs
from licentia.runtime.cloud import RuntimeCloud
from licentia.runtime.config import RuntimeConfig
from licentia.runtime.home import RuntimeHome
from licentia.runtime.licenses import (
    Changes,
    Loaded,
    ProofKeys,
    decrement_op,
    first_use_op,
    make_proof,
)
from licentia.runtime.searchlist import Discovered, DiscoveryResponder, read_list
from licentia.runtime.sync import CentralSync
from licentia.runtime.tokens import REMOVED, RuntimeContainers, RuntimeTokens
from licentia.runtime.upstream import Upstream, unreachable
from licentia.runtime.usagelog import LineTemplate, UsageLog
from licentia.sdk.proof import station_host_id

REMOTE_BASE = 1 << 40  # local handles of seats held on a network server start here
SNAPSHOT_FORMAT = "licentia.runtime-state"
GONE_MEMORY = 10_000  # freed handles remembered to tell their programs why

# event names programs see through check()
LICENSE_GONE = "license-gone"
SERVER_LOST = "server-lost"
CONTAINER_REMOVED = "container-removed"
ITEM_CHANGED = "item-changed"

_RANK = {
    ErrorCode.NO_MORE_LICENSES: 6,
    ErrorCode.EXCLUSIVE_CONFLICT: 6,
    ErrorCode.LOCAL_ONLY: 5,
    ErrorCode.TERMINAL_SESSION_DENIED: 5,
    ErrorCode.ACCESS_DENIED: 5,
    ErrorCode.SECURITY_PROBLEM: 2,
    ErrorCode.ENTRY_NOT_FOUND: 1,
    ErrorCode.CONTAINER_NOT_FOUND: 1,
    ErrorCode.SERVER_NOT_FOUND: 0,
    ErrorCode.NETWORK_FAULT: 0,
}


def _better(best: LicentiaError | None, new: LicentiaError) -> LicentiaError:
    """The more telling of two refusals (212 over an expired item over 'not found')."""
    if best is None:
        return new
    return new if _RANK.get(new.code, 3) > _RANK.get(best.code, 3) else best


def _again(exc: LicentiaError) -> LicentiaError:
    return LicentiaError(exc.code, exc.message, exc.hint)


class Ident:
    """Who a request comes from, as the runtime established it."""

    __slots__ = ("client_id", "holder", "host", "in_vm", "kind", "local", "pid", "program", "session",
                 "station", "uid", "user")

    def __init__(self, *, kind: str, holder: Holder, station: Station, session: SessionKind, local: bool,
                 in_vm: bool, pid: int | None = None, uid: int | None = None, client_id: str | None = None,
                 program: str = "", user: str = "", host: str = "") -> None:
        self.kind = kind
        self.holder = holder
        self.station = station
        self.session = session
        self.local = local
        self.in_vm = in_vm
        self.pid = pid
        self.uid = uid
        self.client_id = client_id
        self.program = program
        self.user = user
        self.host = host


@dataclass
class RemoteHold:
    """A seat this runtime holds on a network server for one of its programs."""

    handle: int  # the program's handle here
    server: str
    remote_handle: int
    holder: Holder
    station: Station
    firm: int
    product: int
    mode: str
    container: str
    item: int
    since: float

    def to_list(self) -> list[Any]:
        p = self.holder.process
        proc = None if p is None else [list(p.station), p.pid, p.start_time]
        return [self.handle, self.server, self.remote_handle, proc, self.holder.client_id, self.holder.program,
                self.holder.user, self.holder.host, list(self.station), self.firm, self.product, self.mode,
                self.container, self.item, self.since]

    @classmethod
    def from_list(cls, raw: list[Any]) -> RemoteHold:
        (handle, server, remote, proc, client_id, program, user, host, station, firm, product, mode,
         container, item, since) = raw
        process = None if proc is None else ProcessId(Station(*proc[0]), int(proc[1]), proc[2])
        return cls(int(handle), str(server), int(remote), Holder(process, client_id, program, user, host),
                   Station(*station), int(firm), int(product), str(mode), str(container), int(item), float(since))


_NO_LINE = LineTemplate("", "", "", "", False)  # a placeholder: never used while its key is None


class Connection:
    """One client connection: frames in, replies out, requests handled in arrival order
    (a request that waits for the disk or a server does not hold up the others).

    An asyncio protocol by its methods, not by inheritance: a class without a Python base
    compiles to a native class (licentia.native), whose attributes the license path reads
    directly rather than from a __dict__."""

    def __init__(self, runtime: Runtime, listener: str) -> None:
        self.runtime = runtime
        self.listener = listener  # "unix", "local" or "network"
        self.decoder = FrameDecoder(runtime.config.max_frame)
        self.transport: asyncio.Transport | None = None
        self.ident: Ident | None = None
        self.peer: tuple[int, int, int] | None = None  # (pid, uid, gid) from the kernel
        self.peer_host = ""
        self.number = 0
        # usage-log templates of this client's grants (True) and releases (False) per item
        # and mode: its holder and station are the same on every line (see `_hot_access`)
        self.log_lines: dict[tuple[ItemKey, AccessMode, bool], LineTemplate] = {}
        # the last of them used, checked by identity before the dict (an enum in a key hashes slowly)
        self.granted_key: ItemKey | None = None
        self.granted_mode: AccessMode | None = None
        self.granted_line = _NO_LINE
        self.released_key: ItemKey | None = None
        self.released_mode: AccessMode | None = None
        self.released_line = _NO_LINE
        self.proof_keys = ProofKeys()  # agreed with the program for its challenges (licentia.sdk.proof)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        rt = self.runtime
        rt.connection_count += 1
        self.number = rt.connection_count
        rt.connections.add(self)
        sock = transport.get_extra_info("socket")
        if self.listener == "unix" and sock is not None:
            self.peer = procs.peer_credentials(sock)
        else:
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple) and peer:
                self.peer_host = str(peer[0])
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        # the usual read: exactly one whole, good frame, and nothing held back from before
        # (FrameDecoder.feed's first step, here where it compiles with the rest of the path)
        decoder = self.decoder
        end = len(data)
        if end > 5 and type(data) is bytes and decoder.idle():
            length, version = _FRAME_HEAD_unpack_from(data)
            if length + 4 == end and version == VERSION_BYTE and length <= decoder.max_frame:
                try:
                    one = _unpackb(data[5:])
                except Exception:
                    one = None  # the decoder below says what is wrong
                if type(one) is dict and type(one.get("id")) is int:
                    self.runtime.dispatch(self, one)
                    return
        try:
            msgs = decoder.feed(data)
        except ProtocolError as exc:
            for msg in exc.messages:
                self.runtime.dispatch(self, msg)
            self.send(error_reply(exc.request_id, exc.code, exc.message, exc.hint))
            if exc.fatal:
                if self.transport is not None:
                    self.transport.close()
                return
            try:
                msgs = self.decoder.feed(b"")
            except ProtocolError as again:
                self.send(error_reply(again.request_id, again.code, again.message, again.hint))
                if again.fatal and self.transport is not None:
                    self.transport.close()
                return
        dispatch = self.runtime.dispatch
        for msg in msgs:
            dispatch(self, msg)

    def send(self, reply: Message | bytes) -> None:
        t = self.transport
        if t is None:
            return
        if isinstance(reply, bytes):  # a frame encoded already (see `_grant_frame`)
            t.write(reply)
            return
        try:
            t.write(encode(reply))
        except ProtocolError as exc:
            t.write(encode(error_reply(reply.get("id", CONNECTION_ID), exc.code, exc.message)))

    def log_template(self, log: UsageLog, ev: Event, granted: bool) -> LineTemplate:
        """The line template of `ev`, a grant (True) or a release (False) by this client:
        the one used last when item and mode are the same objects, else from `log_lines`."""
        key, mode = ev.key, ev.mode
        if granted:
            if key is self.granted_key and mode is self.granted_mode:
                return self.granted_line
        elif key is self.released_key and mode is self.released_mode:
            return self.released_line
        t = self.log_lines.get((key, mode, granted))
        if t is None:
            t = self.log_lines[(key, mode, granted)] = log.template(ev)
        if granted:
            self.granted_key, self.granted_mode, self.granted_line = key, mode, t
        else:
            self.released_key, self.released_mode, self.released_line = key, mode, t
        return t

    def forget_log_lines(self) -> None:
        """Drop the kept line templates (they name the holder and station of the client)."""
        self.log_lines.clear()
        self.granted_key = self.released_key = None

    def eof_received(self) -> bool | None:
        return None  # close the connection (what asyncio.Protocol does)

    def pause_writing(self) -> None:
        pass  # replies are small and a client reads them; nothing to hold back

    def resume_writing(self) -> None:
        pass

    def protocol(self) -> asyncio.Protocol:
        """This connection as the asyncio protocol it acts as."""
        return self  # type: ignore[return-value]  # duck-typed, see the class's docstring

    def connection_lost(self, exc: Exception | None) -> None:
        rt = self.runtime
        rt.connections.discard(self)
        ident = self.ident
        if ident is not None and ident.holder.process is not None:
            rt.check_process_soon(ident.holder.process)


Handler = Callable[[Connection, Message], "Message | bytes | Awaitable[Message | bytes]"]


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
        self.containers = RuntimeContainers(home.containers, fingerprint, group_commit=config.group_commit)
        self.tokens = RuntimeTokens(self)
        self.cloud = RuntimeCloud(self)
        self.central_sync = CentralSync(self)
        self.log: UsageLog | None = None
        self.remote: dict[int, RemoteHold] = {}
        self.next_remote = REMOTE_BASE
        self.net_pids: dict[int, int] = {}  # handle -> program pid, for network holders (display)
        self.handle_events: dict[int, set[str]] = {}
        self.gone: collections.OrderedDict[int, str] = collections.OrderedDict()
        self.recent: collections.deque[tuple[int, Event | dict[str, Any]]] = collections.deque(maxlen=1000)
        self.recent_seq = 0
        self.upstreams: dict[str, Upstream] = {}
        self.discovered = Discovered()
        self.servers_stamp: tuple[int, int] | None = None
        self.server_list: list[str] = []
        self.connections: set[Connection] = set()
        self.connection_count = 0
        self.started_at = time.time()
        self.client_id = ""
        self.ports: dict[str, Any] = {}
        self.certificate_pin: str | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._datagram: asyncio.DatagramTransport | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: set[asyncio.Future[Any]] = set()
        self._snapshot_handle: asyncio.TimerHandle | None = None
        self._log_timer: asyncio.TimerHandle | None = None
        # encoded grant replies without id and handle, per item state (see `_grant_frame`)
        self._grant_tails: dict[tuple[int, int, bool], tuple[Any, Loaded, bytes, bytes]] = {}
        self._pack = msgpack.Packer().pack  # the loop's own: a Packer is not thread-safe
        self._local_first = config.order in ("local", "local-first")  # where a plain access looks first
        self._plans: dict[tuple[int, int, bool], _Plan] = {}  # see `_plan`
        self._snapshot_running = False
        self._snapshot_again = False
        self._snapshot_future: asyncio.Future[None] | None = None
        self._stop: asyncio.Event | None = None
        self._lock_fd: int | None = None
        self._session_cache: dict[frozenset[tuple[str, str]], tuple[SessionKind, str]] = {}
        self._requests: dict[tuple[int, str | None, int | None, bool], ItemRequest] = {}
        self._handlers: dict[str, Handler] = {
            "hello": self.op_hello,
            "access": self.op_access,
            "release": self.op_release,
            "decrement": self.op_decrement,
            "check": self.op_check,
            "keepalive": self.op_keepalive,
            "sessions": self.op_sessions,
            "info": self.op_info,
            "admin.release": self.op_admin_release,
            "events": self.op_events,
        }

    # ================================================================== life

    async def start(self) -> None:
        home, config = self.home, self.config
        home.ensure()
        self._take_lock()
        self.client_id = home.client_id()
        key = self._runtime_key()
        self.log = UsageLog(home.usage_log, key, rotate_bytes=config.log_rotate_bytes)
        loop = asyncio.get_running_loop()

        def schedule_flush(full: bool) -> None:
            # a full batch is written right after the requests at hand; else one timer
            # bounds how long any entry waits (no timer runs while nothing happens)
            if full:
                loop.call_soon(self._flush_log)
            elif self._log_timer is None:
                self._log_timer = loop.call_later(config.log_flush_interval, self._log_timer_fired)

        self.log.on_pending = schedule_flush
        now = int(time.time())
        result = await loop.run_in_executor(None, self.containers.scan_disk, now)
        self.containers.apply_scan(result)
        await self.tokens.start()
        self._restore_state()
        await self.cloud.start()
        self._reload_servers()
        self.log.note({"event": "start", "host": self.host_name, "pid": os.getpid(),
                       "containers": sorted(self.containers.loaded), "sessions": len(self.seats) + len(self.remote)})
        await self._listen()
        self._write_status()
        self._tasks = [
            loop.create_task(self._every(config.reap_interval, self._reap)),
            loop.create_task(self._every(config.log_checkpoint_interval, self._checkpoint_log)),
            loop.create_task(self._every(max(config.reap_interval, 1.0) * 2, self._rescan)),
            loop.create_task(self._keepalive_loop()),
        ]
        self.reap_now()  # programs that ended while the runtime was down
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
        if self._datagram is not None:
            self._datagram.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        for up in self.upstreams.values():
            await up.close()
        await self.central_sync.stop()
        await self.cloud.stop()
        await self.tokens.stop()
        if self._snapshot_handle is not None:
            self._snapshot_handle.cancel()
        if self._log_timer is not None:
            self._log_timer.cancel()
        if self._snapshot_future is not None:  # one writer of the snapshot file at a time
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._snapshot_future), 10.0)
        self._write_snapshot_now()
        if self.log is not None:
            self.log.note({"event": "stop", "host": self.host_name, "sessions": len(self.seats) + len(self.remote)})
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
            server = await loop.create_unix_server(lambda: Connection(self, "unix").protocol(), os.fspath(path), backlog=backlog)
            os.chmod(path, 0o666)
            self._servers.append(server)
            self.ports["socket"] = str(path)
        if config.local_port >= 0:
            server = await loop.create_server(lambda: Connection(self, "local").protocol(), config.local_address,
                                              config.local_port, backlog=backlog, reuse_address=True)
            self._servers.append(server)
            self.ports["local_port"] = _bound_port(server)
            self.ports["local_address"] = config.local_address
        if config.network:
            from licentia.runtime.tlsfiles import certificate_pin, server_context, server_files

            cert, key = server_files(home, config)
            ctx = server_context(cert, key)
            self.certificate_pin = certificate_pin(cert)
            server = await loop.create_server(lambda: Connection(self, "network").protocol(), config.network_address,
                                              config.network_port, ssl=ctx, backlog=backlog, reuse_address=True,
                                              ssl_handshake_timeout=10.0)
            self._servers.append(server)
            port = _bound_port(server)
            self.ports["network_port"] = port
            self.ports["network_address"] = config.network_address
            self.ports["certificate_pin"] = self.certificate_pin
            if config.discovery:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: DiscoveryResponder(port, self.host_name),
                    local_addr=(config.network_address, config.discovery_port), reuse_port=True)
                self._datagram = transport
                self.ports["discovery_port"] = transport.get_extra_info("sockname")[1]
        if config.http_port >= 0:
            from licentia.runtime.status import StatusHTTP

            server = await loop.create_server(lambda: StatusHTTP(self), config.http_address, config.http_port,
                                              reuse_address=True)
            self._servers.append(server)
            self.ports["http_port"] = _bound_port(server)
            self.ports["http_address"] = config.http_address

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

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _note_problem(self, text: str) -> None:
        if self.log is not None:
            self.log.note({"event": "problem", "detail": text[:500]})

    # ================================================================== dispatch

    def dispatch(self, conn: Connection, msg: Message) -> None:
        hot = msg.get("op")
        if (hot == "release" or hot == "access" or hot == "decrement") and conn.ident is not None:
            try:
                if hot == "release":
                    frame = self._hot_release(conn, msg)
                elif hot == "access":
                    frame = self._hot_access(conn, msg)
                else:
                    frame = None
                    pending = self._hot_decrement(conn, msg)
                    if pending is not None:
                        rid: int = msg["id"]
                        pending.add_done_callback(lambda fut: self._answer(conn, rid, fut))
                        return
            except Exception as exc:  # a bug, not a refusal (those take the general path): say so, keep serving
                conn.send(error_reply(msg.get("id", CONNECTION_ID), ErrorCode.INTERNAL,
                                      f"the runtime failed on this request: {exc!r}"))
                self._note_problem(f"request {hot!r}: {exc!r}")
                return
            if frame is not None:
                t = conn.transport
                if t is not None:
                    t.write(frame)
                return
        rid = msg.get("id", CONNECTION_ID)
        try:
            raw_op: Any = msg.get("op")
            # the hot requests are checked inline; anything unusual takes the full check
            fast = _FAST.get(raw_op) if type(raw_op) is str else None
            op: str = raw_op if fast is not None and fast(msg) else validate_request(msg)
            if op != "hello" and conn.ident is None:
                raise LicentiaError(ErrorCode.PROTOCOL_ERROR, "say hello first: the first request names the client")
            result = self._handlers[op](conn, msg)
        except LicentiaError as exc:
            conn.send(error_reply(rid, exc.code, exc.message, exc.hint))
            return
        except Exception as exc:
            conn.send(error_reply(rid, ErrorCode.INTERNAL, f"the runtime failed on this request: {exc!r}"))
            self._note_problem(f"request {msg.get('op')!r}: {exc!r}")
            return
        if type(result) is bytes or isinstance(result, dict):
            conn.send(result)
        elif isinstance(result, asyncio.Future):  # no task needed: answer when it is done
            result.add_done_callback(lambda fut: self._answer(conn, rid, fut))
        else:
            self._spawn(self._finish(conn, rid, result))  # type: ignore[arg-type]

    def _answer(self, conn: Connection, rid: int, fut: asyncio.Future[Message | bytes]) -> None:
        """`_finish` for a future: send its reply, or its error."""
        if fut.cancelled():
            return
        exc = fut.exception()
        reply: Message | bytes
        if exc is None:
            reply = fut.result()
        elif isinstance(exc, LicentiaError):
            reply = error_reply(rid, exc.code, exc.message, exc.hint)
        else:
            reply = error_reply(rid, ErrorCode.INTERNAL, f"the runtime failed on this request: {exc!r}")
            self._note_problem(f"request {rid}: {exc!r}")
        if conn.transport is not None and not conn.transport.is_closing():
            conn.send(reply)

    async def _finish(self, conn: Connection, rid: int, pending: Awaitable[Message | bytes]) -> None:
        reply: Message | bytes
        try:
            reply = await pending
        except LicentiaError as exc:
            reply = error_reply(rid, exc.code, exc.message, exc.hint)
        except Exception as exc:
            reply = error_reply(rid, ErrorCode.INTERNAL, f"the runtime failed on this request: {exc!r}")
            self._note_problem(f"request {rid}: {exc!r}")
        if conn.transport is not None and not conn.transport.is_closing():
            conn.send(reply)

    # ================================================================== the hot path
    #
    # The plain access, release and decrement of a program (no options; for an access, no
    # challenge or the SDK's challenge with its exchange key) are served here with the
    # fewest steps. These do what op_access/_access_local, op_release
    # and op_decrement do for that case, in the same order; whatever else a request needs
    # (other fields or clients, a refusal, a durable write, a token or cloud container, a
    # seat held on a server) returns None before anything changed, and the request takes
    # the general path. Keep them in step with the general handlers.

    def _hot_access(self, conn: Connection, msg: Message) -> bytes | None:
        ident = conn.ident
        assert ident is not None
        n = len(msg)
        proved = False
        if n == 4:
            mode = AccessMode.PER_ACCESS
        elif n == 5:
            name = msg.get("mode")
            if type(name) is not str or name not in _MODES:
                return None
            mode = _MODES[name]
        elif n == 7 or n == 8:  # the SDK's: mode, a challenge and its exchange key, and `keyed` once it holds one
            name = msg.get("mode")
            nonce = msg.get("nonce")
            if type(name) is not str or name not in _MODES or type(nonce) is not bytes or not nonce \
                    or type(msg.get("kx")) is not bytes:
                return None
            if n == 8:
                keyed = msg.get("keyed")
                if type(keyed) is not list or not all(type(serial) is str for serial in keyed):
                    return None
            mode = _MODES[name]
            proved = True
        else:
            return None
        rid = msg.get("id")
        firm = msg.get("firm")
        product = msg.get("product")
        if type(rid) is not int or rid < 1 or type(firm) is not int or type(product) is not int \
                or ident.kind != "program" or not (self._local_first or conn.listener == "network"):
            return None
        now = time.time()
        inow = int(now)
        plan = self._plans.get((firm, product, ident.in_vm))
        if plan is None or plan[0] != inow or plan[1] != self.containers.generation:
            plan = self._plan(firm, product, ident.in_vm, inow)
            if plan is None:
                return None
        _, _, ld, entry, key, quantity = plan
        try:
            grant = self.seats.access(key=key, quantity=quantity, mode=mode, station=ident.station,
                                      holder=ident.holder, local=ident.local, session=ident.session, now=now)
        except LicentiaError:
            return None  # the general path logs the refusal and answers it
        ev = grant.events[0]
        log = self.log
        assert log is not None
        log.record_in(conn.log_template(log, ev, True), ev)
        self.recent_seq += 1
        self.recent.append((self.recent_seq, ev))
        if ident.pid is not None and ident.holder.process is None:
            self.net_pids[grant.handle] = ident.pid
        if self._snapshot_handle is None:
            self._seats_changed()
        if proved:  # the plan's container is this runtime's soft one: its key proves here
            reply = self._proved_frame(msg, ld, entry, grant.handle, mode, ident.local, conn.proof_keys)
            return reply if isinstance(reply, bytes) else encode(reply)
        hit = self._grant_tails.get((id(entry), id(mode), ident.local))
        if hit is not None and hit[0] is entry and hit[1] is ld:  # `_grant_frame`, inline
            pack = self._pack
            return _frame(hit[2], pack(rid), b"\xa6handle", pack(grant.handle), hit[3])
        reply = self._grant_frame(msg, ld, entry, grant.handle, mode, ident.local)
        return reply if isinstance(reply, bytes) else encode(reply)

    def _hot_decrement(self, conn: Connection, msg: Message) -> asyncio.Future[Message | bytes] | None:
        """op_decrement for a program's own handle on a soft container of this runtime."""
        ident = conn.ident
        assert ident is not None
        rid = msg.get("id")
        handle = msg.get("handle")
        units = msg.get("units")
        if len(msg) != 4 or type(rid) is not int or rid < 1 or type(handle) is not int or type(units) is not int \
                or units < 1 or handle >= REMOTE_BASE or ident.kind != "program" or handle not in self.seats:
            return None
        sess = self.seats.get(handle)
        key = sess.key
        ld = self.containers.loaded.get(key.container)
        if ld is None or ld.serial in self.tokens.held or not sess.holder.same_as(ident.holder):
            return None
        firm_entry = ld.content.firms.get(key.firm_code)
        if firm_entry is None or key.item_id not in firm_entry.items:
            return None
        return self._decrement(msg, ld, sess, units)

    def _plan(self, firm: int, product: int, in_vm: bool, now: int) -> _Plan | None:
        """What `_access_local` decides before counting, for a plain access at second `now`,
        when that is to grant the first candidate without a write; kept for that second and
        generation of the containers (a changed content is a new generation)."""
        containers = self.containers
        candidates = containers.candidates(firm, product, None)
        if not candidates:
            return None
        cand = candidates[0]
        ld, entry = cand.loaded, cand.entry
        if ld.serial in containers.external:
            return None
        verdict, write = containers.judge(cand, self._request_for(0, None, None, in_vm), now)
        if verdict.error is not None or write:
            return None
        if len(self._plans) > 1000:
            self._plans.clear()
        plan = self._plans[(firm, product, in_vm)] = (now, containers.generation, ld, entry, cand.key,
                                                       entry.item.quantity)
        return plan

    def _hot_release(self, conn: Connection, msg: Message) -> bytes | None:
        ident = conn.ident
        assert ident is not None
        rid = msg.get("id")
        handle = msg.get("handle")
        if len(msg) != 3 or type(rid) is not int or rid < 1 or type(handle) is not int or handle >= REMOTE_BASE \
                or ident.kind != "program":
            return None
        try:
            rel = self.seats.release(handle, time.time(), holder=ident.holder)
        except LicentiaError:
            return None  # the general path says why
        ev = rel.events[0]
        log = self.log
        assert log is not None
        if ev.holder is ident.holder and ev.station is ident.station:
            # a handle this connection took: its line differs from the last one only in
            # time, handle and seats in use (one re-attached after a restart may not)
            log.record_in(conn.log_template(log, ev, False), ev)
        else:
            log.record(ev)
        self.recent_seq += 1
        self.recent.append((self.recent_seq, ev))
        if self.handle_events:
            self.handle_events.pop(handle, None)
        if self.net_pids:
            self.net_pids.pop(handle, None)
        if self._snapshot_handle is None:
            self._seats_changed()
        return _ok_frame(self._pack(rid))

    # ================================================================== hello and identity

    def op_hello(self, conn: Connection, msg: Message) -> Message:
        if not set(msg["versions"]) & set(SUPPORTED_VERSIONS):
            raise LicentiaError(ErrorCode.PROTOCOL_ERROR,
                                f"this runtime speaks protocol versions {list(SUPPORTED_VERSIONS)}")
        version = max(set(msg["versions"]) & set(SUPPORTED_VERSIONS))
        c: dict[str, Any] = msg["client"]
        kind = c.get("kind", "program")
        conn.ident = self._identify(conn, c, kind)
        conn.forget_log_lines()
        ident = conn.ident
        return {"id": msg["id"], "ok": True, "version": version, "server": self.host_name,
                "client_id": ident.client_id, "timeout": self.config.client_timeout,
                "keepalive": self.config.keepalive_for(self.config.client_timeout),
                "location": "network" if conn.listener == "network" else "local",
                "station": list(ident.station), "session": ident.session.value}

    def _identify(self, conn: Connection, c: dict[str, Any], kind: str) -> Ident:
        program = _text(c.get("program"), 200)
        user = _text(c.get("user"), 100)
        if conn.listener == "network":
            if kind == "admin":
                raise LicentiaError(ErrorCode.ACCESS_DENIED, "administration is only possible on the server's machine",
                                    "run `licentia sessions` / `licentia release` on the server itself")
            client_id = c.get("client_id")
            if not isinstance(client_id, str) or not 8 <= len(client_id) <= 100:
                client_id = f"net-{self.connection_count}-{os.urandom(6).hex()}"
            host = _text(c.get("host"), 200) or conn.peer_host
            station = self._station_from(c.get("station"), f"ip:{conn.peer_host}")
            session = _session_kind(c.get("session"))
            if station.session_id == "" and session is SessionKind.TERMINAL_SERVER:
                station = station._replace(session_id=f"{host}:terminal")
            holder = Holder.network(client_id, program=program, user=user, host=host)
            return Ident(kind=kind, holder=holder, station=station, session=session, local=False,
                         in_vm=bool(c.get("in_vm", False)), client_id=client_id, program=program, user=user,
                         host=host, pid=c.get("pid") if isinstance(c.get("pid"), int) else None)
        if kind == "runtime":
            raise LicentiaError(ErrorCode.PROTOCOL_ERROR, "a client runtime connects to the network port")
        pid: int | None
        uid: int | None = None
        if conn.peer is not None:
            pid, uid, _ = conn.peer
            start = procs.start_time(pid)
            if start is None:
                raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"process {pid} ended while connecting")
            user = user or procs.user_name(uid)
        else:
            pid = c.get("pid")
            start = c.get("pid_start")
            if pid is not None:
                current = procs.start_time(pid)
                if current is None or (start is not None and current != start):
                    raise LicentiaError(
                        ErrorCode.INVALID_PARAMETER,
                        f"process {pid} (started {start}) is not running on this machine",
                        "a program on another machine or in a container must use the network port",
                    )
                start = current
        env = c.get("env")
        if isinstance(env, dict):
            session, session_id = self._session_of(env)
        else:
            session, session_id = _session_kind(c.get("session")), ""
        station = Station(self.host_id, "", session_id if session is SessionKind.TERMINAL_SERVER else "")
        host = self.host_name
        if kind == "admin" and (conn.peer is None or uid not in (0, os.geteuid())):
            raise LicentiaError(ErrorCode.ACCESS_DENIED,
                                "administration needs the runtime's Unix socket and its user (or root)")
        if pid is None:
            # no process to watch (e.g. a load generator): kept alive like a network client
            client_id = f"local-{self.connection_count}-{os.urandom(4).hex()}"
            holder = Holder.network(client_id, program=program, user=user, host=host)
            return Ident(kind=kind, holder=holder, station=station, session=session, local=True,
                         in_vm=self.environment.in_vm, client_id=client_id, program=program, user=user, host=host)
        program = program or procs.program_name(pid)
        holder = Holder.local(station, pid, float(start or 0), program=program, user=user, host=host)
        return Ident(kind=kind, holder=holder, station=station, session=session, local=True,
                     in_vm=self.environment.in_vm, pid=pid, uid=uid, program=program, user=user, host=host)

    def _station_from(self, raw: Any, fallback_host: str) -> Station:
        if isinstance(raw, dict) and isinstance(raw.get("host_id"), str) and raw["host_id"]:
            return Station(_text(raw["host_id"], 100), _text(raw.get("vm_id"), 100), _text(raw.get("session_id"), 100))
        return Station(fallback_host)

    def _session_of(self, env: dict[str, Any]) -> tuple[SessionKind, str]:
        clean = frozenset((str(k), str(v)) for k, v in env.items() if isinstance(k, str) and isinstance(v, str))
        hit = self._session_cache.get(clean)
        if hit is None:
            hit = detect_session(self.machine_root, dict(clean))
            if len(self._session_cache) > 1000:
                self._session_cache.clear()
            self._session_cache[clean] = hit
        return hit

    def _ident_for(self, conn: Connection, msg: Message) -> Ident:
        """The identity of a request: a client runtime names the program it acts for."""
        ident = conn.ident
        assert ident is not None
        if ident.kind != "runtime":
            return ident
        c = msg.get("client")
        if not isinstance(c, dict):
            return ident
        problem = _check_client(c)
        if problem:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"access: {problem}")
        program = _text(c.get("program"), 200)
        user = _text(c.get("user"), 100)
        host = _text(c.get("host"), 200) or ident.host
        station = self._station_from(c.get("station"), ident.station.host_id)
        session = _session_kind(c.get("session"))
        holder = Holder.network(ident.client_id or "", program=program, user=user, host=host)
        pid = c.get("pid") if isinstance(c.get("pid"), int) else None
        return Ident(kind="program", holder=holder, station=station, session=session, local=False,
                     in_vm=bool(c.get("in_vm", False)), client_id=ident.client_id, pid=pid, program=program,
                     user=user, host=host)

    # ================================================================== access

    def op_access(self, conn: Connection, msg: Message) -> Message | bytes | Awaitable[Message | bytes]:
        ident = self._ident_for(conn, msg)
        if ident.kind == "admin" and conn.peer is None:
            raise LicentiaError(ErrorCode.ACCESS_DENIED, "admin connections do not take licenses")
        mode = _MODES[msg.get("mode", "per-access")]
        request = self._request_for(msg.get("feature", 0), msg.get("version"), msg.get("release_date"), ident.in_vm)
        # a server never forwards what reaches it over the network
        where = "local" if conn.listener == "network" else msg.get("where") or self.config.order
        keys = conn.proof_keys
        if where in ("local", "local-first"):
            try:
                return self._access_local(msg, ident, mode, request, keys)
            except LicentiaError as exc:
                if where == "local" or not self._may_forward(msg):
                    raise
                return self._access_network(msg, ident, mode, first_error=exc)
        if where == "network":
            return self._access_network(msg, ident, mode, first_error=None)
        return self._access_network(msg, ident, mode, first_error=None, then_local=request, keys=keys)

    def _request_for(self, feature: int, version: str | None, release_date: int | None, in_vm: bool) -> ItemRequest:
        key = (feature, version, release_date, in_vm)
        request = self._requests.get(key)
        if request is None:
            if len(self._requests) > 1000:
                self._requests.clear()
            request = self._requests[key] = ItemRequest(
                feature_code=feature, version=parse_version(version) if version else None,
                release_date=release_date, in_vm=in_vm)
        return request

    def _may_forward(self, msg: Message) -> bool:
        return bool(self._servers_to_ask_now() or self.config.broadcast) and not msg.get("container")

    def _access_local(self, msg: Message, ident: Ident, mode: AccessMode, request: ItemRequest,
                      keys: ProofKeys | None = None) -> Message | bytes | Awaitable[Message | bytes]:
        firm, product = msg["firm"], msg["product"]
        candidates = self.containers.candidates(firm, product, msg.get("container"))
        if not candidates:
            refused = self.cloud.refusal(firm, product, msg.get("container"))
            if refused is not None:
                raise refused
            where = f" in container {msg['container']}" if msg.get("container") else ""
            raise LicentiaError(ErrorCode.ENTRY_NOT_FOUND,
                                f"no license for firm {firm}, product {product} on {self.host_name}{where}")
        now = time.time()
        inow = int(now)
        best: LicentiaError | None = None
        seats = self.seats
        log = self.log
        assert log is not None
        judge = self.containers.judge
        for cand in candidates:
            ld, entry = cand.loaded, cand.entry
            verdict, write = judge(cand, request, inow)
            if verdict.error is not None:
                best = _better(best, LicentiaError(verdict.error, f"container {ld.serial}: {verdict.reason}"))
                continue
            try:
                grant = seats.access(key=cand.key, quantity=entry.item.quantity, mode=mode, station=ident.station,
                                     holder=ident.holder, local=ident.local, session=ident.session, now=now)
            except SeatRefused as exc:
                log.record(exc.event)
                self._remember(exc.event)
                best = _better(best, exc)
                continue
            ev = grant.events[0]
            log.record(ev)
            self.recent_seq += 1
            self.recent.append((self.recent_seq, ev))
            if ident.pid is not None and ident.holder.process is None:
                self.net_pids[grant.handle] = ident.pid
            if self._snapshot_handle is None:
                self._seats_changed()
            if ld.serial in self.containers.external:  # a token proves it is here; central counts cloud seats
                if ld.serial in self.tokens.held:
                    return self.tokens.grant(msg, ld, entry.item_id, grant.handle, mode, request, inow, ident.local,
                                             write)
                return self.cloud.grant(msg, ld, entry, grant.handle, mode, ident, ident.local)
            if write:
                return self._grant_durably(msg, ld, entry.item_id, grant.handle, mode, request, inow, ident.local,
                                           keys)
            return self._grant_frame(msg, ld, entry, grant.handle, mode, ident.local, keys)
        assert best is not None
        raise best

    async def _grant_durably(self, msg: Message, ld: Loaded, item_id: int, handle: int, mode: AccessMode,
                             request: ItemRequest, now: int, local: bool, keys: ProofKeys | None = None) -> Message:
        try:
            entry = await ld.writer.submit(first_use_op(msg["firm"], item_id, request, now))
        except LicentiaError:
            if handle in self.seats:
                rel = self.seats.release(handle, time.time())
                self._log_events(rel.events)
                self._seats_changed()
            raise
        if handle not in self.seats:
            raise LicentiaError(ErrorCode.INVALID_HANDLE, "the license was released while it was being granted")
        return self._grant_reply(msg, ld, entry, handle, mode, local, keys)

    def _grant_reply(self, msg: Message, ld: Loaded, entry: Any, handle: int, mode: AccessMode,
                     local: bool, keys: ProofKeys | None = None) -> Message:
        state = entry.state
        until = valid_until(entry.item, state)
        reply: Message = {
            "id": msg["id"], "ok": True, "handle": handle, "container": ld.serial, "item": entry.item_id,
            "location": "local" if local else "network", "server": self.host_name, "mode": str(mode),
            "valid_until": until,
            "units": state.units_remaining, "license": entry.license, "container_key": ld.public_key,
        }
        if state.usage_started_at is not None:
            reply["usage_started_at"] = state.usage_started_at
        nonce = msg.get("nonce")
        if nonce:
            reply.update(self._proof(keys, ld, msg, handle, msg["firm"], entry.item_id, state.units_remaining, until))
        return reply

    def _grant_frame(self, msg: Message, ld: Loaded, entry: Any, handle: int, mode: AccessMode,
                     local: bool, keys: ProofKeys | None = None) -> Message | bytes:
        """`_grant_reply` as a frame. All but the request id and the handle stays the same for
        every grant of one item state, so that part is encoded once and kept while the entry
        (immutable: a changed item is a new entry) is the current one."""
        if msg.get("nonce"):
            if keys is not None and ld.serial not in self.containers.external:
                return self._proved_frame(msg, ld, entry, handle, mode, local, keys)
            return self._grant_reply(msg, ld, entry, handle, mode, local)
        ck = (id(entry), id(mode), local)  # modes are singletons; an enum hashes slowly
        hit = self._grant_tails.get(ck)
        if hit is None or hit[0] is not entry or hit[1] is not ld:
            reply = self._grant_reply(msg, ld, entry, handle, mode, local)
            rest = {k: v for k, v in reply.items() if k != "id" and k != "handle"}
            if len(rest) > 13:  # the map header below holds up to 15 fields
                return reply
            if len(self._grant_tails) > 1000:
                self._grant_tails.clear()
            hit = self._grant_tails[ck] = (entry, ld, bytes((0x80 | (len(rest) + 2),)) + b"\xa2id",
                                           self._pack(rest)[1:])
        return _frame(hit[2], self._pack(msg["id"]), b"\xa6handle", self._pack(handle), hit[3])

    def _proof(self, keys: ProofKeys | None, ld: Loaded, msg: Message, handle: int, firm: int, item_id: int,
               units: int | None, until: int | None) -> dict[str, bytes]:
        """The proof fields of an answer to `msg` (which carries a `nonce`): under the
        connection's proof keys for this runtime's soft containers; the container's
        signature for the others (a cloud container's key proves, as ever)."""
        if keys is not None and ld.serial not in self.containers.external:
            return keys.prove(ld.content, msg, handle, firm, item_id, units, until, ld.serial)
        return {"proof": make_proof(ld.content, msg["nonce"], handle, firm, item_id, units, until)}

    def _proved_frame(self, msg: Message, ld: Loaded, entry: Any, handle: int, mode: AccessMode, local: bool,
                      keys: ProofKeys) -> Message | bytes:
        """`_grant_frame` for a request with a challenge that a connection's proof key
        answers: the grant's kept part, then the proof fields (a MAC, or the signature that
        opens the key)."""
        state = entry.state
        proved = keys.prove(ld.content, msg, handle, msg["firm"], entry.item_id, state.units_remaining,
                            valid_until(entry.item, state), ld.serial)
        bare: Message = {"id": msg["id"]}  # the kept part carries no proof
        ck = (id(entry), id(mode), local)  # modes are singletons; an enum hashes slowly
        hit = self._grant_tails.get(ck)
        if hit is None or hit[0] is not entry or hit[1] is not ld:
            self._grant_frame(bare, ld, entry, handle, mode, local)
            hit = self._grant_tails.get(ck)
        count = len(proved) + (hit[2][0] & 0x0F if hit is not None else 16)
        if hit is None or hit[0] is not entry or hit[1] is not ld or count > 15:  # more than a fixmap holds
            reply = self._grant_reply(bare, ld, entry, handle, mode, local)
            reply.update(proved)
            return reply
        pack = self._pack
        return _frame(bytes((0x80 | count,)), hit[2][1:], pack(msg["id"]), b"\xa6handle", pack(handle), hit[3],
                      *[pack(part) for pair in proved.items() for part in pair])

    async def _access_network(self, msg: Message, ident: Ident, mode: AccessMode, *,
                              first_error: LicentiaError | None, then_local: ItemRequest | None = None,
                              keys: ProofKeys | None = None) -> Message | bytes:
        best = first_error
        servers = await self._servers_to_ask()
        if not servers and best is None and then_local is None:
            raise LicentiaError(ErrorCode.SERVER_NOT_FOUND, "no network license server is configured or found",
                                "add one with `licentia server add HOST[:PORT]`")
        holder = ident.holder
        if holder.process is None:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER,
                                "only a program this runtime can watch (by its process) may take a network license")
        fields: dict[str, Any] = {"firm": msg["firm"], "product": msg["product"], "mode": mode.value,
                                  "where": "local"}
        for name in ("feature", "version", "release_date", "nonce"):
            if name in msg:
                fields[name] = msg[name]
        fields["client"] = {
            "kind": "program", "pid": holder.process.pid, "program": ident.program, "user": ident.user,
            "host": self.host_name, "station": {"host_id": ident.station.host_id, "vm_id": ident.station.vm_id,
                                                "session_id": ident.station.session_id},
            "session": ident.session.value, "in_vm": ident.in_vm,
        }
        for address in servers:
            up = self._upstream(address)
            try:
                reply = await up.request("access", **fields)
            except LicentiaError as exc:
                best = _better(best, exc)
                if unreachable(exc):
                    self._mark_server_lost(address)
                continue
            handle = self.next_remote
            self.next_remote += 1
            hold = RemoteHold(handle, address, int(reply["handle"]), holder, ident.station, msg["firm"],
                              msg["product"], mode.value, str(reply.get("container", "")), int(reply.get("item", 0)),
                              time.time())
            self.remote[handle] = hold
            self._log_remote("grant", hold)
            self._seats_changed()
            out = dict(reply)
            out["id"] = msg["id"]
            out["handle"] = handle
            out["proof_handle"] = hold.remote_handle
            out["location"] = "network"
            out["server"] = address
            return out
        if then_local is not None:
            try:
                result = self._access_local(msg, ident, mode, then_local, keys)
            except LicentiaError as exc:
                raise _better(best, exc) from None
            return result if isinstance(result, dict | bytes) else await result
        if best is None:
            raise LicentiaError(ErrorCode.SERVER_NOT_FOUND, "no network license server answered")
        raise _again(best)

    def _servers_to_ask_now(self) -> list[str]:
        self._reload_servers()
        return list(self.server_list)

    async def _servers_to_ask(self) -> list[str]:
        servers = self._servers_to_ask_now()
        if self.config.broadcast:
            reachable = [s for s in servers if self._upstream(s).reachable is not False]
            if not reachable:
                found = await self.discovered.get(self.config.broadcast_address, self.config.broadcast_port,
                                                  self.config.broadcast_wait)
                own = {f"127.0.0.1:{self.ports.get('network_port')}"}
                servers += [s for s in found if s not in servers and s not in own]
        return servers

    def _reload_servers(self) -> None:
        path = self.home.servers
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self.servers_stamp:
            self.servers_stamp = stamp
            try:
                self.server_list = read_list(path)
            except LicentiaError as exc:
                self._note_problem(exc.message)
                self.server_list = []

    def _upstream(self, address: str) -> Upstream:
        up = self.upstreams.get(address)
        if up is None:
            up = self.upstreams[address] = Upstream(address, self.home, self.config, self.client_id, self.host_id)
        return up

    # ================================================================== release, decrement, check

    def op_release(self, conn: Connection, msg: Message) -> Message | bytes | Awaitable[Message]:
        ident = self._ident_for(conn, msg)
        handle = msg["handle"]
        if handle >= REMOTE_BASE:
            hold = self.remote.get(handle)
            if hold is None or not hold.holder.same_as(ident.holder):
                raise self._not_held(handle)
            return self._release_remote(msg["id"], hold, ReleaseReason.PROGRAM)
        rel = self.seats.release(handle, time.time(), holder=None if ident.kind == "admin" else ident.holder)
        ev = rel.events[0]
        log = self.log
        assert log is not None
        log.record(ev)
        self.recent_seq += 1
        self.recent.append((self.recent_seq, ev))
        if self.handle_events:
            self.handle_events.pop(handle, None)
        if self.net_pids:
            self.net_pids.pop(handle, None)
        if self._snapshot_handle is None:
            self._seats_changed()
        return _ok_frame(self._pack(msg["id"]))

    async def _release_remote(self, rid: int, hold: RemoteHold, reason: ReleaseReason) -> Message:
        self.remote.pop(hold.handle, None)
        self.handle_events.pop(hold.handle, None)
        self._log_remote("release", hold, reason=reason.value)
        self._seats_changed()
        try:
            await self._upstream(hold.server).request("release", handle=hold.remote_handle)
        except LicentiaError as exc:
            if exc.code is not ErrorCode.INVALID_HANDLE:
                self._note_problem(f"releasing handle {hold.remote_handle} on {hold.server}: {exc.message}")
        return {"id": rid, "ok": True}

    def _after_release(self, events: tuple[Event, ...]) -> None:
        self._log_events(events)
        for ev in events:
            if ev.handle is not None:
                self.handle_events.pop(ev.handle, None)
                self.net_pids.pop(ev.handle, None)
                if ev.reason is not None and ev.reason is not ReleaseReason.PROGRAM:
                    self._forget_later(ev.handle, ev.reason.value)
        self._seats_changed()

    def _forget_later(self, handle: int, why: str) -> None:
        self.gone[handle] = why
        while len(self.gone) > GONE_MEMORY:
            self.gone.popitem(last=False)

    def _not_held(self, handle: int) -> LicentiaError:
        why = self.gone.get(handle)
        if why:
            return LicentiaError(ErrorCode.INVALID_HANDLE, f"handle {handle} was freed ({_why(why)})")
        return LicentiaError(ErrorCode.INVALID_HANDLE, f"handle {handle} is not held (released already, or never granted)")

    def _session_for(self, ident: Ident, handle: int) -> Session:
        try:
            sess = self.seats.get(handle)
        except LicentiaError:
            raise self._not_held(handle) from None
        if ident.kind != "admin" and not sess.holder.same_as(ident.holder):
            raise self._not_held(handle)
        return sess

    def op_decrement(self, conn: Connection, msg: Message) -> Message | Awaitable[Message | bytes]:
        ident = self._ident_for(conn, msg)
        handle, units = msg["handle"], msg["units"]
        if units < 1:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "units to decrement must be 1 or more")
        if handle >= REMOTE_BASE:
            hold = self.remote.get(handle)
            if hold is None or not hold.holder.same_as(ident.holder):
                raise self._not_held(handle)
            return self._forward(msg, hold, "decrement", units=units)
        sess = self._session_for(ident, handle)
        ld, _ = self.containers.entry(sess.key.container, sess.key.firm_code, sess.key.item_id)
        if ld.serial in self.tokens.held:
            return self.tokens.decrement(msg, ld, sess, units)
        return self._decrement(msg, ld, sess, units, conn.proof_keys)

    def _decrement(self, msg: Message, ld: Loaded, sess: Session, units: int,
                   keys: ProofKeys | None = None) -> asyncio.Future[Message | bytes]:
        key = sess.key
        nonce = msg.get("nonce")

        def reply(remaining: int) -> Message | bytes:  # on the loop, once the decrement is on disk
            if not nonce:
                pack = self._pack
                return _frame(b"\x83\xa2id", pack(msg["id"]), b"\xa2ok\xc3\xa5units", pack(remaining))
            out: Message = {"id": msg["id"], "ok": True, "units": remaining}
            if isinstance(nonce, bytes):
                entry = ld.content.firms[key.firm_code].items[key.item_id]
                until = valid_until(entry.item, entry.state)
                out["valid_until"] = until
                out.update(self._proof(keys, ld, msg, sess.handle, key.firm_code, key.item_id, remaining, until))
            return out

        fut: asyncio.Future[Message | bytes] = ld.writer.submit(
            decrement_op(key.firm_code, key.item_id, units, int(time.time())), reply)
        return fut

    async def _forward(self, msg: Message, hold: RemoteHold, op: str, **fields: Any) -> Message:
        nonce = msg.get("nonce")
        if isinstance(nonce, bytes):
            fields["nonce"] = nonce
        try:
            reply = await self._upstream(hold.server).request(op, handle=hold.remote_handle, **fields)
        except LicentiaError as exc:
            if unreachable(exc):
                self._mark_server_lost(hold.server)
            elif exc.code is ErrorCode.INVALID_HANDLE:
                self._remote_gone(hold, "freed on the server")
            raise
        out = dict(reply)
        out["id"] = msg["id"]
        out["proof_handle"] = hold.remote_handle
        return out

    def op_check(self, conn: Connection, msg: Message) -> Message | Awaitable[Message]:
        ident = self._ident_for(conn, msg)
        handle = msg["handle"]
        if handle >= REMOTE_BASE:
            hold = self.remote.get(handle)
            if hold is None or not hold.holder.same_as(ident.holder):
                return self._gone_reply(msg["id"], handle)
            return self._check_remote(msg, hold)
        try:
            sess = self._session_for(ident, handle)
        except LicentiaError:
            return self._gone_reply(msg["id"], handle)
        events = sorted(self.handle_events.pop(handle, ()))
        key = sess.key
        ld = self.containers.loaded.get(key.container)
        firm_entry = ld.content.firms.get(key.firm_code) if ld is not None else None
        entry = firm_entry.items.get(key.item_id) if firm_entry is not None else None
        if ld is None or entry is None:
            if CONTAINER_REMOVED not in events and ld is None:
                events.append(CONTAINER_REMOVED)
            return {"id": msg["id"], "ok": True, "valid": False, "events": events,
                    "reason": f"container {key.container} or its item {key.item_id} is gone"}
        verdict = status_of(entry.item, entry.state, ld.content.clock, int(time.time()))
        until = valid_until(entry.item, entry.state)
        reply: Message = {"id": msg["id"], "ok": True, "valid": verdict.ok, "valid_until": until,
                          "units": entry.state.units_remaining, "events": events}
        if not verdict.ok:
            reply["reason"] = verdict.reason
            reply["code"] = int(verdict.error or ErrorCode.INTERNAL)
        if ITEM_CHANGED in events:
            reply["license"] = entry.license
        nonce = msg.get("nonce")
        if nonce:
            if key.container in self.tokens.held:
                return self.tokens.prove_reply(reply, ld, nonce, handle, key.firm_code, key.item_id,
                                               entry.state.units_remaining, until)
            reply.update(self._proof(conn.proof_keys, ld, msg, handle, key.firm_code, key.item_id,
                                     entry.state.units_remaining, until))
        return reply

    def _gone_reply(self, rid: int, handle: int) -> Message:
        why = self.gone.get(handle)
        reason = f"the license was freed ({_why(why)})" if why else "the handle is not held"
        events = [CONTAINER_REMOVED, LICENSE_GONE] if why and why.startswith(REMOVED) else [LICENSE_GONE]
        return {"id": rid, "ok": True, "valid": False, "events": events, "reason": reason}

    async def _check_remote(self, msg: Message, hold: RemoteHold) -> Message:
        events = set(self.handle_events.pop(hold.handle, ()))
        try:
            reply = await self._forward(msg, hold, "check")
        except LicentiaError as exc:
            if exc.code is ErrorCode.INVALID_HANDLE or hold.handle not in self.remote:
                return self._gone_reply(msg["id"], hold.handle)
            events.add(SERVER_LOST)
            self.handle_events.setdefault(hold.handle, set()).add(SERVER_LOST)
            return {"id": msg["id"], "ok": True, "valid": True, "events": sorted(events),
                    "reason": f"server {hold.server} does not answer: {exc.message}"}
        if not reply.get("valid", True) and LICENSE_GONE in (reply.get("events") or []):
            self._remote_gone(hold, "freed on the server")
        events |= set(reply.get("events") or [])
        reply["events"] = sorted(events)
        return reply

    def _mark_server_lost(self, address: str) -> None:
        for hold in self.remote.values():
            if hold.server == address:
                self.handle_events.setdefault(hold.handle, set()).add(SERVER_LOST)

    def _remote_gone(self, hold: RemoteHold, why: str) -> None:
        if self.remote.pop(hold.handle, None) is not None:
            self._log_remote("release", hold, reason="timeout")
            self._forget_later(hold.handle, why)
            self.handle_events.pop(hold.handle, None)
            self._seats_changed()

    # ================================================================== keep-alive

    def op_keepalive(self, conn: Connection, msg: Message) -> Message:
        ident = conn.ident
        assert ident is not None
        now = time.time()
        lost: list[int] = []
        if ident.client_id is not None:
            self.seats.heartbeat(ident.client_id, now)
            for handle in msg.get("handles", ()):
                if handle not in self.seats or self.seats.get(handle).holder.client_id != ident.client_id:
                    lost.append(handle)
        return {"id": msg["id"], "ok": True, "interval": self.config.keepalive_for(self.config.client_timeout),
                "timeout": self.config.client_timeout, "lost": lost}

    async def _keepalive_loop(self) -> None:
        last: dict[str, float] = {}
        while True:
            await asyncio.sleep(0.5)
            by_server: dict[str, list[RemoteHold]] = {}
            for hold in self.remote.values():
                by_server.setdefault(hold.server, []).append(hold)
            now = time.monotonic()
            for address, holds in by_server.items():
                up = self._upstream(address)
                if now - last.get(address, 0.0) < up.keepalive_interval and up.reachable is not False:
                    continue
                if up.reachable is False and now - last.get(address, 0.0) < 1.0:
                    continue
                last[address] = now
                try:
                    reply = await up.request("keepalive", handles=[h.remote_handle for h in holds])
                except LicentiaError:
                    self._mark_server_lost(address)
                    continue
                lost = set(reply.get("lost") or ())
                for hold in holds:
                    if hold.remote_handle in lost:
                        self._remote_gone(hold, "freed on the server")
                    else:
                        events = self.handle_events.get(hold.handle)
                        if events:
                            events.discard(SERVER_LOST)
                            if not events:
                                del self.handle_events[hold.handle]

    # ================================================================== reaping

    def _reap(self) -> None:
        self.reap_now()

    def reap_now(self) -> None:
        now = time.time()
        dead = [p for p in self.seats.processes() if not procs.alive(p.pid, p.start_time)]
        if dead:
            self._after_release(self.seats.reap_processes(dead, now))
        expired = self.seats.expire_clients(now, self.config.client_timeout)
        if expired:
            self._after_release(expired)
        for hold in list(self.remote.values()):
            p = hold.holder.process
            if p is not None and not procs.alive(p.pid, p.start_time):
                self._spawn(self._release_remote(0, hold, ReleaseReason.REAPED))

    def check_process_soon(self, process: ProcessId) -> None:
        """A program's connection closed: if it ended, free its seats without waiting."""
        loop = asyncio.get_running_loop()

        def check(tries: int) -> None:
            if procs.alive(process.pid, process.start_time):
                if tries:
                    loop.call_later(0.1, check, tries - 1)
                return
            if process in self.seats.processes():
                self._after_release(self.seats.reap_processes([process], time.time()))
            for hold in list(self.remote.values()):
                if hold.holder.process == process:
                    self._spawn(self._release_remote(0, hold, ReleaseReason.REAPED))

        loop.call_soon(check, 3)

    # ================================================================== containers

    async def _rescan(self) -> None:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, self.containers.scan_disk, int(time.time()))
        changes = self.containers.apply_scan(result)
        if changes.added or changes.removed or changes.changed_items:
            self._container_changes(changes)

    def _container_changes(self, changes: Changes) -> None:
        assert self.log is not None
        for serial in changes.added:
            self.log.note({"event": "container-added", "container": serial})
        for serial in changes.removed:
            self.log.note({"event": "container-removed", "container": serial})
        removed = set(changes.removed)
        for sess in self.seats.sessions():
            key = sess.key
            if key.container in removed:
                self.handle_events.setdefault(sess.handle, set()).add(CONTAINER_REMOVED)
            elif (key.container, key.firm_code, key.item_id) in changes.changed_items:
                self.handle_events.setdefault(sess.handle, set()).add(ITEM_CHANGED)

    # ================================================================== admin and queries

    def op_admin_release(self, conn: Connection, msg: Message) -> Message | Awaitable[Message]:
        ident = conn.ident
        assert ident is not None
        if ident.kind != "admin":
            raise LicentiaError(ErrorCode.ACCESS_DENIED, "force-releasing a seat needs an admin connection",
                                "use `licentia release HANDLE` as the runtime's user or root")
        return self.admin_release(msg["handle"], msg["id"])

    def admin_release(self, handle: int, rid: int = 0) -> Message | Awaitable[Message]:
        if handle >= REMOTE_BASE:
            hold = self.remote.get(handle)
            if hold is None:
                raise self._not_held(handle)
            self._forget_later(handle, ReleaseReason.ADMIN.value)
            return self._release_remote(rid, hold, ReleaseReason.ADMIN)
        rel = self.seats.force_release(handle, time.time())
        self._after_release(rel.events)
        return {"id": rid, "ok": True}

    def op_sessions(self, conn: Connection, msg: Message) -> Message:
        return {"id": msg["id"], "ok": True,
                "sessions": self.session_rows(msg.get("firm"), msg.get("product"), msg.get("container"))}

    def session_rows(self, firm: int | None = None, product: int | None = None,
                     container: str | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for sess in self.seats.sessions():
            k = sess.key
            if (firm is not None and k.firm_code != firm) or (product is not None and k.product_code != product) \
                    or (container is not None and k.container != container):
                continue
            h = sess.holder
            rows.append({
                "handle": sess.handle, "firm": k.firm_code, "product": k.product_code, "container": k.container,
                "item": k.item_id, "mode": sess.mode.value, "station": str(sess.station),
                "program": h.program, "pid": h.process.pid if h.process else self.net_pids.get(sess.handle),
                "user": h.user, "host": h.host, "since": sess.since,
                "client": h.client_id, "location": "local" if h.client_id is None else "network client",
            })
        for hold in self.remote.values():
            if (firm is not None and hold.firm != firm) or (product is not None and hold.product != product) \
                    or (container is not None and hold.container != container):
                continue
            h = hold.holder
            rows.append({
                "handle": hold.handle, "firm": hold.firm, "product": hold.product, "container": hold.container,
                "item": hold.item, "mode": hold.mode, "station": str(hold.station), "program": h.program,
                "pid": h.process.pid if h.process else None, "user": h.user, "host": h.host, "since": hold.since,
                "client": None, "location": f"server {hold.server}", "server_handle": hold.remote_handle,
            })
        rows.sort(key=lambda r: r["handle"])
        return rows

    def op_info(self, conn: Connection, msg: Message) -> Message:
        what = msg["what"]
        reply: Message = {"id": msg["id"], "ok": True}
        if what == "server":
            reply["server"] = self.server_info()
        elif what == "containers":
            reply["containers"] = self.container_rows()
        else:
            reply["items"] = self.item_rows(msg.get("firm"))
        return reply

    def server_info(self) -> dict[str, Any]:
        return {"host": self.host_name, "pid": os.getpid(), "started_at": self.started_at,
                "network": self.config.network, "client_timeout": self.config.client_timeout,
                "sessions": len(self.seats) + len(self.remote), "connections": len(self.connections),
                "containers": len(self.containers.loaded), "servers": list(self.server_list),
                "upstreams": {a: {"reachable": u.reachable, "error": u.last_error.message if u.last_error else None}
                              for a, u in self.upstreams.items()},
                "central": self.central_sync.status(),
                **self.ports}

    def container_rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for serial, ld in sorted(self.containers.loaded.items()):
            if serial in self.containers.external:
                continue  # token and cloud containers: their own rows below
            rows.append({"serial": serial, "kind": "soft", "status": ld.status.value,
                         "binding": ld.container.health.describe(), "items": len(ld.content.entries()),
                         "path": str(ld.path)})
        for path, problem in sorted(self.containers.problems.items()):
            status = (ContainerStatus.BROKEN if problem.error.code is ErrorCode.REACTIVATION_REQUIRED
                      else ContainerStatus.INVALID)
            rows.append({"serial": Path(path).name.removesuffix(".lcsc"), "kind": "soft", "status": status.value,
                         "binding": problem.error.message, "items": None, "path": path})
        rows += self.tokens.rows() + self.cloud.rows()
        return rows

    def item_rows(self, firm: int | None = None) -> list[dict[str, Any]]:
        from licentia.containers import item_rows

        now = int(time.time())
        rows: list[dict[str, Any]] = []
        for serial, ld in sorted(self.containers.loaded.items()):
            for row in item_rows(ld.content, now):
                if firm is not None and row["firm_code"] != firm:
                    continue
                key = ItemKey(serial, row["firm_code"], row["product_code"], row["item_id"])
                row = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in row.items()}
                row["container"] = serial
                row["in_use"] = self.seats.used(key)
                row["handles"] = sum(1 for s in self.seats.sessions(key))
                rows.append(row)
        return rows

    def op_events(self, conn: Connection, msg: Message) -> Message:
        since = msg.get("since", 0)
        limit = max(1, min(msg.get("limit", 100), 1000))
        out = self.recent_events(since, limit)
        return {"id": msg["id"], "ok": True, "events": out, "next": out[-1]["seq"] if out else since}

    # ================================================================== logging and snapshot

    def _log_events(self, events: tuple[Event, ...]) -> None:
        assert self.log is not None
        for ev in events:
            self.log.record(ev)
            self._remember(ev)

    def _remember(self, ev: Event) -> None:
        self.recent_seq += 1
        self.recent.append((self.recent_seq, ev))

    def recent_events(self, since: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Recent grants, denials and releases as plain data, oldest first."""
        out: list[dict[str, Any]] = []
        for seq, ev in self.recent:
            if seq <= since:
                continue
            if isinstance(ev, dict):
                out.append({"seq": seq, **ev})
            else:
                out.append({"seq": seq, "event": ev.kind.value, "at": ev.at, "handle": ev.handle,
                            "container": ev.key.container, "firm": ev.key.firm_code,
                            "product": ev.key.product_code, "station": str(ev.station),
                            "program": ev.holder.program, "user": ev.holder.user, "host": ev.holder.host,
                            "reason": ev.reason.value if ev.reason else None,
                            "code": int(ev.code) if ev.code is not None else None, "used": ev.used})
            if len(out) >= limit:
                break
        return out

    def _log_remote(self, kind: str, hold: RemoteHold, **extra: Any) -> None:
        assert self.log is not None
        h = hold.holder
        fields = {"event": kind, "at": round(time.time(), 3), "container": hold.container, "firm": hold.firm,
                  "product": hold.product, "item": hold.item, "mode": hold.mode, "station": str(hold.station),
                  "user": h.user, "host": h.host, "program": h.program,
                  "pid": h.process.pid if h.process else None, "handle": hold.handle, "server": hold.server,
                  "server_handle": hold.remote_handle, **extra}
        self.log.note(fields)
        self.recent_seq += 1
        self.recent.append((self.recent_seq, fields))

    def _log_timer_fired(self) -> None:
        self._log_timer = None
        self._flush_log()

    def _flush_log(self) -> None:
        if self.log is not None and self.log.pending:
            try:
                self.log.flush()
            except OSError as exc:  # a full disk must not stop the license service; say so where one can
                print(f"licentia runtime: cannot write the usage log: {exc}", file=sys.stderr)

    def _checkpoint_log(self) -> None:
        if self.log is not None:
            self.log.checkpoint(sync=True)

    def _seats_changed(self) -> None:
        if self._snapshot_handle is None and not self._snapshot_running:
            loop = asyncio.get_running_loop()
            self._snapshot_handle = loop.call_later(self.config.snapshot_delay, self._start_snapshot)
        elif self._snapshot_running:
            self._snapshot_again = True

    def _snapshot_bytes(self) -> bytes:
        doc = {"format": SNAPSHOT_FORMAT, "version": 1, "seats": self.seats.snapshot(),
               "remote": [h.to_list() for h in self.remote.values()], "next_remote": self.next_remote,
               "net_pids": list(self.net_pids.items())}
        data: bytes = msgpack.packb(doc, use_bin_type=True)
        return data

    def _start_snapshot(self) -> None:
        self._snapshot_handle = None
        self._snapshot_running = True
        data = self._snapshot_bytes()
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, atomic_write, self.home.snapshot, data)
        self._snapshot_future = fut

        def done(f: asyncio.Future[None]) -> None:
            self._snapshot_running = False
            if f.exception() is not None:
                self._note_problem(f"seat snapshot: {f.exception()!r}")
            if self._snapshot_again:
                self._snapshot_again = False
                self._seats_changed()

        fut.add_done_callback(done)

    def _write_snapshot_now(self) -> None:
        try:
            atomic_write(self.home.snapshot, self._snapshot_bytes())
        except OSError as exc:
            self._note_problem(f"seat snapshot: {exc!r}")

    def _restore_state(self) -> None:
        path = self.home.snapshot
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        now = time.time()
        try:
            doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
            if not isinstance(doc, dict) or doc.get("format") != SNAPSHOT_FORMAT:
                raise ValueError("not a runtime state file")
            self.seats = SeatTable.restore(doc["seats"], now)
            self.remote = {}
            for raw in doc.get("remote", []):
                hold = RemoteHold.from_list(raw)
                self.remote[hold.handle] = hold
            self.next_remote = max(int(doc.get("next_remote", REMOTE_BASE)), REMOTE_BASE,
                                   *[h + 1 for h in self.remote])
            self.net_pids = {int(h): int(p) for h, p in doc.get("net_pids", []) if int(h) in self.seats}
        except (LicentiaError, ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
            broken = path.with_name(f"{path.name}.damaged")
            os.replace(path, broken)
            self._note_problem(f"the seat snapshot could not be read ({exc}); moved to {broken.name}")
            self.seats = SeatTable()
            return
        # sessions of items no longer here are dropped; the reaper drops ended programs
        assert self.log is not None
        self.log.note({"event": "restore", "sessions": len(self.seats), "remote": len(self.remote)})


# ====================================================================== helpers


# (second, containers' generation, container, item entry, seat key, quantity): see `Runtime._plan`
_Plan = tuple[int, int, Loaded, Any, ItemKey, int | None]

_FRAME_HEAD = struct.Struct(">IB")  # licentia.protocol.frames: length, version byte
_FRAME_HEAD_unpack_from = _FRAME_HEAD.unpack_from
_unpackb = msgpack.unpackb
_OK_HEAD = b"\x82\xa2id"  # {"id": ..., "ok": True}
_OK_TAIL = b"\xa2ok\xc3"


def _bound_port(server: asyncio.AbstractServer) -> int:
    # uvloop's `sockets` is a list where asyncio's is a tuple: read it untyped, since the
    # compiled module checks declared types
    sockets: Any = getattr(server, "sockets")  # noqa: B009
    return int(sockets[0].getsockname()[1])


def _frame(*parts: bytes) -> bytes:
    """A frame whose msgpack body is the concatenation of `parts`."""
    body = b"".join(parts)
    return _FRAME_HEAD.pack(len(body) + 1, VERSION_BYTE) + body


# {"id": rid, "ok": True} by the length of the encoded id (msgpack: 1, 2, 3, 5 or 9 bytes)
_OK_START = {n: _FRAME_HEAD.pack(len(_OK_HEAD) + n + len(_OK_TAIL) + 1, VERSION_BYTE) + _OK_HEAD for n in (1, 2, 3, 5, 9)}


def _ok_frame(packed_id: bytes) -> bytes:
    return _OK_START[len(packed_id)] + packed_id + _OK_TAIL


_MODES = {m.value: m for m in AccessMode}

# Inline checks of the hot requests: field -> the exact types allowed (bool is not int here),
# required fields. A request that does not fit goes through `validate_request` for its error.
_ACCESS_TYPES: dict[str, tuple[type, ...]] = {
    "id": (int,), "op": (str,), "firm": (int,), "product": (int,), "mode": (str,), "feature": (int,),
    "version": (str,), "release_date": (int,), "nonce": (bytes,), "where": (str,), "container": (str,),
    "server": (str,), "client": (dict,), "kx": (bytes,), "keyed": (list,),
}
_HANDLE_TYPES: dict[str, tuple[type, ...]] = {"id": (int,), "op": (str,), "handle": (int,), "nonce": (bytes,),
                                              "kx": (bytes,), "keyed": (list,)}
_WHERE = frozenset(("local", "network", "local-first", "network-first"))


def _fast_access(msg: Message) -> bool:
    rid = msg["id"]
    if type(rid) is not int or rid < 1 or type(msg.get("firm")) is not int or type(msg.get("product")) is not int:
        return False
    n = len(msg)
    if n == 4:
        return True
    if n == 5:
        mode = msg.get("mode")
        if type(mode) is str:
            return mode in _MODES
    return _fits(msg, _ACCESS_TYPES, ("firm", "product"))


def _fast_decrement(msg: Message) -> bool:
    rid = msg["id"]
    return len(msg) == 4 and type(rid) is int and rid >= 1 and type(msg.get("handle")) is int \
        and type(msg.get("units")) is int


def _fast_handle(msg: Message) -> bool:
    rid = msg["id"]
    if type(rid) is not int or rid < 1 or type(msg.get("handle")) is not int:
        return False
    return len(msg) == 3 or _fits(msg, _HANDLE_TYPES, ("handle",))


_FAST: dict[str, Callable[[Message], bool]] = {"access": _fast_access, "release": _fast_handle, "check": _fast_handle,
                                               "decrement": _fast_decrement}


def _fits(msg: Message, types: dict[str, tuple[type, ...]], required: tuple[str, ...]) -> bool:
    for name, value in msg.items():
        allowed = types.get(name)
        if allowed is not None and type(value) not in allowed:
            return False
    for name in required:
        if name not in msg:
            return False
    if msg["id"] < 1:
        return False
    mode = msg.get("mode")
    if mode is not None and mode not in _MODES:
        return False
    where = msg.get("where")
    return where is None or where in _WHERE


def _text(value: Any, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _session_kind(value: Any) -> SessionKind:
    try:
        return SessionKind(value) if isinstance(value, str) else SessionKind.LOCAL
    except ValueError:
        return SessionKind.LOCAL


def _check_client(c: dict[str, Any]) -> str:
    probe = {"id": 1, "op": "hello", "versions": [1], "client": c}
    try:
        validate_request(probe)
    except ProtocolError as exc:
        return exc.message.removeprefix("hello: ")
    return ""


def _why(reason: str | None) -> str:
    return {
        "admin": "an administrator released it",
        "timeout": "its client fell silent for longer than the timeout",
        "reaped": "its program ended",
        "freed on the server": "the network server freed it",
    }.get(reason or "", reason or "")


__all__ = ["CLIENT", "REQUESTS", "Connection", "Runtime"]
