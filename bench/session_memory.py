"""Server memory per held session: the resident set (VmRSS) of a fresh `licentia runtime
serve` before and after 10,000 handles are taken and held, divided by 10,000.

The handles are taken over loopback TCP by this process, on 10 connections that
introduce themselves as one local program (this process's PID and start time, as the
SDK does), with up to 200 requests in flight per connection. RSS is read after the
runtime had a second to write its usage log and seat snapshot. A second figure, the seat
table alone (`licentia.core.seats.SeatTable`, tracemalloc in this process), shows how much
of it the table itself takes.

Run alone: .venv/bin/python bench/session_memory.py [--sessions 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import benchlib as B

CONNECTIONS = 10
IN_FLIGHT = 200
SETTLE_S = 1.5


def _take(port: int, firm: int, sessions: int) -> list[tuple[Any, list[int]]]:
    from licentia.protocol.client import Client
    from licentia.sdk.connect import process_start

    held: list[tuple[Any, list[int]]] = []
    per = [sessions // CONNECTIONS + (1 if i < sessions % CONNECTIONS else 0) for i in range(CONNECTIONS)]
    for count in per:
        c = Client(f"{B.HOST}:{port}", timeout=30)
        c.hello({"kind": "program", "pid": os.getpid(), "pid_start": process_start(), "program": "memory-probe"})
        handles: list[int] = []
        while len(handles) < count:
            batch = [c.send("access", firm=firm, product=B.PAIR_PRODUCT, mode="per-access")
                     for _ in range(min(IN_FLIGHT, count - len(handles)))]
            handles += [int(c.receive(rid)["handle"]) for rid in batch]
        held.append((c, handles))
    return held


def _release(held: list[tuple[Any, list[int]]]) -> None:
    for c, handles in held:
        for i in range(0, len(handles), IN_FLIGHT):
            for rid in [c.send("release", handle=h) for h in handles[i : i + IN_FLIGHT]]:
                c.receive(rid)
        c.close()


def measure(stopper: B.Stopper, home: B.BenchHome, *, sessions: int) -> dict[str, Any]:
    """Starts its own runtime on `home` (no other runtime may serve it) and stops it."""
    runtime = B.Runtime(stopper, home)
    try:
        warm = _take(runtime.port, home.firm, 200)  # first-use allocations, caches, code paths
        _release(warm)
        time.sleep(SETTLE_S)
        before = B.rss_bytes(runtime.pid)
        t = time.perf_counter()
        held = _take(runtime.port, home.firm, sessions)
        took = time.perf_counter() - t
        time.sleep(SETTLE_S)
        after = B.rss_bytes(runtime.pid)
        _release(held)
        time.sleep(SETTLE_S)
        released = B.rss_bytes(runtime.pid)
    finally:
        runtime.stop()
    return {"sessions": sessions, "rss_before": before, "rss_held": after, "rss_released": released,
            "bytes_per_session": (after - before) / sessions, "take_s": took,
            "seat_table_bytes_per_session": seat_table_bytes(sessions)}


def seat_table_bytes(sessions: int) -> float:
    """Bytes the seat table holds per session, traced in this process."""
    from licentia.core.seats import Holder, ItemKey, SeatTable, Station
    from licentia.model import AccessMode, SessionKind

    station = Station("0123456789abcdef")
    holder = Holder.local(station, os.getpid(), 1.0, program="memory-probe", user="bench", host="host")
    key = ItemKey("130-1000", 10_001, 1, 1)
    table = SeatTable()
    now = time.time()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(sessions):
        table.access(key=key, quantity=None, mode=AccessMode.PER_ACCESS, station=station, holder=holder, local=True,
                     session=SessionKind.LOCAL, now=now)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return used / sessions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="licentia-bench-") as tmp, B.Stopper() as stopper:
        home = B.make_home(Path(tmp) / "home")
        result = measure(stopper, home, sessions=args.sessions)
    print(json.dumps(result, indent=2))
    per = result["bytes_per_session"]
    print(f"{per:,.0f} B per held session  {B.verdict(per < 2048)} (target < 2 KiB)")
    print("results:", B.write_results("session_memory", result))


if __name__ == "__main__":
    main()
