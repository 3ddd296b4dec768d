"""`licentia report usage` over a generated usage log: lines per second and peak memory.

Writes a log of a busy network server with the runtime's own writer
(`licentia.runtime.usagelog.UsageLog`, chained and signed, rotated every 16 MiB): a year
of grants, releases and denials of three products by 400 users on 120 hosts, some seats
charged to access-list rules. Then runs `licentia report usage` (and `report denials`) on
it as a user would, in a subprocess, and reads the child's CPU time and peak resident set
(`os.wait4`). Memory is flat when the peak of the full log is close to that of a tenth of it.

Run alone: .venv/bin/python bench/report.py [--lines 1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PRODUCTS = ((10001, 7, 40), (10001, 8, 15), (10002, 1, 5))  # firm, product, quantity
USERS = 400
HOSTS = 120
YEAR = 365 * 86400.0
START = 1767225600.0  # 2026-01-01 UTC


def generate(logs: Path, lines: int, seed: int = 7) -> int:
    """Write about `lines` seat events; returns the number of lines written."""
    from licentia.core.seats import Event, EventKind, Holder, ItemKey, ReleaseReason, Station
    from licentia.crypto import new_signing_key
    from licentia.model import AccessMode, ErrorCode
    from licentia.runtime.usagelog import UsageLog

    rnd = random.Random(seed)
    log = UsageLog(logs / "usage.jsonl", new_signing_key())
    holders = [Holder.network(f"rt-{i:032x}", program="cad", user=f"user{i}", host=f"pc-{i % HOSTS}.corp.example")
               for i in range(USERS)]
    stations = [Station(f"pc-{i % HOSTS}") for i in range(USERS)]
    keys = [ItemKey("130-1000001", f, p) for f, p, _q in PRODUCTS]
    quantities = [q for _f, _p, q in PRODUCTS]
    used = [0] * len(PRODUCTS)
    held: list[list[tuple[int, int]]] = [[] for _ in PRODUCTS]  # (handle, user)
    step = YEAR / lines
    at = START
    handle = 0
    written = 0
    mode = AccessMode.PER_ACCESS
    while written < lines:
        at += rnd.expovariate(1.0 / step)
        k = rnd.randrange(len(PRODUCTS))
        u = rnd.randrange(USERS)
        # the busier the product, the likelier a release
        if held[k] and rnd.random() < 0.3 + 0.7 * used[k] / quantities[k]:
            h, owner = held[k].pop(rnd.randrange(len(held[k])))
            used[k] -= 1
            log.record(Event(EventKind.RELEASE, at, keys[k], mode, stations[owner], holders[owner], h, used[k],
                             ReleaseReason.PROGRAM, None))
        elif used[k] >= quantities[k] or rnd.random() < 0.02:
            code = ErrorCode.NO_MORE_LICENSES if used[k] >= quantities[k] else ErrorCode.ACCESS_LIST_DENIED
            log.record(Event(EventKind.DENY, at, keys[k], mode, stations[u], holders[u], None, used[k], None, code))
        else:
            handle += 1
            used[k] += 1
            held[k].append((handle, u))
            ev = Event(EventKind.GRANT, at, keys[k], mode, stations[u], holders[u], handle, used[k], None, None)
            if k == 0 and u % 10 < 3:
                log.record(ev, {"charge": "support" if u % 10 == 0 else "development"})
            else:
                log.record(ev)
        written += 1
        if log.pending >= 4096:
            log.flush()
    log.close()
    return written


def measure(home: Path, *args: str) -> dict[str, Any]:
    """Run the report in a child and take its CPU time and peak RSS from wait4."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LICENTIA_")}
    argv = [sys.executable, "-m", "licentia.cli.main", "--home", str(home), "report", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    _pid, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"report failed ({proc.returncode}): {err.decode()[-2000:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
            "peak_rss_mib": round(ru.ru_maxrss / 1024, 1), "stdout": out.decode()}


def baseline(home: Path) -> dict[str, Any]:
    """Peak RSS and CPU of the command doing nothing but start (`licentia report --help`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LICENTIA_")}
    proc = subprocess.Popen([sys.executable, "-c", "import licentia.cli.main, licentia.cli.report, "
                             "licentia.runtime.reports, licentia.core.usage"],
                            env=env, stdout=subprocess.DEVNULL)
    _pid, _status, ru = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return {"cpu_s": round(ru.ru_utime + ru.ru_stime, 2), "peak_rss_mib": round(ru.ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--keep", help="generate into (or reuse) this home instead of a temporary one")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    with tempfile.TemporaryDirectory(prefix="licentia-report-bench-") as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        results: dict[str, Any] = {"lines": args.lines}
        for label, lines in (("tenth", args.lines // 10), ("full", args.lines)):
            home = base / f"home-{lines}"
            logs = home / "logs"
            if not (logs / "usage.jsonl").exists():
                logs.mkdir(parents=True, exist_ok=True)
                t0 = time.perf_counter()
                generate(logs, lines)
                results[f"generate_{label}_s"] = round(time.perf_counter() - t0, 1)
            size = sum(p.stat().st_size for p in logs.glob("*.jsonl"))
            total_lines = 0
            for p in logs.glob("*.jsonl"):
                with open(p, "rb") as f:
                    total_lines += sum(block.count(b"\n") for block in iter(lambda f=f: f.read(1 << 22), b""))
            r = measure(home, "usage", "--from", "2026-01-01", "--to", "2027-01-01")
            d = measure(home, "denials", "--from", "2026-01-01", "--to", "2027-01-01")
            results[label] = {
                "log_lines": total_lines, "log_mib": round(size / (1 << 20), 1), "files": len(list(logs.glob("*.jsonl"))),
                "usage": {k: v for k, v in r.items() if k != "stdout"},
                "usage_lines_per_s_wall": round(total_lines / r["wall_s"]),
                "usage_lines_per_s_cpu": round(total_lines / r["cpu_s"]),
                "denials": {k: v for k, v in d.items() if k != "stdout"},
            }
            if label == "full":
                results["usage_output_head"] = r["stdout"].splitlines()[:12]
        results["startup"] = baseline(base)
        results["load_average"] = os.getloadavg()
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
