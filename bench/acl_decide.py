"""What an access list costs on the license path, in-process: the seat table's
access+release alone, and with `AccessGate` in front (check, granted, released) for a list
of 0, 1 and 1,000 rules.

The 1,000 rules mix what administrators write: user rules, host denies, subnet denies of
five prefix lengths, and group rules with a maximum (forty of them reserving a seat), half
at server scope and half at the product's scope; the client matches one group rule. The
directory is not asked (the client's groups are given). This is the part of
`bench/access_release.py`'s target (1,000 rules at most 1.2 x no list) that the list adds;
the runtime's whole path (framing, protocol, logging) costs several times more, so the
ratio on the wire is smaller than the one printed here.

Run alone: .venv/bin/python bench/acl_decide.py [--pairs 20000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def rules(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        scope = "product 10001:7" if i % 2 else "server"
        kind = i % 4
        if kind == 0:
            out.append({"name": f"u{i}", "scope": scope, "user": f"user{i}"})
        elif kind == 1:
            out.append({"name": f"h{i}", "scope": scope, "host": f"host{i}", "action": "deny"})
        elif kind == 2:
            out.append({"name": f"n{i}", "scope": scope, "subnet": f"10.{i % 250}.{i // 250}.0/{24 + i % 5}",
                        "action": "deny"})
        else:
            out.append({"name": f"g{i}", "scope": scope, "group": f"grp{i}", "reserve": 1 if i < 160 else 0,
                        "max": 100_000})
    return out


def run(n_rules: int | None, pairs: int) -> float:
    """Seconds per access+release pair (median of 5 runs)."""
    from licentia.core.acl import from_document
    from licentia.core.seats import Holder, ItemKey, SeatTable, Station
    from licentia.model import AccessMode, SessionKind
    from licentia.runtime.acl import AccessGate, save

    key = ItemKey("130-1", 10001, 7, 1)
    holder = Holder.network("client-1", user="alice", host="pc-1.corp.example")
    station = Station("pc-1")
    groups = frozenset({"staff", "grp3"})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "acl.toml"
        if n_rules is not None:
            save(path, from_document({"rule": rules(n_rules)}))
        gate = AccessGate(path)
        seats = SeatTable()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for i in range(pairs):
                now = float(i)
                if n_rules is None:
                    g = seats.access(key=key, quantity=1_000_000, mode=AccessMode.PER_ACCESS, station=station,
                                     holder=holder, local=False, session=SessionKind.LOCAL, now=now)
                    for _ev in seats.release(g.handle, now).events:
                        pass
                    continue
                d = gate.check(seats, key=key, quantity=1_000_000, mode=AccessMode.PER_ACCESS, station=station,
                               holder=holder, address="192.168.1.5", groups=groups, now=now)
                g = seats.access(key=key, quantity=1_000_000, mode=AccessMode.PER_ACCESS, station=station,
                                 holder=holder, local=False, session=SessionKind.LOCAL, now=now)
                gate.granted(g, d)
                for ev in seats.release(g.handle, now).events:
                    gate.released(ev)
            times.append((time.perf_counter() - t0) / pairs)
        return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=20_000)
    args = ap.parse_args()
    base = run(None, args.pairs)
    out: dict[str, Any] = {"seat table alone (us/pair)": round(base * 1e6, 2)}
    for n in (0, 1, 1000):
        t = run(n, args.pairs)
        out[f"with a gate, {n} rules (us/pair)"] = round(t * 1e6, 2)
        out[f"ratio {n} rules / seat table alone"] = round(t / base, 2)
    import os

    out["load_average"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
