"""Activations per second through central (request in, update out, receipt in), with SQLite and
with PostgreSQL in one run, next to floors measured in the same run.

Rows:
- core only: make_request → issue_update → apply_update → read_receipt in one process, no
  database, no HTTP (the ceiling the cryptography allows);
- HTTP floor: GET /api/health against the same uvicorn server (no database work);
- central over SQLite and over a throw-away PostgreSQL cluster: the full online round trip
  through real HTTP on 127.0.0.1, one client, then four clients in parallel.

Client and server share one process (and its GIL) on a 2-core machine, so the figures are
a lower bound. Run: .venv/bin/python bench/central_activations.py [--count N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from licentia.central.api import create_app
from licentia.central.client import CentralClient
from licentia.central.db import Database, sqlite_url
from licentia.central.service import Central, FirmKey
from licentia.core import updates
from licentia.core.content import ContainerContent
from licentia.crypto import new_box_key, new_signing_key, signing_public_key
from licentia.model import ContainerSerial, ProductItem
from pg import PgCluster, pg_binaries

FIRM = 6_000_010
_serial = iter(range(10_000_000, 99_000_000))


def new_content() -> ContainerContent:
    return ContainerContent(ContainerSerial(130, next(_serial)), 0, new_signing_key(), new_box_key())


def core_only(firm: FirmKey, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        c = new_content()
        req = updates.read_request(updates.make_request(c, FIRM, 1, {}))
        data = updates.issue_update(req, FIRM, firm.private_key, [updates.PutItem(i + 1, ProductItem(42))], 1)
        applied = updates.apply_update(c, data, 1, in_vm=False)
        updates.read_receipt(applied.receipt)
    return n / (time.perf_counter() - t0)


class Live:
    def __init__(self, central: Central) -> None:
        self.server = uvicorn.Server(uvicorn.Config(create_app(central), host="127.0.0.1", port=0,
                                                    log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join()


def cycle(client: CentralClient, ticket: str) -> None:
    c = new_content()
    update, _ = client.activate(ticket, updates.make_request(c, FIRM, int(time.time()), {}))
    client.receipt(updates.apply_update(c, update, int(time.time()), in_vm=False).receipt)


def measure(label: str, url: str, firm: FirmKey, n: int) -> list[tuple[str, float]]:
    db = Database(url)
    db.migrate()
    central = Central(db, firm)
    central.create_product("bench", 0, 42, "Bench", {})
    tickets = [central.create_order("bench", 0, [{"product_code": 42}])["ticket"] for _ in range(2 * n)]
    live = Live(central)
    rows: list[tuple[str, float]] = []
    try:
        with CentralClient(live.url) as client:
            for _ in range(20):
                client.health()
            t0 = time.perf_counter()
            for _ in range(n):
                client.health()
            rows.append((f"{label}: HTTP floor (GET /api/health), 1 client", n / (time.perf_counter() - t0)))
            for t in tickets[:5]:
                cycle(client, t)  # warm up
            t0 = time.perf_counter()
            for t in tickets[5:n]:
                cycle(client, t)
            rows.append((f"{label}: activation round trips, 1 client", (n - 5) / (time.perf_counter() - t0)))
        rest = tickets[n:]
        clients = [CentralClient(live.url) for _ in range(4)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: cycle(clients[i % 4], rest[i]), range(len(rest))))
        rows.append((f"{label}: activation round trips, 4 clients", len(rest) / (time.perf_counter() - t0)))
        for c in clients:
            c.close()
    finally:
        live.stop()
        db.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    private = new_signing_key()
    firm = FirmKey(FIRM, "Bench", private, signing_public_key(private))
    rows = [("core only (no database, no HTTP)", core_only(firm, args.count))]
    with tempfile.TemporaryDirectory() as tmp:
        rows += measure("SQLite", sqlite_url(Path(tmp) / "central.db"), firm, args.count)
    if pg_binaries() is not None:
        with PgCluster() as pg:
            rows += measure("PostgreSQL", pg.create_database("bench"), firm, args.count)
    else:
        print("PostgreSQL binaries not installed: skipped", file=sys.stderr)
    width = max(len(r[0]) for r in rows)
    for label, rate in rows:
        print(f"{label:{width}}  {rate:8.1f} /s")


if __name__ == "__main__":
    main()
