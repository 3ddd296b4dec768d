"""Borrowing, both sides (docs/admin.md, "Borrowing a seat"; the decisions are
`licentia.core.borrow`'s):

- the server lends: `borrow.take` (a client runtime online, or an administrator with a
  request file) takes a seat of one of its soft containers' items in the seat table, held
  by no program (`borrow:ID`, never timed out), signs a borrow certificate with that
  container's key and records the borrow in `state/borrows.json` before it answers;
  `borrow.give-back` frees the seat on the client container's signed return, once; the
  seat comes back by itself when the borrow's time ends.
- the client borrows: `borrow` makes a request signed by its own soft container, asks the
  server (or writes the request for the offline way), and imports the certificate into
  that container as an item for this machine alone that ends with the borrow;
  `borrow.return` removes the item first, then tells the server (or writes the return
  file); `borrow.list` shows both sides. Expired borrowed items leave the container.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import secrets
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from licentia.core import borrow as B
from licentia.core.evaluate import evaluate
from licentia.core.seats import Event, Holder, SeatTable, Station
from licentia.fsutil import atomic_write
from licentia.model import AccessMode, ErrorCode, ItemRequest, LicentiaError, SessionKind
from licentia.protocol.frames import Message
from licentia.runtime.config import RuntimeConfig
from licentia.runtime.events import Events
from licentia.runtime.home import RuntimeHome
from licentia.runtime.licenses import Loaded
from licentia.runtime.network import NetworkClient, better
from licentia.runtime.searchlist import normalise
from licentia.runtime.tokens import RuntimeContainers
from licentia.runtime.usagelog import UsageLog

HOLDER_PREFIX = "borrow:"  # the seat table's client id of a lent seat: borrow:ID
RETRY_RETURNS = 30.0  # seconds between attempts to tell a server of returns it has not confirmed


def is_borrowed_seat(client_id: str | None) -> bool:
    return client_id is not None and client_id.startswith(HOLDER_PREFIX)


class BorrowHost(Protocol):
    home: RuntimeHome
    config: RuntimeConfig
    seats: SeatTable
    containers: RuntimeContainers
    network: NetworkClient
    events: Events
    log: UsageLog | None
    host_name: str

    def after_release(self, events: tuple[Event, ...]) -> None: ...

    def _seats_changed(self) -> None: ...

    def _note_problem(self, text: str) -> None: ...


class Borrowing:
    def __init__(self, rt: BorrowHost) -> None:
        self.rt = rt
        self.book: dict[str, B.Record] = {}
        self.handles: dict[str, int] = {}  # borrow id -> seat handle (server side)
        self._lock = asyncio.Lock()
        self._last_retry = 0.0
        self._held_cache: dict[str, tuple[Any, list[tuple[int, Any, dict[str, Any]]]]] = {}

    # ================================================================== files

    @property
    def book_path(self) -> Path:
        return self.rt.home.state / "borrows.json"

    @property
    def returns_dir(self) -> Path:
        return self.rt.home.state / "borrow-returns"

    @property
    def sources_path(self) -> Path:
        return self.rt.home.state / "borrowed-from.json"

    def _save_book(self) -> None:
        atomic_write(self.book_path, json.dumps(B.book_to_doc(self.book), indent=1).encode())

    def _sources(self) -> dict[str, str]:
        try:
            doc = json.loads(self.sources_path.read_text())
            return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            return {}

    def _note(self, fields: dict[str, Any]) -> None:
        if self.rt.log is not None:
            self.rt.log.note(fields)

    # ================================================================== start

    def start(self, now: float) -> None:
        """Read the book; every active borrow holds its seat (restored from the seat
        snapshot, or taken anew); seats of borrows that ended are freed."""
        rt = self.rt
        try:
            self.book = B.book_from_doc(json.loads(self.book_path.read_bytes()))
        except FileNotFoundError:
            self.book = {}
        except (ValueError, LicentiaError) as exc:
            broken = self.book_path.with_suffix(f".broken-{int(now)}")
            with contextlib.suppress(OSError):
                self.book_path.rename(broken)
            rt._note_problem(f"the borrow book could not be read ({exc}); moved to {broken.name}")
            self.book = {}
        for sess in rt.seats.sessions():
            cid = sess.holder.client_id
            if not is_borrowed_seat(cid):
                continue
            assert cid is not None
            rec = self.book.get(cid[len(HOLDER_PREFIX):])
            if rec is not None and rec.state == B.ACTIVE:
                self.handles[rec.borrow_id] = sess.handle
                rt.seats.keep_client(cid)
            else:
                rt.after_release(rt.seats.force_release(sess.handle, now).events)
        for rec in self.book.values():
            if rec.state == B.ACTIVE and rec.borrow_id not in self.handles:
                ld = rt.containers.loaded.get(rec.container)
                entry = ld.content.firms.get(rec.firm) if ld is not None else None
                item = entry.items.get(rec.item) if entry is not None else None
                try:
                    self._take_seat(rec, item.item.quantity if item is not None else None, now)
                except LicentiaError as exc:
                    rt._note_problem(f"borrow {rec.borrow_id}: its seat could not be taken again ({exc.message})")

    def _take_seat(self, rec: B.Record, quantity: int | None, now: float) -> None:
        from licentia.core.seats import ItemKey

        cid = HOLDER_PREFIX + rec.borrow_id
        grant = self.rt.seats.access(
            key=ItemKey(rec.container, rec.firm, rec.product, rec.item), quantity=quantity,
            mode=AccessMode.PER_ACCESS, station=Station(cid),
            holder=Holder.network(cid, program="borrowed", user=rec.user, host=rec.host),
            local=False, session=SessionKind.LOCAL, now=now)
        self.rt.seats.keep_client(cid)
        self.handles[rec.borrow_id] = grant.handle
        self.rt.events.log_events(grant.events)
        self.rt._seats_changed()

    def _free_seat(self, borrow_id: str, now: float) -> None:
        handle = self.handles.pop(borrow_id, None)
        self.rt.seats.keep_client(HOLDER_PREFIX + borrow_id, False)
        if handle is not None and handle in self.rt.seats:
            self.rt.after_release(self.rt.seats.release(handle, now).events)

    # ================================================================== server: lending

    async def op_take(self, conn: Any, msg: Message) -> Message:
        ident = conn.ident
        if ident is None or not (ident.kind == "runtime" or (ident.kind == "admin" and ident.local)):
            raise LicentiaError(ErrorCode.ACCESS_DENIED, "a seat is lent to a client runtime, or by an administrator "
                                "on the server's machine", "borrow with `licentia borrow` on the client machine")
        data = msg["request"]
        if type(data) is not bytes:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "borrow.take: field request must be bytes")
        req = B.read_request(data)
        async with self._lock:
            now = int(time.time())
            fresh = req.borrow_id not in self.book
            cert = self.lend(req, now)
            try:  # on disk before the answer leaves
                await asyncio.get_running_loop().run_in_executor(None, self._save_book)
            except OSError as exc:
                if fresh:
                    self.book.pop(req.borrow_id, None)
                    self._free_seat(req.borrow_id, now)
                raise LicentiaError(ErrorCode.INTERNAL, f"the borrow could not be recorded ({exc}); nothing was lent",
                                    "check the runtime home's disk") from None
        return {"id": msg["id"], "ok": True, "certificate": cert, "borrow": req.borrow_id,
                "until": self.book[req.borrow_id].until}

    def lend(self, req: B.BorrowRequest, now: int) -> bytes:
        """Lend a seat for `req` (the book is saved by the caller before it answers)."""
        rt = self.rt
        known = self.book.get(req.borrow_id)
        if known is not None:  # the same request again (an answer lost on the way): the same answer
            if known.client_key != req.client_key:
                raise LicentiaError(ErrorCode.BORROW_INVALID, "a borrow with this id was lent to another container")
            if known.state != B.ACTIVE:
                raise LicentiaError(ErrorCode.BORROW_ENDED, f"borrow {req.borrow_id} has ended ({known.state})")
            return known.certificate
        if rt.config.borrow_cap < 0:
            raise LicentiaError(ErrorCode.BORROW_NOT_ALLOWED, "this server lends no seat (borrow cap -1)",
                                "ask the administrator to set [borrow] cap in runtime.toml")
        cap = rt.config.borrow_cap or None
        best: LicentiaError | None = None
        for cand in rt.containers.candidates(req.firm_code, req.product_code):
            ld, entry = cand.loaded, cand.entry
            try:
                if rt.containers.kind_of(ld.serial) != "soft" or not ld.content.sign_key:
                    raise LicentiaError(ErrorCode.BORROW_NOT_ALLOWED,
                                        f"container {ld.serial} is not a soft container; its seats are not lent")
                until = B.decide(entry.item, req.seconds, cap, now)
                evaluate(entry.item, entry.state, ItemRequest(), ld.content.clock, now).raise_if_refused()
                rec = B.Record(req.borrow_id, ld.serial, req.firm_code, req.product_code, entry.item_id,
                               req.client_serial, req.client_key, req.client_item, req.host, req.user, now, until, b"")
                self._take_seat(rec, entry.item.quantity, now)
            except LicentiaError as exc:
                best = better(best, exc)
                continue
            cert = B.issue_certificate(B.Certificate(
                req.borrow_id, entry.license, ld.content.firms[req.firm_code].firm_public_key, ld.serial,
                rt.host_name, entry.item_id, req.client_serial, req.client_key, req.client_item, now, until,
                req.host, req.user), ld.content.sign_key)
            self.book[req.borrow_id] = replace(rec, certificate=cert)
            self._note({"event": "borrow", "borrow": req.borrow_id, "firm": req.firm_code,
                        "product": req.product_code, "container": ld.serial, "item": entry.item_id,
                        "user": req.user, "host": req.host, "client": req.client_serial, "until": until})
            return cert
        if best is None:
            raise LicentiaError(ErrorCode.ENTRY_NOT_FOUND,
                                f"this server holds no item of {req.firm_code}:{req.product_code}")
        raise LicentiaError(best.code, best.message, best.hint)

    async def op_give_back(self, conn: Any, msg: Message) -> Message:
        data = msg["receipt"]
        if type(data) is not bytes:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "borrow.give-back: field receipt must be bytes")
        ret = B.read_return(data)
        now = int(time.time())
        async with self._lock:
            rec = self.book.get(ret.borrow_id)
            if rec is None:
                raise LicentiaError(ErrorCode.BORROW_NOT_FOUND, f"this server lent no borrow {ret.borrow_id}")
            rec, freed = B.give_back(rec, ret, now)
            if freed:
                self.book[rec.borrow_id] = rec
                await asyncio.get_running_loop().run_in_executor(None, self._save_book)
                self._free_seat(rec.borrow_id, now)
                self._note({"event": "borrow-return", "borrow": rec.borrow_id, "firm": rec.firm,
                            "product": rec.product, "container": rec.container, "item": rec.item,
                            "user": rec.user, "host": rec.host, "client": rec.client_serial, "until": rec.until})
        return {"id": msg["id"], "ok": True, "freed": freed, "state": rec.state}

    # ================================================================== client: borrowing

    def _client_container(self, serial: str | None) -> Loaded:
        rt = self.rt
        for s, ld in rt.containers.loaded.items():
            if (serial is None or s == serial) and rt.containers.kind_of(s) == "soft" and ld.content.sign_key:
                return ld
        if serial is not None:
            raise LicentiaError(ErrorCode.BORROW_NO_CONTAINER, f"{serial} is not a soft container of this runtime")
        raise LicentiaError(ErrorCode.BORROW_NO_CONTAINER, "this machine has no soft container to hold a borrowed seat")

    @staticmethod
    def _local(conn: Any) -> Any:
        ident = conn.ident
        if ident is None or not ident.local or ident.kind not in ("admin", "program"):
            raise LicentiaError(ErrorCode.ACCESS_DENIED, "borrowing is asked of the runtime of the borrowing machine")
        return ident

    async def op_borrow(self, conn: Any, msg: Message) -> Message:
        ident = self._local(conn)
        rt = self.rt
        now = int(time.time())
        ld = self._client_container(msg.get("container"))
        firm, product, seconds = msg["firm"], msg["product"], msg["seconds"]
        req = B.BorrowRequest(secrets.token_hex(16), ld.serial, ld.public_key,
                              B.client_item_id(ld.content.firms.get(firm)), firm, product, seconds,
                              rt.host_name, ident.user or "", now)
        data = B.make_request(req, ld.content.sign_key)
        if msg.get("offline"):
            return {"id": msg["id"], "ok": True, "request": data, "borrow": req.borrow_id}
        server = msg.get("server")
        servers = [normalise(server)] if server else rt.network.servers_to_ask_now()
        if not servers:
            raise LicentiaError(ErrorCode.SERVER_NOT_FOUND, "no network server to borrow from",
                                "name one with --server HOST, or add it with `licentia server add HOST`")
        best: LicentiaError | None = None
        for address in servers:
            try:
                reply = await rt.network.upstream(address).request("borrow.take", request=data)
            except LicentiaError as exc:
                best = better(best, exc)
                continue
            cert = reply.get("certificate")
            if type(cert) is not bytes:
                best = better(best, LicentiaError(ErrorCode.BORROW_INVALID, f"server {address} sent no certificate"))
                continue
            sources = self._sources()
            sources[req.borrow_id] = address
            atomic_write(self.sources_path, json.dumps(sources).encode())
            return await self._import(msg["id"], ld, cert, server=address)
        assert best is not None
        raise LicentiaError(best.code, best.message, best.hint)

    async def op_import(self, conn: Any, msg: Message) -> Message:
        self._local(conn)
        data = msg["certificate"]
        if type(data) is not bytes or not B.is_certificate(data):
            raise LicentiaError(ErrorCode.BORROW_INVALID, "this is not a borrow certificate")
        client_serial = str(B.peek_certificate(data).get("client_serial", ""))
        ld = self._client_container(client_serial or None)
        return await self._import(msg["id"], ld, data, server=None)

    async def _import(self, rid: int, ld: Loaded, data: bytes, *, server: str | None) -> Message:
        now = int(time.time())
        firm_key = B.embedded_firm_key(data)

        def put(content: Any) -> tuple[Any, tuple[B.Certificate, Any]]:
            new, cert = B.import_certificate(content, data, firm_key, now)
            return new, (cert, new)

        cert, content = await ld.writer.submit(put)
        firm = next(fc for fc, f in content.firms.items() if cert.client_item in f.items)
        product = content.firms[firm].items[cert.client_item].item.product_code
        self._note({"event": "borrow", "borrow": cert.borrow_id, "firm": firm, "product":
                    product, "container": ld.serial, "item": cert.client_item, "user": cert.user,
                    "host": cert.host, "server": server or cert.server_host, "until": cert.until, "side": "client"})
        return {"id": rid, "ok": True, "borrow": cert.borrow_id, "container": ld.serial, "item": cert.client_item,
                "firm": firm, "product": product, "until": cert.until, "server": server or cert.server_host}

    async def op_return(self, conn: Any, msg: Message) -> Message:
        self._local(conn)
        bid: str = msg["borrow"]
        now = int(time.time())
        pending, done = self.returns_dir / f"{bid}.return", self.returns_dir / f"{bid}.done"
        if done.exists():
            return {"id": msg["id"], "ok": True, "borrow": bid, "already": True, "confirmed": True}
        if pending.exists():
            receipt = pending.read_bytes()
        else:
            ld = self._holder_of(bid)
            if ld is None:
                raise LicentiaError(ErrorCode.BORROW_NOT_FOUND, f"no borrowed seat {bid} is held here")
            serial, key = ld.serial, ld.public_key
            firm, product = next(((fc, e.item.product_code) for fc, e, f in B.held(ld.content)
                                  if f.get("borrow_id") == bid), (0, 0))

            def remove(content: Any) -> tuple[Any, tuple[bytes, dict[str, Any]] | None]:
                content, fields = B.remove_borrowed(content, bid)
                if fields is None:
                    return content, None
                return content, (B.make_return(B.Return(bid, serial, key, now), content.sign_key), fields)

            # the item leaves the container first: from then on no program here can use it
            removed = await ld.writer.submit(remove)
            if removed is None:
                raise LicentiaError(ErrorCode.BORROW_NOT_FOUND, f"no borrowed seat {bid} is held here")
            receipt, fields = removed
            self.returns_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(pending, receipt)
            self._note({"event": "borrow-return", "borrow": bid, "container": serial, "side": "client",
                        "firm": firm, "product": product, "user": fields.get("user", ""),
                        "host": fields.get("host", ""), "until": fields.get("until")})
        if msg.get("offline"):
            return {"id": msg["id"], "ok": True, "borrow": bid, "receipt": receipt, "confirmed": False}
        confirmed, why = await self._tell_server(bid, receipt)
        return {"id": msg["id"], "ok": True, "borrow": bid, "confirmed": confirmed, "receipt": receipt,
                **({"why": why} if why else {})}

    def _held(self, serial: str, ld: Loaded) -> list[tuple[int, Any, dict[str, Any]]]:
        """`B.held(ld.content)`, worked out again only when the content changed (the
        expiry check asks every second; a server's containers may hold many items)."""
        known = self._held_cache.get(serial)
        if known is not None and known[0] is ld.content:
            return known[1]
        found = B.held(ld.content)
        self._held_cache[serial] = (ld.content, found)
        return found

    def _holder_of(self, bid: str) -> Loaded | None:
        for s, ld in self.rt.containers.loaded.items():
            if self.rt.containers.kind_of(s) == "soft" and any(f.get("borrow_id") == bid
                                                                for _, _, f in B.held(ld.content)):
                return ld
        return None

    async def _tell_server(self, bid: str, receipt: bytes) -> tuple[bool, str]:
        rt = self.rt
        source = self._sources().get(bid)
        servers = [source] if source else rt.network.servers_to_ask_now()
        why = "no server to tell"
        for address in servers:
            try:
                await rt.network.upstream(address).request("borrow.give-back", receipt=receipt)
            except LicentiaError as exc:
                why = f"{address}: {exc.message}"
                continue
            with contextlib.suppress(OSError):
                (self.returns_dir / f"{bid}.return").rename(self.returns_dir / f"{bid}.done")
            return True, ""
        return False, why

    def op_list(self, conn: Any, msg: Message) -> Message:
        held: list[dict[str, Any]] = []
        for s, ld in self.rt.containers.loaded.items():
            for fc, entry, f in B.held(ld.content):
                held.append({"borrow": f.get("borrow_id"), "container": s, "firm": fc, "item": entry.item_id,
                             "product": entry.item.product_code, "until": f.get("until"),
                             "server": f.get("server_host"), "borrowed_at": f.get("borrowed_at")})
        lent = [{"borrow": r.borrow_id, "container": r.container, "firm": r.firm, "product": r.product,
                 "item": r.item, "client": r.client_serial, "host": r.host, "user": r.user,
                 "borrowed_at": r.borrowed_at, "until": r.until, "state": r.state, "ended_at": r.ended_at,
                 "handle": self.handles.get(r.borrow_id)} for r in self.book.values()]
        pending = sorted(p.stem for p in self.returns_dir.glob("*.return")) if self.returns_dir.is_dir() else []
        return {"id": msg["id"], "ok": True, "held": held, "lent": lent, "unconfirmed_returns": pending}

    # ================================================================== time

    async def tick(self) -> None:
        """Borrows whose time ended: seats freed (server), items removed (client); returns the
        server has not confirmed are offered again now and then."""
        rt = self.rt
        now = int(time.time())
        due = B.due(self.book, now)
        if due:
            async with self._lock:
                for bid in due:
                    rec = self.book[bid] = B.expire(self.book[bid], now)
                    self._free_seat(bid, now)
                    self._note({"event": "borrow-expired", "borrow": bid, "firm": rec.firm, "product": rec.product,
                                "container": rec.container, "item": rec.item, "user": rec.user, "host": rec.host,
                                "client": rec.client_serial, "until": rec.until})
                await asyncio.get_running_loop().run_in_executor(None, self._save_book)
        for s, ld in list(rt.containers.loaded.items()):
            for fc, entry, f in self._held(s, ld):
                until = f.get("until")
                if type(until) is int and B.ended(until, now, ld.content.clock.high_water):
                    bid = str(f.get("borrow_id"))
                    await ld.writer.submit(functools.partial(_remove, bid))
                    self._note({"event": "borrow-expired", "borrow": bid, "firm": fc,
                                "product": entry.item.product_code, "container": s, "item": entry.item_id,
                                "user": f.get("user", ""), "host": f.get("host", ""), "until": until,
                                "side": "client"})
        if self.returns_dir.is_dir() and time.monotonic() - self._last_retry > RETRY_RETURNS:
            self._last_retry = time.monotonic()
            for p in sorted(self.returns_dir.glob("*.return")):
                await self._tell_server(p.stem, p.read_bytes())


def _remove(borrow_id: str, content: Any) -> tuple[Any, dict[str, Any] | None]:
    return B.remove_borrowed(content, borrow_id)


__all__ = ["HOLDER_PREFIX", "Borrowing", "is_borrowed_seat"]
