"""Seats and unit counters of TMR items, kept in etcd.

A TMR front end holds nothing of its own that matters: who holds which seat and how many
units remain live in a 3-member etcd cluster (quorum 2), so two front ends can serve at
once and either can die. Every grant, release and decrement is one etcd transaction (the grants and releases of one
turn of the event loop travel together: `licentia.tmr.batch`).
The decisions are the core's (`licentia.core.seats.admit`, `licentia.core.evaluate.decrement`);
this module reads what they need, asks them, and stores the answer.

Keys (all under `prefix`, default `/licentia/tmr/v1/`; values are msgpack records with a
version, or decimal text):

    c/<client>                      the client runtime's lease id (hex); on that lease
    h/<handle>                      one granted handle: item, mode, station, holder, slot
                                    (all but the per-access grants of counted items)
    i/<item>/s/<slot>               a taken seat: a per-access grant's own record (its handle,
                                    item, station, holder), or "<handle> <client>" for a seat
                                    a h/ record names; on the holder's lease
    n/<number>                      the item a slot handle's item number names (no lease)
    i/<item>/p/<station>/<lease>    per-station share: [slot, handles]; on the client's lease
    i/<item>/u                      units remaining (decimal); no lease
    d/<client>/<request>            a decrement's receipt (units remaining after); client's lease
    x/<client>/<lease>              the client left (its lease is never put back); 60 s lease

A seat is a slot key `0 … quantity-1` taken by a transaction that compares its
`create_revision == 0`, so two front ends granting at once can never take one slot twice
and the quantity is never exceeded. Every key a client holds is attached to that client's
etcd lease, refreshed by its keep-alives: when a client runtime dies, etcd deletes its
handles and seats when the lease's time runs out, whichever front end it used.

A per-access grant of a counted item is one transaction putting one key, a random slot that
holds the grant's record; its handle names the item (by a number registered once under n/)
and the slot, so any front end finds it without a second key. Its release, through the
front end that granted it, is one transaction comparing the slot's record; elsewhere it
first reads the slot. Per-station and uncounted grants read the item's seats first and
keep their record under h/. A quantity lowered by an update takes effect as the seats above
it are released.

Per-station handles of one station share one seat per client lease: two client runtimes
claiming the same station each take one (never more seats than the quantity, only fewer
shared). Exclusive access is not offered by TMR items (223).

A lease etcd revoked while its client kept it alive (an outdated leader waking from a pause,
etcd before 3.4.24 and 3.5.8) is put back from etcd's history at the client's next
keep-alive, unless any of its keys was taken since (`keep_alive`).

When fewer than two members answer, every operation fails with error 130
(`REDUNDANCY_SERVER_MISSING`) after `op_timeout` seconds. A grant whose transaction was sent
but not answered may still be applied when the quorum returns; the store releases such
grants at its next operation, so no seat stays held by a handle no program was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions

from licentia.core.evaluate import decrement as core_decrement
from licentia.core.seats import (
    Grant,
    Holder,
    ItemKey,
    Release,
    ReleaseReason,
    Session,
    Station,
    admit,
    check_client_timeout,
)
from licentia.model import AccessMode, ErrorCode, ItemState, LicentiaError, ProductItem, SessionKind
from licentia.tmr.batch import TxnBatch
from licentia.tmr.records import (
    HANDLE_BITS,
    SLOT_INDEX_BITS,
    SLOT_RECORD,
    handle_record,
    item_number_of,
    key_segment,
    pack,
    range_end,
    session_from_record,
    session_from_slot,
    slot_handle,
    slot_parts,
    slot_record,
    station_segment,
    unknown_session,
    unpack,
)

__all__ = ["DEFAULT_PREFIX", "SeatStore", "StationShare"]

DEFAULT_PREFIX = "/licentia/tmr/v1/"
GRANTED_CACHE = 1 << 20  # handles a store remembers it granted (a cache)
REVOKED_MARGIN = 1.0  # seconds: a lease gone this long before its time was revoked, not expired
LEFT_MARK_TTL = 60  # seconds a client's leaving is remembered (its lease is never put back)
PUT_BACK_KEYS = 60  # a revoked lease with more keys than this is not put back (one transaction)
ALIVE_CACHE = 1 << 16  # leases a store remembers seeing alive (the oldest forgotten: not put back)
T = TypeVar("T")


class _Retry(Exception):
    """A compare failed because someone else changed the keys first: read again."""


@dataclass(frozen=True, slots=True)
class StationShare:
    """A station's per-station handles of an item: what `admit` reads of it."""

    per_station: int
    per_access: int = 0
    exclusive: int = 0


def _parse_endpoint(text: str) -> tuple[str, int]:
    """HOST:PORT or an etcd client URL http://HOST:PORT."""
    text = text.strip()
    if text.startswith("https://"):
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER, f"etcd endpoint {text!r}: TLS to etcd is not supported yet; use http://"
        )
    text = text.removeprefix("http://").rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"etcd endpoint {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class SeatStore:
    """Seats, handles and unit counters of TMR items in an etcd cluster.

    One per front end process; safe to share between the tasks of one event loop. Any
    number of stores (front ends) may work on the same cluster at once.

    `endpoints` are the members' client addresses (HOST:PORT or http://HOST:PORT); a member
    that fails or stays silent for `call_timeout` hands over to the next. With `count`, every
    grant and release also reads the item's seats in use (`Grant.used`, `Release.used`);
    without, they say -1 and a pair costs two small transactions, each changing one key."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        prefix: str = DEFAULT_PREFIX,
        call_timeout: float = 2.0,
        op_timeout: float = 8.0,
        count: bool = True,
    ) -> None:
        if not endpoints:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "name at least one etcd endpoint")
        self._endpoints = [_parse_endpoint(e) for e in endpoints]
        self._clients = [
            aetcd.Client(host=h, port=p, timeout=call_timeout) for h, p in self._endpoints
        ]
        # the hot transactions (grants and releases of slots) go out in batches, one per member
        self._batches = {c: TxnBatch(c) for c in self._clients}
        self._current = 0
        self._call_timeout = call_timeout
        self._op_timeout = op_timeout
        self._count = count
        self._p = prefix.encode()
        # client id -> lease id: a cache only; etcd's c/<client> key is the truth
        self._leases: dict[str, int] = {}
        # grants whose transaction went unanswered when the quorum was lost: they may be
        # applied once it returns, holding a seat no program knows of; released then
        # (handle -> the key and value the grant put)
        self._orphans: dict[int, tuple[bytes, bytes]] = {}
        # item prefix <-> item number of the slot handles (registered once, never changed)
        self._numbers: dict[bytes, int | None] = {}
        self._items: dict[int, bytes] = {}
        # handle -> (its session, slot key, slot value) of the per-access grants made here: a
        # cache that spares a release its read; etcd's compare decides, a miss reads
        self._granted: dict[int, tuple[Session, bytes, bytes]] = {}
        # lease id -> (monotonic time, seconds it had left, a revision it held at) when this
        # store last saw it alive: a lease gone well before its time was revoked, not expired
        self._alive: dict[int, tuple[float, int, int]] = {}

    # -- lifetime ------------------------------------------------------------

    async def close(self) -> None:
        for c in self._clients:
            with contextlib.suppress(Exception):
                await c.close()

    async def __aenter__(self) -> SeatStore:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- client runtimes (leases) ---------------------------------------------

    async def open_client(self, client_id: str, timeout: float) -> int:
        """The lease of client runtime `client_id`, made with `timeout` seconds to live
        if it has none. Idempotent: a second front end gets the same lease."""
        ttl = max(1, round(check_client_timeout(timeout)))
        key = self._p + b"c/" + key_segment(client_id)

        async def attempt(c: aetcd.Client) -> int:
            lease = await c.lease(ttl)
            t = c.transactions
            ok, resp = await c.transaction(
                compare=[t.create(key) == 0],
                success=[t.put(key, b"%x" % lease.id, lease=lease.id)],
                failure=[t.get(key)],
            )
            if ok:
                self._seen_alive(int(lease.id), ttl, resp[0].response_put.header.revision)
                return int(lease.id)
            await c.revoke_lease(lease.id)
            if not resp or not resp[0]:
                raise _Retry
            existing = int(resp[0][0][0], 16)
            reply = await c.refresh_lease(existing)
            if reply is not None and reply.TTL > 0:
                self._seen_alive(existing, reply.TTL, reply.header.revision)
            return existing

        lease_id = await self._run(attempt)
        self._leases[client_id] = lease_id
        return lease_id

    async def identity_key(self) -> bytes:
        """The key the front ends derive client identities from, made once and kept in
        etcd: an identity one front end issued is proved to its twin, and to itself after
        a restart, so a client runtime that moves keeps its id, its lease and its seats."""
        return await self._put_once(self._p + b"identity-key", secrets.token_bytes(32))

    async def _put_once(self, key: bytes, value: bytes) -> bytes:
        """Put `key` (no lease) unless it exists; the value it holds either way."""

        async def attempt(c: aetcd.Client) -> bytes:
            t = c.transactions
            ok, resp = await c.transaction(
                compare=[t.create(key) == 0], success=[t.put(key, value)], failure=[t.get(key)]
            )
            if ok:
                return value
            if not resp or not resp[0]:
                raise _Retry
            return bytes(resp[0][0][0])

        return await self._run(attempt)

    async def keep_alive(self, client_id: str) -> bool:
        """Refresh `client_id`'s lease (call on each of its keep-alives). False when the
        client has no lease any more: its seats are gone and it must access again.

        A lease that vanished while this store had seen it alive with time to spare was
        revoked by an outdated etcd leader (etcd before 3.4.24 and 3.5.8: a leader paused for
        longer than a lease's TTL revokes it on waking, although its holder kept it alive
        through the others). Such a lease's keys are put back, on a new lease, as they were
        just before the revocation (etcd's history), unless any of them was taken since or
        the client left (`close_client`)."""
        key = self._p + b"c/" + key_segment(client_id)

        async def attempt(c: aetcd.Client) -> bool:
            lease_id = self._leases.get(client_id)
            if lease_id is None:
                got = await c.get(key)
                if got is None:
                    return False
                lease_id = int(got.value, 16)
            reply = await c.refresh_lease(lease_id)
            if reply is not None and reply.TTL > 0:
                self._leases[client_id] = lease_id
                self._seen_alive(lease_id, reply.TTL, reply.header.revision)
                return True
            self._leases.pop(client_id, None)
            seen = self._alive.pop(lease_id, None)
            now_key = await c.get(key)
            if now_key is not None and int(now_key.value, 16) != lease_id:
                raise _Retry  # the client has another lease now (opened again, or put back by the twin)
            if now_key is None and seen is not None and time.monotonic() < seen[0] + seen[1] - REVOKED_MARGIN:
                return await self._put_back(c, client_id, lease_id, seen)
            return False

        return await self._run(attempt)

    async def close_client(self, client_id: str) -> None:
        """The client runtime leaves: revoke its lease, freeing all its seats now."""
        key = self._p + b"c/" + key_segment(client_id)

        async def attempt(c: aetcd.Client) -> None:
            got = await c.get(key)
            if got is not None:
                lease_id = int(got.value, 16)
                self._alive.pop(lease_id, None)
                # it left: its lease is never put back (a mark the front ends see for a while)
                mark = await c.lease(LEFT_MARK_TTL)
                await c.put(self._left_mark(client_id, lease_id), b"", lease=mark.id)
                with contextlib.suppress(aetcd.exceptions.ClientError):
                    await c.revoke_lease(lease_id)

        self._leases.pop(client_id, None)
        await self._run(attempt)

    # -- seats -----------------------------------------------------------------

    async def access(
        self,
        *,
        key: ItemKey,
        quantity: int | None,
        mode: AccessMode,
        station: Station,
        holder: Holder,
        session: SessionKind = SessionKind.LOCAL,
        now: float,
    ) -> Grant:
        """Grant a handle on TMR item `key` to a network client that has a lease
        (`open_client`), or raise the core's refusal (`SeatRefused`: 212, 1006, …).

        A TMR front end serves programs over the network, so the program is never on
        the container's machine (quantity 0 is refused with 1006)."""
        client_id = holder.client_id
        if client_id is None:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "a TMR seat holder is a network client")
        if mode is AccessMode.EXCLUSIVE:
            raise LicentiaError(ErrorCode.WRONG_ACCESS_MODE, f"{key}: TMR items are not used exclusively")
        if mode is AccessMode.PER_ACCESS and quantity is not None and 0 < quantity <= 1 << SLOT_INDEX_BITS:
            number = await self._item_number(key)
            if number is not None:
                return await self._access_slot(key, number, quantity, station, holder, client_id, session, now)
        item = self._item_prefix(key)
        ckey = self._p + b"c/" + key_segment(client_id)
        handle = secrets.randbits(HANDLE_BITS - 1) | 1

        async def attempt(c: aetcd.Client) -> Grant:
            t = c.transactions
            lease_id = await self._lease_of(c, client_id, ckey)
            hkey = self._p + b"h/%d" % handle
            share_key = item + b"p/" + station_segment(station) + b"/%x" % lease_id
            taken = await c.get_prefix(item + b"s/", keys_only=True)
            slots = {kv.key[len(item) + 2:] for kv in taken}
            share = None
            if mode is AccessMode.PER_STATION:
                share = await c.get(share_key)
            new_seat = admit(
                key=key, quantity=quantity, mode=mode, station=station, holder=holder, local=False,
                session=session, now=now, used=len(slots),
                station_use=None if share is None else StationShare(per_station=1),
            )
            compare = [t.create(hkey) == 0, t.value(ckey) == b"%x" % lease_id]
            puts = []
            slot = None
            if new_seat:
                slot = _pick_slot(slots, quantity, handle)
                compare.append(t.create(item + b"s/" + slot) == 0)
                puts.append(t.put(item + b"s/" + slot, b"%d %s" % (handle, key_segment(client_id)), lease=lease_id))
            if mode is AccessMode.PER_STATION:
                if share is None:
                    compare.append(t.create(share_key) == 0)
                    puts.append(t.put(share_key, pack([slot, 1]), lease=lease_id))
                else:
                    slot, count = unpack(share.value)
                    compare.append(t.mod(share_key) == share.mod_revision)
                    puts.append(t.put(share_key, pack([slot, count + 1]), lease=lease_id))
            record = handle_record(Session(handle, key, mode, station, holder, now), slot,
                                   share_key if mode is AccessMode.PER_STATION else None)
            puts.append(t.put(hkey, record, lease=lease_id))
            unsure[handle] = (hkey, record)
            ok, resp = await c.transaction(
                compare=compare,
                success=[*puts, *self._counting(t, item + b"s/")],
                failure=[t.get(hkey), t.get(ckey)],
            )
            del unsure[handle]
            if not ok:
                mine, client = resp
                if mine and mine[0][0] == record:
                    used = len(await c.get_prefix(item + b"s/", keys_only=True))
                    return Grant(Session(handle, key, mode, station, holder, now), new_seat, used)
                if not client:
                    self._leases.pop(client_id, None)
                    raise _lease_gone(client_id)
                if client[0][0] != b"%x" % lease_id:
                    self._leases.pop(client_id, None)
                raise _Retry
            return Grant(Session(handle, key, mode, station, holder, now), new_seat, self._used(resp))

        unsure: dict[int, tuple[bytes, bytes]] = {}
        return await self._run(attempt, unsure)

    async def _access_slot(
        self, key: ItemKey, number: int, quantity: int, station: Station, holder: Holder, client_id: str,
        session: SessionKind, now: float,
    ) -> Grant:
        """A per-access grant of a counted item: one transaction putting one key, a random
        slot holding the grant's record; the handle names the item's `number` and the slot.

        The slot's `create_revision == 0` is the capacity check: a slot below the quantity
        is free or it is not. Only when the slot was taken does the store look at which
        are, and ask `admit` again with that count (212 when all are)."""
        mode = AccessMode.PER_ACCESS
        sprefix = self._item_prefix(key) + b"s/"
        ckey = self._p + b"c/" + key_segment(client_id)
        taken: set[bytes] = set()  # the slots the last refused try saw taken
        pending: tuple[bytes, int] | None = None  # a try whose answer may be lost
        collisions = 0

        async def attempt(c: aetcd.Client) -> Grant:
            nonlocal pending, taken, collisions
            t = c.transactions
            lease_id = await self._lease_of(c, client_id, ckey)
            admit(key=key, quantity=quantity, mode=mode, station=station, holder=holder, local=False,
                  session=session, now=now, used=len(taken), station_use=None)
            if pending is None:
                index = _free_index(taken, quantity)
                pending = (b"%06d" % index, slot_handle(number, index))
            slot, handle = pending
            skey = sprefix + slot
            session_ = Session(handle, key, mode, station, holder, now)
            record = slot_record(session_)
            lease_hex = b"%x" % lease_id
            unsure[handle] = (skey, record)
            # after a few collisions, the refusal also reads which slots are taken
            survey = [t.get(sprefix, range_end(sprefix))] if collisions >= 3 else []
            ok, resp = await self._batches[c].transaction(
                [t.create(skey) == 0, t.value(ckey) == lease_hex],
                [t.put(skey, record, lease=lease_id), *self._counting(t, sprefix)],
                [t.get(ckey), t.get(skey), *survey],
            )
            del unsure[handle]
            if ok:
                self._remember(handle, session_, skey, record)
                return Grant(session_, True, self._used(resp))
            client, mine = resp[0], resp[1]
            if mine and mine[0][0] == record:  # an earlier try, its answer lost, took it
                self._remember(handle, session_, skey, record)
                return Grant(session_, True, -1)
            pending = None
            if not client:
                self._leases.pop(client_id, None)
                raise _lease_gone(client_id)
            if client[0][0] != lease_hex:
                self._leases.pop(client_id, None)
            collisions += 1
            if survey:
                taken = {meta.key[len(sprefix):] for _value, meta in resp[2]}
            else:
                taken.add(slot)
            raise _Retry

        unsure: dict[int, tuple[bytes, bytes]] = {}
        return await self._run(attempt, unsure)

    async def release(self, handle: int, now: float, *, holder: Holder | None = None) -> Release:
        """Release `handle` (106 when it is not held: released already, or its client's
        lease ran out). With `holder`, only that client's handle."""
        hkey = self._p + b"h/%d" % handle
        known = self._granted.pop(handle, None)
        if known is not None and (holder is None or known[0].holder.client_id == holder.client_id):
            sess_, skey, record = known

            async def direct(c: aetcd.Client) -> Release | None:
                t = c.transactions
                ok, resp = await self._batches[c].transaction(
                    [t.value(skey) == record], [t.delete(skey), *self._counting(t, skey[: skey.rindex(b"/") + 1])], []
                )
                return Release(sess_, ReleaseReason.PROGRAM, True, self._used(resp), now) if ok else None

            done = await self._run(direct)
            if done is not None:
                return done
        tried = False

        async def attempt(c: aetcd.Client) -> Release:
            nonlocal tried
            t = c.transactions
            # a local read is enough: the transaction compares the record's revision
            found = await self._slot_of(c, handle, local=not tried)
            if found is not None:
                skey, revision, sess_ = found
                if holder is not None and sess_.holder.client_id != holder.client_id:
                    raise LicentiaError(ErrorCode.INVALID_HANDLE, f"handle {handle} is not held by this client")
                tried = True
                ok, resp = await self._batches[c].transaction(
                    [t.mod(skey) == revision], [t.delete(skey), *self._counting(t, skey[: skey.rindex(b"/") + 1])], []
                )
                if not ok:
                    tried = False
                    raise _Retry
                return Release(sess_, ReleaseReason.PROGRAM, True, self._used(resp), now)
            got = await c.get(hkey, serializable=not tried)
            if got is None and not tried:
                got = await c.get(hkey)
            if got is None:
                if tried:  # our earlier try was applied, its answer lost
                    return Release(unknown_session(handle), ReleaseReason.PROGRAM, True, -1, now)
                raise LicentiaError(
                    ErrorCode.INVALID_HANDLE, f"handle {handle} is not held (released already, or never granted)"
                )
            sess, slot, share_key = session_from_record(handle, got.value)
            if holder is not None and sess.holder.client_id != holder.client_id:
                raise LicentiaError(ErrorCode.INVALID_HANDLE, f"handle {handle} is not held by this client")
            item = self._item_prefix(sess.key)
            compare = [t.mod(hkey) == got.mod_revision]
            ops = [t.delete(hkey)]
            freed = slot is not None
            if share_key is not None:
                share = await c.get(share_key)
                if share is not None:
                    s_slot, count = unpack(share.value)
                    compare.append(t.mod(share_key) == share.mod_revision)
                    if count > 1:
                        freed = False
                        ops.append(t.put(share_key, pack([s_slot, count - 1]), lease=got.lease))
                    else:
                        ops.append(t.delete(share_key))
                        slot = s_slot
                        freed = slot is not None
            if freed and slot is not None:
                ops.append(t.delete(item + b"s/" + slot.encode()))
                if share_key is None:  # the slot is this handle's own
                    compare.append(t.value(item + b"s/" + slot.encode()) == b"%d %s" % (handle, key_segment(sess.holder.client_id or "")))
            tried = True
            ok, resp = await c.transaction(
                compare=compare, success=[*ops, *self._counting(t, item + b"s/")], failure=[]
            )
            if not ok:
                tried = False
                raise _Retry
            return Release(sess, ReleaseReason.PROGRAM, freed, self._used(resp), now)

        return await self._run(attempt)

    async def used(self, key: ItemKey) -> int:
        """Seats of `key` in use (a linearizable read)."""
        prefix = self._item_prefix(key) + b"s/"

        async def attempt(c: aetcd.Client) -> int:
            return len(await c.get_prefix(prefix, keys_only=True))

        return await self._run(attempt)

    async def session(self, handle: int) -> Session | None:
        """The session of `handle`, or None when it is not held (a linearizable read)."""
        hkey = self._p + b"h/%d" % handle

        async def attempt(c: aetcd.Client) -> Session | None:
            found = await self._slot_of(c, handle, local=False)
            if found is not None:
                return found[2]
            got = await c.get(hkey)
            return None if got is None else session_from_record(handle, got.value)[0]

        return await self._run(attempt)

    async def sessions(self) -> list[Session]:
        """Every handle held through any front end, oldest first."""
        prefix = self._p + b"h/"
        items = self._p + b"i/"

        async def attempt(c: aetcd.Client) -> list[Session]:
            out = []
            for kv in await c.get_prefix(prefix):
                handle = int(kv.key[len(prefix):])
                out.append(session_from_record(handle, kv.value)[0])
            for kv in await c.get_prefix(items):  # i/<container>/<firm>/<product>/<item>/s/<slot>
                if kv.value[:1] == bytes([SLOT_RECORD]) and kv.key[len(items):].split(b"/")[4:5] == [b"s"]:
                    out.append(session_from_slot(kv.value))
            return sorted(out, key=lambda s: (s.since, s.handle))

        return await self._run(attempt)

    # -- unit counters -----------------------------------------------------------

    async def units(self, key: ItemKey, item: ProductItem) -> int | None:
        """Units remaining of `key`; the first call puts the item's initial counter."""
        initial = item.units
        if initial is None:
            return None
        ukey = self._item_prefix(key) + b"u"

        async def attempt(c: aetcd.Client) -> int:
            t = c.transactions
            _ok, resp = await c.transaction(
                compare=[t.create(ukey) == 0],
                success=[t.put(ukey, b"%d" % initial), t.get(ukey)],
                failure=[t.get(ukey)],
            )
            return int(resp[-1][0][0])

        return await self._run(attempt)

    async def decrement(
        self, key: ItemKey, item: ProductItem, units: int, *, client_id: str, request_id: str | None
    ) -> int:
        """Spend `units` of `key` and return what remains (32, 1011 when too few).

        `request_id` names this decrement for `client_id`: a retry with the same id
        (a lost answer, another front end) is answered from its receipt, never spent
        twice. The receipt lives as long as the client's lease. Without `request_id` no
        receipt is kept (a retry would spend again)."""
        if await self.units(key, item) is None:
            core_decrement(item, ItemState(), units)  # raises: no unit counter
        ukey = self._item_prefix(key) + b"u"
        ckey = self._p + b"c/" + key_segment(client_id)
        rkey = None if request_id is None else self._p + b"d/" + key_segment(client_id) + b"/" + key_segment(request_id)

        async def attempt(c: aetcd.Client) -> int:
            t = c.transactions
            lease_id = await self._lease_of(c, client_id, ckey)
            receipt = None if rkey is None else await c.get(rkey)
            if receipt is not None:
                return int(receipt.value)
            got = await c.get(ukey)
            if got is None:
                raise _Retry
            state = core_decrement(item, ItemState(units_remaining=int(got.value)), units)
            left = state.units_remaining
            assert left is not None
            compare = [t.mod(ukey) == got.mod_revision, t.value(ckey) == b"%x" % lease_id]
            success = [t.put(ukey, b"%d" % left)]
            if rkey is not None:
                compare.append(t.create(rkey) == 0)
                success.append(t.put(rkey, b"%d" % left, lease=lease_id))
            ok, _resp = await c.transaction(compare=compare, success=success, failure=[])
            if not ok:
                raise _Retry
            return left

        return await self._run(attempt)

    # -- leases revoked by an outdated etcd leader -------------------------------------

    def _seen_alive(self, lease_id: int, ttl: int, revision: int) -> None:
        self._alive.pop(lease_id, None)  # the newest last: the oldest is forgotten first
        if len(self._alive) >= ALIVE_CACHE:
            del self._alive[next(iter(self._alive))]
        self._alive[lease_id] = (time.monotonic(), ttl, revision)

    def _left_mark(self, client_id: str, lease_id: int) -> bytes:
        return self._p + b"x/" + key_segment(client_id) + b"/%x" % lease_id

    async def _put_back(self, c: aetcd.Client, client_id: str, lease_id: int, seen: tuple[float, int, int]) -> bool:
        """Put the keys of `client_id`'s revoked lease back as they were just before the
        revocation, on a new lease with the same TTL, in one transaction that requires every
        one of them still absent (a seat taken since stays with its new holder: then nothing
        is put back) and the client not gone on purpose. True when they are back."""
        _at, ttl, revision = seen
        wait = self._call_timeout
        ckey = self._p + b"c/" + key_segment(client_id)
        lease_hex = b"%x" % lease_id
        try:
            held, _ = await _range_at(c, ckey, None, revision, wait)
            if not held or held[0].value != lease_hex:
                return False
            _, hi = await _range_at(c, ckey, None, 0, wait, count_only=True)
            while hi - revision > 1:  # the revision that deleted it: held at `revision`, gone at `hi`
                mid = (revision + hi) // 2
                held, _ = await _range_at(c, ckey, None, mid, wait)
                if held and held[0].value == lease_hex:
                    revision = mid
                else:
                    hi = mid
            before, _ = await _range_at(c, self._p, range_end(self._p), hi - 1, wait)
        except _Compacted:
            return False
        keys = [(kv.key, kv.value) for kv in before if kv.lease == lease_id]
        if len(keys) > PUT_BACK_KEYS:
            return False
        fresh = await c.lease(ttl)
        t = c.transactions
        ok, resp = await c.transaction(
            compare=[*(t.create(k) == 0 for k, _v in keys), t.create(self._left_mark(client_id, lease_id)) == 0],
            success=[t.put(k, b"%x" % fresh.id if k == ckey else v, lease=fresh.id) for k, v in keys],
            failure=[],
        )
        if not ok:
            await c.revoke_lease(fresh.id)
            if await c.get(ckey) is not None:
                raise _Retry  # the twin put them back first, or the client opened again: read its lease
            return False
        self._leases[client_id] = int(fresh.id)
        self._seen_alive(int(fresh.id), ttl, resp[0].response_put.header.revision)
        return True

    # -- internals ---------------------------------------------------------------

    def _remember(self, handle: int, sess: Session, skey: bytes, record: bytes) -> None:
        if len(self._granted) >= GRANTED_CACHE:
            del self._granted[next(iter(self._granted))]
        self._granted[handle] = (sess, skey, record)

    async def _item_number(self, key: ItemKey) -> int | None:
        """The number slot handles of `key` carry (a checksum of the item, registered under n/
        on first use), or None when another item holds that number: then its grants keep
        h/ records. Both twins compute and find the same number."""
        item = self._item_prefix(key)
        if item in self._numbers:
            return self._numbers[item]
        rel = item[len(self._p):]
        number = item_number_of(rel)
        mine = await self._put_once(self._p + b"n/%d" % number, rel) == rel
        self._numbers[item] = number if mine else None
        if mine:
            self._items[number] = item
        return self._numbers[item]

    async def _slot_of(self, c: aetcd.Client, handle: int, *, local: bool) -> tuple[bytes, int, Session] | None:
        """The slot key, its revision and the session of slot handle `handle`, or None when
        `handle` is not a slot handle or its slot holds another grant (or none)."""
        parts = slot_parts(handle)
        if parts is None:
            return None
        number, index = parts
        item = self._items.get(number)
        if item is None:
            named = await c.get(self._p + b"n/%d" % number)
            if named is None:
                return None
            item = self._items[number] = self._p + bytes(named.value)
        skey = item + b"s/%06d" % index
        got = await c.get(skey, serializable=local)
        if got is None and local:
            got = await c.get(skey)
        if got is None or got.value[:1] != bytes([SLOT_RECORD]):
            return None
        sess = session_from_slot(got.value)
        return (skey, got.mod_revision, sess) if sess.handle == handle else None

    def _counting(self, t: Any, sprefix: bytes) -> list[Any]:
        """The read that counts an item's seats after a change, when the store counts."""
        return [t.get(sprefix, range_end(sprefix))] if self._count else []

    def _used(self, resp: list[Any]) -> int:
        return len(resp[-1]) if self._count else -1

    def _item_prefix(self, key: ItemKey) -> bytes:
        return self._p + b"i/%s/%d/%d/%d/" % (key_segment(key.container), key.firm_code, key.product_code, key.item_id)

    async def _lease_of(self, c: aetcd.Client, client_id: str, ckey: bytes) -> int:
        lease_id = self._leases.get(client_id)
        if lease_id is None:
            got = await c.get(ckey)
            if got is None:
                raise _lease_gone(client_id)
            lease_id = self._leases[client_id] = int(got.value, 16)
        return lease_id

    async def _run(
        self, attempt: Callable[[aetcd.Client], Awaitable[T]], unsure: dict[int, tuple[bytes, bytes]] | None = None
    ) -> T:
        """Run `attempt` on a member until it answers: a member that fails or times out
        hands over to the next; contention re-reads. After `op_timeout` without a
        quorum, 130. `unsure` holds the grants `attempt` sent and got no answer for."""
        if self._orphans:
            await self._release_orphans()
        deadline = time.monotonic() + self._op_timeout
        last: Exception | None = None
        contention = 0
        while True:
            at = self._current
            client = self._clients[at]
            try:
                return await attempt(client)
            except _Retry:
                contention += 1
                if contention > 64:
                    raise LicentiaError(
                        ErrorCode.INTERNAL, "the seat store stayed contended for 64 tries; try again"
                    ) from None
                await asyncio.sleep(0.001 * secrets.randbelow(4))
                continue
            except aetcd.exceptions.ClientError as exc:
                if "lease not found" in str(exc):
                    self._leases.clear()
                    contention += 1
                    if contention > 64:
                        raise
                    continue
                last = exc
                if self._current == at:  # the operations that failed on it together move on once
                    self._current = (at + 1) % len(self._clients)
            if time.monotonic() >= deadline:
                if unsure:
                    self._orphans.update(unsure)
                names = ", ".join(f"{h}:{p}" for h, p in self._endpoints)
                raise LicentiaError(
                    ErrorCode.REDUNDANCY_SERVER_MISSING,
                    f"no quorum of the TMR seat store ({names}) answered within {self._op_timeout:g} s: {last}",
                )
            await asyncio.sleep(0.05)

    async def _release_orphans(self) -> None:
        """Release the grants that were sent while the quorum was lost and applied after."""
        client = self._clients[self._current]
        for handle, (key, record) in list(self._orphans.items()):
            try:
                got = await client.get(key)
            except aetcd.exceptions.ClientError:
                return  # still no quorum: keep them for the next operation
            if self._orphans.pop(handle, None) is not None and got is not None and got.value == record:
                with contextlib.suppress(LicentiaError):
                    await self.release(handle, time.time())


class _Compacted(Exception):
    """The revision asked for is no longer in etcd's history."""


async def _range_at(
    c: aetcd.Client, key: bytes, end: bytes | None, revision: int, timeout: float, *, count_only: bool = False
) -> tuple[list[Any], int]:
    """The keys (and the revision read) from `key` (to `end`; None: that key alone) as they were at `revision` (0:
    now), a linearizable read of etcd's history; `_Compacted` when it is gone."""
    await c.connect()
    request = aetcd.rpc.RangeRequest(key=key, range_end=end or b"", revision=revision, count_only=count_only)
    try:
        response = await c.kvstub.Range(request, timeout=timeout, metadata=c.metadata)
    except aetcd.rpc.AioRpcError as exc:
        if exc.code() is aetcd.rpc.StatusCode.OUT_OF_RANGE:
            raise _Compacted from None
        raise aetcd.exceptions.ConnectionFailedError(str(exc.details())) from None
    return list(response.kvs), int(response.header.revision)


def _free_index(taken: set[bytes], quantity: int) -> int:
    """A random slot index below `quantity` not in `taken` (the caller asked `admit`)."""
    for _ in range(16):
        i = secrets.randbelow(quantity)
        if b"%06d" % i not in taken:
            return i
    free = [i for i in range(quantity) if b"%06d" % i not in taken]
    if not free:
        raise _Retry
    return free[secrets.randbelow(len(free))]


def _pick_slot(taken: set[bytes], quantity: int | None, handle: int) -> bytes:
    """A free slot name: a random free index below the quantity, or (unlimited) one of
    the handle's own. The caller has checked with `admit` that one is free."""
    if quantity is None or quantity == 0:
        return b"u%d" % handle
    free = [i for i in range(quantity) if b"%06d" % i not in taken]
    if not free:  # taken by slots above a lowered quantity: admit counted them
        raise _Retry
    return b"%06d" % free[secrets.randbelow(len(free))]


def _lease_gone(client_id: str) -> LicentiaError:
    return LicentiaError(
        ErrorCode.INVALID_HANDLE,
        f"client {client_id!r} has no lease in the TMR seat store (it fell silent for longer than its timeout)",
        "open the client again and access the license again",
    )
