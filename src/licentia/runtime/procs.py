"""Local processes: who is on the other end of a socket, and whether a process still lives.

A process is identified by its PID *and* its start time (field 22 of /proc/PID/stat,
in clock ticks since boot), so a PID the kernel hands to a later process never keeps
the seats of the program that ended.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

_PROC = Path("/proc")
_UCRED = struct.Struct("3i")


def start_time(pid: int, proc: Path = _PROC) -> int | None:
    """The start time of process `pid` (clock ticks since boot), or None if it is gone."""
    try:
        with open(proc / str(pid) / "stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    except OSError:
        return None
    # comm (field 2) is in parentheses and may hold spaces or ')': split after the last ')'
    close = data.rfind(b")")
    if close < 0:
        return None
    fields = data[close + 2 :].split()
    # fields[0] is field 3 (state); field 22 (starttime) is fields[19]
    try:
        if fields[0] in (b"Z", b"X"):  # a zombie has ended; only its exit status is left
            return None
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def alive(pid: int, started: float, proc: Path = _PROC) -> bool:
    """Whether the process `pid` that started at `started` still runs."""
    current = start_time(pid, proc)
    return current is not None and current == started


def own_identity() -> tuple[int, int]:
    """This process: (pid, start time)."""
    pid = os.getpid()
    return pid, start_time(pid) or 0


def peer_credentials(sock: socket.socket) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the process at the other end of a Unix socket, from the kernel."""
    if sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    return (pid, uid, gid) if pid > 0 else None


def user_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)


def program_name(pid: int, proc: Path = _PROC) -> str:
    """A short name for process `pid`: its command line's script or executable."""
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if not args:
        return ""
    name = os.path.basename(args[0])
    if name.startswith("python") and len(args) > 1:
        rest = [a for a in args[1:] if not a.startswith("-")]
        if rest:
            return os.path.basename(rest[0])
    return name
