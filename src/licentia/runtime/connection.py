"""One client connection: frames in (with the frame size limit), replies out, what the
connection keeps for its client (identity, proof keys, usage-log line templates).

Requests go to the router in arrival order; a request that waits for the disk or a
server does not hold up the others. A connection is served fairly: at most
`[limits] frames_per_read` requests of one read are handled before the other
connections get their turn (reading paused until its queue is done), and reading pauses
while the client does not read its replies (back-pressure). A frame over the limit
(`[limits] max_frame` for programs and network clients, `[runtime] max_frame` for an
admin connection) closes the connection; a frame that is no request gets an error reply
and the frames after it are read on (licentia.runtime.limits has the other limits)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import time
from typing import Any, Final, Protocol

from licentia.core.seats import Event, ItemKey, ProcessId
from licentia.model import AccessMode, ErrorCode
from licentia.protocol.frames import (
    CONNECTION_ID,
    VERSION_BYTE,
    FrameDecoder,
    Message,
    ProtocolError,
    encode,
    error_reply,
    unpack_body,
)
from licentia.runtime import procs
from licentia.runtime.config import RuntimeConfig
from licentia.runtime.ident import Ident
from licentia.runtime.limits import KEEPALIVE_PACE, ConnectionLimits
from licentia.runtime.proofs import ProofKeys
from licentia.runtime.replies import FRAME_HEAD
from licentia.runtime.router import Router
from licentia.runtime.usagelog import LineTemplate, UsageLog

_FRAME_HEAD_unpack_from: Final = FRAME_HEAD.unpack_from
BEAT_PACE: Final = 0.25  # seconds: see `Connection.data_received`
_monotonic: Final = time.monotonic  # held, not looked up in `time` on every request
_NO_LINE: Final = LineTemplate("", "", "", "")  # a placeholder: never used while its key is None


class ConnectionHost(Protocol):
    """What a connection uses of the runtime."""

    config: RuntimeConfig
    connections: set[Any]
    connection_count: int
    limits: ConnectionLimits
    seats: Any
    router: Router

    def check_process_soon(self, process: ProcessId) -> None: ...


class Connection:
    """An asyncio protocol by its methods (`protocol()` hands it to asyncio)."""

    def __init__(self, runtime: ConnectionHost, listener: str, *, admitted: bool = False) -> None:
        self.runtime = runtime
        self.router = runtime.router  # held as what it is: each request is a direct call
        self.listener = listener  # "unix", "local" or "network"
        self.counted = admitted  # counted in the limits as it was accepted (limits.AdmittingListener)
        self.max_frame = runtime.config.max_program_frame  # the decoder's, kept beside it for the usual read
        self.decoder = FrameDecoder(self.max_frame)
        self.admitted = False
        self.opened = self.last_active = time.monotonic()
        self._buffered = 0  # bytes of an incomplete frame, as counted in the limits
        self._failed = False  # the decoder met a frame it cannot read past: nothing more is read
        self._beat_due = 0.0  # a request before this (monotonic) needs no heartbeat of its own
        self._queue: collections.deque[Message | ProtocolError] = collections.deque()
        self._paused: set[str] = set()  # why reading is paused: "queue", "write"
        self._sized = False  # the frame limit follows the identity once hello is done
        self._keepalive_due = 0.0  # a keep-alive before this (monotonic) waits until it
        self._later: asyncio.Handle | None = None  # the queue's next turn
        self.transport: asyncio.Transport | None = None
        self.ident: Ident | None = None
        self.hello_at = 0.0  # wall time of its hello: seats its client took before were on another connection
        self.peer: tuple[int, int, int] | None = None  # (pid, uid, gid) from the kernel
        self.peer_host = ""
        self.number = 0
        # usage-log templates of this client's grants (True) and releases (False) per item
        # and mode: its holder and station are the same on every line
        self.log_lines: dict[tuple[ItemKey, AccessMode, bool], LineTemplate] = {}
        # the last of them used, kept beside the dict (a lookup hashes the item and the mode)
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
        if self.listener != "unix":
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple) and peer:
                self.peer_host = str(peer[0])
        refused = "" if self.counted else rt.limits.admit(self.listener, self.peer_host)
        if refused:  # shed at once: the newest connection, which has not said who it is
            self.close_with(error_reply(CONNECTION_ID, ErrorCode.SERVER_BUSY, refused))
            return
        self.admitted = True
        if self.listener == "unix" and sock is not None:
            self.peer = procs.peer_credentials(sock)
        elif sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        self.last_active = now = _monotonic()
        if now >= self._beat_due:  # any request is a keep-alive (a network client's last sign of
            # life is kept to within BEAT_PACE: client timeouts are seconds, requests come faster)
            ident = self.ident
            if ident is not None and ident.client_id is not None:
                self._beat_due = now + BEAT_PACE
                self.runtime.seats.heartbeat(ident.client_id, time.time())
        # the usual read: exactly one whole, good frame, and nothing held back from before
        # (FrameDecoder.feed's first step, without building a list; `_buffered` is the
        # decoder's `buffered` after every read)
        decoder = self.decoder
        end = len(data)
        if end > 5 and type(data) is bytes and not self._queue and not self._buffered and not self._failed:
            length, version = _FRAME_HEAD_unpack_from(data)
            max_frame = self.max_frame
            if length + 4 == end and version == VERSION_BYTE and length <= max_frame:
                try:
                    one = unpack_body(data[5:], max_frame)  # the decoder's own bounds
                except Exception:
                    one = None  # the decoder below says what is wrong
                if type(one) is dict and type(one.get("id")) is int and one.get("op") != "keepalive":
                    self.router.dispatch(self, one)
                    if not self._sized:
                        self._size_frames()
                    return
        queue = self._queue
        while True:  # every frame of the read: a request, or the error that stands for it
            try:
                queue.extend(decoder.feed(data))
                break
            except ProtocolError as exc:
                queue.extend(exc.messages)
                queue.append(exc)
                if exc.fatal:
                    self._failed = True
                    break
                data = b""
        held = decoder.buffered
        if held != self._buffered:
            delta, self._buffered = held - self._buffered, held
            if self.runtime.limits.over_buffer(delta):
                queue.clear()
                self.close_with(error_reply(CONNECTION_ID, ErrorCode.SERVER_BUSY,
                                            "the runtime holds as many incomplete requests as it may"))
                return
        self._serve()

    def _serve(self) -> None:
        """Handle up to `frames_per_read` queued requests; the rest on the loop's next turn.
        A keep-alive sooner than `KEEPALIVE_PACE` after the one before waits until then."""
        if self._later is not None:
            self._later.cancel()
            self._later = None
        queue = self._queue
        router = self.router
        budget = self.runtime.config.frames_per_read
        loop = asyncio.get_running_loop()
        while queue and budget:
            item = queue[0]
            if type(item) is dict:
                if item.get("op") == "keepalive":
                    now = time.monotonic()
                    if now < self._keepalive_due:
                        self._pause("queue")
                        self._later = loop.call_later(self._keepalive_due - now, self._serve)
                        return
                    self._keepalive_due = now + KEEPALIVE_PACE
                queue.popleft()
                budget -= 1
                router.dispatch(self, item)
                if not self._sized:
                    self._size_frames()
                continue
            queue.popleft()
            assert isinstance(item, ProtocolError)
            self.send(error_reply(item.request_id, item.code, item.message, item.hint))
            if item.fatal:
                queue.clear()
                if self.transport is not None:
                    self.transport.close()
                return
        if queue:
            self._pause("queue")
            self._later = loop.call_soon(self._serve)
        elif "queue" in self._paused:
            self._resume("queue")

    def _size_frames(self) -> None:
        """Once hello named the client: an admin connection may send larger frames."""
        ident = self.ident
        if ident is not None:
            self._sized = True
            if ident.kind == "admin":
                self.decoder.max_frame = self.max_frame = self.runtime.config.max_frame

    def _pause(self, why: str) -> None:
        t = self.transport
        if not self._paused and t is not None and not t.is_closing():
            with contextlib.suppress(RuntimeError, AttributeError):
                t.pause_reading()
        self._paused.add(why)

    def _resume(self, why: str) -> None:
        self._paused.discard(why)
        t = self.transport
        if not self._paused and t is not None and not t.is_closing():
            with contextlib.suppress(RuntimeError, AttributeError):
                t.resume_reading()

    def close_with(self, reply: Message) -> None:
        """Send `reply` (an error that says why) and close."""
        t = self.transport
        if t is not None and not t.is_closing():
            with contextlib.suppress(Exception):
                t.write(encode(reply))
            t.close()

    def send(self, reply: Message | bytes) -> None:
        t = self.transport
        if t is None:
            return
        if isinstance(reply, bytes):  # a frame encoded already (licentia.runtime.replies)
            t.write(reply)
            return
        try:
            t.write(encode(reply))
        except ProtocolError as exc:
            t.write(encode(error_reply(reply.get("id", CONNECTION_ID), exc.code, exc.message)))

    def open(self) -> bool:
        t = self.transport
        return t is not None and not t.is_closing()

    def log_template(self, log: UsageLog, ev: Event, granted: bool) -> LineTemplate:
        """The line template of `ev`, a grant (True) or a release (False) by this client:
        the one used last when item and mode are the same, else from `log_lines`."""
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
        self._pause("write")  # the client does not read its replies: read no more requests

    def resume_writing(self) -> None:
        self._resume("write")

    def protocol(self) -> asyncio.Protocol:
        """This connection as the asyncio protocol it acts as."""
        return self  # type: ignore[return-value]  # duck-typed, see the class's docstring

    def connection_lost(self, exc: Exception | None) -> None:
        rt = self.runtime
        rt.connections.discard(self)
        if self.admitted:
            self.admitted = False
            rt.limits.leave(self.listener, self.peer_host, self._buffered)
        self._queue.clear()
        if self._later is not None:
            self._later.cancel()
            self._later = None
        ident = self.ident
        if ident is not None and ident.holder.process is not None:
            rt.check_process_soon(ident.holder.process)
