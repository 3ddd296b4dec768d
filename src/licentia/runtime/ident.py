"""Who a request comes from: the identity a connection's hello establishes (the kernel
names a local peer; a network client names itself), and the program a client runtime
acts for in one request."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from licentia.binding import detect_session
from licentia.core.seats import Holder, Station
from licentia.model import Environment, ErrorCode, LicentiaError, SessionKind
from licentia.protocol.frames import Message, ProtocolError
from licentia.protocol.messages import validate_request
from licentia.runtime import procs


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


class Identities:
    """Establishes identities for the runtime of machine `host_id` (`host_name`)."""

    def __init__(self, *, host_id: str, host_name: str, environment: Environment, machine_root: Path) -> None:
        self.host_id = host_id
        self.host_name = host_name
        self.environment = environment
        self.machine_root = machine_root
        self._session_cache: dict[frozenset[tuple[str, str]], tuple[SessionKind, str]] = {}

    def identify(self, c: dict[str, Any], kind: str, *, listener: str, peer: tuple[int, int, int] | None,
                 peer_host: str, number: int) -> Ident:
        """The identity a hello's `client` map `c` gets on a connection of `listener`
        ("unix", "local" or "network"), the `number`th, from `peer` (kernel credentials
        on the Unix socket) or `peer_host` (its address)."""
        program = text(c.get("program"), 200)
        user = text(c.get("user"), 100)
        if listener == "network":
            if kind == "admin":
                raise LicentiaError(ErrorCode.ACCESS_DENIED, "administration is only possible on the server's machine",
                                    "run `licentia sessions` / `licentia release` on the server itself")
            client_id = c.get("client_id")
            if not isinstance(client_id, str) or not 8 <= len(client_id) <= 100:
                client_id = f"net-{number}-{os.urandom(6).hex()}"
            host = text(c.get("host"), 200) or peer_host
            station = station_from(c.get("station"), f"ip:{peer_host}")
            session = session_kind(c.get("session"))
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
        if peer is not None:
            pid, uid, _ = peer
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
            session, session_id = session_kind(c.get("session")), ""
        station = Station(self.host_id, "", session_id if session is SessionKind.TERMINAL_SERVER else "")
        host = self.host_name
        in_vm = self.environment.in_vm
        if kind == "admin" and (peer is None or uid not in (0, os.geteuid())):
            raise LicentiaError(ErrorCode.ACCESS_DENIED,
                                "administration needs the runtime's Unix socket and its user (or root)")
        if pid is None:
            # no process to watch (e.g. a load generator): kept alive like a network client
            client_id = f"local-{number}-{os.urandom(4).hex()}"
            holder = Holder.network(client_id, program=program, user=user, host=host)
            return Ident(kind=kind, holder=holder, station=station, session=session, local=True,
                         in_vm=in_vm, client_id=client_id, program=program, user=user, host=host)
        program = program or procs.program_name(pid)
        holder = Holder.local(station, pid, float(start or 0), program=program, user=user, host=host)
        return Ident(kind=kind, holder=holder, station=station, session=session, local=True,
                     in_vm=in_vm, pid=pid, uid=uid, program=program, user=user, host=host)

    def _session_of(self, env: dict[str, Any]) -> tuple[SessionKind, str]:
        clean = frozenset((str(k), str(v)) for k, v in env.items() if isinstance(k, str) and isinstance(v, str))
        hit = self._session_cache.get(clean)
        if hit is None:
            hit = detect_session(self.machine_root, dict(clean))
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
                 user=user, host=host)


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
