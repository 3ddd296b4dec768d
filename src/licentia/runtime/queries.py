"""What the runtime shows and what an administrator does: sessions, containers, items,
the server's state and recent events (the `sessions`, `info` and `events` requests, the
status page and JSON API of `licentia.runtime.status`), and the forced release."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from licentia.core.seats import Event, ItemKey, ReleaseReason, SeatTable
from licentia.model import ContainerStatus, ErrorCode, LicentiaError
from licentia.protocol.frames import Message
from licentia.runtime.borrow import is_borrowed_seat
from licentia.runtime.cloud import RuntimeCloud
from licentia.runtime.config import RuntimeConfig
from licentia.runtime.events import Events
from licentia.runtime.home import RuntimeHome
from licentia.runtime.ident import Ident
from licentia.runtime.network import REMOTE_BASE, NetworkClient
from licentia.runtime.sync import CentralSync
from licentia.runtime.tokens import RuntimeContainers, RuntimeTokens


class Admin(Protocol):
    """A connection as the queries see it."""

    ident: Ident | None


def _own_rows(ident: Ident | None) -> Callable[[dict[str, Any]], bool] | None:
    """Which session rows a client may see: None for all (an administrator, a reader, a
    program on this machine), else a test for its own (a client with a server-issued id)."""
    if ident is None or ident.role != "holder" or ident.client_id is None:
        return None
    cid = ident.client_id
    return lambda row: row.get("client") == cid


class QueriesHost(Protocol):
    """What the queries use of the runtime."""

    home: RuntimeHome
    config: RuntimeConfig
    host_name: str
    started_at: float
    ports: dict[str, Any]
    seats: SeatTable
    containers: RuntimeContainers
    tokens: RuntimeTokens
    cloud: RuntimeCloud
    central_sync: CentralSync
    network: NetworkClient
    events: Events
    connections: set[Any]

    def after_release(self, events: tuple[Event, ...]) -> None: ...


class Queries:
    def __init__(self, rt: QueriesHost) -> None:
        self.rt = rt

    # ================================================================== requests

    def op_admin_release(self, conn: Admin, msg: Message) -> Message | Awaitable[Message]:
        ident = conn.ident
        assert ident is not None
        if ident.role != "admin":
            raise LicentiaError(ErrorCode.ACCESS_DENIED, "force-releasing a seat needs an admin connection",
                                "use `licentia release HANDLE` as the runtime's user or root, or the "
                                "runtime's admin.token over the network")
        return self.admin_release(msg["handle"], msg["id"])

    def admin_release(self, handle: int, rid: int = 0) -> Message | Awaitable[Message]:
        rt = self.rt
        if handle >= REMOTE_BASE:
            hold = rt.network.remote.get(handle)
            if hold is None:
                raise rt.events.not_held(handle)
            rt.events.forget_later(handle, ReleaseReason.ADMIN.value)
            return rt.network.release(rid, hold, ReleaseReason.ADMIN)
        if handle in rt.seats and is_borrowed_seat(rt.seats.get(handle).holder.client_id):
            raise LicentiaError(ErrorCode.BORROW_NOT_ALLOWED, f"handle {handle} is a borrowed seat; it comes back when "
                                "it is returned or its time ends", "return it with `licentia borrow return` on the "
                                "borrowing machine, or wait for its end (`licentia borrow list`)")
        rel = rt.seats.force_release(handle, time.time())
        rt.after_release(rel.events)
        return {"id": rid, "ok": True}

    def op_sessions(self, conn: Admin, msg: Message) -> Message:
        rows = self.session_rows(msg.get("firm"), msg.get("product"), msg.get("container"))
        mine = _own_rows(conn.ident)
        if mine is not None:
            rows = [r for r in rows if mine(r)]
        return {"id": msg["id"], "ok": True, "sessions": rows}

    def op_info(self, conn: Admin, msg: Message) -> Message:
        what = msg["what"]
        reply: Message = {"id": msg["id"], "ok": True}
        mine = _own_rows(conn.ident)
        if mine is None:
            if what == "server":
                reply["server"] = self.server_info()
            elif what == "containers":
                reply["containers"] = self.container_rows()
            else:
                reply["items"] = self.item_rows(msg.get("firm"))
            return reply
        # a client that is no administrator sees what its own seats are on, nothing more
        own = [r for r in self.session_rows() if mine(r)]
        if what == "server":
            rt = self.rt
            reply["server"] = {"host": rt.host_name, "client_timeout": rt.config.client_timeout,
                               "sessions": len(own)}
        elif what == "containers":
            held = {r["container"] for r in own}
            reply["containers"] = [r for r in self.container_rows() if r["serial"] in held]
        else:
            held_items = {(r["container"], r["item"]) for r in own}
            reply["items"] = [r for r in self.item_rows(msg.get("firm"))
                              if (r["container"], r["item_id"]) in held_items]
        return reply

    def op_events(self, conn: Admin, msg: Message) -> Message:
        since = msg.get("since", 0)
        limit = max(1, min(msg.get("limit", 100), 1000))
        ident = conn.ident
        if ident is None or ident.role != "holder" or ident.client_id is None:
            out = self.recent_events(since, limit)
        else:
            out = self.rt.events.recent_events(since, limit, visible=ident.owns)
        return {"id": msg["id"], "ok": True, "events": out, "next": out[-1]["seq"] if out else since}

    # ================================================================== what they show

    def recent_events(self, since: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        return self.rt.events.recent_events(since, limit)

    @property
    def recent_seq(self) -> int:
        return self.rt.events.seq

    def admin_token(self) -> str:
        return self.rt.home.admin_token()

    def session_rows(self, firm: int | None = None, product: int | None = None,
                     container: str | None = None) -> list[dict[str, Any]]:
        rt = self.rt
        net_pids = rt.events.net_pids
        rows: list[dict[str, Any]] = []
        for sess in rt.seats.sessions():
            k = sess.key
            if (firm is not None and k.firm_code != firm) or (product is not None and k.product_code != product) \
                    or (container is not None and k.container != container):
                continue
            h = sess.holder
            rows.append({
                "handle": sess.handle, "firm": k.firm_code, "product": k.product_code, "container": k.container,
                "item": k.item_id, "mode": sess.mode.value, "station": str(sess.station),
                "program": h.program, "pid": h.process.pid if h.process else net_pids.get(sess.handle),
                "user": h.user, "host": h.host, "since": sess.since,
                "client": h.client_id, "location": "local" if h.client_id is None else "network client",
            })
            if is_borrowed_seat(h.client_id):
                rows[-1]["location"] = "borrowed"
        rows += rt.network.session_rows(firm, product, container)
        rows.sort(key=lambda r: r["handle"])
        return rows

    def server_info(self) -> dict[str, Any]:
        rt = self.rt
        return {"host": rt.host_name, "pid": os.getpid(), "started_at": rt.started_at,
                "network": rt.config.network, "client_timeout": rt.config.client_timeout,
                "sessions": len(rt.seats) + len(rt.network.remote), "connections": len(rt.connections),
                "containers": len(rt.containers.loaded), "servers": list(rt.network.server_list),
                "upstreams": rt.network.upstream_rows(),
                "central": rt.central_sync.status(),
                **rt.ports}

    def container_rows(self) -> list[dict[str, Any]]:
        rt = self.rt
        rows: list[dict[str, Any]] = []
        for serial, ld in sorted(rt.containers.loaded.items()):
            if serial in rt.containers.external:
                continue  # token and cloud containers: their own rows below
            rows.append({"serial": serial, "kind": "soft", "status": ld.status.value,
                         "binding": ld.container.health.describe(), "items": len(ld.content.entries()),
                         "path": str(ld.path)})
        for path, problem in sorted(rt.containers.problems.items()):
            status = (ContainerStatus.BROKEN if problem.error.code is ErrorCode.REACTIVATION_REQUIRED
                      else ContainerStatus.INVALID)
            rows.append({"serial": Path(path).name.removesuffix(".lcsc"), "kind": "soft", "status": status.value,
                         "binding": problem.error.message, "items": None, "path": path})
        rows += rt.tokens.rows() + rt.cloud.rows()
        return rows

    def item_rows(self, firm: int | None = None) -> list[dict[str, Any]]:
        from licentia.containers import item_rows

        rt = self.rt
        now = int(time.time())
        rows: list[dict[str, Any]] = []
        for serial, ld in sorted(rt.containers.loaded.items()):
            for row in item_rows(ld.content, now):
                if firm is not None and row["firm_code"] != firm:
                    continue
                key = ItemKey(serial, row["firm_code"], row["product_code"], row["item_id"])
                row = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in row.items()}
                row["container"] = serial
                row["in_use"] = rt.seats.used(key)
                row["handles"] = sum(1 for s in rt.seats.sessions(key))
                rows.append(row)
        return rows
