"""Who a request comes from: the identity a connection's hello establishes (the kernel
names a local peer: SO_PEERCRED on the Unix socket, the socket's owner on the loopback
port; a network client gets a server-issued id and a secret that proves it later), and
the program a client runtime acts for in one request."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

from licentia.core.seats import Holder, Station
from licentia.crypto import derive, equal, keyed_digest, new_key
from licentia.fsutil import atomic_write
from licentia.model import Environment, ErrorCode, LicentiaError, SessionKind
from licentia.protocol.frames import Message, ProtocolError
from licentia.protocol.messages import validate_request
from licentia.runtime import procs
from licentia.runtime.home import RuntimeHome
from licentia.runtime.peers import (
    holds_socket,
    narrower,
    process_session,
    session_hint,
    socket_inode,
    socket_owner,
)


class Ident:
    """Who a request comes from, as the runtime established it. `role` is what it may
    see and do beyond its own seats: "holder" (its own only), "reader" (sees every
    entry) or "admin" (sees every entry and releases any seat)."""

    __slots__ = ("client_id", "holder", "host", "in_vm", "kind", "local", "pid", "program", "role", "secret",
                 "session", "station", "uid", "user")

    def __init__(self, *, kind: str, holder: Holder, station: Station, session: SessionKind, local: bool,
                 in_vm: bool, pid: int | None = None, uid: int | None = None, client_id: str | None = None,
                 program: str = "", user: str = "", host: str = "", role: str = "holder",
                 secret: bytes | None = None) -> None:
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
        self.role = role
        self.secret = secret  # proves `client_id` when the client connects again

    def owns(self, holder: Holder) -> bool:
        """Whether a seat of `holder` is this identity's own."""
        return holder.same_as(self.holder) or (self.client_id is not None and holder.client_id == self.client_id)


_IDENTITY_INFO = b"licentia client identity v1"


class Identities:
    """Establishes identities for the runtime of machine `host_id` (`host_name`)."""

    def __init__(self, *, host_id: str, host_name: str, environment: Environment, machine_root: Path) -> None:
        self.host_id = host_id
        self.host_name = host_name
        self.environment = environment
        self.machine_root = machine_root
        self._session_cache: dict[frozenset[tuple[str, str]], tuple[SessionKind, str]] = {}
        self._secret_key = new_key()  # the runtime key's subkey once the runtime starts (`use_key`)
        self.tokens: dict[str, str] = {}  # token -> role ("admin", "reader")

    def use_key(self, runtime_key: bytes, tokens: dict[str, str]) -> None:
        """Derive client secrets from the runtime's key (so they hold across restarts),
        and accept `tokens` (token -> role) from network clients."""
        self._secret_key = derive(runtime_key, _IDENTITY_INFO)
        self.tokens = {t: r for t, r in tokens.items() if t}

    def secret_for(self, client_id: str) -> bytes:
        return keyed_digest(self._secret_key, client_id.encode())

    def issue(self, resume: Any, prefix: str) -> tuple[str, bytes, bool]:
        """(client id, its secret, resumed): the identity `resume` proves (a map with
        `client_id` and `secret` from an earlier hello reply), else a new one."""
        if isinstance(resume, dict):
            cid, secret = resume.get("client_id"), resume.get("secret")
            if isinstance(cid, str) and 8 <= len(cid) <= 100 and isinstance(secret, bytes) \
                    and equal(self.secret_for(cid), secret):
                return cid, secret, True
        cid = f"{prefix}-{os.urandom(12).hex()}"
        return cid, self.secret_for(cid), False

    def role_of(self, token: Any) -> str:
        if isinstance(token, str) and token:
            for known, role in self.tokens.items():
                if equal(known.encode(), token.encode()):
                    return role
            raise LicentiaError(ErrorCode.IDENTITY_REFUSED, "the administration token is not this runtime's",
                                "use the runtime home's admin.token (or reader.token for read-only access)")
        return "holder"

    def identify(self, c: dict[str, Any], kind: str, *, listener: str, peer: tuple[int, int, int] | None,
                 peer_host: str, number: int) -> Ident:
        """The identity a hello's `client` map `c` gets on a connection of `listener`
        ("unix", "local" or "network"), the `number`th, from `peer` (what the kernel says:
        (pid, uid, gid) of the process at the other end) or `peer_host` (its address).
        On the network port, and on the loopback port when the kernel does not name the
        process, the client gets a server-issued id (or proves an earlier one)."""
        program = text(c.get("program"), 200)
        user = text(c.get("user"), 100)
        if listener == "network" or peer is None:
            if kind == "runtime" and listener != "network":
                raise LicentiaError(ErrorCode.PROTOCOL_ERROR, "a client runtime connects to the network port")
            role = self.role_of(c.get("token"))
            if kind == "admin" and role == "holder":
                raise LicentiaError(ErrorCode.ACCESS_DENIED,
                                    "administration over the network needs the runtime's admin or reader token",
                                    "pass the runtime home's admin.token (or reader.token), or run the "
                                    "command on the server itself")
            client_id, secret, _ = self.issue(c.get("resume"), "rt" if kind == "runtime" else "net")
            host = text(c.get("host"), 200) or peer_host
            station = station_from(c.get("station"), f"ip:{peer_host}")
            session = session_kind(c.get("session"))
            if station.session_id == "" and session is SessionKind.TERMINAL_SERVER:
                station = station._replace(session_id=f"{host}:terminal")
            holder = Holder.network(client_id, program=program, user=user, host=host)
            pid = c.get("pid") if isinstance(c.get("pid"), int) and listener == "network" else None
            return Ident(kind=kind, holder=holder, station=station, session=session,
                         local=False, in_vm=bool(c.get("in_vm", False)), client_id=client_id, program=program,
                         user=user, host=host, pid=pid, role=role, secret=secret)
        if kind == "runtime":
            raise LicentiaError(ErrorCode.PROTOCOL_ERROR, "a client runtime connects to the network port")
        pid, uid, _ = peer
        start = procs.start_time(pid)
        if start is None:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"process {pid} ended while connecting")
        stated = c.get("pid")
        if isinstance(stated, int) and stated != pid:
            raise LicentiaError(ErrorCode.IDENTITY_REFUSED,
                                f"the client says it is process {stated}, the kernel says {pid}",
                                "a program states its own process, or none")
        user = procs.user_name(uid)
        hint = self._session_of(c["env"]) if isinstance(c.get("env"), dict) else \
            (session_kind(c.get("session")), "")
        session, session_id = narrower(process_session(pid, self.machine_root), hint)
        station = Station(self.host_id, "", session_id if session is SessionKind.TERMINAL_SERVER else "")
        host = self.host_name
        in_vm = self.environment.in_vm
        role = "holder"
        if kind == "admin":
            if listener != "unix" or uid not in (0, os.geteuid()):
                raise LicentiaError(ErrorCode.ACCESS_DENIED,
                                    "administration needs the runtime's Unix socket and its user (or root)")
            role = "admin"
        program = program or procs.program_name(pid)
        holder = Holder.local(station, pid, float(start), program=program, user=user, host=host)
        return Ident(kind=kind, holder=holder, station=station, session=session, local=True,
                     in_vm=in_vm, pid=pid, uid=uid, program=program, user=user, host=host, role=role)

    def _session_of(self, env: dict[str, Any]) -> tuple[SessionKind, str]:
        clean = frozenset((str(k), str(v)) for k, v in env.items() if isinstance(k, str) and isinstance(v, str))
        hit = self._session_cache.get(clean)
        if hit is None:
            hit = session_hint(dict(clean), self.machine_root)
            if len(self._session_cache) > 1000:
                self._session_cache.clear()
            self._session_cache[clean] = hit
        return hit


def acting_for(ident: Ident, msg: Message) -> Ident:
    """The identity of a request: a client runtime names the program it acts for."""
    if ident.kind != "runtime":
        return ident
    c = msg.get("client")
    if not isinstance(c, dict):
        return ident
    problem = _check_client(c)
    if problem:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"access: {problem}")
    program = text(c.get("program"), 200)
    user = text(c.get("user"), 100)
    host = text(c.get("host"), 200) or ident.host
    station = station_from(c.get("station"), ident.station.host_id)
    session = session_kind(c.get("session"))
    holder = Holder.network(ident.client_id or "", program=program, user=user, host=host)
    pid = c.get("pid") if isinstance(c.get("pid"), int) else None
    return Ident(kind="program", holder=holder, station=station, session=session, local=False,
                 in_vm=bool(c.get("in_vm", False)), client_id=ident.client_id, pid=pid, program=program,
                 user=user, host=host, role=ident.role)


def station_from(raw: Any, fallback_host: str) -> Station:
    if isinstance(raw, dict) and isinstance(raw.get("host_id"), str) and raw["host_id"]:
        return Station(text(raw["host_id"], 100), text(raw.get("vm_id"), 100), text(raw.get("session_id"), 100))
    return Station(fallback_host)


def text(value: Any, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


def session_kind(value: Any) -> SessionKind:
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


class PeerSearch(NamedTuple):
    """A loopback peer whose socket the kernel named (`inode`, of user `uid`) but whose
    process is still to be found among the user's (`find_peer`, off the event loop)."""

    inode: int
    uid: int


def kernel_peer(conn: Any, c: dict[str, Any]) -> tuple[int, int, int] | PeerSearch | None:
    """(pid, uid, gid) of the process at the other end of `conn`, as the kernel says:
    SO_PEERCRED on the Unix socket, the socket's owner on the loopback port (gid -1; the
    process the client states, when it holds the socket, else a `PeerSearch`); None on
    the network port, or when the kernel does not name the socket."""
    if conn.listener == "unix":
        peer: tuple[int, int, int] | None = conn.peer
        return peer
    if conn.listener != "local" or conn.transport is None:
        return None
    remote = conn.transport.get_extra_info("peername")
    local = conn.transport.get_extra_info("sockname")
    if not (isinstance(remote, tuple) and isinstance(local, tuple)):
        return None
    found = socket_inode((str(remote[0]), int(remote[1])), (str(local[0]), int(local[1])))
    if found is None:
        return None
    inode, uid = found
    hint = c.get("pid")
    if isinstance(hint, int) and hint > 0 and holds_socket(hint, inode):
        return hint, uid, -1
    return PeerSearch(inode, uid)


def find_peer(search: PeerSearch) -> tuple[int, int, int] | None:
    """The process of a `PeerSearch`, or None (then the client is a network client)."""
    pid = socket_owner(search.inode, search.uid)
    return None if pid is None else (pid, search.uid, -1)


def identity_tokens(home: RuntimeHome) -> dict[str, str]:
    """The tokens that make a network client an administrator (the home's admin.token)
    or a reader (its reader.token, made on first use like the admin token)."""
    path = home.path / "reader.token"
    try:
        reader = path.read_text().strip()
    except FileNotFoundError:
        reader = ""
    if not reader:
        reader = secrets.token_urlsafe(24)
        atomic_write(path, reader.encode() + b"\n", mode=0o600)
    return {home.admin_token(): "admin", reader: "reader"}


def _identity_file(home: RuntimeHome, address: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in address).strip("_")
    return home.state / "servers" / f"{safe}.identity"


def load_identity(home: RuntimeHome, address: str) -> dict[str, Any] | None:
    """The identity the server at `address` issued this (client) runtime, if kept."""
    try:
        raw = _identity_file(home, address).read_bytes()
        doc = msgpack.unpackb(raw)
    except (OSError, ValueError, msgpack.ExtraData):
        return None
    if isinstance(doc, dict) and isinstance(doc.get("client_id"), str) and isinstance(doc.get("secret"), bytes):
        return {"client_id": doc["client_id"], "secret": doc["secret"]}
    return None


def save_identity(home: RuntimeHome, address: str, reply: dict[str, Any]) -> None:
    """Keep the identity a server's hello reply issued (only its owner reads the file)."""
    cid, secret = reply.get("client_id"), reply.get("secret")
    if not (isinstance(cid, str) and isinstance(secret, bytes)):
        return
    if load_identity(home, address) == {"client_id": cid, "secret": secret}:
        return
    path = _identity_file(home, address)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, msgpack.packb({"client_id": cid, "secret": secret}), mode=0o600)
