"""Run every benchmark under bench/ in turn and print each one's table (`make bench`).

A benchmark is a bench/*.py script with a `main()`; the modules that bench/access_release.py
drives itself (PARTS) and the shared helpers are not run on their own. Each script runs in
its own process with a time limit; a failure is reported and the others still run.

    .venv/bin/python bench/run_all.py [--quick] [--only access_release,container_open]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
FIRST = ("access_release.py", "container_open.py", "central_activations.py")
PARTS = {"benchlib.py", "floor_server.py", "redis_semaphore.py", "durable_decrements.py", "start_cost.py",
         "session_memory.py", "run_all.py"}
QUICK_FLAGS = {"access_release.py": ["--quick"]}
LIMIT_S = 30 * 60


def benchmarks() -> list[Path]:
    found = sorted(p.name for p in BENCH.glob("*.py") if p.name not in PARTS and not p.name.startswith("_"))
    ordered = [n for n in FIRST if n in found] + [n for n in found if n not in FIRST]
    return [BENCH / n for n in ordered]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to the benchmarks that have it")
    parser.add_argument("--only", help="comma-separated script names (without .py) to run")
    args = parser.parse_args()
    scripts = benchmarks()
    if args.only:
        wanted = {n.strip().removesuffix(".py") + ".py" for n in args.only.split(",")}
        scripts = [s for s in scripts if s.name in wanted]
    failed: list[str] = []
    for script in scripts:
        flags = QUICK_FLAGS.get(script.name, []) if args.quick else []
        print(f"\n==== {script.name} {' '.join(flags)}".rstrip() + " " + "=" * 40, flush=True)
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, str(script), *flags], cwd=BENCH.parent)
        try:
            code = proc.wait(LIMIT_S)
        except subprocess.TimeoutExpired:
            print(f"{script.name}: stopping it after {LIMIT_S} s", flush=True)
            proc.send_signal(signal.SIGINT)  # its clean-up stops the servers it started
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            code = -1
        print(f"---- {script.name}: {'ok' if code == 0 else f'FAILED ({code})'} in "
              f"{time.monotonic() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        return 1
    print(f"\nall {len(scripts)} benchmarks ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
