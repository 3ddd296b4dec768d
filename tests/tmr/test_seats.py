"""Seats and unit counters of TMR items in a real 3-member etcd cluster."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from tests.tmr.etcd import EtcdCluster

from licentia.core.seats import Holder, ItemKey, SeatRefused, Station
from licentia.model import AccessMode, ErrorCode, LicentiaError, ProductItem
from licentia.tmr.seats import SeatStore

T = TypeVar("T")
KEY = ItemKey("131-1000001", 100001, 42, 1)


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def prefix() -> str:
    return f"/test/{secrets.token_hex(6)}/"


def holder(client: str, program: str = "app") -> Holder:
    return Holder.network(client, program=program)


async def poll(check: Callable[[], Awaitable[bool]], seconds: float = 30.0) -> bool:
    """Wait for `check` to hold (a bound on waiting, not a timed assertion)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.2)
    return False


def test_concurrent_grants_from_two_front_ends_never_exceed_the_quantity(etcd_cluster: EtcdCluster) -> None:
    async def main() -> None:
        p = prefix()
        a = SeatStore(etcd_cluster.endpoints, prefix=p)
        b = SeatStore(list(reversed(etcd_cluster.endpoints)), prefix=p)
        async with a, b:
            clients = [f"client-{i}" for i in range(6)]
            for i, c in enumerate(clients):
                await (a if i % 2 else b).open_client(c, 30)

            async def one(i: int) -> int | None:
                store = a if i % 2 else b
                c = clients[i % len(clients)]
                try:
                    g = await store.access(
                        key=KEY, quantity=5, mode=AccessMode.PER_ACCESS, station=Station(f"host{i}"),
                        holder=holder(c), now=1000.0 + i,
                    )
                except SeatRefused as exc:
                    assert exc.code is ErrorCode.NO_MORE_LICENSES
                    return None
                return g.handle

            handles = [h for h in await asyncio.gather(*(one(i) for i in range(40))) if h is not None]
            assert len(handles) == 5
            assert len(set(handles)) == 5
            assert await a.used(KEY) == 5 and await b.used(KEY) == 5
            held = await b.sessions()
            assert sorted(s.handle for s in held) == sorted(handles)
            # a release through the other front end frees the seat for everyone
            r = await b.release(handles[0], 2000.0)
            assert r.seat_freed and r.used == 4
            with pytest.raises(LicentiaError) as err:
                await a.release(handles[0], 2001.0)
            assert err.value.code is ErrorCode.INVALID_HANDLE
            for h in handles[1:]:
                # only the client that holds a handle releases it, whichever front end granted it
                with pytest.raises(LicentiaError) as foreign:
                    await a.release(h, 2002.0, holder=holder("not-the-holder"))
                assert foreign.value.code is ErrorCode.INVALID_HANDLE
                await (a if h % 2 else b).release(h, 2002.0)
            assert await a.used(KEY) == 0

    run(main())


def test_per_station_handles_share_a_seat_and_mode_none_takes_none(etcd_cluster: EtcdCluster) -> None:
    async def main() -> None:
        async with SeatStore(etcd_cluster.endpoints, prefix=prefix()) as s:
            await s.open_client("c1", 30)
            await s.open_client("c2", 30)
            st = Station("hostA")
            g1 = await s.access(key=KEY, quantity=2, mode=AccessMode.PER_STATION, station=st, holder=holder("c1"), now=1.0)
            g2 = await s.access(key=KEY, quantity=2, mode=AccessMode.PER_STATION, station=st, holder=holder("c1"), now=2.0)
            assert g1.new_seat and not g2.new_seat and g2.used == 1
            g3 = await s.access(key=KEY, quantity=2, mode=AccessMode.NONE, station=st, holder=holder("c2"), now=3.0)
            assert not g3.new_seat and g3.used == 1
            g4 = await s.access(key=KEY, quantity=2, mode=AccessMode.PER_ACCESS, station=Station("hostB"),
                                holder=holder("c2"), now=4.0)
            assert g4.used == 2
            with pytest.raises(SeatRefused) as refused:
                await s.access(key=KEY, quantity=2, mode=AccessMode.PER_STATION, station=Station("hostC"),
                               holder=holder("c2"), now=5.0)
            assert refused.value.code is ErrorCode.NO_MORE_LICENSES
            # another client's handle cannot be released in its name
            with pytest.raises(LicentiaError):
                await s.release(g1.handle, 6.0, holder=holder("c2"))
            r1 = await s.release(g1.handle, 6.0, holder=holder("c1"))
            assert not r1.seat_freed and r1.used == 2
            r2 = await s.release(g2.handle, 7.0)
            assert r2.seat_freed and r2.used == 1
            await s.release(g3.handle, 8.0)
            await s.release(g4.handle, 9.0)
            assert await s.used(KEY) == 0
            # quantity 0 is local-only: a front end serves over the network
            with pytest.raises(SeatRefused) as local:
                await s.access(key=KEY, quantity=0, mode=AccessMode.PER_ACCESS, station=st, holder=holder("c1"), now=10.0)
            assert local.value.code is ErrorCode.LOCAL_ONLY
            with pytest.raises(LicentiaError) as excl:
                await s.access(key=KEY, quantity=2, mode=AccessMode.EXCLUSIVE, station=st, holder=holder("c1"), now=11.0)
            assert excl.value.code is ErrorCode.WRONG_ACCESS_MODE

    run(main())


def test_a_silent_clients_seats_come_back_when_its_lease_expires(etcd_cluster: EtcdCluster) -> None:
    async def main() -> None:
        p = prefix()
        async with SeatStore(etcd_cluster.endpoints, prefix=p) as a, SeatStore(etcd_cluster.endpoints, prefix=p) as b:
            await a.open_client("dies", 5)
            # the same client on another front end gets the same lease
            assert await b.open_client("lives", 5) == await a.open_client("lives", 5)
            for i in range(2):
                await a.access(key=KEY, quantity=3, mode=AccessMode.PER_ACCESS, station=Station("d"),
                               holder=holder("dies"), now=float(i))
            await b.access(key=KEY, quantity=3, mode=AccessMode.PER_ACCESS, station=Station("l"),
                           holder=holder("lives"), now=3.0)
            assert await a.used(KEY) == 3

            async def dies_seats_gone() -> bool:
                # "lives" keeps sending keep-alives, through either front end
                assert await (a if time.monotonic() % 2 < 1 else b).keep_alive("lives")
                return await b.used(KEY) == 1

            assert await poll(dies_seats_gone)
            assert not await a.keep_alive("dies")
            with pytest.raises(LicentiaError) as gone:
                await a.access(key=KEY, quantity=3, mode=AccessMode.PER_ACCESS, station=Station("d"),
                               holder=holder("dies"), now=9.0)
            assert gone.value.code is ErrorCode.INVALID_HANDLE
            [left] = await a.sessions()
            assert left.holder.client_id == "lives"
            await b.close_client("lives")  # leaving frees at once
            assert await a.used(KEY) == 0

    run(main())


def test_decrements_are_counted_once_across_front_ends(etcd_cluster: EtcdCluster) -> None:
    item = ProductItem(product_code=42, units=50)

    async def main() -> None:
        p = prefix()
        async with SeatStore(etcd_cluster.endpoints, prefix=p) as a, SeatStore(etcd_cluster.endpoints, prefix=p) as b:
            await a.open_client("c", 30)
            assert await a.units(KEY, item) == 50
            left = await a.decrement(KEY, item, 5, client_id="c", request_id="r1")
            # the same request again (its answer was lost), through the other front end
            assert await b.decrement(KEY, item, 5, client_id="c", request_id="r1") == left == 45

            async def spend(i: int) -> int:
                store = a if i % 2 else b
                try:
                    await store.decrement(KEY, item, 2, client_id="c", request_id=f"x{i}")
                except LicentiaError as exc:
                    assert exc.code in (ErrorCode.NOT_ENOUGH_UNITS, ErrorCode.UNITS_USED_UP)
                    return 0
                return 2

            spent = sum(await asyncio.gather(*(spend(i) for i in range(30))))
            assert spent == 44 and await b.units(KEY, item) == 1
            with pytest.raises(LicentiaError) as few:
                await a.decrement(KEY, item, 2, client_id="c", request_id="last")
            assert few.value.code is ErrorCode.NOT_ENOUGH_UNITS

    run(main())


def test_one_member_down_changes_nothing_two_down_is_130(faulty_etcd_cluster: EtcdCluster) -> None:
    cluster = faulty_etcd_cluster

    async def main() -> None:
        async with SeatStore(cluster.endpoints, prefix=prefix(), call_timeout=1.0, op_timeout=4.0) as s:
            await s.open_client("c", 30)
            first = await s.access(key=KEY, quantity=3, mode=AccessMode.PER_ACCESS, station=Station("h"),
                                   holder=holder("c"), now=1.0)
            cluster.kill(0)  # the member this store talks to first
            g = await s.access(key=KEY, quantity=3, mode=AccessMode.PER_ACCESS, station=Station("h"),
                               holder=holder("c"), now=2.0)
            assert g.used == 2
            await s.release(first.handle, 3.0)
            assert await s.keep_alive("c")
            cluster.stop(1)  # a second member gone silent: no quorum
            with pytest.raises(LicentiaError) as missing:
                await s.access(key=KEY, quantity=3, mode=AccessMode.PER_ACCESS, station=Station("h"),
                               holder=holder("c"), now=4.0)
            assert missing.value.code is ErrorCode.REDUNDANCY_SERVER_MISSING
            assert "no quorum" in missing.value.message
            cluster.cont(1)  # two of three again: it serves
            # the refused grant's transaction may still be applied now that the quorum is back;
            # the store then releases it, so no seat stays held by a handle no program has

            async def serves() -> bool:
                try:
                    return await s.used(KEY) == 1
                except LicentiaError:
                    return False

            assert await poll(serves)
            await s.release(g.handle, 5.0)
            assert await s.used(KEY) == 0

    run(main())


def test_random_concurrent_work_from_two_front_ends_keeps_the_count(etcd_cluster: EtcdCluster) -> None:
    """Random grants (all three modes) and releases from two stores at once: after every
    round, the seats in etcd are what the handles held imply, and never above the quantity."""
    quantity = 4
    rng = random.Random(1406)

    async def main() -> None:
        p = prefix()
        async with SeatStore(etcd_cluster.endpoints, prefix=p) as a, SeatStore(etcd_cluster.endpoints, prefix=p) as b:
            clients = ["c0", "c1", "c2"]
            for c in clients:
                await a.open_client(c, 30)
            held: dict[int, tuple[AccessMode, Station, str]] = {}

            async def grant(store: SeatStore, mode: AccessMode, st: Station, c: str) -> None:
                try:
                    g = await store.access(key=KEY, quantity=quantity, mode=mode, station=st, holder=holder(c), now=1.0)
                except SeatRefused as exc:
                    assert exc.code is ErrorCode.NO_MORE_LICENSES
                    return
                held[g.handle] = (mode, st, c)

            async def release(store: SeatStore, handle: int) -> None:
                await store.release(handle, 2.0, holder=holder(held[handle][2]))
                del held[handle]

            for _round in range(12):
                ops = []
                chosen: set[int] = set()
                for _ in range(8):
                    store = rng.choice([a, b])
                    if held and rng.random() < 0.4:
                        h = rng.choice(sorted(held))
                        if h not in chosen:
                            chosen.add(h)
                            ops.append(release(store, h))
                        continue
                    mode = rng.choice([AccessMode.PER_ACCESS, AccessMode.PER_STATION, AccessMode.NONE])
                    ops.append(grant(store, mode, Station(rng.choice(["s1", "s2"])), rng.choice(clients)))
                await asyncio.gather(*ops)
                implied = sum(1 for m, _s, _c in held.values() if m is AccessMode.PER_ACCESS)
                implied += len({(s, c) for m, s, c in held.values() if m is AccessMode.PER_STATION})
                used = await b.used(KEY)
                assert used == implied <= quantity
                assert sorted(s.handle for s in await a.sessions()) == sorted(held)
            for h in sorted(held):
                await release(a, h)
            assert await a.used(KEY) == 0

    run(main())


def test_the_front_ends_share_one_identity_key_made_once(etcd_cluster: EtcdCluster) -> None:
    """Two front ends (and one restarted) read the same key: an identity one issued, the
    other proves; another store prefix (another TMR system) has a key of its own."""

    async def main() -> None:
        p = prefix()
        async with SeatStore(etcd_cluster.endpoints, prefix=p) as a, \
                SeatStore(list(reversed(etcd_cluster.endpoints)), prefix=p) as b:
            keys = await asyncio.gather(a.identity_key(), b.identity_key(), a.identity_key())
        assert len(set(keys)) == 1 and len(keys[0]) == 32
        async with SeatStore(etcd_cluster.endpoints, prefix=p) as restarted:
            assert await restarted.identity_key() == keys[0]
        async with SeatStore(etcd_cluster.endpoints, prefix=prefix()) as other:
            assert await other.identity_key() != keys[0]

    run(main())


async def _revoke_behind_the_stores(endpoints: list[str], p: str, client_id: str) -> None:
    """What an outdated etcd leader does on waking from a pause longer than the lease's TTL
    (etcd before 3.4.24 and 3.5.8): it revokes the lease, although its holder kept it alive
    through the other members."""
    import aetcd

    host, port = endpoints[0].rsplit(":", 1)
    async with aetcd.Client(host=host, port=int(port)) as raw:
        got = await raw.get(p.encode() + b"c/" + client_id.encode())
        assert got is not None
        await raw.revoke_lease(int(got.value, 16))


def test_a_lease_revoked_while_its_client_kept_it_alive_is_put_back(etcd_cluster: EtcdCluster) -> None:
    async def main() -> None:
        p = prefix()
        endpoints = etcd_cluster.endpoints
        async with SeatStore(endpoints, prefix=p) as a, SeatStore(endpoints, prefix=p) as b:
            await a.open_client("kept", 30)
            handles = [(await a.access(key=KEY, quantity=2, mode=AccessMode.PER_ACCESS, station=Station("k"),
                                       holder=holder("kept"), now=float(i))).handle for i in range(2)]
            assert await a.keep_alive("kept")
            await _revoke_behind_the_stores(endpoints, p, "kept")
            assert await a.used(KEY) == 0  # etcd deleted its seats
            # its next keep-alive, through either front end, finds them back as they were
            assert await a.keep_alive("kept")
            assert await b.keep_alive("kept")
            assert sorted(s.handle for s in await b.sessions()) == sorted(handles)
            assert await b.used(KEY) == 2
            with pytest.raises(SeatRefused):  # the quantity still holds
                await b.access(key=KEY, quantity=2, mode=AccessMode.PER_ACCESS, station=Station("o"),
                               holder=holder("kept"), now=5.0)
            assert (await b.release(handles[0], 6.0, holder=holder("kept"))).seat_freed
            assert (await a.release(handles[1], 7.0, holder=holder("kept"))).seat_freed

            # a seat taken by another client in between stays its: nothing is put back
            await a.open_client("other", 30)
            await a.access(key=KEY, quantity=2, mode=AccessMode.PER_ACCESS, station=Station("k"),
                           holder=holder("kept"), now=8.0)
            assert await a.keep_alive("kept")
            await _revoke_behind_the_stores(endpoints, p, "kept")
            for i in range(2):
                await b.access(key=KEY, quantity=2, mode=AccessMode.PER_ACCESS, station=Station("o"),
                               holder=holder("other"), now=9.0 + i)
            assert not await a.keep_alive("kept")
            assert {s.holder.client_id for s in await a.sessions()} == {"other"}

            # a client that left is never put back
            await b.close_client("other")
            assert not await a.keep_alive("other")
            assert await a.used(KEY) == 0 and await a.sessions() == []

    run(main())


def test_a_paused_etcd_leader_takes_no_seat_its_clients_kept_alive(faulty_etcd_cluster: EtcdCluster) -> None:
    """The etcd leader stopped (SIGSTOP) for longer than the clients' leases while they keep
    them alive through the other members; continued, etcd before 3.4.24 and 3.5.8 revokes
    those leases (in about half the runs): every seat is still held afterwards."""
    import aetcd
    import aetcd.rpc

    cluster = faulty_etcd_cluster

    async def leader() -> int:
        for i, endpoint in enumerate(cluster.endpoints):
            host, port = endpoint.rsplit(":", 1)
            async with aetcd.Client(host=host, port=int(port), timeout=2) as c:
                status = await c.maintenancestub.Status(aetcd.rpc.StatusRequest(), timeout=2)
                if status.header.member_id == status.leader:
                    return i
        raise AssertionError("no etcd leader")

    async def main() -> None:
        clients = [f"client-{i}" for i in range(12)]
        async with SeatStore(cluster.endpoints, prefix=prefix(), call_timeout=1.0, op_timeout=8.0) as store:
            for c in clients:
                await store.open_client(c, 5)
                await store.access(key=KEY, quantity=len(clients), mode=AccessMode.PER_ACCESS, station=Station(c),
                                   holder=holder(c), now=1.0)

            async def keep_all() -> None:
                assert all(await asyncio.gather(*(store.keep_alive(c) for c in clients)))

            paused = await leader()
            cluster.stop(paused)
            try:
                started = time.monotonic()
                while time.monotonic() - started < 7:  # longer than the leases' 5 s
                    await keep_all()
                    await asyncio.sleep(0.3)
            finally:
                cluster.cont(paused)
            for _ in range(10):  # the member catches up (and may revoke what it thinks expired)
                await keep_all()
                await asyncio.sleep(0.3)
            assert sorted(s.holder.client_id for s in await store.sessions()) == sorted(clients)
            assert await store.used(KEY) == len(clients)

    run(main())
