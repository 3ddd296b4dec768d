"""The server search list: network license servers to ask, in order, and LAN discovery.

Stored in the home as `servers.json` (`{"servers": ["lic1.example.org:22350", ...]}`),
managed with `licentia server add/remove/list`. The runtime re-reads it when it changes.

Discovery: a client sends the datagram `LICENTIA-DISCOVER 1` to the broadcast address;
every runtime in network mode with discovery on answers with a small JSON document naming
its protocol port. Discovered servers come after the listed ones. Trust is unchanged:
a discovered server is pinned on first use like any other.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

from licentia.fsutil import atomic_write
from licentia.model import ErrorCode, LicentiaError
from licentia.protocol.client import parse_address
from licentia.protocol.messages import DEFAULT_PORT

DISCOVER = b"LICENTIA-DISCOVER 1"
FORMAT = "licentia-server-search-list"


def normalise(address: str) -> str:
    """`host` or `host:port` (IPv6 in brackets) → `host:port`."""
    ep = parse_address(address.strip())
    if ep.path is not None:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"{address!r} is not a network server address (host:port)")
    host = f"[{ep.host}]" if ":" in ep.host else ep.host
    return f"{host}:{ep.port}"


def read_list(path: Path) -> list[str]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except ValueError:
        raise LicentiaError(ErrorCode.WRONG_CONTENT, f"{path} is not a server search list; fix or remove it") from None
    servers = doc.get("servers") if isinstance(doc, dict) else None
    if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
        raise LicentiaError(ErrorCode.WRONG_CONTENT, f"{path} is not a server search list; fix or remove it")
    return list(servers)


def write_list(path: Path, servers: list[str]) -> None:
    doc = {"format": FORMAT, "version": 1, "servers": servers}
    atomic_write(path, json.dumps(doc, indent=2).encode() + b"\n", mode=0o644)


def add(path: Path, address: str, position: int | None = None) -> list[str]:
    entry = normalise(address)
    servers = [s for s in read_list(path) if s != entry]
    if position is None or position > len(servers):
        servers.append(entry)
    else:
        servers.insert(max(position - 1, 0), entry)
    write_list(path, servers)
    return servers


def remove(path: Path, address: str) -> list[str]:
    entry = normalise(address)
    servers = read_list(path)
    if entry not in servers:
        raise LicentiaError(ErrorCode.SERVER_NOT_FOUND, f"{entry} is not on the server search list",
                            "see the list with `licentia server list`")
    servers.remove(entry)
    write_list(path, servers)
    return servers


# -- discovery ------------------------------------------------------------------------------


def answer(port: int, name: str) -> bytes:
    return json.dumps({"licentia": 1, "port": port, "name": name}).encode()


class DiscoveryResponder(asyncio.DatagramProtocol):
    """Answers discovery datagrams with this server's protocol port."""

    def __init__(self, port: int, name: str) -> None:
        self.reply = answer(port, name)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if data.strip() == DISCOVER and self.transport is not None:
            self.transport.sendto(self.reply, addr)


class _Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.found: list[str] = []

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            doc = json.loads(data)
            port = int(doc["port"])
        except (ValueError, KeyError, TypeError):
            return
        if doc.get("licentia") != 1 or not 0 < port < 65536:
            return
        host = str(addr[0])
        entry = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if entry not in self.found:
            self.found.append(entry)


async def discover(address: str, port: int, wait: float) -> list[str]:
    """Servers that answer a discovery datagram sent to `address:port` within `wait` s."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.bind(("0.0.0.0", 0))
    sock.setblocking(False)
    transport, proto = await loop.create_datagram_endpoint(_Collector, sock=sock)
    try:
        transport.sendto(DISCOVER, (address, port))
        await asyncio.sleep(wait)
        return list(proto.found)
    finally:
        transport.close()


class Discovered:
    """Discovery answers, cached for a little while so every access does not broadcast."""

    def __init__(self, ttl: float = 20.0) -> None:
        self.ttl = ttl
        self._at = 0.0
        self._found: list[str] = []
        self._lock: asyncio.Lock | None = None

    async def get(self, address: str, port: int, wait: float) -> list[str]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if time.monotonic() - self._at > self.ttl or not self._found:
                self._found = await discover(address, port, wait)
                self._at = time.monotonic()
            return list(self._found)

    def forget(self) -> None:
        self._at = 0.0


__all__ = [
    "DEFAULT_PORT",
    "DISCOVER",
    "Discovered",
    "DiscoveryResponder",
    "add",
    "discover",
    "normalise",
    "read_list",
    "remove",
    "write_list",
]
