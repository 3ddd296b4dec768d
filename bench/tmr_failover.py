"""Failover of the TMR front ends: the time from killing the front end a client runtime
uses until its program's next request (a decrement) is answered, over N kills.

A real system on loopback (tests/tmr/system.py): a 3-member etcd cluster, three upstream
runtimes, two front ends on fixed ports, one client runtime whose search list names both
twins (no virtual address), and one protected program (verifying proofs) holding a seat.
Each round kills (SIGKILL) the front end the client uses, times the program's next
`decrement 1`, then starts the killed one again. Also checks that the units count exactly.

Run alone: .venv/bin/python bench/tmr_failover.py [--kills 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.runtime.harness import Program, Runtime, machine, wait_for
from tests.tmr.system import UNITS, tmr_system

from licentia.runtime import searchlist


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="licentia-tmr-failover-") as tmp, tmr_system(Path(tmp)) as s:
        root = machine(Path(tmp) / "client-machine")
        home = Path(tmp) / "client"
        for fe in s.front_ends:
            searchlist.add(home / "servers.json", fe.address)
        client = Runtime(s.procs, home, root)
        prog = Program(s.procs, root, {"LICENTIA_HOME": str(home)}, firm_code=10_001, product_code=9,
                       firm_key=str(s.vendor.public_file))
        assert prog.first.get("verified"), prog.first
        times = []
        spent = 0
        for k in range(args.kills):
            [row] = client.sessions()
            using = row["location"].removeprefix("server ")
            [fe] = [f for f in s.front_ends if f.address == using]
            fe.kill()
            t0 = time.monotonic()
            got = prog.ask("decrement 1")
            times.append(time.monotonic() - t0)
            spent += 1
            assert got == {"units": UNITS - spent}, (k, got)
            fe.start()
            wait_for("the restarted front end to see the item", fe.available)
        times.sort()
        p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
        print(f"front-end kills: {len(times)}; time to serve again: p50 {statistics.median(times) * 1000:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms; units counted exactly: {UNITS - spent} left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
