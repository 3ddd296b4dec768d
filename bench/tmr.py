"""The TMR seat store against its floor: bare etcd transactions (aetcd) and the same
acquire+release pairs through `licentia.tmr.seats`, on a real 3-member etcd cluster on
loopback (tests/tmr/etcd.py), at 10 and 100 concurrent clients.

- floor: each client has a lease; a pair is one transaction taking a random slot key among Q
  (`create_revision == 0` → put with the lease; another slot on a collision) and one delete.
- store: each client opens its lease with `SeatStore.open_client`; a pair is
  `SeatStore.access` (per-access, quantity Q) and `SeatStore.release`: what a TMR front end
  does for a program's access and release; once as is (`count=False`), once with every
  change also counting the item's seats in use (`count=True`).

Q is twice the concurrency, so a pair rarely waits for a seat. All clients run in this one
asyncio process (one gRPC channel per client side), closed loop, one pair in flight each.
- front end (`--front-end`): the same pairs as a client runtime sends them to a TMR front end
  (`licentia tmr serve`, TLS, one connection per client) of a real system on loopback
  (tests/tmr/system.py: three upstream runtimes, two front ends) with its default client
  timeout (30 s; each client keeps its lease alive every 7.5 s, as a runtime does) and poll
  interval (1 s), against the bare loop on that system's cluster, and the same pairs sent to
  a single network server (one runtime, the same item without TMR, TLS).

Run alone: .venv/bin/python bench/tmr.py [--conc 10,100] [--window 5] [--front-end]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.tmr.etcd import EtcdCluster

import benchlib as B

FRONT_END_CLIENT_TIMEOUT = 30.0  # seconds: `licentia tmr serve`'s default


async def _closed_loop(conc: int, pair: Any, warmup: float, window: float) -> dict[str, Any]:
    """Run `pair(i)` in `conc` loops; count pairs and their latencies inside the window."""
    start = time.monotonic() + warmup
    end = start + window
    lat: list[float] = []
    count = 0

    async def worker(i: int) -> None:
        nonlocal count
        while True:
            t0 = time.monotonic()
            if t0 >= end:
                return
            await pair(i)
            t1 = time.monotonic()
            if t0 >= start and t1 <= end:
                count += 1
                lat.append(t1 - t0)

    await asyncio.gather(*(worker(i) for i in range(conc)))
    lat.sort()
    return {
        "pairs_s": round(count / window, 1),
        "p50_ms": round(1000 * statistics.median(lat), 2) if lat else None,
        "p99_ms": round(1000 * lat[int(0.99 * (len(lat) - 1))], 2) if lat else None,
    }


async def bare(endpoints: list[str], conc: int, warmup: float, window: float) -> dict[str, Any]:
    import aetcd

    host, port = endpoints[0].rsplit(":", 1)
    client = aetcd.Client(host=host, port=int(port), timeout=5)
    q = 2 * conc
    prefix = f"/bench/bare/{conc}/".encode()
    leases = [await client.lease(60) for _ in range(conc)]
    t = client.transactions

    async def pair(i: int) -> None:
        while True:
            key = prefix + b"%06d" % random.randrange(q)
            ok, _ = await client.transaction(
                compare=[t.create(key) == 0], success=[t.put(key, b"%d" % i, lease=leases[i].id)], failure=[]
            )
            if ok:
                break
        await client.delete(key)

    try:
        return await _closed_loop(conc, pair, warmup, window)
    finally:
        for lease in leases:
            await client.revoke_lease(lease.id)
        await client.close()


async def store(endpoints: list[str], conc: int, warmup: float, window: float, count: bool) -> dict[str, Any]:
    from licentia.core.seats import Holder, ItemKey, Station
    from licentia.model import AccessMode
    from licentia.tmr.seats import SeatStore

    key = ItemKey("131-1000001", 10001, 1)
    q = 2 * conc
    async with SeatStore(endpoints, prefix=f"/bench/store/{conc}/{count}/", count=count) as s:
        holders = [Holder.network(f"client-{i}", program="bench") for i in range(conc)]
        stations = [Station(f"host-{i}") for i in range(conc)]
        for h in holders:
            assert h.client_id is not None
            await s.open_client(h.client_id, 60)

        async def pair(i: int) -> None:
            g = await s.access(key=key, quantity=q, mode=AccessMode.PER_ACCESS, station=stations[i],
                               holder=holders[i], now=time.time())
            await s.release(g.handle, time.time())

        try:
            return await _closed_loop(conc, pair, warmup, window)
        finally:
            for h in holders:
                assert h.client_id is not None
                await s.close_client(h.client_id)


async def front_end(address: str, pin: str, conc: int, warmup: float, window: float) -> dict[str, Any]:
    from tests.tmr.system import program

    from licentia.protocol.aio import AsyncClient
    from licentia.protocol.tls import client_context

    clients = []
    for i in range(conc):
        c = await AsyncClient.connect(address, ssl_context=client_context(fingerprint=pin), timeout=30)
        await c.hello({"kind": "runtime", "client_id": f"bench-client-{conc}-{i:04d}", "host": "bench"})
        clients.append(c)

    async def pair(i: int) -> None:
        c = clients[i]
        g = await c.request("access", firm=10_001, product=9, mode="per-access", where="local", client=program(i))
        await c.request("release", handle=g["handle"])

    async def keep_alive() -> None:  # what a client runtime does: its lease lives on its keep-alives
        while True:
            await asyncio.sleep(FRONT_END_CLIENT_TIMEOUT / 4)  # a runtime's pace (RuntimeConfig.keepalive_for)
            await asyncio.gather(*(c.request("keepalive") for c in clients))

    ka = asyncio.ensure_future(keep_alive())
    try:
        return await _closed_loop(conc, pair, warmup, window)
    finally:
        ka.cancel()
        for c in clients:
            await c.close()


def single_server(s: Any, item: Any, max_peer: int) -> Any:
    """A network server of the same vendor, not TMR: one runtime with `item` in a soft
    container of its own, started in the system `s` (its processes stop with it)."""
    import socket

    from tests.runtime.harness import Runtime, make_home

    home = s.tmp / "single-server"
    make_home(home, s.tmp / "machine", s.vendor, [item])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return Runtime(s.procs, home, s.tmp / "machine", "--network", "--network-port", str(port),
                   "--network-address", "127.0.0.1", "--max-connections-per-peer", str(max_peer))


def main_front_end(concs: list[int], warmup: float, window: float) -> int:
    import dataclasses
    import tempfile

    from tests.tmr.system import tmr_system

    from licentia.model import ProductItem

    rows = []
    doc: dict[str, Any] = {"versions": B.versions(), "window_s": window, "results": []}
    item = ProductItem(product_code=9, quantity=2 * max(concs), tmr_id=1)
    # the front end as deployed (its defaults), not the tests' quick timeouts
    args = ("--max-connections-per-peer", str(max(concs) + 16), "--client-timeout", str(FRONT_END_CLIENT_TIMEOUT),
            "--poll-interval", "1.0")
    with tempfile.TemporaryDirectory(prefix="licentia-bench-tmr-") as tmp, tmr_system(Path(tmp), item, args) as s:
        fe = s.front_ends[0]
        single = single_server(s, dataclasses.replace(item, tmr_id=None), max(concs) + 16)
        for conc in concs:
            floor = asyncio.run(bare(s.etcd.endpoints, conc, warmup, window))
            ours = asyncio.run(front_end(fe.address, fe.status["certificate_pin"], conc, warmup, window))
            one = asyncio.run(front_end(single.network_address, single.status["certificate_pin"], conc, warmup, window))
            ratio = ours["pairs_s"] / floor["pairs_s"] if floor["pairs_s"] else 0.0
            one_ratio = one["pairs_s"] / floor["pairs_s"] if floor["pairs_s"] else 0.0
            rows.append([conc, "bare aetcd (floor)", floor["pairs_s"], floor["p50_ms"], floor["p99_ms"], "1.00"])
            rows.append([conc, "TMR front end", ours["pairs_s"], ours["p50_ms"], ours["p99_ms"], f"{ratio:.2f}"])
            rows.append([conc, "single network server", one["pairs_s"], one["p50_ms"], one["p99_ms"], f"{one_ratio:.2f}"])
            doc["results"].append({"conc": conc, "bare_aetcd": floor, "front_end": {**ours, "ratio": round(ratio, 2)},
                                   "single_server": {**one, "ratio": round(one_ratio, 2)}})
    print("TMR front end: access+release pairs/s through `licentia tmr serve` (loopback, this machine)")
    print(B.table(["clients", "path", "pairs/s", "p50 ms", "p99 ms", "/ floor"], rows,
                  right=[True, False, True, True, True, True]))
    print(f"results: {B.write_results('tmr-front-end', doc)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conc", default="10,100", help="concurrent clients, comma-separated")
    parser.add_argument("--window", type=float, default=5.0, help="measured seconds per figure")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--front-end", action="store_true", help="through a TMR front end of a real system")
    args = parser.parse_args()
    concs = [int(c) for c in args.conc.split(",")]
    if args.front_end:
        return main_front_end(concs, args.warmup, args.window)
    rows = []
    doc: dict[str, Any] = {"versions": B.versions(), "window_s": args.window, "results": []}
    with EtcdCluster() as cluster:
        for conc in concs:
            floor = asyncio.run(bare(cluster.endpoints, conc, args.warmup, args.window))
            rows.append([conc, "bare aetcd (floor)", floor["pairs_s"], floor["p50_ms"], floor["p99_ms"], "1.00"])
            result: dict[str, Any] = {"conc": conc, "bare_aetcd": floor}
            for count in (False, True):
                ours = asyncio.run(store(cluster.endpoints, conc, args.warmup, args.window, count))
                ratio = ours["pairs_s"] / floor["pairs_s"] if floor["pairs_s"] else 0.0
                name = "seat store, counting" if count else "seat store"
                result[name] = {**ours, "ratio": round(ratio, 2)}
                rows.append([conc, name, ours["pairs_s"], ours["p50_ms"], ours["p99_ms"], f"{ratio:.2f}"])
            doc["results"].append(result)
    print("TMR seats: acquire+release pairs/s on a 3-member etcd cluster (loopback, this machine)")
    print(B.table(["clients", "path", "pairs/s", "p50 ms", "p99 ms", "/ floor"], rows,
                  right=[True, False, True, True, True, True]))
    path = B.write_results("tmr", doc)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
