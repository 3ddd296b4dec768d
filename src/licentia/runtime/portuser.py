"""Who holds a port the runtime cannot bind: read from /proc (the kernel's socket tables
and each process's open descriptors), so `runtime serve` can say which program is in the
way instead of a bare "address in use". Only what this user may read is found: another
user's process is named when the runtime runs as root, else the port alone is reported."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from licentia.model import ErrorCode, LicentiaError

_LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp
_TABLES = {"tcp": ("tcp", "tcp6"), "udp": ("udp", "udp6")}


def socket_inodes(port: int, proto: str = "tcp", proc: Path = Path("/proc")) -> set[str]:
    """The inodes of the sockets bound to local `port` (listening ones, for TCP)."""
    inodes: set[str] = set()
    for table in _TABLES[proto]:
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            local, state, inode = parts[1], parts[3], parts[9]
            try:
                bound = int(local.rsplit(":", 1)[1], 16)
            except (IndexError, ValueError):
                continue
            if bound == port and (proto != "tcp" or state == _LISTEN) and inode != "0":
                inodes.add(inode)
    return inodes


def port_user(port: int, proto: str = "tcp", proc: Path = Path("/proc")) -> str | None:
    """'NAME (pid N)' of a process that holds local `port`, or None when none is found."""
    inodes = socket_inodes(port, proto, proc)
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target in wanted:
                return f"{_name(entry)} (pid {entry.name})"
    return None


def _name(entry: Path) -> str:
    with contextlib.suppress(OSError):
        argv = (entry / "cmdline").read_bytes().split(b"\0")
        words = [w.decode(errors="replace") for w in argv if w]
        if words:
            text = " ".join(words)
            return text if len(text) <= 120 else text[:117] + "..."
    with contextlib.suppress(OSError):
        return (entry / "comm").read_text().strip()
    return "a process"


def in_use(exc: OSError, what: str, address: str, port: int, proto: str = "tcp") -> LicentiaError:
    """The error to report when binding `what` (e.g. "the network port") to `address:port`
    failed with `exc`: 1420 naming who holds the port, or 1421 for any other reason (an
    address not of this machine, a port only root may bind)."""
    if exc.errno != errno.EADDRINUSE:
        return LicentiaError(ErrorCode.LISTEN_FAILED,
                             f"{what}: cannot listen on {proto.upper()} {address}:{port}: {exc.strerror or exc}")
    user = port_user(port, proto)
    by = user or "another process (one this user may not see)"
    return LicentiaError(ErrorCode.PORT_IN_USE, f"{what}: {proto.upper()} port {port} on {address} is in use by {by}")
