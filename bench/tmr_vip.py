"""Failover of the TMR front ends through one virtual address: the time from killing the
front end that holds the address until a program's next request (a decrement) is answered
through the same address, now on the twin, over N kills.

Real processes in network namespaces (tests/tmr/vip.py; root, `ip netns` and keepalived
needed): a bridge, a 3-member etcd cluster and three upstream runtimes in the root
namespace, each front end (`licentia tmr serve` and keepalived with the keepalived.conf of
`licentia tmr init`, advert_int 0.5 s) in a namespace of its own, a client runtime whose
search list names only the virtual address and a protected program (verifying proofs) in a
third. Each round kills (SIGKILL) the front end holding the address, times the program's
next `decrement 1`, then starts the killed one again and waits for its keepalived to be a
backup. Also checks that the units count exactly and that the address moved every time.

Run alone: .venv/bin/python bench/tmr_vip.py [--kills 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.runtime.harness import wait_for
from tests.tmr.system import UNITS
from tests.tmr.vip import kill_holder, served_again, vip_system, vip_unavailable


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    args = ap.parse_args()
    why = vip_unavailable()
    if why:
        print(f"tmr_vip: not run: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="licentia-tmr-vip-") as tmp, vip_system(Path(tmp)) as s:
        _runtime, prog = s.client()
        assert prog.first.get("verified") and prog.first.get("server") == s.server, prog.first
        times = []
        spent = 0
        for k in range(args.kills):
            killed, other = kill_holder(s)
            got, took = served_again(prog, "decrement 1")
            times.append(took)
            spent += 1
            assert got == {"units": UNITS - spent}, (k, got)
            assert s.holder() is other, f"kill {k}: the address did not move to {other.name}"
            killed.front_end.start()
            wait_for(f"{killed.name} ready again", killed.ready, timeout=30, interval=0.1)
        times.sort()
        p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
        print(f"front-end kills through the virtual address {s.server}: {len(times)}; time to serve again: "
              f"p50 {statistics.median(times) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
              f"max {times[-1] * 1000:.0f} ms; units counted exactly: {UNITS - spent} left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
