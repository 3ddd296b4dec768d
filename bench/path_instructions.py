"""Instructions per access+release pair, counted by valgrind: the license path in-process
(as `path_cpu.py` drives it) against the floor's handler driven the same way.

A count of instructions does not move with the machine's load, so it settles in one run
what a few tenths of a microsecond of CPU time cannot (bench/access_release.py's runs vary
by about ±1 µs per pair). It is not time: a cache miss or a system call counts as the
instructions around it, and valgrind's virtual CPU has no SHA extensions, so the usage
log's SHA-256 counts several times what it costs natively. Use it to weigh a change to
the path, and `access_release.py` to judge the targets.

Each server runs twice under `valgrind --tool=callgrind`, for N and 2N pairs; the
difference over N is its count per pair (start-up and the first pairs cancel out). The
flushes of the usage log are in it: the loop runs every 48 pairs, as between a server's
reads.

    python bench/path_instructions.py [--pairs N]      (needs valgrind: apt-get install valgrind)
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B
from path_cpu import MemoryTransport

SERVERS = ("none", "floor", "runtime", "runtime + proof")


class NoServer:
    """A protocol that answers every frame with the same grant: what the driving loop
    itself costs, subtracted from the others' counts."""

    def connection_made(self, transport: MemoryTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"\x00\x00\x00\x12\xb1\x83\xa2id\x02\xa2ok\xc3\xa6handle\x01")


def handle_of(reply: bytes) -> int:
    """The handle of a grant reply frame, read from its bytes (no decoder: the count is the
    server's, not this loop's)."""
    at = reply.find(b"\xa6handle")
    if at < 0:
        raise SystemExit(f"not a grant: {reply[:80]!r}")
    at += 7
    first = reply[at]
    if first < 0x80:
        return first
    width = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}[first]
    return int.from_bytes(reply[at + 1:at + 1 + width], "big")


async def drive(server: str, home: Path, firm: int, serial: str, pairs: int) -> None:
    """`pairs` access+release pairs through one in-process connection of `server`."""
    from licentia.protocol.frames import encode

    transport = MemoryTransport()
    stop = None
    if server == "none":
        conn: Any = NoServer()
    elif server == "floor":
        from floor_server import FloorProtocol

        conn = FloorProtocol()
    else:
        from licentia.binding import collect_fingerprint
        from licentia.runtime import RuntimeConfig, RuntimeHome
        from licentia.runtime.connection import Connection
        from licentia.runtime.server import Runtime

        rt = Runtime(RuntimeHome(home), RuntimeConfig(socket="", local_port=-1, http_port=-1),
                     fingerprint=collect_fingerprint(Path("/")))
        await rt.start()
        stop = rt.stop
        conn = Connection(rt, "local")
    conn.connection_made(transport)
    conn.data_received(B.hello_frame())
    nonce = bytes(range(32)) if server == "runtime + proof" else None
    access = B.access_frame(firm, B.PAIR_PRODUCT, nonce=nonce, proof_key_for=serial if nonce else None)
    for i in range(pairs):
        conn.data_received(access)
        while b"\xa6handle" not in transport.last:  # a grant that waited for the disk
            await asyncio.sleep(0.01)
        conn.data_received(encode({"id": 3, "op": "release", "handle": handle_of(transport.last)}))
        transport.last = b""
        if i % 48 == 47:
            await asyncio.sleep(0)  # the log's flush runs, as between a server's reads
    if stop is not None:
        await stop()


def count(server: str, home: Path, firm: int, serial: str, pairs: int) -> int:
    """Instructions of a whole process that drives `pairs` pairs of `server` (on a copy of
    `home`: every run starts from the same state)."""
    with tempfile.TemporaryDirectory(prefix="licentia-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        home = Path(shutil.copytree(home, Path(tmp) / "home"))
        env = B.child_env(PYTHONHASHSEED="0")  # the same dict layouts in every run
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", B.PY, __file__, "--child", server,
             str(home), str(firm), serial, str(pairs)],
            env=env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise SystemExit(f"{server}: exited {done.returncode}: {done.stderr[-2000:]}")
        found = re.search(r"Collected : ([\d,]+)", done.stderr)
        if found is None:
            raise SystemExit(f"{server}: valgrind printed no count: {done.stderr[-2000:]}")
        return int(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--child", nargs=5, metavar=("SERVER", "HOME", "FIRM", "SERIAL", "PAIRS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        server, home, firm, serial, pairs = args.child
        asyncio.run(drive(server, Path(home), int(firm), serial, int(pairs)))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    if not 100 <= args.pairs <= 100_000:
        parser.error("pairs 100..100000")
    from licentia import native

    native.check()
    with tempfile.TemporaryDirectory(prefix="licentia-path-instructions-") as tmp:
        home = B.make_home(Path(tmp) / "home")
        per_pair: dict[str, float] = {}
        for server in SERVERS:
            once = count(server, home.path, home.firm, home.serial, args.pairs)
            twice = count(server, home.path, home.firm, home.serial, 2 * args.pairs)
            per_pair[server] = (twice - once) / args.pairs - per_pair.get("none", 0.0)
            what = "the driving loop alone" if server == "none" else "the server's, beyond the loop"
            print(f"{server:16} {per_pair[server]:9,.0f} instructions per access+release pair ({what})", flush=True)
    compiled = sorted(native.compiled()) or ["none (pure Python)"]
    print(f"compiled modules: {', '.join(compiled)}")
    floor = per_pair["floor"]
    for server in SERVERS[2:]:
        print(f"{server:16} {per_pair[server] / floor:5.2f} x the floor's")
    print(f"({args.pairs} and {2 * args.pairs} pairs per server)")


if __name__ == "__main__":
    main()
