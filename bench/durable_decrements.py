"""Durable unit-counter decrements: the runtime's group commit against one fsync per decrement.

Two measurements, both at 10 concurrent clients by default:

- wire (what the targets use): two real `licentia runtime serve` processes on copies of the
  same home, one with group commit (the default) and one started with
  `--no-group-commit` (each decrement its own container transaction: write, fsync,
  rename, fsync of the directory). The compiled load client holds one handle per
  connection and sends `decrement` (1 unit) in a closed loop; a reply means the decrement
  is on disk. Runs alternate between the two runtimes.
- in-process (to isolate the commit machinery): `licentia.runtime.commit.ContainerWriter`
  with `group=True` and `group=False` over a soft container, `conc` asyncio tasks each
  awaiting its own `decrement_op`; reports the average batch.

Run alone: .venv/bin/python bench/durable_decrements.py [--runs 3] [--window 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib as B

CONC = 10


def run_wire(loadgen: Path, group: B.Runtime, single: B.Runtime, firm: int, *, runs: int, warmup: float,
             window: float, conc: int = CONC) -> dict[str, list[dict[str, Any]]]:
    """Alternating runs against the group-commit and the fsync-per-op runtime."""
    hello = B.hello_frame("decrement-load")
    access = B.access_frame(firm, B.UNITS_PRODUCT)
    out: dict[str, list[dict[str, Any]]] = {"group": [], "single": []}
    for _ in range(runs):
        for name, rt in (("group", group), ("single", single)):
            r = B.run_loadgen(loadgen, rt.port, conc, warmup, window, rt.pid, hello, access, mode="decrement")
            r["server_us_per_op"] = 1e6 * r["server_cpu_s"] / max(1, r["ops"])
            out[name].append(r)
    return out


def run_in_process(home: B.BenchHome, *, seconds: float, conc: int = CONC) -> dict[str, dict[str, Any]]:
    """ContainerWriter group / per-op in a child process pinned to the server CPU."""
    argv = [B.PY, __file__, "in-process", "--home", str(home.path), "--seconds", f"{seconds:g}",
            "--conc", str(conc)]
    done = subprocess.run(B.pinned(B.SERVER_CPU, argv), capture_output=True, text=True, env=B.child_env(),
                          timeout=4 * seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"in-process decrement benchmark failed: {done.stderr.strip()[-800:]}")
    result: dict[str, dict[str, Any]] = json.loads(done.stdout)
    return result


def _in_process(home: Path, seconds: float, conc: int) -> dict[str, dict[str, Any]]:
    from licentia.cli.demo import DEMO_FIRM
    from licentia.containers import ContainerStore
    from licentia.runtime.commit import ContainerWriter
    from licentia.runtime.licenses import decrement_op

    store = ContainerStore(home / "containers", B.machine_fingerprint())
    records = [r for r in store.inspect_all(int(time.time())) if r.container is not None]
    container = records[0].container
    item_id = container.read().find(DEMO_FIRM, B.UNITS_PRODUCT)[0].item_id

    async def measure(group: bool) -> dict[str, Any]:
        writer = ContainerWriter(container, group=group)
        lat: list[float] = []
        warm_end = time.perf_counter() + 0.3
        end = warm_end + seconds
        t_before = writer.transactions
        o_before = writer.operations

        async def client() -> None:
            while True:
                t0 = time.perf_counter()
                if t0 >= end:
                    return
                await writer.submit(decrement_op(DEMO_FIRM, item_id, 1, int(time.time())))
                t1 = time.perf_counter()
                if warm_end <= t0 and t1 < end:
                    lat.append(t1 - t0)

        await asyncio.gather(*(client() for _ in range(conc)))
        writer.close()
        lat.sort()
        ops = writer.operations - o_before
        return {"ops_s": len(lat) / seconds, "p50_us": 1e6 * lat[len(lat) // 2] if lat else 0.0,
                "p99_us": 1e6 * lat[int(0.99 * (len(lat) - 1))] if lat else 0.0,
                "avg_batch": ops / max(1, writer.transactions - t_before)}

    return {"group": asyncio.run(measure(True)), "single": asyncio.run(measure(False))}


def summary(wire: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    return {name: {k: B.median(r[k] for r in runs) for k in ("ops_s", "p50_us", "p99_us", "server_us_per_op")}
            for name, runs in wire.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("in-process")
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--conc", type=int, default=CONC)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--window", type=float, default=3.0)
    args = parser.parse_args()
    if args.command == "in-process":
        json.dump(_in_process(args.home, args.seconds, args.conc), sys.stdout)
        return
    loadgen = B.build_loadgen()
    with tempfile.TemporaryDirectory(prefix="licentia-bench-") as tmp, B.Stopper() as stopper:
        home = B.make_home(Path(tmp) / "home")
        single_home = B.copy_home(home, Path(tmp) / "home-fsync-per-op")
        inproc_home = B.copy_home(home, Path(tmp) / "home-in-process")
        group = B.Runtime(stopper, home)
        single = B.Runtime(stopper, single_home, "--no-group-commit")
        wire = run_wire(loadgen, group, single, home.firm, runs=args.runs, warmup=args.warmup, window=args.window)
        group.stop()
        single.stop()
        inproc = run_in_process(inproc_home, seconds=args.window)
    s = summary(wire)
    rows = [[f"wire, {name}", f"{v['ops_s']:,.0f}", f"{v['p50_us']:,.0f}", f"{v['p99_us']:,.0f}",
             f"{v['server_us_per_op']:,.0f}", ""] for name, v in s.items()]
    rows += [[f"in-process ContainerWriter, {name}", f"{v['ops_s']:,.0f}", f"{v['p50_us']:,.0f}",
              f"{v['p99_us']:,.0f}", "", f"{v['avg_batch']:.1f}"] for name, v in inproc.items()]
    print(B.table(["durable decrements, 10 clients", "ops/s", "p50 µs", "p99 µs", "server CPU µs/op", "avg batch"], rows))
    ratio = s["group"]["ops_s"] / max(1e-9, s["single"]["ops_s"])
    print(f"group commit / fsync per op (wire): {ratio:.1f}x  {B.verdict(ratio >= 6)} (target >= 6x)")
    print("results:", B.write_results("durable_decrements", {"wire": wire, "in_process": inproc}))


if __name__ == "__main__":
    main()
