"""What the kernel says about a local peer: the process at the other end of a loopback
TCP connection (as `ss -p` finds it: the peer socket's inode in /proc/net/tcp or tcp6,
then the process holding that inode among its file descriptors), and the session a
process runs in (its environment as the kernel keeps it in /proc/PID/environ, its
logind session from /proc/PID/cgroup, and the remote-access daemons among its ancestors).

Nothing here believes what the program says about itself: what it states is at most a
hint (`narrower`) that can make its session more restricted, never less."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

from licentia.binding import detect_session
from licentia.model import LicentiaError, SessionKind

_PROC = Path("/proc")
# the session kinds from the least to the most restricted
_RANK = {SessionKind.LOCAL: 0, SessionKind.REMOTE_DESKTOP: 1, SessionKind.TERMINAL_SERVER: 2}
# programs whose descendants run in a terminal-server session
TERMINAL_SERVER_DAEMONS = frozenset({"xrdp", "xrdp-sesman", "xrdp-chansrv", "x2goagent", "x2goruncommand",
                                     "nxagent", "nxnode", "vncsession", "Xvnc", "Xtightvnc", "tlwm",
                                     "vsm-agent", "thinlinc"})
TERMINAL_SERVER_MARKERS = ("XRDP_SESSION", "X2GO_SESSION", "TLSESSIONDATA", "NXSESSIONID")
_REMOTE_SHELLS = frozenset({"sshd", "sshd-session", "dropbear", "mosh-server"})
_SESSION_SCOPE = re.compile(rb"/session-([A-Za-z0-9_]+)\.scope")
_MAX_ANCESTORS = 64


# ====================================================================== loopback TCP


def _hex_address(host: str, port: int) -> str:
    """`host`:`port` as /proc/net/tcp{,6} spells it (each 32-bit word in host order)."""
    if ":" in host:
        raw = socket.inet_pton(socket.AF_INET6, host.split("%")[0])
        words = "".join(f"{int.from_bytes(raw[i:i + 4], 'little'):08X}" for i in range(0, 16, 4))
        return f"{words}:{port:04X}"
    return f"{int.from_bytes(socket.inet_aton(host), 'little'):08X}:{port:04X}"


def socket_inode(peer: tuple[str, int], local: tuple[str, int], proc: Path = _PROC) -> tuple[int, int] | None:
    """(inode, uid) of the socket at `peer` connected to our `local` end, or None."""
    want_local, want_remote = _hex_address(*peer), _hex_address(*local)
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) >= 10 and f[1] == want_local and f[2] == want_remote:
                inode = int(f[9])
                return (inode, int(f[7])) if inode else None
    return None


def holds_socket(pid: int, inode: int, proc: Path = _PROC) -> bool:
    target = f"socket:[{inode}]"
    try:
        fds = os.listdir(proc / str(pid) / "fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(proc / str(pid) / "fd" / fd) == target:
                return True
        except OSError:
            continue
    return False


def loopback_peer(peer: tuple[str, int], local: tuple[str, int], hint: int | None = None,
                  proc: Path = _PROC) -> tuple[int, int] | None:
    """(pid, uid) of the process at the other end of a loopback TCP connection from
    `peer` to our `local` address, or None when the kernel does not say (another network
    namespace, or processes whose descriptors this runtime may not read). The stated
    `hint` is looked at first and taken only when that process holds the socket."""
    found = socket_inode(peer, local, proc)
    if found is None:
        return None
    inode, uid = found
    if hint is not None and hint > 0 and holds_socket(hint, inode, proc):
        return hint, uid
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        return None
    for pid in pids:  # the socket belongs to its creator's user: look among that user's processes
        try:
            owner = os.stat(proc / str(pid)).st_uid
        except OSError:
            continue
        if owner == uid and holds_socket(pid, inode, proc):
            return pid, uid
    return None


# ====================================================================== sessions


def environ(pid: int, proc: Path = _PROC) -> dict[str, str] | None:
    """The environment process `pid` started with, as the kernel keeps it, or None."""
    try:
        raw = (proc / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    out: dict[str, str] = {}
    for part in raw.split(b"\0"):
        name, eq, value = part.partition(b"=")
        if eq and name:
            out[name.decode(errors="replace")] = value.decode(errors="replace")
    return out


def _stat(pid: int, proc: Path) -> tuple[str, int] | None:
    """(command name, parent pid) of `pid`."""
    try:
        data = (proc / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    open_, close = data.find(b"("), data.rfind(b")")
    if open_ < 0 or close < 0:
        return None
    fields = data[close + 2:].split()
    try:
        return data[open_ + 1:close].decode(errors="replace"), int(fields[1])
    except (IndexError, ValueError):
        return None


def _logind_session(pid: int, proc: Path) -> str:
    try:
        raw = (proc / str(pid) / "cgroup").read_bytes()
    except OSError:
        return ""
    m = _SESSION_SCOPE.search(raw)
    return m.group(1).decode() if m else ""


def process_session(pid: int, machine_root: Path, proc: Path = _PROC) -> tuple[SessionKind, str]:
    """The session process `pid` runs in, as the kernel shows it: its starting
    environment (without LICENTIA_SESSION, which a program may not use to widen what it
    gets), its logind session, and its ancestors (a terminal-server daemon, or a marker
    in an ancestor's environment, makes it a terminal-server session; a remote shell
    daemon a remote one)."""
    env = environ(pid, proc) or {}
    env.pop("LICENTIA_SESSION", None)
    logind = _logind_session(pid, proc)
    if logind:
        env["XDG_SESSION_ID"] = logind
    try:
        kind, sid = detect_session(machine_root, env)
    except LicentiaError:
        kind, sid = SessionKind.LOCAL, ""
    if kind is SessionKind.TERMINAL_SERVER:
        return kind, sid
    current, seen = pid, 0
    while seen < _MAX_ANCESTORS:
        st = _stat(current, proc)
        if st is None:
            break
        name, parent = st
        if current != pid:
            if name in TERMINAL_SERVER_DAEMONS:
                return SessionKind.TERMINAL_SERVER, f"{name}:{current}"
            penv = environ(current, proc) or {}
            for marker in TERMINAL_SERVER_MARKERS:
                value = penv.get(marker, "").strip()
                if value:
                    return SessionKind.TERMINAL_SERVER, f"{marker.lower()}:{value}"
            if name in _REMOTE_SHELLS and kind is SessionKind.LOCAL:
                kind = SessionKind.REMOTE_DESKTOP
        if parent <= 1:
            break
        current, seen = parent, seen + 1
    return kind, sid


def narrower(found: tuple[SessionKind, str], stated: tuple[SessionKind, str]) -> tuple[SessionKind, str]:
    """What the runtime found, unless the program stated a more restricted session."""
    return stated if _RANK[stated[0]] > _RANK[found[0]] else found


def session_hint(env: Any, machine_root: Path) -> tuple[SessionKind, str]:
    """The session a program states (its session variables), as a hint."""
    if not isinstance(env, dict):
        return SessionKind.LOCAL, ""
    clean = {k: v for k, v in env.items() if isinstance(k, str) and isinstance(v, str)}
    return detect_session(machine_root, clean)
