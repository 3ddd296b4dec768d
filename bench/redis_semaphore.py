"""The same seat semaphore in Redis, as Lua scripts called with EVALSHA from redis-py
(asyncio, hiredis when installed): what a Python vendor would otherwise build.

- `RedisServer`: a throw-away `redis-server` on a free loopback port, no persistence,
  pinned to a CPU; stopped by its PID.
- `run(port, conc, ...)`: `conc` closed-loop connections spread over several client
  processes (all on the load CPU), one access+release pair in flight per connection;
  the processes share one measured window given as wall-clock times, and the server's
  CPU is read from /proc over that window.
- `python bench/redis_semaphore.py client ...` is one such client process.

Run alone: .venv/bin/python bench/redis_semaphore.py [--conc 10] [--window 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

import benchlib as B

ACCESS_LUA = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then return -212 end
redis.call('INCR', KEYS[1])
local h = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[3], h, ARGV[2])
return h
"""

RELEASE_LUA = """
local holder = redis.call('HGET', KEYS[3], ARGV[1])
if not holder then return -106 end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('DECR', KEYS[1])
return 0
"""

KEYS = ("seats:used:10001:1", "seats:next", "seats:sessions")
LIMIT = 1_000_000_000


class RedisServer:
    def __init__(self, stopper: B.Stopper, cpu: str = B.SERVER_CPU) -> None:
        import shutil

        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is missing: apt-get install redis-server (make setup does)")
        self.port = B.free_port()
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        argv = [exe, "--port", str(self.port), "--bind", B.HOST, "--save", "", "--appendonly", "no",
                "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning", "--protected-mode", "yes"]
        self.proc = stopper.spawn(B.pinned(cpu, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  stdin=subprocess.DEVNULL)
        self.stopper = stopper
        self.pid = self.proc.pid

        def ready() -> bool:
            import redis

            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                return bool(redis.Redis(host=B.HOST, port=self.port, socket_timeout=1).ping())
            except redis.RedisError:
                return False

        B.wait_for("redis-server to start", ready, timeout=20)

    def stop(self) -> None:
        import shutil

        self.stopper.stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def processes_for(conc: int) -> list[int]:
    """How `conc` connections are spread over client processes."""
    n = 1 if conc < 10 else 2 if conc < 50 else 4
    return [conc // n + (1 if i < conc % n else 0) for i in range(n)]


def run(port: int, conc: int, warmup: float, window: float, server_pid: int) -> dict[str, Any]:
    """One measured run: pairs/s, p50/p99 of a pair, server and client CPU."""
    lead = 2.0  # for the client processes to start, import redis and connect
    t_warm = time.time() + lead
    t_start = t_warm + warmup
    t_end = t_start + window
    procs = []
    for n in processes_for(conc):
        argv = [B.PY, __file__, "client", "--port", str(port), "--conc", str(n), "--warm-at", repr(t_warm),
                "--start-at", repr(t_start), "--end-at", repr(t_end)]
        procs.append(subprocess.Popen(B.pinned(B.LOAD_CPU, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=B.child_env()))
    try:
        time.sleep(max(0.0, t_start - time.time()))
        cpu0, busy0 = B.cpu_seconds(server_pid), B.cpus_busy()
        time.sleep(max(0.0, t_end - time.time()))
        cpu1, busy1 = B.cpu_seconds(server_pid), B.cpus_busy()
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=lead + warmup + window + 30)
            if p.returncode != 0:
                raise RuntimeError(f"redis client failed: {err.strip()[-500:]}")
            outs.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    lat = sorted(x for o in outs for x in o["lat"])
    ops = sum(o["ops"] for o in outs)
    return {"ops": ops, "ops_s": ops / window, "p50_us": 1e6 * lat[(len(lat) - 1) // 2] if lat else 0.0,
            "p99_us": 1e6 * lat[int(0.99 * (len(lat) - 1))] if lat else 0.0, "server_cpu_s": cpu1 - cpu0,
            "client_cpu_s": sum(o["cpu_s"] for o in outs), "window_s": window, "processes": len(outs),
            "errors": sum(o["errors"] for o in outs), "late": any(o["late"] for o in outs),
            "cpu_busy_s": [b - a for a, b in zip(busy0, busy1, strict=True)]}


# ------------------------------------------------------------------ one client process


async def client_main(port: int, conc: int, warm_at: float, start_at: float, end_at: float) -> dict[str, Any]:
    import redis.asyncio as aioredis

    conns = [aioredis.Redis(host=B.HOST, port=port, single_connection_client=True) for _ in range(conc)]
    access_sha = await conns[0].script_load(ACCESS_LUA)
    release_sha = await conns[0].script_load(RELEASE_LUA)
    for c in conns:
        await c.ping()
    late = time.time() > warm_at
    await asyncio.sleep(max(0.0, warm_at - time.time()))
    lat: list[float] = []
    errors = 0
    cpu: dict[str, float] = {}
    clock_offset = time.time() - time.perf_counter()  # wall-clock window, fast clock in the loop
    start_pc, end_pc = start_at - clock_offset, end_at - clock_offset

    async def worker(c: Any, holder: str) -> None:
        nonlocal errors
        perf = time.perf_counter
        while True:
            t0 = perf()
            if t0 >= end_pc:
                return
            handle = await c.evalsha(access_sha, 3, *KEYS, LIMIT, holder)
            if handle < 0:
                errors += 1
                continue
            if await c.evalsha(release_sha, 3, *KEYS, handle) != 0:
                errors += 1
            t1 = perf()
            if start_pc <= t1 < end_pc:
                lat.append(t1 - t0)

    async def cpu_marks() -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu["start"] = _cpu()
        await asyncio.sleep(max(0.0, end_at - time.time()))
        cpu["end"] = _cpu()

    await asyncio.gather(cpu_marks(), *(worker(c, f"client-{i}") for i, c in enumerate(conns)))
    for c in conns:
        await c.aclose()
    return {"ops": len(lat), "lat": lat, "errors": errors, "late": late,
            "cpu_s": cpu.get("end", _cpu()) - cpu.get("start", 0.0)}


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    c = sub.add_parser("client")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--conc", type=int, required=True)
    c.add_argument("--warm-at", type=float, required=True)
    c.add_argument("--start-at", type=float, required=True)
    c.add_argument("--end-at", type=float, required=True)
    parser.add_argument("--conc", type=int, default=10)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--window", type=float, default=4.0)
    args = parser.parse_args()
    if args.command == "client":
        try:
            import uvloop

            runner: Any = uvloop.run
        except ImportError:
            runner = asyncio.run
        out = runner(client_main(args.port, args.conc, args.warm_at, args.start_at, args.end_at))
        json.dump(out, sys.stdout)
        return
    with B.Stopper() as stopper:
        server = RedisServer(stopper)
        result = run(server.port, args.conc, args.warmup, args.window, server.pid)
        server.stop()
    result["server_us_per_pair"] = 1e6 * result["server_cpu_s"] / max(1, result["ops"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
