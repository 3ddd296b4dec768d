"""One client connection: frames in (with the frame size limit), replies out, what the
connection keeps for its client (identity, proof keys, usage-log line templates).

Requests go to the router in arrival order; a request that waits for the disk or a
server does not hold up the others. Replies are small and a client reads them, so
nothing is held back for back-pressure; a client that sends a frame over the limit, or
bytes that are no frame, gets an error and, where the stream cannot be resynchronised,
a closed connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any, Protocol

import msgpack

from licentia.core.seats import Event, ItemKey, ProcessId
from licentia.model import AccessMode
from licentia.protocol.frames import (
    CONNECTION_ID,
    VERSION_BYTE,
    FrameDecoder,
    Message,
    ProtocolError,
    encode,
    error_reply,
)
from licentia.runtime import procs
from licentia.runtime.config import RuntimeConfig
from licentia.runtime.ident import Ident
from licentia.runtime.licenses import ProofKeys
from licentia.runtime.replies import FRAME_HEAD
from licentia.runtime.usagelog import LineTemplate, UsageLog

_FRAME_HEAD_unpack_from = FRAME_HEAD.unpack_from
_unpackb = msgpack.unpackb
_NO_LINE = LineTemplate("", "", "", "", False)  # a placeholder: never used while its key is None


class ConnectionHost(Protocol):
    """What a connection uses of the runtime."""

    config: RuntimeConfig
    connections: set[Any]
    connection_count: int

    def dispatch(self, conn: Any, msg: Message) -> None: ...

    def check_process_soon(self, process: ProcessId) -> None: ...


class Connection:
    """An asyncio protocol by its methods (`protocol()` hands it to asyncio)."""

    def __init__(self, runtime: ConnectionHost, listener: str) -> None:
        self.runtime = runtime
        self.listener = listener  # "unix", "local" or "network"
        self.decoder = FrameDecoder(runtime.config.max_frame)
        self.transport: asyncio.Transport | None = None
        self.ident: Ident | None = None
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
        # (FrameDecoder.feed's first step, without building a list)
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
