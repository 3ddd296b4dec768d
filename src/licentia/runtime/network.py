"""The network-client role: seats this runtime holds on network servers of its search
list for its programs (access, release, decrement and check forwarded; keep-alives)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from licentia.core.seats import Holder, ProcessId, ReleaseReason, Station
from licentia.model import AccessMode, ErrorCode, LicentiaError
from licentia.protocol.frames import Message
from licentia.runtime.config import RuntimeConfig
from licentia.runtime.events import LICENSE_GONE, SERVER_LOST, Events
from licentia.runtime.home import RuntimeHome
from licentia.runtime.ident import Ident, load_identity
from licentia.runtime.searchlist import Discovered, read_list
from licentia.runtime.upstream import Upstream, unreachable
from licentia.runtime.usagelog import UsageLog

REMOTE_BASE = 1 << 40  # local handles of seats held on a network server start here
# a program's request whose TMR front end stopped answering waits this long for the twin
# (a virtual address moves within a few VRRP advertisements; docs/tmr.md)
TWIN_WAIT = 6.0
TWIN_RETRY = 0.2

_RANK = {
    ErrorCode.NO_MORE_LICENSES: 6,
    ErrorCode.EXCLUSIVE_CONFLICT: 6,
    ErrorCode.LOCAL_ONLY: 5,
    ErrorCode.TERMINAL_SESSION_DENIED: 5,
    ErrorCode.ACCESS_DENIED: 5,
    ErrorCode.ACCESS_LIST_DENIED: 5,
    ErrorCode.SECURITY_PROBLEM: 2,
    ErrorCode.ENTRY_NOT_FOUND: 1,
    ErrorCode.CONTAINER_NOT_FOUND: 1,
    ErrorCode.SERVER_NOT_FOUND: 0,
    ErrorCode.NETWORK_FAULT: 0,
}


def better(best: LicentiaError | None, new: LicentiaError) -> LicentiaError:
    """The more telling of two refusals (212 over an expired item over 'not found')."""
    if best is None:
        return new
    return new if _RANK.get(new.code, 3) > _RANK.get(best.code, 3) else best


def _again(exc: LicentiaError) -> LicentiaError:
    return LicentiaError(exc.code, exc.message, exc.hint)


@dataclass
class RemoteHold:
    """A seat this runtime holds on a network server for one of its programs."""

    handle: int  # the program's handle here
    server: str
    remote_handle: int
    holder: Holder
    station: Station
    firm: int
    product: int
    mode: str
    container: str
    item: int
    since: float

    def to_list(self) -> list[Any]:
        p = self.holder.process
        proc = None if p is None else [list(p.station), p.pid, p.start_time]
        return [self.handle, self.server, self.remote_handle, proc, self.holder.client_id, self.holder.program,
                self.holder.user, self.holder.host, list(self.station), self.firm, self.product, self.mode,
                self.container, self.item, self.since]

    @classmethod
    def from_list(cls, raw: list[Any]) -> RemoteHold:
        (handle, server, remote, proc, client_id, program, user, host, station, firm, product, mode,
         container, item, since) = raw
        process = None if proc is None else ProcessId(Station(*proc[0]), int(proc[1]), proc[2])
        return cls(int(handle), str(server), int(remote), Holder(process, client_id, program, user, host),
                   Station(*station), int(firm), int(product), str(mode), str(container), int(item), float(since))


class NetworkHost(Protocol):
    """What the network-client role uses of the runtime."""

    home: RuntimeHome
    config: RuntimeConfig
    client_id: str
    host_id: str
    host_name: str
    ports: dict[str, Any]
    events: Events
    log: UsageLog | None

    def _seats_changed(self) -> None: ...

    def _note_problem(self, text: str) -> None: ...


class NetworkClient:
    def __init__(self, rt: NetworkHost) -> None:
        self.rt = rt
        self.remote: dict[int, RemoteHold] = {}
        self.next_remote = REMOTE_BASE
        # below the ceiling, handles are reserved on disk (licentia.runtime.handles)
        self.remote_ceiling: int | float = float("inf")
        self.reserve_remote: Callable[[int], int] | None = None
        self.upstreams: dict[str, Upstream] = {}
        self.discovered = Discovered()
        self.servers_stamp: tuple[int, int] | None = None
        self.server_list: list[str] = []

    # -- the search list --

    def may_forward(self, msg: Message) -> bool:
        return bool(self.servers_to_ask_now() or self.rt.config.broadcast) and not msg.get("container")

    def servers_to_ask_now(self) -> list[str]:
        self.reload_servers()
        return list(self.server_list)

    async def _servers_to_ask(self) -> list[str]:
        servers = self.servers_to_ask_now()
        config = self.rt.config
        if config.broadcast:
            reachable = [s for s in servers if self.upstream(s).reachable is not False]
            if not reachable:
                found = await self.discovered.get(config.broadcast_address, config.broadcast_port,
                                                  config.broadcast_wait)
                own = {f"127.0.0.1:{self.rt.ports.get('network_port')}"}
                servers += [s for s in found if s not in servers and s not in own]
        return servers

    def reload_servers(self) -> None:
        path = self.rt.home.servers
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self.servers_stamp:
            self.servers_stamp = stamp
            try:
                self.server_list = read_list(path)
            except LicentiaError as exc:
                self.rt._note_problem(exc.message)
                self.server_list = []

    def upstream(self, address: str) -> Upstream:
        up = self.upstreams.get(address)
        if up is None:
            rt = self.rt
            up = self.upstreams[address] = Upstream(address, rt.home, rt.config, rt.client_id, rt.host_id)
        return up

    async def close(self) -> None:
        for up in self.upstreams.values():
            await up.close()

    # -- requests --

    async def access(self, msg: Message, ident: Ident, mode: AccessMode, *, first_error: LicentiaError | None,
                     then_local: Callable[[], Message | bytes | Awaitable[Message | bytes]] | None = None,
                     ) -> Message | bytes:
        """A seat from the first server of the search list that grants one; else, with
        `then_local`, what that gives (the local containers after the network)."""
        best = first_error
        servers = await self._servers_to_ask()
        if not servers and best is None and then_local is None:
            raise LicentiaError(ErrorCode.SERVER_NOT_FOUND, "no network license server is configured or found",
                                "add one with `licentia server add HOST[:PORT]`")
        holder = ident.holder
        if holder.process is None:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER,
                                "only a program this runtime can watch (by its process) may take a network license")
        fields: dict[str, Any] = {"firm": msg["firm"], "product": msg["product"], "mode": mode.value,
                                  "where": "local"}
        for name in ("feature", "version", "release_date", "nonce"):
            if name in msg:
                fields[name] = msg[name]
        fields["client"] = {
            "kind": "program", "pid": holder.process.pid, "program": ident.program, "user": ident.user,
            "host": self.rt.host_name, "station": {"host_id": ident.station.host_id, "vm_id": ident.station.vm_id,
                                                   "session_id": ident.station.session_id},
            "session": ident.session.value, "in_vm": ident.in_vm,
        }
        for address in servers:
            up = self.upstream(address)
            try:
                reply = await up.request("access", **fields)
            except LicentiaError as exc:
                best = better(best, exc)
                if unreachable(exc):
                    self.mark_server_lost(address)
                continue
            handle = self.next_remote
            if handle >= self.remote_ceiling and self.reserve_remote is not None:
                self.remote_ceiling = self.reserve_remote(handle)
            self.next_remote += 1
            hold = RemoteHold(handle, address, int(reply["handle"]), holder, ident.station, msg["firm"],
                              msg["product"], mode.value, str(reply.get("container", "")), int(reply.get("item", 0)),
                              time.time())
            self.remote[handle] = hold
            self.log_remote("grant", hold)
            self.rt._seats_changed()
            out = dict(reply)
            out["id"] = msg["id"]
            out["handle"] = handle
            out["proof_handle"] = hold.remote_handle
            out["location"] = "network"
            out["server"] = address
            return out
        if then_local is not None:
            try:
                result = then_local()
            except LicentiaError as exc:
                raise better(best, exc) from None
            return result if isinstance(result, dict | bytes) else await result
        if best is None:
            raise LicentiaError(ErrorCode.SERVER_NOT_FOUND, "no network license server answered")
        raise _again(best)

    def held(self, handle: int, ident: Ident) -> RemoteHold:
        """The seat held on a server for `handle` by `ident`'s program, or INVALID_HANDLE."""
        hold = self.remote.get(handle)
        if hold is None or not hold.holder.same_as(ident.holder):
            raise self.rt.events.not_held(handle)
        return hold

    async def release(self, rid: int, hold: RemoteHold, reason: ReleaseReason) -> Message:
        self.remote.pop(hold.handle, None)
        self.rt.events.handle_events.pop(hold.handle, None)
        self.log_remote("release", hold, reason=reason.value)
        self.rt._seats_changed()
        try:
            try:
                await self.upstream(hold.server).request("release", handle=hold.remote_handle)
            except LicentiaError as exc:
                if not (unreachable(exc) and await self.move_to_twin(hold, TWIN_WAIT)):
                    raise
                await self.upstream(hold.server).request("release", handle=hold.remote_handle)
        except LicentiaError as exc:
            if exc.code is not ErrorCode.INVALID_HANDLE:
                self.rt._note_problem(f"releasing handle {hold.remote_handle} on {hold.server}: {exc.message}")
        return {"id": rid, "ok": True}

    async def forward(self, msg: Message, hold: RemoteHold, op: str, **fields: Any) -> Message:
        nonce = msg.get("nonce")
        if isinstance(nonce, bytes):
            fields["nonce"] = nonce
        try:
            reply = await self.upstream(hold.server).request(op, handle=hold.remote_handle, **fields)
        except LicentiaError as exc:
            if unreachable(exc):
                self.mark_server_lost(hold.server)
                if await self.move_to_twin(hold, TWIN_WAIT):  # a TMR front end's twin holds the same seat
                    return await self.forward(msg, hold, op, **fields)
            elif exc.code is ErrorCode.INVALID_HANDLE:
                self.remote_gone(hold, "freed on the server")
            raise
        out = dict(reply)
        out["id"] = msg["id"]
        out["proof_handle"] = hold.remote_handle
        return out

    async def check(self, msg: Message, hold: RemoteHold) -> Message:
        events = self.rt.events
        notices = set(events.handle_events.pop(hold.handle, ()))
        try:
            reply = await self.forward(msg, hold, "check")
        except LicentiaError as exc:
            if exc.code is ErrorCode.INVALID_HANDLE or hold.handle not in self.remote:
                return events.gone_reply(msg["id"], hold.handle)
            notices.add(SERVER_LOST)
            events.notify(hold.handle, SERVER_LOST)
            return {"id": msg["id"], "ok": True, "valid": True, "events": sorted(notices),
                    "reason": f"server {hold.server} does not answer: {exc.message}"}
        if not reply.get("valid", True) and LICENSE_GONE in (reply.get("events") or []):
            self.remote_gone(hold, "freed on the server")
        notices |= set(reply.get("events") or [])
        reply["events"] = sorted(notices)
        return reply

    async def move_to_twin(self, hold: RemoteHold, wait: float = 0.0) -> bool:
        """Move `hold` to another server of the search list that holds the same seat: only
        between TMR front ends of one virtual container (their hello says which), which keep
        their seats in one store (docs/tmr.md), and only where the twin knows the handle as
        this client's. With a `wait` (a program's request waiting), the server's own address
        is tried last, and all of them again for up to `wait` seconds: a virtual address
        (keepalived) moves to the twin, which then answers there. Without one (the keep-alive
        loop, which asks the same address again a second later) only the others are tried."""
        virtual = self.upstream(hold.server).tmr
        if not virtual:
            return False
        deadline = time.monotonic() + wait
        while True:
            candidates = [a for a in self.servers_to_ask_now() if a != hold.server]
            if wait > 0:
                candidates.append(hold.server)
            for address in candidates:
                if await self._attach(hold, address, virtual):
                    return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(TWIN_RETRY)

    async def _attach(self, hold: RemoteHold, address: str, virtual: str) -> bool:
        """`hold` served by `address` (a twin, or the same address now on the twin)."""
        twin = self.upstream(address)
        try:
            await twin.client()
            if twin.tmr != virtual:
                return False
            mine = load_identity(self.rt.home, hold.server)
            if mine is not None and load_identity(self.rt.home, address) != mine:
                await twin.adopt_identity(mine)  # the twins share identities: ours holds the seat
                await twin.client()
            reply = await twin.request("keepalive", handles=[hold.remote_handle])
        except LicentiaError:
            return False
        if hold.remote_handle in (reply.get("lost") or ()):
            return False
        if address == hold.server:
            self.rt._note_problem(f"handle {hold.handle}: server {address} answers again (a virtual address moved)")
        else:
            self.rt._note_problem(f"handle {hold.handle}: server {hold.server} lost, its twin {address} serves it")
            hold.server = address
            self.rt._seats_changed()
        return True

    def mark_server_lost(self, address: str) -> None:
        for hold in self.remote.values():
            if hold.server == address:
                self.rt.events.notify(hold.handle, SERVER_LOST)

    async def release_forgotten(self, up: Upstream, taken: set[int]) -> None:
        """Release the seats server `up` says this runtime took there on an earlier
        connection and that it does not know: taken by this runtime before it was killed,
        and not yet in its snapshot. Kept alive by this runtime's identity, they would
        never come back otherwise."""
        known = {h.remote_handle for h in self.remote.values() if h.server == up.address}
        for handle in sorted(taken - known):
            try:
                await up.request("release", handle=handle)
            except LicentiaError as exc:
                if exc.code is not ErrorCode.INVALID_HANDLE:
                    raise
            self.rt._note_problem(f"released seat {handle} on {up.address}: taken before this runtime "
                                  "restarted and not in its snapshot")

    def remote_gone(self, hold: RemoteHold, why: str) -> None:
        if self.remote.pop(hold.handle, None) is not None:
            self.log_remote("release", hold, reason="timeout")
            self.rt.events.forget_later(hold.handle, why)
            self.rt.events.handle_events.pop(hold.handle, None)
            self.rt._seats_changed()

    def log_remote(self, kind: str, hold: RemoteHold, **extra: Any) -> None:
        log = self.rt.log
        assert log is not None
        h = hold.holder
        fields = {"event": kind, "at": round(time.time(), 3), "container": hold.container, "firm": hold.firm,
                  "product": hold.product, "item": hold.item, "mode": hold.mode, "station": str(hold.station),
                  "user": h.user, "host": h.host, "program": h.program,
                  "pid": h.process.pid if h.process else None, "handle": hold.handle, "server": hold.server,
                  "server_handle": hold.remote_handle, **extra}
        log.note(fields)
        self.rt.events.remember(fields)

    # -- keep-alives --

    async def keepalive_loop(self) -> None:
        last: dict[str, float] = {}
        asked: dict[str, int] = {}  # server -> the connection to it that asked for forgotten seats
        handle_events = self.rt.events.handle_events
        while True:
            await asyncio.sleep(0.5)
            by_server: dict[str, list[RemoteHold]] = {}
            for hold in self.remote.values():
                by_server.setdefault(hold.server, []).append(hold)
            for address, up in self.upstreams.items():  # a new connection, holding nothing known
                if up.reachable and asked.get(address) != up.connections:
                    by_server.setdefault(address, [])
            now = time.monotonic()
            for address, holds in by_server.items():
                up = self.upstream(address)
                fresh = up.reachable is True and asked.get(address) != up.connections
                if not fresh and now - last.get(address, 0.0) < up.keepalive_interval and up.reachable is not False:
                    continue
                if up.reachable is False and now - last.get(address, 0.0) < 1.0:
                    continue
                last[address] = now
                try:
                    if fresh:
                        asked[address] = up.connections
                    lost, others = await _keepalive(up, [h.remote_handle for h in holds], others=fresh)
                    if others:
                        await self.release_forgotten(up, others)
                except LicentiaError:
                    self.mark_server_lost(address)
                    for hold in holds:
                        await self.move_to_twin(hold)
                    continue
                for hold in holds:
                    if hold.remote_handle in lost:
                        self.remote_gone(hold, "freed on the server")
                    else:
                        events = handle_events.get(hold.handle)
                        if events:
                            events.discard(SERVER_LOST)
                            if not events:
                                del handle_events[hold.handle]

    # -- what the status API shows --

    def session_rows(self, firm: int | None, product: int | None, container: str | None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for hold in self.remote.values():
            if (firm is not None and hold.firm != firm) or (product is not None and hold.product != product) \
                    or (container is not None and hold.container != container):
                continue
            h = hold.holder
            rows.append({
                "handle": hold.handle, "firm": hold.firm, "product": hold.product, "container": hold.container,
                "item": hold.item, "mode": hold.mode, "station": str(hold.station), "program": h.program,
                "pid": h.process.pid if h.process else None, "user": h.user, "host": h.host, "since": hold.since,
                "client": None, "location": f"server {hold.server}", "server_handle": hold.remote_handle,
            })
        return rows

    def upstream_rows(self) -> dict[str, dict[str, Any]]:
        return {a: {"reachable": u.reachable, "error": u.last_error.message if u.last_error else None}
                for a, u in self.upstreams.items()}


KEEPALIVE_HANDLES = 1000  # handles named per keep-alive (a server takes 1024 by default)


async def _keepalive(up: Any, handles: list[int], *, others: bool = False) -> tuple[set[int], set[int]]:
    """Keep-alives to server `up` naming `handles`, a bounded number each; the handles it
    says are lost, and with `others` (the first keep-alive on a new connection) the seats
    this client took there on an earlier connection that the first did not name. A
    server that takes fewer per keep-alive (1401) is sent one naming none, which keeps
    alive all this client holds there (nothing is learnt lost)."""
    lost: set[int] = set()
    taken: set[int] = set()
    for start in range(0, max(len(handles), 1), KEEPALIVE_HANDLES):
        fields: dict[str, Any] = {"handles": handles[start:start + KEEPALIVE_HANDLES]}
        if others and start == 0:
            fields["others"] = True
        try:
            reply = await up.request("keepalive", **fields)
        except LicentiaError as exc:
            if exc.code != ErrorCode.TOO_MANY_HANDLES:
                raise
            await up.request("keepalive")
            return lost, set()
        lost.update(reply.get("lost") or ())
        taken.update(h for h in reply.get("others") or () if type(h) is int)
    return lost, taken
