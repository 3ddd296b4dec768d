"""TMR fault runs: random faults while client runtimes access, decrement and release through
the two front ends, with the invariant checker after every run.

One real system on loopback is kept up for all runs (tests/tmr/system.py: a 3-member etcd
cluster, three upstream runtimes, two front ends with a 5 s client lease). A run is:

    traffic (0-3 requests by random live clients)
    one random fault (the kills weigh 1, the rest 2):
                       upstream-kill (runtime SIGKILL and its etcd member SIGKILL)
                       upstream-stop (SIGSTOP the runtime: a partition from its side)
                       etcd-kill, etcd-stop (one member), front-end-kill, client-kill
                       (a client runtime goes silent holding its seats), none
    traffic (2-5 requests, then a keep-alive from every live client)
    restore what the fault took down (SIGCONT, or a restart on the same ports and data;
    every front end sees all three upstreams again before the next fault)
    the checker, reading etcd itself:
      seats-over-quantity   more seats in use than the quantity
      held-seat-lost        a handle a live client holds is not in etcd
      stray-seat            a seat in etcd that no live client holds and no dead one held
      dead-seat-kept        a dead client's seat still in etcd after its lease (5 s) + 2 s,
                            counted from the later of its death and the last fault on
                            etcd (a new leader renews every lease: etcd's rule)
      decrement-lost        fewer units spent than decrements acknowledged
      decrement-twice       more units spent than decrements sent

Prints the count of each fault kind, of each error a client saw, and of each violation;
exits 1 on any violation.

Run alone: .venv/bin/python bench/tmr_faults.py [--runs 1000] [--seed S]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.runtime.harness import wait_for
from tests.tmr.system import QUANTITY, System, access, kill_upstream, tmr_system

from licentia.core.seats import ItemKey
from licentia.model import ErrorCode, LicentiaError, ProductItem
from licentia.protocol.client import Client
from licentia.tmr.seats import SeatStore

UNITS = 10_000_000
ITEM = ProductItem(product_code=9, quantity=QUANTITY, units=UNITS, tmr_id=1)
LEASE = 5.0  # the front ends' --client-timeout (tests/tmr/system.py)
LEASE_SLACK = 1.0  # etcd expires a lease on its leader's next tick; a loaded machine adds some
ELECTION = 1.0  # etcd's election timeout: a new leader extends every lease by it plus the TTL
FAULTS = ["upstream-kill", "upstream-stop", "etcd-kill", "etcd-stop", "front-end-kill", "client-kill", "none"]
# the restarts (kills) cost seconds, the others a fraction: the cheap kinds come twice as often
WEIGHTS = [1, 2, 1, 2, 1, 2, 2]
ETCD_FAULTS = ("upstream-kill", "etcd-kill", "etcd-stop")
VIOLATIONS = ["seats-over-quantity", "held-seat-lost", "stray-seat", "dead-seat-kept", "decrement-lost",
              "decrement-twice"]


class Bench:
    def __init__(self, s: System, rng: random.Random) -> None:
        self.s = s
        self.rng = rng
        self.serial = s.front_ends[0].read_status()["serial"]
        self.key = ItemKey(self.serial, 10_001, 9, 1)
        self.generation = 0
        self.live: dict[str, list[int]] = {}  # client id -> handles it holds
        self.conns: dict[str, Client] = {}
        self.dead: list[tuple[str, float, set[int]]] = []  # client id, time it went silent, its handles
        self.acked = self.unsure = 0
        self.faults: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.violations: Counter[str] = Counter()
        self.examples: list[str] = []
        self.last_keepalive: dict[str, float] = {}
        self.identity: dict[str, dict[str, Any]] = {}
        self.expired = 0
        self.runs = 0
        self.leader_may_change = 0.0  # when a fault that may elect a new etcd leader ended
        self.fault = "start"
        self.verbose = False
        self.fe_down: set[int] = set()
        self.endpoints = [f"http://{e}" for e in s.etcd.endpoints]
        for _ in range(3):
            self._new_client()

    # -- clients -------------------------------------------------------------

    def _new_client(self) -> None:
        self.generation += 1
        self.live[f"client-{self.generation}"] = []
        self.last_keepalive[f"client-{self.generation}"] = time.monotonic()

    def _silent_too_long(self, cid: str) -> bool:
        """The bench kept client `cid` silent (restarting a part) for about its lease's time:
        its seats may rightly be gone. It is replaced by a new client."""
        if time.monotonic() - self.last_keepalive[cid] < LEASE - 1.0:
            return False
        self.expired += 1
        self._drop(cid)
        self.dead.append((cid, self.last_keepalive[cid], set(self.live.pop(cid))))
        self._new_client()
        return True

    def keepalives(self) -> None:
        for cid in list(self.live):
            if cid in self.live:
                self.request(cid, "keepalive")

    def _conn(self, cid: str) -> Client:
        c = self.conns.get(cid)
        if c is None:
            up = [i for i, f in enumerate(self.s.front_ends) if i not in self.fe_down]
            # as a client runtime does, it proves the identity it was issued: same id, lease, seats
            c = self.conns[cid] = self.s.front_ends[self.rng.choice(up)].client(cid, self.identity.setdefault(cid, {}))
        return c

    def _drop(self, cid: str) -> None:
        c = self.conns.pop(cid, None)
        if c is not None:
            c.close()

    def request(self, cid: str, op: str) -> None:
        handles = self.live[cid]
        try:
            c = self._conn(cid)
            if op == "access":
                handles.append(access(c, self.generation)["handle"])
            elif op == "decrement" and handles:
                self.unsure += 1
                c.request("decrement", handle=handles[0], units=1)
                self.unsure, self.acked = self.unsure - 1, self.acked + 1
            elif op == "release" and handles:
                c.request("release", handle=handles[-1])
                handles.pop()
            else:
                lost = c.request("keepalive", handles=handles)["lost"]
                if lost and not self._silent_too_long(cid):
                    self.violation("held-seat-lost", f"{cid}: keep-alive says {lost} lost")
                self.last_keepalive[cid] = time.monotonic()
        except LicentiaError as exc:
            self.errors[f"{op} {int(exc.code)} {exc.code.name}"] += 1
            if exc.code is ErrorCode.NETWORK_FAULT:
                self._drop(cid)  # its front end died (or the connection): it attaches to the other

    def traffic(self, n: int) -> None:
        for _ in range(n):
            cid = self.rng.choice(list(self.live))
            self.request(cid, self.rng.choice(["access", "access", "decrement", "release", "keepalive"]))

    # -- faults --------------------------------------------------------------

    def wait_restored(self) -> None:
        # every front end sees all three upstreams again before the next fault
        for fe in self.s.front_ends:
            wait_for("the front end to see all upstreams", lambda fe=fe: all(
                u["reachable"] for u in fe.read_status()["upstreams"]), timeout=60)

    def run(self) -> None:
        s = self.s
        self.traffic(self.rng.randrange(4))
        self.wait_restored()
        self.runs += 1
        fault = self.fault = self.rng.choices(FAULTS, WEIGHTS)[0]
        self.faults[fault] += 1
        i = self.rng.randrange(3)
        if self.verbose:
            print(f"  fault {fault} {i}", flush=True)
        restore: Callable[[], None] | None = None
        if fault == "upstream-kill":
            kill_upstream(s, i)

            def restore() -> None:
                s.etcd.restart(i)
                self.keepalives()
                s.upstreams[i].start()
        elif fault == "upstream-stop":
            proc = s.upstreams[i].proc
            assert proc is not None
            proc.send_signal(signal.SIGSTOP)
            restore = lambda: proc.send_signal(signal.SIGCONT)  # noqa: E731
        elif fault == "etcd-kill":
            s.etcd.kill(i)
            restore = lambda: s.etcd.restart(i)  # noqa: E731
        elif fault == "etcd-stop":
            s.etcd.stop(i)
            restore = lambda: s.etcd.cont(i)  # noqa: E731
        elif fault == "front-end-kill":
            j = self.rng.randrange(2)
            s.front_ends[j].kill()
            self.fe_down.add(j)

            def restore() -> None:
                s.front_ends[j].start()
                self.fe_down.discard(j)
        elif fault == "client-kill":
            cid = self.rng.choice(list(self.live))
            c = self.conns.pop(cid, None)
            if c is not None:
                c.close()  # it says nothing more: no release, no keep-alive
            self.dead.append((cid, time.monotonic(), set(self.live.pop(cid))))
            self._new_client()
        self.traffic(2 + self.rng.randrange(4))
        self.keepalives()
        # restarts run on this thread: a child forked by another thread dies with that
        # thread (PR_SET_PDEATHSIG), and gRPC's fork handlers do not expect a second one
        if restore is not None:
            restore()
            self.keepalives()
        if fault in ETCD_FAULTS:
            self.leader_may_change = time.monotonic()
        self.check()

    # -- the checker ---------------------------------------------------------

    def violation(self, kind: str, what: str) -> None:
        self.violations[kind] += 1
        if self.verbose:
            print(f"  VIOLATION run {self.runs} after {self.fault}: {kind}: {what}", flush=True)
        if len(self.examples) < 20:
            self.examples.append(f"run {self.runs} after {self.fault}: {kind}: {what}")

    def check(self) -> None:
        async def read() -> tuple[int, int | None, set[int]]:
            async with SeatStore(self.endpoints, op_timeout=15) as store:
                return (await store.used(self.key), await store.units(self.key, ITEM),
                        {x.handle for x in await store.sessions()})

        # a store of its own per check, closed before the next fork: gRPC's fork handlers
        # break a child forked while its channels are open (the child never reaches exec)
        used, units, in_etcd = asyncio.run(read())
        now = time.monotonic()
        if used > QUANTITY:
            self.violation("seats-over-quantity", f"{used} seats in use of {QUANTITY}")
        for cid, hs in list(self.live.items()):
            gone = set(hs) - in_etcd
            if gone and not self._silent_too_long(cid):
                self.violation("held-seat-lost", f"{cid}: its handles {sorted(gone)} are not in etcd")
        held = {h for hs in self.live.values() for h in hs}
        still_dead = []
        dead_handles: set[int] = set()
        for cid, died, hs in self.dead:
            left = hs & in_etcd
            # a new etcd leader renews every lease: the lease's time runs from the later of the
            # client's silence and the last fault that may have changed the leader
            since = max(died, self.leader_may_change)
            if left and now - since > LEASE + ELECTION + LEASE_SLACK:
                self.violation("dead-seat-kept", f"{cid}: {sorted(left)} {now - died:.1f} s after it went silent, "
                                                 f"{now - since:.1f} s after the last leader change")
            elif left:
                still_dead.append((cid, died, hs))
                dead_handles |= left
        self.dead = still_dead
        for h in sorted(in_etcd - held - dead_handles):
            self.violation("stray-seat", f"handle {h} in etcd, held by no client")
        if units is None or units > UNITS - self.acked:
            self.violation("decrement-lost", f"{units} units left after {self.acked} acknowledged decrements")
        elif units < UNITS - self.acked - self.unsure:
            self.violation("decrement-twice", f"{units} units left after {self.acked} acknowledged, "
                                              f"{self.unsure} unanswered decrements")

    def close(self) -> None:
        for cid in list(self.conns):
            self._drop(cid)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--verbose", action="store_true", help="print each run's fault")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="licentia-tmr-faults-") as tmp, tmr_system(Path(tmp), ITEM) as s:
        b = Bench(s, rng)
        b.verbose = args.verbose
        try:
            try:
                for n in range(args.runs):
                    b.run()
                    if (n + 1) % 100 == 0:
                        print(f"  {n + 1} runs, {time.monotonic() - t0:.0f} s, "
                              f"{sum(b.violations.values())} violations", flush=True)
            except KeyboardInterrupt:  # Ctrl-C: the tables of the runs done so far
                print(f"  interrupted after {b.runs} runs", flush=True)
            b.wait_restored()
            for _ in range(int(LEASE + ELECTION + LEASE_SLACK) + 1):  # the last dead clients' leases run out
                time.sleep(1)
                b.keepalives()
            b.check()
        finally:
            b.close()
    elapsed = time.monotonic() - t0
    print(f"\nTMR fault runs: {b.runs} (seed {seed}), {elapsed:.0f} s")
    print("\n| fault | runs |\n| --- | ---: |")
    for f in FAULTS:
        print(f"| {f} | {b.faults[f]} |")
    print("\n| violation | count |\n| --- | ---: |")
    for v in VIOLATIONS:
        print(f"| {v} | {b.violations[v]} |")
    print(f"\ndecrements acknowledged: {b.acked}, unanswered: {b.unsure}; clients killed: {b.faults['client-kill']}; "
          f"clients kept silent for their lease by a slow restart (seats rightly gone): {b.expired}")
    if b.errors:
        print("\n| errors clients saw (request, code) | count |\n| --- | ---: |")
        for e, k in b.errors.most_common():
            print(f"| {e} | {k} |")
    for ex in b.examples:
        print("  ", ex)
    return 1 if b.violations else 0


if __name__ == "__main__":
    sys.exit(main())
