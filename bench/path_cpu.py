"""The CPU of the license path alone: a runtime in this process, a connection fed frames
in memory (no sockets, no kernel), plain and proved access+release pairs through
`Connection.data_received`, timed with `time.process_time()`.

CPU time, not wall time: on a machine shared with other work it still says what a pair
costs the runtime's own code (the usage log's flushes included). It is how compiling the
runtime with mypyc was weighed against pure Python (docs/performance.md): run it once
after `make pure`, once after `make native`.

    python bench/path_cpu.py [--pairs N] [--repeats R]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B


class MemoryTransport:
    """What a connection writes, kept (the last reply) instead of sent."""

    def __init__(self) -> None:
        self.last = b""

    def write(self, data: bytes) -> None:
        self.last = data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _reply(transport: MemoryTransport) -> dict[str, Any]:
    reply: dict[str, Any] = msgpack.unpackb(transport.last[5:])
    return reply


async def measure(home: B.BenchHome, pairs: int, repeats: int) -> dict[str, list[float]]:
    from licentia import native
    from licentia.binding import collect_fingerprint
    from licentia.protocol.frames import encode
    from licentia.runtime import RuntimeConfig, RuntimeHome
    from licentia.runtime.connection import Connection
    from licentia.runtime.server import Runtime

    native.check()
    config = RuntimeConfig(socket="", local_port=-1, http_port=-1)
    rt = Runtime(RuntimeHome(home.path), config, fingerprint=collect_fingerprint(Path("/")))
    await rt.start()
    out: dict[str, list[float]] = {"runtime": [], "runtime + proof": []}
    try:
        for name, nonce in (("runtime", None), ("runtime + proof", bytes(range(32)))):
            conn = Connection(rt, "local")
            t = MemoryTransport()
            conn.connection_made(t)  # type: ignore[arg-type]
            conn.data_received(B.hello_frame())
            assert _reply(t)["ok"], _reply(t)
            access = B.access_frame(home.firm, B.PAIR_PRODUCT, nonce=nonce,
                                    proof_key_for=home.serial if nonce else None)
            for _ in range(repeats):
                start = time.process_time()
                for i in range(pairs):
                    conn.data_received(access)
                    handle = msgpack.unpackb(t.last[5:])["handle"]
                    conn.data_received(encode({"id": 3, "op": "release", "handle": handle}))
                    if i % 48 == 47:
                        await asyncio.sleep(0)  # the log's flush runs, as between a server's reads
                out[name].append((time.process_time() - start) / pairs * 1e6)
            conn.connection_lost(None)
    finally:
        await rt.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from licentia import native

    with tempfile.TemporaryDirectory(prefix="licentia-path-cpu-") as tmp:
        home = B.make_home(Path(tmp) / "home")
        result = asyncio.run(measure(home, args.pairs, args.repeats))
    compiled = sorted(native.compiled()) or ["none (pure Python)"]
    print(f"compiled modules: {', '.join(compiled)}")
    for name, values in result.items():
        print(f"{name:16} {statistics.median(values):6.1f} µs CPU per access+release pair "
              f"(median of {len(values)} x {args.pairs}; min {min(values):.1f}, max {max(values):.1f})")


if __name__ == "__main__":
    main()
