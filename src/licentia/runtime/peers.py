"""What the kernel says about a local peer: the process at the other end of a loopback
TCP connection (as `ss -p` finds it: the peer socket's inode from sock_diag, or from
/proc/net/tcp or tcp6, then the process holding that inode among its file descriptors), and the session a
process runs in (its environment as the kernel keeps it in /proc/PID/environ, its
logind session from /proc/PID/cgroup, and the remote-access daemons among its ancestors).

Nothing here believes what the program says about itself: what it states is at most a
hint (`narrower`) that can make its session more restricted, never less."""

from __future__ import annotations

import os
import re
import socket
import struct
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


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_HEADER = struct.Struct("=IHHII")
_NO_COOKIE = 0xFFFFFFFF


def _diag_inode(peer: tuple[str, int], local: tuple[str, int]) -> tuple[int, int] | None:
    """`socket_inode` by the kernel's sock_diag netlink interface (what `ss` uses): one
    exact lookup of the 4-tuple, where /proc/net/tcp lists every connection."""
    family = socket.AF_INET6 if ":" in peer[0] else socket.AF_INET

    def raw(host: str) -> bytes:
        return socket.inet_pton(family, host.split("%")[0]).ljust(16, b"\0")

    sockid = struct.pack("!HH", peer[1], local[1]) + raw(peer[0]) + raw(local[0]) \
        + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    head = _NLMSG_HEADER.pack(_NLMSG_HEADER.size + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as s:
        s.settimeout(1.0)
        s.send(head + req)
        data = s.recv(65536)
    if len(data) < _NLMSG_HEADER.size + 4 + 48 + 20 or _NLMSG_HEADER.unpack_from(data)[1] != _SOCK_DIAG_BY_FAMILY:
        return None  # an error message: no such connection
    # inet_diag_msg: family, state, timer, retrans (4 bytes), the socket id (48), expires,
    # rqueue, wqueue (12), uid, inode
    uid, inode = struct.unpack_from("=II", data, _NLMSG_HEADER.size + 4 + 48 + 12)
    return (inode, uid) if inode else None


def socket_inode(peer: tuple[str, int], local: tuple[str, int], proc: Path = _PROC) -> tuple[int, int] | None:
    """(inode, uid) of the socket at `peer` connected to our `local` end, or None: asked
    of sock_diag, else read from /proc/net/tcp and tcp6."""
    if proc == _PROC:
        try:
            return _diag_inode(peer, local)
        except OSError:
            pass  # no netlink here (a sandbox): the slower table
    return table_inode(peer, local, proc)


def table_inode(peer: tuple[str, int], local: tuple[str, int], proc: Path = _PROC) -> tuple[int, int] | None:
    """`socket_inode` from /proc/net/tcp and tcp6 (every connection of the namespace)."""
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
    pid = socket_owner(inode, uid, proc)
    return None if pid is None else (pid, uid)


def socket_owner(inode: int, uid: int, proc: Path = _PROC) -> int | None:
    """The process holding socket `inode` of user `uid`, looked for among that user's
    processes (the socket belongs to its creator's user); None if none is visible. It
    reads every descriptor of those processes: call it off the event loop."""
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        return None
    for pid in pids:
        try:
            owner = os.stat(f"{proc}/{pid}").st_uid
        except OSError:
            continue
        if owner == uid and holds_socket(pid, inode, proc):
            return pid
    return None


# ====================================================================== sessions


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def environ(pid: int, proc: Path = _PROC) -> dict[str, str] | None:
    """The environment process `pid` started with, as the kernel keeps it, or None."""
    raw = _read(f"{proc}/{pid}/environ")
    if raw is None:
        return None
    out: dict[str, str] = {}
    for part in raw.split(b"\0"):
        name, eq, value = part.partition(b"=")
        if eq and name:
            out[name.decode(errors="replace")] = value.decode(errors="replace")
    return out


def _stat(pid: int, proc: Path) -> tuple[str, int] | None:
    """(command name, parent pid) of `pid`."""
    data = _read(f"{proc}/{pid}/stat")
    if data is None:
        return None
    open_, close = data.find(b"("), data.rfind(b")")
    if open_ < 0 or close < 0:
        return None
    fields = data[close + 2:].split()
    try:
        return data[open_ + 1:close].decode(errors="replace"), int(fields[1])
    except (IndexError, ValueError):
        return None


_MARKER_BYTES = tuple((m.lower(), b"\0" + m.encode() + b"=") for m in TERMINAL_SERVER_MARKERS)


def _marker(pid: int, proc: Path) -> str:
    """The terminal-server marker in the environment of `pid` ("xrdp_session:VALUE"), or ""."""
    raw = _read(f"{proc}/{pid}/environ")
    if not raw:
        return ""
    raw = b"\0" + raw
    for name, key in _MARKER_BYTES:
        at = raw.find(key)
        if at >= 0:
            end = raw.find(b"\0", at + len(key))
            value = raw[at + len(key):end if end >= 0 else len(raw)].decode(errors="replace").strip()
            if value:
                return f"{name}:{value}"
    return ""


def _logind_session(pid: int, proc: Path) -> str:
    raw = _read(f"{proc}/{pid}/cgroup")
    m = _SESSION_SCOPE.search(raw) if raw else None
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
    st = _stat(pid, proc)
    seen = 0
    while st is not None and st[1] > 1 and seen < _MAX_ANCESTORS:
        current = st[1]
        st = _stat(current, proc)
        if st is None:
            break
        name = st[0]
        if name in TERMINAL_SERVER_DAEMONS:
            return SessionKind.TERMINAL_SERVER, f"{name}:{current}"
        marker = _marker(current, proc)
        if marker:
            return SessionKind.TERMINAL_SERVER, marker
        if name in _REMOTE_SHELLS and kind is SessionKind.LOCAL:
            kind = SessionKind.REMOTE_DESKTOP
        seen += 1
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
