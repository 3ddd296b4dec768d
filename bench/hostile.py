"""A license server under hostile load: does a legitimate program still get its licenses?

One real `licentia runtime serve --network` on the demo home. A legitimate program (this
process, one connection on the loopback port, as a program on the server's machine uses)
takes and gives back a license in a closed loop the whole time. First alone (the quiet
figures), then while each attack runs against the server's ports:

- `idle`: 5,000 TCP connections to the network (TLS) port that never say anything;
- `partial`: 1,000 connections to the loopback port, each announcing a 1 MiB frame and
  sending all of it but its last byte;
- `slowloris`: 50 TLS connections that trickle a frame one byte per second;
- `keepalive`: 50 network clients sending, over and over, the largest keep-alive the
  server accepts (as many handles as its frame limit allows).

For each: the program's access+release p50/p99 against the quiet p99, the runtime's
peak RSS during the attack and its RSS 5 s after the attack ended, against its RSS at
the start. Targets: p99 at most 2x quiet, peak RSS at most 256 MiB, RSS after within 10 %
of the start. On a shared machine the others' load moves a p99 more than most attacks
do, so each attack is also held against a quiet window of the same length just before it
("p99/before"); the target is judged against that one. The runtime's CPU share over each
window is printed too, and for the keep-alives the runtime's CPU per keep-alive answered.

    .venv/bin/python bench/hostile.py            # about 3 minutes
    .venv/bin/python bench/hostile.py --quick    # shorter windows, fewer connections
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B

MIB = 1 << 20
RSS_LIMIT = 256 * MIB
COUNTS: dict[str, list[int]] = {}  # what an attack counted (the keep-alives answered)


def tls_context() -> ssl.SSLContext:
    # an attacker does not check the server; this context only gets the handshake done
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def frame(msg: dict[str, Any]) -> bytes:
    from licentia.protocol.frames import encode

    return encode(msg, 64 * MIB)


class Program(threading.Thread):
    """The legitimate program: access+release in a loop, each pair timed."""

    def __init__(self, port: int, firm: int, product: int) -> None:
        super().__init__(daemon=True)
        self.port, self.firm, self.product = port, firm, product
        self.lock = threading.Lock()
        self.samples: list[float] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.recording = False

    def run(self) -> None:
        from licentia.model import LicentiaError
        from licentia.protocol.client import Client

        while not self.stopping.is_set():
            try:
                with Client((B.HOST, self.port), timeout=30) as c:
                    c.hello({"kind": "program", "program": "legitimate"})
                    while not self.stopping.is_set():
                        t0 = time.perf_counter()
                        handle = c.request("access", firm=self.firm, product=self.product)["handle"]
                        c.request("release", handle=handle)
                        took = time.perf_counter() - t0
                        if self.recording:
                            with self.lock:
                                self.samples.append(took)
            except (LicentiaError, OSError) as exc:
                if self.recording:
                    with self.lock:
                        self.errors.append(str(exc)[:200])
                time.sleep(0.05)

    def window(self, body: Callable[[], None]) -> tuple[list[float], list[str]]:
        with self.lock:
            self.samples, self.errors = [], []
        self.recording = True
        try:
            body()
        finally:
            self.recording = False
        with self.lock:
            return list(self.samples), list(self.errors)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class RssWatch(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stopping = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.peak = max(self.peak, B.rss_bytes(self.pid))
            time.sleep(0.1)


def connect_many(n: int, port: int, payload: Callable[[int], bytes] | None = None) -> list[socket.socket]:
    """`n` plain TCP connections; each sends `payload(i)` as far as the server takes it."""
    socks: list[socket.socket] = []
    for i in range(n):
        try:
            s = socket.create_connection((B.HOST, port), timeout=5)
        except OSError as exc:
            print(f"    connection {i}: {exc}", file=sys.stderr)
            break
        socks.append(s)
        if payload is not None:
            s.setblocking(False)
            data = memoryview(payload(i))
            with contextlib.suppress(OSError):
                while data:
                    sent = s.send(data)
                    data = data[sent:]
    return socks


def close_all(socks: list[Any]) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()


@contextlib.contextmanager
def attack_idle(rt: dict[str, Any], n: int) -> Iterator[str]:
    socks = connect_many(n, rt["network_port"])
    try:
        yield f"{len(socks)} idle TCP connections on the network port"
    finally:
        close_all(socks)


@contextlib.contextmanager
def attack_partial(rt: dict[str, Any], n: int) -> Iterator[str]:
    header = struct.pack(">IB", MIB, 0xB1)
    body = header + b"\x00" * (MIB - 2)  # the announced frame but its last byte
    socks = connect_many(n, rt["local_port"], lambda i: body)
    try:
        yield f"{len(socks)} connections each sending all but the last byte of a 1 MiB frame"
    finally:
        close_all(socks)


@contextlib.contextmanager
def attack_slowloris(rt: dict[str, Any], n: int) -> Iterator[str]:
    stop = threading.Event()
    hello = frame({"id": 1, "op": "hello", "versions": [1], "client": {"kind": "runtime", "host": "x" * 4000}})
    socks: list[ssl.SSLSocket] = []
    ctx = tls_context()
    for _ in range(n):
        try:
            raw = socket.create_connection((B.HOST, rt["network_port"]), timeout=5)
            socks.append(ctx.wrap_socket(raw, server_hostname="licentia"))
        except OSError:
            break

    def trickle() -> None:
        i = 0
        while not stop.is_set() and i < len(hello):
            for s in socks:
                with contextlib.suppress(OSError):
                    s.send(hello[i : i + 1])
            i += 1
            stop.wait(1.0)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        yield f"{len(socks)} TLS connections trickling a frame one byte per second"
    finally:
        stop.set()
        t.join(5)
        close_all(socks)


def largest_keepalive() -> int:
    """How many handles the largest keep-alive the server accepts may name."""
    from licentia.runtime import config

    cfg = config.RuntimeConfig()
    named = getattr(cfg, "max_keepalive_handles", None)
    if isinstance(named, int) and named > 0:
        return named
    limit = int(getattr(cfg, "max_program_frame", 0) or cfg.max_frame)
    return max(1, (limit - 64) // 5)  # a handle above 65535 packs in 5 bytes


@contextlib.contextmanager
def attack_keepalive(rt: dict[str, Any], n: int) -> Iterator[str]:
    stop = threading.Event()
    handles = largest_keepalive()
    msg = frame({"id": 2, "op": "keepalive", "handles": list(range(1 << 20, (1 << 20) + handles))})
    hello = frame({"id": 1, "op": "hello", "versions": [1], "client": {"kind": "runtime", "host": "attacker"}})
    ctx = tls_context()
    sent = COUNTS["keepalives"] = [0]

    def client() -> None:
        try:
            raw = socket.create_connection((B.HOST, rt["network_port"]), timeout=10)
            s = ctx.wrap_socket(raw, server_hostname="licentia")
            s.sendall(hello)
            s.recv(65536)
            while not stop.is_set():
                s.sendall(msg)
                s.recv(65536)
                sent[0] += 1
        except OSError:
            return

    threads = [threading.Thread(target=client, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    try:
        yield f"{n} network clients sending keep-alives naming {handles:,} handles ({len(msg) / MIB:.2f} MiB)"
    finally:
        stop.set()
        for t in threads:
            t.join(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter windows and fewer connections")
    parser.add_argument("--window", type=float, default=None, help="seconds each attack is held")
    args = parser.parse_args()
    window = args.window or (3.0 if args.quick else 8.0)
    scale = 0.2 if args.quick else 1.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

    attacks: list[tuple[str, Callable[[dict[str, Any], int], contextlib.AbstractContextManager[str]], int]] = [
        ("idle", attack_idle, int(5000 * scale)),
        ("partial", attack_partial, int(1000 * scale)),
        ("slowloris", attack_slowloris, int(50 * scale) or 1),
        ("keepalive", attack_keepalive, int(50 * scale) or 1),
    ]
    rows: list[list[Any]] = []
    cpu_of = B.cpu_seconds
    results: dict[str, Any] = {"versions": B.versions(), "window_s": window, "attacks": {}}
    with tempfile.TemporaryDirectory(prefix="licentia-hostile-") as tmp, B.Stopper() as stopper:
        home = B.make_home(Path(tmp) / "home")
        rt = B.Runtime(stopper, home, "--network", "--network-address", B.HOST, "--network-port", "0",
                       cpu=B.SERVER_CPU)
        status = rt.status
        program = Program(rt.port, home.firm, B.PAIR_PRODUCT)
        program.start()
        time.sleep(1.0)
        start_rss = B.rss_bytes(rt.pid)
        cpu0 = cpu_of(rt.pid)
        quiet, quiet_errors = program.window(lambda: time.sleep(window))
        quiet_cpu = (cpu_of(rt.pid) - cpu0) / window
        quiet_p99 = percentile(quiet, 0.99)
        rows.append(["quiet", len(quiet), f"{percentile(quiet, 0.5) * 1e6:,.0f}", f"{quiet_p99 * 1e6:,.0f}", "-",
                     "-", f"{quiet_cpu:.0%}", f"{start_rss / MIB:.0f}", "-", "-", len(quiet_errors), ""])
        for name, attack, n in attacks:
            cpu0, t0 = cpu_of(rt.pid), time.monotonic()
            before, _ = program.window(lambda: time.sleep(window))
            before_cpu = cpu_of(rt.pid) - cpu0
            before_p99 = percentile(before, 0.99)
            watch = RssWatch(rt.pid)
            watch.start()
            what = [""]

            def body(attack: Any = attack, n: int = n, what: list[str] = what) -> None:
                with attack(status, n) as text:
                    what[0] = text
                    time.sleep(window)

            cpu0, t0 = cpu_of(rt.pid), time.monotonic()
            samples, errors = program.window(body)
            took = time.monotonic() - t0
            cpu = cpu_of(rt.pid) - cpu0
            share = cpu / took
            watch.stopping.set()
            watch.join()
            time.sleep(5.0)
            alive = rt.proc.poll() is None
            after = B.rss_bytes(rt.pid) if alive else 0
            p99 = percentile(samples, 0.99)
            ratio = p99 / quiet_p99 if samples else float("inf")
            near = p99 / before_p99 if samples and before else float("inf")
            ok = (alive and near <= 2.0 and watch.peak <= RSS_LIMIT and after <= start_rss * 1.10)
            rows.append([name, len(samples), f"{percentile(samples, 0.5) * 1e6:,.0f}", f"{p99 * 1e6:,.0f}",
                         f"{ratio:.2f}", f"{near:.2f} of {before_p99 * 1e6:,.0f}", f"{share:.0%}",
                         f"{watch.peak / MIB:.0f}", f"{after / MIB:.0f}", "alive" if alive else "DEAD", len(errors),
                         B.verdict(ok)])
            results["attacks"][name] = {"what": what[0], "pairs": len(samples), "p50_us": percentile(samples, 0.5) * 1e6,
                                        "p99_us": p99 * 1e6, "p99_vs_quiet": ratio, "before_p99_us": before_p99 * 1e6,
                                        "p99_vs_before": near, "runtime_cpu_share": share, "peak_rss": watch.peak,
                                        "rss_after": after, "start_rss": start_rss, "errors": errors[:5],
                                        "alive": alive, "pass": ok}
            counted = COUNTS.pop(name + "s", None)
            if counted and counted[0]:
                results["attacks"][name]["answered"] = counted[0]
                # over what the program's pairs cost in the quiet window before (the server may be
                # saturated, so its CPU share alone says nothing)
                extra = max(0.0, cpu - len(samples) * before_cpu / max(1, len(before)))
                results["attacks"][name]["runtime_cpu_each_us"] = extra / counted[0] * 1e6
                what[0] += (f"; {counted[0]:,} answered, {extra / counted[0] * 1e6:,.0f} µs of runtime CPU each "
                            "(the window's CPU less the pairs' at their quiet cost)")
            print(f"  {name}: {what[0]}", file=sys.stderr)
            if not alive:
                break
        program.stopping.set()
        results["quiet"] = {"pairs": len(quiet), "p99_us": quiet_p99 * 1e6, "start_rss": start_rss,
                            "runtime_cpu_share": quiet_cpu}
    print(f"hostile load, {window:g} s per attack; the program's access+release pairs (µs) and the runtime's RSS (MiB)")
    print(B.table(["attack", "pairs", "p50", "p99", "p99/quiet", "p99/before", "runtime CPU", "peak RSS",
                   "RSS after", "runtime", "errors", "target"], rows))
    print("targets: p99 <= 2 x the quiet window just before, peak RSS <= 256 MiB, RSS after <= start + 10 %")
    print(f"results: {B.write_results('hostile', results)}")
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return 0


if __name__ == "__main__":
    sys.exit(main())
