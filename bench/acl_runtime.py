"""An access list on the wire: access+release pairs through a real runtime (the C load
client on loopback TCP, plain accesses) with no list, and with the 1,000 rules of
`bench/acl_decide.py` in the runtime's acl.toml, runs interleaved (the list is written and
removed between runs; the runtime reloads it without a restart).

Target (issue's `bench/access_release.py` target): with 1,000 rules, the server's CPU per
pair at most 1.2 x that with no list.

Run: .venv/bin/python bench/acl_runtime.py [--runs 3] [--window 3] [--conc 1,10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import acl_decide
import benchlib as B


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def set_list(home: Path, rules: list[dict[str, Any]] | None, firm: int, product: int) -> None:
    """Write (or remove) the list and wait until the runtime logged that it reloaded it."""
    from licentia.core.acl import from_document
    from licentia.runtime.acl import save

    path = home / "acl.toml"
    log = home / "logs" / "usage.jsonl"
    before = log.read_text().count('"event":"acl-changed"') if log.exists() else 0
    if rules is None:
        if not path.exists():
            return
        path.unlink()
    else:
        for r in rules:
            if r["scope"].startswith("product"):
                r["scope"] = f"product {firm}:{product}"
        save(path, from_document({"rule": rules}))
    B.wait_for("the runtime to reload its list",
               lambda: log.read_text().count('"event":"acl-changed"') > before, timeout=30)
    time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--conc", default="1,10")
    parser.add_argument("--rules", type=int, default=1000)
    args = parser.parse_args()
    concs = [int(c) for c in args.conc.split(",")]
    loadgen = B.build_loadgen()
    results: dict[str, dict[int, list[dict[str, Any]]]] = {"no list": {c: [] for c in concs},
                                                           f"{args.rules} rules": {c: [] for c in concs}}
    with tempfile.TemporaryDirectory() as tmp, B.Stopper() as stopper:
        home = B.make_home(Path(tmp) / "home")
        runtime = B.Runtime(stopper, home, "--log-flush-interval", "0.05")
        hello = B.hello_frame()
        access = B.access_frame(home.firm, B.PAIR_PRODUCT)
        for rep in range(args.runs):
            for label, rules in (("no list", None), (f"{args.rules} rules", acl_decide.rules(args.rules))):
                set_list(home.path, rules, home.firm, B.PAIR_PRODUCT)
                for conc in concs:
                    r = B.run_loadgen(loadgen, runtime.port, conc, args.warmup, args.window, runtime.pid, hello,
                                      access)
                    r["server_us_per_pair"] = 1e6 * r["server_cpu_s"] / max(1, r["ops"])
                    results[label][conc].append(r)
                    say(f"run {rep + 1} conc {conc:>3} {label:<12} {r['ops_s']:>9,.0f} pairs/s  "
                        f"server {r['server_us_per_pair']:6.1f} µs/pair  p99 {r['p99_us']:8,.0f} µs"
                        + (f"  ERRORS {r['errors']}" if r["errors"] else ""))
        runtime.stop()
    rows = []
    base, listed = results["no list"], results[f"{args.rules} rules"]
    for conc in concs:
        a = B.median(r["server_us_per_pair"] for r in base[conc])
        b = B.median(r["server_us_per_pair"] for r in listed[conc])
        ops_a = B.median(r["ops_s"] for r in base[conc])
        ops_b = B.median(r["ops_s"] for r in listed[conc])
        rows.append((conc, f"{a:.1f}", f"{b:.1f}", f"{b / a:.2f}", f"{ops_a:,.0f}", f"{ops_b:,.0f}",
                     B.verdict(b / a <= 1.2)))
    print(B.table(("conc", "µs/pair no list", f"µs/pair {args.rules} rules", "ratio", "pairs/s no list",
                   f"pairs/s {args.rules} rules", "≤ 1.2 ×"), rows))
    print(json.dumps({"rules": args.rules, "runs": args.runs, "window": args.window}))


if __name__ == "__main__":
    main()
