"""Grants on this machine's containers: access, release, decrement and check, judged in
memory against the cached container content (`licentia.runtime.licenses`) and counted in
the seat table (`licentia.core.seats`). Token and cloud containers are their collaborators'
(`tokens`, `cloud`); seats on network servers the network-client role's (`network`).

One handler per request. The plain access (a program's, no options but its mode and the
SDK's challenge) is its handler's first branch: it grants the first candidate as decided
for that second and generation of the containers (`plan`), without judging again; any
other case, and any refusal, takes the rest of the handler."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import msgpack

from licentia.core.evaluate import status_of, valid_until
from licentia.core.seats import (
    ItemKey,
    ReleaseReason,
    SeatRefused,
    SeatTable,
    Session,
    grant_event,
    release_event,
)
from licentia.model import AccessMode, ErrorCode, ItemRequest, LicentiaError, parse_version
from licentia.protocol.frames import Message
from licentia.runtime.acl import AccessGate
from licentia.runtime.cloud import RuntimeCloud
from licentia.runtime.config import RuntimeConfig
from licentia.runtime.events import CONTAINER_REMOVED, ITEM_CHANGED, Events
from licentia.runtime.ident import Ident, acting_for
from licentia.runtime.licenses import Loaded, decrement_op, first_use_op
from licentia.runtime.network import REMOTE_BASE, NetworkClient, better
from licentia.runtime.proofs import ProofKeys, make_proof
from licentia.runtime.replies import frame, map_head_id, ok_frame, packed_bin_fields, packed_uint
from licentia.runtime.tokens import RuntimeContainers, RuntimeTokens
from licentia.runtime.usagelog import LineTemplate, UsageLog

MODES: Final = {m.value: m for m in AccessMode}
_time: Final = time.time  # held, not looked up in `time` on every grant and release

Reply = Message | bytes | Awaitable[Message | bytes]

Tail = tuple[Any, Loaded, bytes, bytes, int | None]  # see `LocalGrants._tail`
# (second, containers' generation, container, item entry, seat key, quantity): see `LocalGrants.plan`
Plan = tuple[int, int, Loaded, Any, ItemKey, int | None]


class Client(Protocol):
    """The connection a request came on, as the handlers see it."""

    ident: Ident | None
    listener: str
    peer: tuple[int, int, int] | None
    peer_host: str
    proof_keys: ProofKeys

    def log_template(self, log: UsageLog, ev: Any, granted: bool) -> LineTemplate: ...


class SnapshotSchedule(Protocol):
    """When the seat snapshot is written (`licentia.runtime.housekeeping`)."""

    snapshot_pending: bool  # one is due and not begun: a change now is in it

    def seats_changed(self) -> None: ...


class GrantsHost(Protocol):
    """What the grants use of the runtime."""

    config: RuntimeConfig
    host_name: str
    seats: SeatTable
    containers: RuntimeContainers
    tokens: RuntimeTokens
    cloud: RuntimeCloud
    network: NetworkClient
    events: Events
    log: UsageLog | None
    gate: AccessGate | None  # the access list in force (`licentia.runtime.aclwatch`), or None

    @property
    def housekeeping(self) -> SnapshotSchedule: ...

    def _seats_changed(self) -> None: ...

    def after_release(self, events: tuple[Any, ...]) -> None: ...


class LocalGrants:
    def __init__(self, rt: GrantsHost) -> None:
        self.rt = rt
        # the runtime's own for its life (the seat table is not: a restored snapshot replaces
        # it), held here as what it is: the calls on the plain path are direct
        self.events: Events = rt.events
        self.containers: RuntimeContainers = rt.containers
        self.schedule: SnapshotSchedule = rt.housekeeping
        self.local_first = rt.config.order in ("local", "local-first")  # where a plain access looks first
        self._plans: dict[tuple[int, int, bool], Plan] = {}
        self._requests: dict[tuple[int, str | None, int | None, bool], ItemRequest] = {}
        # encoded grant replies without id and handle, per item state (see `grant_frame`)
        self._tails: dict[tuple[str, int, int, str, bool], Tail] = {}
        self._pack = msgpack.Packer().pack  # the loop's own: a Packer is not thread-safe
        self.denials: dict[int, int] = {}  # seats refused, by error code (/metrics)

    # ================================================================== access

    def op_access(self, conn: Client, msg: Message) -> Reply:
        ident = conn.ident
        assert ident is not None
        n = len(msg)
        if ident.kind == "program" and (n == 4 or (n == 5 and "mode" in msg) or (
                (n == 7 or n == 8) and "mode" in msg and "kx" in msg and "nonce" in msg and (n == 7 or "keyed" in msg))) \
                and (self.local_first or conn.listener == "network"):
            reply = self._plain_access(conn, ident, msg)
            if reply is not None:
                return reply
        ident = acting_for(ident, msg)
        if ident.kind == "admin" and conn.peer is None:
            raise LicentiaError(ErrorCode.ACCESS_DENIED, "admin connections do not take licenses")
        mode = MODES[msg.get("mode", "per-access")]
        request = self.request_for(msg.get("feature", 0), msg.get("version"), msg.get("release_date"), ident.in_vm)
        # a server never forwards what reaches it over the network
        where = "local" if conn.listener == "network" else msg.get("where") or self.rt.config.order
        keys = conn.proof_keys
        network = self.rt.network
        address = conn.peer_host if conn.listener == "network" else ""
        if where in ("local", "local-first"):
            fallback = None
            if where == "local-first" and network.may_forward(msg):
                def fallback(exc: LicentiaError) -> Reply:
                    return network.access(msg, ident, mode, first_error=exc)
            try:
                return self.access_local(msg, ident, mode, request, keys, address, fallback=fallback)
            except LicentiaError as exc:
                if fallback is None:
                    raise
                return fallback(exc)
        if where == "network":
            return network.access(msg, ident, mode, first_error=None)
        return network.access(msg, ident, mode, first_error=None,
                              then_local=lambda: self.access_local(msg, ident, mode, request, keys))

    def _plain_access(self, conn: Client, ident: Ident, msg: Message) -> Message | bytes | None:
        """The plain access: the seat counted on the planned candidate, or None (nothing
        changed) when there is no plan or the seat table refuses."""
        rt = self.rt
        now = _time()
        inow = int(now)
        firm, product = msg["firm"], msg["product"]
        plan = self._plans.get((firm, product, ident.in_vm))
        if plan is None or plan[0] != inow or plan[1] != self.containers.generation:
            plan = self.plan(firm, product, ident.in_vm, inow)
            if plan is None:
                return None
        _, _, ld, entry, key, quantity = plan
        mode = MODES[msg.get("mode", "per-access")]
        gate = rt.gate
        decision = None
        if gate is not None:
            groups: frozenset[str] | None = frozenset()
            if gate.directory is not None and gate.acl.needs_groups(key):
                groups = gate.directory.cached(ident.holder.user, time.monotonic())
                if groups is None:
                    return None  # the rest of the handler asks the directory
            try:
                decision = gate.check(rt.seats, key=key, quantity=quantity, mode=mode, station=ident.station,
                                      holder=ident.holder, address=conn.peer_host if conn.listener == "network"
                                      else "", groups=groups, now=now)
            except LicentiaError:
                return None
        try:
            grant = rt.seats.access(key=key, quantity=quantity, mode=mode, station=ident.station,
                                    holder=ident.holder, local=ident.local, session=ident.session, now=now)
        except LicentiaError:
            return None  # the rest of the handler logs the refusal and answers it
        ev = grant_event(grant)
        handle = grant.session.handle
        events = self.events
        log = events.log
        assert log is not None
        extra = gate.granted(grant, decision) if gate is not None else None
        if extra is None:
            log.record_in(conn.log_template(log, ev, True), ev)
        else:
            log.record_in(log.template(ev, extra), ev)
        events.remember(ev)
        if ident.pid is not None and ident.holder.process is None:
            events.net_pids[handle] = ident.pid
        schedule = self.schedule
        if not schedule.snapshot_pending:
            schedule.seats_changed()
        return self.grant_frame(msg, ld, entry, handle, mode, ident.local, conn.proof_keys)

    def plan(self, firm: int, product: int, in_vm: bool, now: int) -> Plan | None:
        """What `access_local` decides before counting, for a plain access at second `now`,
        when that is to grant the first candidate without a write; kept for that second and
        generation of the containers (a changed content is a new generation)."""
        containers = self.containers
        candidates = containers.candidates(firm, product, None)
        if not candidates:
            return None
        cand = candidates[0]
        ld, entry = cand.loaded, cand.entry
        if ld.serial in containers.external:
            return None
        verdict, write = containers.judge(cand, self.request_for(0, None, None, in_vm), now)
        if verdict.error is not None or write:
            return None
        if len(self._plans) > 1000:
            self._plans.clear()
        plan = self._plans[(firm, product, in_vm)] = (now, containers.generation, ld, entry, cand.key,
                                                       entry.item.quantity)
        return plan

    def request_for(self, feature: int, version: str | None, release_date: int | None, in_vm: bool) -> ItemRequest:
        key = (feature, version, release_date, in_vm)
        request = self._requests.get(key)
        if request is None:
            if len(self._requests) > 1000:
                self._requests.clear()
            request = self._requests[key] = ItemRequest(
                feature_code=feature, version=parse_version(version) if version else None,
                release_date=release_date, in_vm=in_vm)
        return request

    def access_local(self, msg: Message, ident: Ident, mode: AccessMode, request: ItemRequest,
                     keys: ProofKeys | None = None, address: str = "",
                     groups: tuple[frozenset[str] | None] | None = None,
                     fallback: Callable[[LicentiaError], Reply] | None = None) -> Reply:
        """`address`: the client's address for the access list (the connection's peer on the
        network port, "" for programs on this machine); `groups`: the user's directory groups
        once asked (a 1-tuple), None before; `fallback`: what a refusal turns into when the
        decision waits for the directory (local-first: the network), as the caller does
        with a refusal raised at once."""
        rt = self.rt
        firm, product = msg["firm"], msg["product"]
        candidates = rt.containers.candidates(firm, product, msg.get("container"))
        if not candidates:
            refused = rt.cloud.refusal(firm, product, msg.get("container"))
            if refused is not None:
                raise refused
            where = f" in container {msg['container']}" if msg.get("container") else ""
            raise LicentiaError(ErrorCode.ENTRY_NOT_FOUND,
                                f"no license for firm {firm}, product {product} on {rt.host_name}{where}")
        now = time.time()
        inow = int(now)
        best: LicentiaError | None = None
        seats = rt.seats
        log = rt.log
        assert log is not None
        judge = rt.containers.judge
        gate = rt.gate
        decision = None
        for cand in candidates:
            ld, entry = cand.loaded, cand.entry
            verdict, write = judge(cand, request, inow)
            if verdict.error is not None:
                best = better(best, LicentiaError(verdict.error, f"container {ld.serial}: {verdict.reason}"))
                continue
            try:
                if gate is not None:
                    user_groups: frozenset[str] | None = frozenset()
                    if gate.directory is not None and gate.acl.needs_groups(cand.key):
                        if groups is None:
                            user_groups = gate.directory.cached(ident.holder.user, time.monotonic())
                            if user_groups is None:  # ask the directory off the loop, then decide
                                return self._access_after_groups(gate, cand.key, msg, ident, mode, request, keys,
                                                                 address, fallback)
                        else:
                            user_groups = groups[0]
                    decision = gate.check(seats, key=cand.key, quantity=entry.item.quantity, mode=mode,
                                          station=ident.station, holder=ident.holder, address=address,
                                          groups=user_groups, now=now)
                grant = seats.access(key=cand.key, quantity=entry.item.quantity, mode=mode, station=ident.station,
                                     holder=ident.holder, local=ident.local, session=ident.session, now=now)
            except SeatRefused as exc:
                log.record(exc.event)
                rt.events.remember(exc.event)
                code = int(exc.code)
                self.denials[code] = self.denials.get(code, 0) + 1
                best = better(best, exc)
                continue
            ev = grant.events[0]
            extra = gate.granted(grant, decision) if gate is not None else None
            log.record_in(log.template(ev, extra), ev)
            rt.events.remember(ev)
            if ident.pid is not None and ident.holder.process is None:
                rt.events.net_pids[grant.handle] = ident.pid
            rt._seats_changed()
            if ld.serial in rt.containers.external:  # a token proves it is here; central counts cloud seats
                if ld.serial in rt.tokens.held:
                    return rt.tokens.grant(msg, ld, entry.item_id, grant.handle, mode, request, inow, ident.local,
                                           write)
                return rt.cloud.grant(msg, ld, entry, grant.handle, mode, ident, ident.local)
            if write:
                return self._grant_durably(msg, ld, entry.item_id, grant.handle, mode, request, inow, ident.local,
                                           keys)
            return self.grant_frame(msg, ld, entry, grant.handle, mode, ident.local, keys)
        assert best is not None
        raise best

    async def _access_after_groups(self, gate: AccessGate, key: Any, msg: Message, ident: Ident, mode: AccessMode,
                                   request: ItemRequest, keys: ProofKeys | None, address: str,
                                   fallback: Callable[[LicentiaError], Reply] | None) -> Message | bytes:
        groups = await gate.groups_async(key, ident.holder.user, time.monotonic())
        try:
            reply = self.access_local(msg, ident, mode, request, keys, address, (groups,))
        except LicentiaError as exc:
            if fallback is None:
                raise
            reply = fallback(exc)
        if isinstance(reply, dict | bytes):
            return reply
        return await reply

    async def _grant_durably(self, msg: Message, ld: Loaded, item_id: int, handle: int, mode: AccessMode,
                             request: ItemRequest, now: int, local: bool, keys: ProofKeys | None = None) -> Message:
        rt = self.rt
        try:
            entry = await ld.writer.submit(first_use_op(msg["firm"], item_id, request, now))
        except LicentiaError:
            if handle in rt.seats:
                rel = rt.seats.release(handle, time.time())
                rt.events.log_events(rel.events)
                rt._seats_changed()
            raise
        if handle not in rt.seats:
            raise LicentiaError(ErrorCode.INVALID_HANDLE, "the license was released while it was being granted")
        return self.grant_reply(msg, ld, entry, handle, mode, local, keys)

    # ================================================================== grant replies

    def grant_reply(self, msg: Message, ld: Loaded, entry: Any, handle: int, mode: AccessMode,
                    local: bool, keys: ProofKeys | None = None) -> Message:
        state = entry.state
        until = valid_until(entry.item, state)
        reply: Message = {
            "id": msg["id"], "ok": True, "handle": handle, "container": ld.serial, "item": entry.item_id,
            "location": "local" if local else "network", "server": self.rt.host_name, "mode": str(mode),
            "valid_until": until,
            "units": state.units_remaining, "license": entry.license, "container_key": ld.public_key,
        }
        if state.usage_started_at is not None:
            reply["usage_started_at"] = state.usage_started_at
        nonce = msg.get("nonce")
        if nonce:
            reply.update(self.proof(keys, ld, msg, handle, msg["firm"], entry.item_id, state.units_remaining, until))
        return reply

    def _tail(self, msg: Message, ld: Loaded, entry: Any, handle: int, mode: AccessMode,
              local: bool) -> Tail | Message:
        """The kept part of a grant reply (entry, container, map header, all but id and handle
        encoded, valid until), kept by container, item, mode and location while `entry`
        (immutable: a changed item is a new entry) is current; or the whole reply when it
        does not fit a fixmap."""
        ck = (ld.serial, msg["firm"], entry.item_id, mode, local)  # mode: a str (StrEnum), hashed as one
        hit = self._tails.get(ck)
        if hit is None or hit[0] is not entry or hit[1] is not ld:
            reply = self.grant_reply({"id": msg["id"]}, ld, entry, handle, mode, local)
            rest = {k: v for k, v in reply.items() if k != "id" and k != "handle"}
            if len(rest) > 13:  # the map header below holds up to 15 fields
                return reply
            if len(self._tails) > 1000:
                self._tails.clear()
            hit = self._tails[ck] = (entry, ld, map_head_id(len(rest) + 2), self._pack(rest)[1:],
                                     reply["valid_until"])
        return hit

    def grant_frame(self, msg: Message, ld: Loaded, entry: Any, handle: int, mode: AccessMode,
                    local: bool, keys: ProofKeys | None = None) -> Message | bytes:
        """`grant_reply` as a frame: the kept part (`_tail`) with the request id and handle;
        for a challenge that a connection's proof key answers, the proof fields after it
        (a MAC, or the signature that opens the key)."""
        if msg.get("nonce"):
            if keys is None or ld.serial in self.containers.external:
                return self.grant_reply(msg, ld, entry, handle, mode, local)
            hit = self._tail(msg, ld, entry, handle, mode, local)
            until = valid_until(entry.item, entry.state) if isinstance(hit, dict) else hit[4]
            proved = keys.prove(ld.content, msg, handle, msg["firm"], entry.item_id, entry.state.units_remaining,
                                until, ld.serial)
            count = 16 if isinstance(hit, dict) else len(proved) + (hit[2][0] & 0x0F)
            if isinstance(hit, dict) or count > 15:  # more than a fixmap holds
                reply = self.grant_reply({"id": msg["id"]}, ld, entry, handle, mode, local)
                reply.update(proved)
                return reply
            return frame(map_head_id(count), packed_uint(msg["id"]), b"\xa6handle", packed_uint(handle), hit[3],
                         packed_bin_fields(proved))
        hit = self._tail(msg, ld, entry, handle, mode, local)
        if isinstance(hit, dict):
            hit["handle"] = handle
            return hit
        return frame(hit[2], packed_uint(msg["id"]), b"\xa6handle", packed_uint(handle), hit[3])

    def proof(self, keys: ProofKeys | None, ld: Loaded, msg: Message, handle: int, firm: int, item_id: int,
              units: int | None, until: int | None) -> dict[str, bytes]:
        """The proof fields of an answer to `msg` (which carries a `nonce`): under the
        connection's proof keys for this runtime's soft containers; the container's
        signature for the others (a cloud container's key proves, as ever)."""
        if keys is not None and ld.serial not in self.rt.containers.external:
            return keys.prove(ld.content, msg, handle, firm, item_id, units, until, ld.serial)
        return {"proof": make_proof(ld.content, msg["nonce"], handle, firm, item_id, units, until)}

    # ================================================================== release, decrement, check

    def op_release(self, conn: Client, msg: Message) -> Message | bytes | Awaitable[Message]:
        own = conn.ident
        assert own is not None
        ident = own if own.kind != "runtime" else acting_for(own, msg)
        handle = msg["handle"]
        rt = self.rt
        if handle >= REMOTE_BASE:
            return rt.network.release(msg["id"], rt.network.held(handle, ident), ReleaseReason.PROGRAM)
        if ident.role == "admin" and handle in rt.seats and not ident.owns(rt.seats.get(handle).holder):
            rel = rt.seats.force_release(handle, time.time())  # logged as the administrator's release
            rt.after_release(rel.events)
            return ok_frame(packed_uint(msg["id"]))
        rel = rt.seats.release(handle, _time(), holder=ident.holder)
        ev = release_event(rel)
        events = self.events
        log = events.log
        assert log is not None
        if ev.holder is own.holder and ev.station is own.station:
            # a handle this connection took: its line differs from the last one only in
            # time, handle and seats in use (one re-attached after a restart may not)
            log.record_in(conn.log_template(log, ev, False), ev)
        else:
            log.record(ev)
        events.remember(ev)
        events.freed(handle)
        schedule = self.schedule
        if not schedule.snapshot_pending:
            schedule.seats_changed()
        return ok_frame(packed_uint(msg["id"]))

    def session_for(self, ident: Ident, handle: int) -> Session:
        rt = self.rt
        try:
            sess = rt.seats.get(handle)
        except LicentiaError:
            raise rt.events.not_held(handle) from None
        if ident.role != "admin" and not sess.holder.same_as(ident.holder):
            raise rt.events.not_held(handle)
        return sess

    def op_decrement(self, conn: Client, msg: Message) -> Message | Awaitable[Message | bytes]:
        ident = conn.ident
        assert ident is not None
        ident = acting_for(ident, msg)
        handle, units = msg["handle"], msg["units"]
        if units < 1:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "units to decrement must be 1 or more")
        rt = self.rt
        if handle >= REMOTE_BASE:
            return rt.network.forward(msg, rt.network.held(handle, ident), "decrement", units=units)
        sess = self.session_for(ident, handle)
        ld, _ = rt.containers.entry(sess.key.container, sess.key.firm_code, sess.key.item_id)
        if ld.serial in rt.tokens.held:
            return rt.tokens.decrement(msg, ld, sess, units)
        return self._decrement(msg, ld, sess, units, conn.proof_keys)

    def _decrement(self, msg: Message, ld: Loaded, sess: Session, units: int,
                   keys: ProofKeys | None = None) -> asyncio.Future[Message | bytes]:
        key = sess.key
        nonce = msg.get("nonce")

        def reply(remaining: int) -> Message | bytes:  # on the loop, once the decrement is on disk
            self.rt.events.log_decrement(sess, units, remaining)
            if not nonce:
                pack = self._pack
                return frame(b"\x83\xa2id", pack(msg["id"]), b"\xa2ok\xc3\xa5units", pack(remaining))
            out: Message = {"id": msg["id"], "ok": True, "units": remaining}
            if isinstance(nonce, bytes):
                entry = ld.content.firms[key.firm_code].items[key.item_id]
                until = valid_until(entry.item, entry.state)
                out["valid_until"] = until
                out.update(self.proof(keys, ld, msg, sess.handle, key.firm_code, key.item_id, remaining, until))
            return out

        fut: asyncio.Future[Message | bytes] = ld.writer.submit(
            decrement_op(key.firm_code, key.item_id, units, int(time.time())), reply)
        return fut

    def op_check(self, conn: Client, msg: Message) -> Message | Awaitable[Message]:
        ident = conn.ident
        assert ident is not None
        ident = acting_for(ident, msg)
        handle = msg["handle"]
        rt = self.rt
        if handle >= REMOTE_BASE:
            hold = rt.network.remote.get(handle)
            if hold is None or not hold.holder.same_as(ident.holder):
                return rt.events.gone_reply(msg["id"], handle)
            return rt.network.check(msg, hold)
        try:
            sess = self.session_for(ident, handle)
        except LicentiaError:
            return rt.events.gone_reply(msg["id"], handle)
        events = sorted(rt.events.handle_events.pop(handle, ()))
        key = sess.key
        ld = rt.containers.loaded.get(key.container)
        firm_entry = ld.content.firms.get(key.firm_code) if ld is not None else None
        entry = firm_entry.items.get(key.item_id) if firm_entry is not None else None
        if ld is None or entry is None:
            if CONTAINER_REMOVED not in events and ld is None:
                events.append(CONTAINER_REMOVED)
            return {"id": msg["id"], "ok": True, "valid": False, "events": events,
                    "reason": f"container {key.container} or its item {key.item_id} is gone"}
        verdict = status_of(entry.item, entry.state, ld.content.clock, int(time.time()))
        until = valid_until(entry.item, entry.state)
        reply: Message = {"id": msg["id"], "ok": True, "valid": verdict.ok, "valid_until": until,
                          "units": entry.state.units_remaining, "events": events}
        if not verdict.ok:
            reply["reason"] = verdict.reason
            reply["code"] = int(verdict.error or ErrorCode.INTERNAL)
        if ITEM_CHANGED in events:
            reply["license"] = entry.license
        nonce = msg.get("nonce")
        if nonce:
            if key.container in rt.tokens.held:
                return rt.tokens.prove_reply(reply, ld, nonce, handle, key.firm_code, key.item_id,
                                             entry.state.units_remaining, until)
            reply.update(self.proof(conn.proof_keys, ld, msg, handle, key.firm_code, key.item_id,
                                    entry.state.units_remaining, until))
        return reply

