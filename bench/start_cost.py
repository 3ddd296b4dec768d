"""What a protected program pays: at start (a new process that imports the SDK, takes a
verified license and releases it) against a bare `python -c pass` in the same run, and
warm (access + release in a process that already holds its connection).

The program talks to the runtime the way a real one does: `LICENTIA_HOME` names the
runtime's home, the SDK finds its Unix socket, verifies the answer with the firm's public
key (the license's signature and the container's proof over a fresh challenge).
Processes run on the load CPU; launches alternate between the bare interpreter and the
program so drift hits both alike.

Run alone: .venv/bin/python bench/start_cost.py [--starts 15] [--warm 300]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import benchlib as B

PROGRAM = """
import sys, time
t0 = time.perf_counter()
import licentia
t1 = time.perf_counter()
lic = licentia.access(int(sys.argv[1]), int(sys.argv[2]), firm_key=sys.argv[3], verify=sys.argv[4] == "1")
t2 = time.perf_counter()
lic.release()
t3 = time.perf_counter()
if len(sys.argv) > 5:
    print('{"import_ms": %.2f, "access_ms": %.2f, "release_ms": %.2f}' % (1e3 * (t1 - t0), 1e3 * (t2 - t1), 1e3 * (t3 - t2)))
"""

WARM = """
import json, statistics, sys, time
import licentia
firm, product, key, n = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
out = {}
for verify in (True, False):
    for _ in range(20):
        licentia.access(firm, product, firm_key=key, verify=verify).release()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        lic = licentia.access(firm, product, firm_key=key, verify=verify)
        lic.release()
        samples.append(time.perf_counter() - t)
    samples.sort()
    name = "verified" if verify else "unverified"
    out[name] = {"median_ms": 1e3 * statistics.median(samples), "p90_ms": 1e3 * samples[int(0.9 * (n - 1))], "n": n}
print(json.dumps(out))
"""


def _time(argv: list[str], env: dict[str, str]) -> float:
    """Wall time of one process. Waits with a blocking waitpid (subprocess's wait with a
    timeout polls in steps of up to 50 ms, too coarse here); a timer kills a hung child."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    guard = threading.Timer(60.0, proc.kill)
    guard.start()
    try:
        code = proc.wait()
    finally:
        guard.cancel()
    elapsed = time.perf_counter() - t
    if code != 0:
        raise RuntimeError(f"{argv[-4:]} exited with {code}")
    return elapsed


def measure(home: B.BenchHome, *, starts: int, warm: int) -> dict[str, Any]:
    """Needs a runtime serving `home`."""
    B.compile_bytecode()
    env = B.child_env(LICENTIA_HOME=str(home.path))
    args = [str(home.firm), str(B.PAIR_PRODUCT), str(home.firm_key_file)]
    bare = B.pinned(B.LOAD_CPU, [B.PY, "-c", "pass"])
    program = B.pinned(B.LOAD_CPU, [B.PY, "-c", PROGRAM, *args, "1"])
    unverified = B.pinned(B.LOAD_CPU, [B.PY, "-c", PROGRAM, *args, "0"])
    for argv in (bare, program, unverified):  # page cache and the runtime's first connection
        _time(argv, env)
    samples: dict[str, list[float]] = {"bare": [], "program": [], "unverified": []}
    for _ in range(starts):
        samples["bare"].append(_time(bare, env))
        samples["program"].append(_time(program, env))
        samples["unverified"].append(_time(unverified, env))
    split = []
    for _ in range(5):
        done = subprocess.run(B.pinned(B.LOAD_CPU, [B.PY, "-c", PROGRAM, *args, "1", "split"]), env=env,
                              capture_output=True, text=True, check=True, timeout=60)
        split.append(json.loads(done.stdout))
    done = subprocess.run(B.pinned(B.LOAD_CPU, [B.PY, "-c", WARM, *args, str(warm)]), env=env, capture_output=True,
                          text=True, check=True, timeout=120)
    out: dict[str, Any] = {name: {"median_ms": 1e3 * B.median(v), "min_ms": 1e3 * min(v), "n": len(v)}
                           for name, v in samples.items()}
    out["split_ms"] = {k: B.median(s[k] for s in split) for k in split[0]}
    out["warm"] = json.loads(done.stdout)
    out["added_ms"] = out["program"]["median_ms"] - out["bare"]["median_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=15)
    parser.add_argument("--warm", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="licentia-bench-") as tmp, B.Stopper() as stopper:
        home = B.make_home(Path(tmp) / "home")
        runtime = B.Runtime(stopper, home)
        result = measure(home, starts=args.starts, warm=args.warm)
        runtime.stop()
    print(json.dumps(result, indent=2))
    print("results:", B.write_results("start_cost", result))


if __name__ == "__main__":
    main()
