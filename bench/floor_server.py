"""The floor: a bare asyncio server answering licentia's frames with a dict of seats.

It reads the same frames the runtime reads (4-byte length, version byte 0xB1, a msgpack
map) and answers hello, access and release with the least a server must do: decode,
count in a dict, encode a short reply. No validation, no logging, no identities. What
the runtime costs beyond this is what its features cost.

Run alone: .venv/bin/python bench/floor_server.py [--port 0]  (prints "port N", serves
until SIGTERM or SIGINT; 127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import struct
import sys
from typing import Any

import msgpack

HEADER = struct.Struct(">IB")
LENGTH = struct.Struct(">I")
VERSION_BYTE = 0xB1


class Seats:
    """Seat counters per (firm, product) and the session table."""

    __slots__ = ("limit", "next", "sessions", "used")

    def __init__(self, limit: int = 1_000_000_000) -> None:
        self.limit = limit
        self.used: dict[tuple[int, int], int] = {}
        self.sessions: dict[int, tuple[int, int]] = {}
        self.next = 1

    def answer(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg.get("op")
        rid = msg.get("id", 0)
        if op == "access":
            key = (msg["firm"], msg["product"])
            used = self.used.get(key, 0)
            if used >= self.limit:
                return {"id": rid, "ok": False, "code": 212}
            self.used[key] = used + 1
            handle = self.next
            self.next = handle + 1
            self.sessions[handle] = key
            return {"id": rid, "ok": True, "handle": handle}
        if op == "release":
            key = self.sessions.pop(msg["handle"], None)
            if key is None:
                return {"id": rid, "ok": False, "code": 106}
            self.used[key] -= 1
            return {"id": rid, "ok": True}
        if op == "hello":
            return {"id": rid, "ok": True, "version": 1}
        return {"id": rid, "ok": False, "code": 1008}


SEATS = Seats()
_pack = msgpack.Packer().pack
_unpackb = msgpack.unpackb


class FloorProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out = []
        answer = SEATS.answer
        while len(buf) >= 4:
            n = LENGTH.unpack_from(buf)[0]
            if len(buf) < 4 + n:
                break
            body = _pack(answer(_unpackb(buf[5 : 4 + n])))
            del buf[: 4 + n]
            out.append(HEADER.pack(len(body) + 1, VERSION_BYTE) + body)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FloorProtocol, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            print("uvloop is not installed: stock asyncio", file=sys.stderr)
        else:
            uvloop.run(serve(args.port))
            return
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
