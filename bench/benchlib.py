"""What the runtime benchmarks share: a demo home with benchmark licenses, a real runtime
process pinned to a CPU, the compiled load client, CPU and memory readings from /proc,
and the result files.

Every process started here is stopped by its PID (`Stopper`), every wait has a deadline,
and all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = BENCH / "build"
RESULTS = BENCH / "results"
PY = sys.executable
HOST = "127.0.0.1"

# the license the benchmarks use: product 1 for access/release (many seats), product 2
# for unit decrements
PAIR_PRODUCT = 1
UNITS_PRODUCT = 2
PAIR_QUANTITY = 1_000_000
UNITS = 4_000_000_000


# ------------------------------------------------------------------ CPUs and /proc


def cpus() -> tuple[str, str]:
    """(server CPU, load CPU): CPU 0 and CPU 1 when this process may use both."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:
        allowed = list(range(os.cpu_count() or 1))
    if len(allowed) >= 2:
        return str(allowed[0]), str(allowed[1])
    return str(allowed[0]), str(allowed[0])


SERVER_CPU, LOAD_CPU = cpus()


def pinned(cpu: str, argv: Sequence[str]) -> list[str]:
    """`argv` under `taskset -c cpu` (as is where taskset is missing)."""
    if shutil.which("taskset"):
        return ["taskset", "-c", cpu, *argv]
    return list(argv)


def pin_self(cpu: str) -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {int(cpu)})


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (every thread), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def cpus_busy() -> list[float]:
    """Busy seconds (user, nice, system, irq, softirq, steal) of each CPU, from /proc/stat."""
    out: list[float] = []
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                v = [int(x) for x in line.split()[1:9]]
                out.append((v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / _TICK)
    return out


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _die_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv` started so that it gets SIGTERM when the benchmark process dies (even by
    SIGKILL): util-linux's setpriv sets the parent-death signal, then execs it. Not a
    preexec_fn: a fork of a process with busy gRPC threads (the etcd benchmarks' clients)
    can break the child before it execs."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else list(argv)


class Stopper:
    """Every child process started, stopped at the end by its PID (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[Any]] = []

    def spawn(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(_die_with_parent(argv), **kwargs)
        self.children.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def close(self) -> None:
        for proc in reversed(self.children):
            self.stop(proc)
        self.children.clear()

    def __enter__(self) -> Stopper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------ the home and the runtime


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LICENTIA_")}
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


@dataclass(frozen=True)
class BenchHome:
    path: Path
    firm: int
    serial: str
    firm_key_file: Path


def machine_fingerprint() -> Any:
    """This machine's fingerprint, as the shipped `licentia` command reads it."""
    from licentia.binding import collect_fingerprint

    return collect_fingerprint(Path("/"), environ=os.environ)


def make_home(path: Path) -> BenchHome:
    """The demo home (`licentia demo --no-serve`: vendor keystore, container bound to this
    machine) plus the benchmark's licenses, signed with the demo vendor's key."""
    from licentia.cli.demo import DEMO_FIRM, set_up
    from licentia.core import updates
    from licentia.core.content import ContainerContent
    from licentia.model import ProductItem
    from licentia.vendor.keystore import load_keystore

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("LICENTIA_")}
    try:
        facts = set_up(path, argparse.Namespace())
        from licentia.containers import ContainerStore
        from licentia.model import ContainerSerial

        store = ContainerStore(path / "containers", machine_fingerprint())
        container = store.open(ContainerSerial.parse(facts["serial"]))
    finally:
        os.environ.update(saved)
    passphrase = (path / "demo-passphrase").read_text().strip()
    keys = load_keystore(path / "vendor" / f"firm-{DEMO_FIRM}.keystore", passphrase)
    now = int(time.time())
    if not container.read().find(DEMO_FIRM, PAIR_PRODUCT):
        items = [ProductItem(product_code=PAIR_PRODUCT, quantity=PAIR_QUANTITY, text="benchmark: access/release"),
                 ProductItem(product_code=UNITS_PRODUCT, quantity=1000, units=UNITS, text="benchmark: units")]

        def change(c: ContainerContent) -> tuple[ContainerContent, Any]:
            request = updates.read_request(updates.make_request(c, DEMO_FIRM, now, {}))
            first = max((s.item_id for s in request.items), default=0) + 1
            ops: list[updates.Operation] = [updates.PutItem(first + i, item) for i, item in enumerate(items)]
            update = updates.issue_update(request, DEMO_FIRM, keys.private_key, ops, now)
            applied = updates.apply_update(c, update, now, in_vm=False)
            return applied.content, applied

        container.transact(change)
    return BenchHome(path, DEMO_FIRM, facts["serial"], path / "demo-firm.pub")


def copy_home(home: BenchHome, path: Path) -> BenchHome:
    """A second home holding a copy of the same container (for a second runtime)."""
    shutil.copytree(home.path, path, ignore=shutil.ignore_patterns("state", "logs", "runtime.*"))
    return BenchHome(path, home.firm, home.serial, path / "demo-firm.pub")


class Runtime:
    """`licentia runtime serve` in a subprocess pinned to `cpu`, on a free loopback port."""

    def __init__(self, stopper: Stopper, home: BenchHome, *flags: str, cpu: str = SERVER_CPU) -> None:
        self.stopper = stopper
        self.home = home
        status_file = home.path / "runtime.json"
        with contextlib.suppress(FileNotFoundError):
            status_file.unlink()
        argv = [PY, "-m", "licentia.cli.main", "--home", str(home.path), "runtime", "serve",
                "--local-port", "0", "--http-port", "-1", *flags]
        self.log_path = home.path / "serve.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = stopper.spawn(pinned(cpu, argv), env=child_env(), stdout=self._log, stderr=self._log,
                                  stdin=subprocess.DEVNULL)
        proc = self.proc

        def ready() -> dict[str, Any] | None:
            if proc.poll() is not None:
                raise RuntimeError(f"the runtime exited with {proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                doc: dict[str, Any] = json.loads(status_file.read_text())
            except (OSError, ValueError):
                return None
            return doc if "local_port" in doc else None

        self.status: dict[str, Any] = wait_for("the runtime to start", ready, timeout=60)
        self.pid = int(self.status["pid"])  # the Python process (taskset execs it)
        self.port = int(self.status["local_port"])

    def stop(self) -> None:
        self.stopper.stop(self.proc)
        self._log.close()


def compile_bytecode() -> None:
    """Write licentia's .pyc files, as an install does: a start measured without them
    (PYTHONDONTWRITEBYTECODE set, or a fresh checkout) would time the compiler."""
    import compileall

    import licentia

    compileall.compile_dir(str(Path(licentia.__file__).parent), quiet=1)


# ------------------------------------------------------------------ frames and the load client


def hello_frame(program: str = "loadgen") -> bytes:
    from licentia.protocol.frames import encode

    return encode({"id": 1, "op": "hello", "versions": [1], "client": {"kind": "program", "program": program}})


def access_frame(firm: int, product: int, *, nonce: bytes | None = None, proof_key_for: str | None = None) -> bytes:
    """An access frame; with `nonce`, a challenge to prove. With `proof_key_for` (a serial)
    it also carries a program's exchange key and says it holds the key agreed for that
    container, as the SDK does on a connection it has used: the runtime signs its first
    answer on each connection and proves the later ones with a MAC (docs/protocol.md)."""
    from licentia.protocol.frames import encode

    msg: dict[str, Any] = {"id": 2, "op": "access", "firm": firm, "product": product, "mode": "per-access"}
    if nonce is not None:
        msg["nonce"] = nonce
    if proof_key_for is not None:
        from licentia.crypto import KeyAgreement

        msg["kx"] = KeyAgreement().public
        msg["keyed"] = [proof_key_for]
    return encode(msg)


def build_loadgen() -> Path:
    """Compile bench/loadgen.c into bench/build/ (keyed by the source's digest, so a
    changed source is always rebuilt)."""
    import hashlib

    source = BENCH / "loadgen.c"
    text = source.read_bytes()
    if b"SERVER_PID MODE HELLO_HEX ACCESS_HEX" not in text:
        raise RuntimeError(f"{source} is not the load client this benchmark drives (see its usage line)")
    binary = BUILD / f"loadgen-{hashlib.sha256(text).hexdigest()[:12]}"
    if binary.exists():
        return binary
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("a C compiler is needed for the load client: apt-get install gcc")
    BUILD.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_suffix(".tmp")
    subprocess.run([gcc, "-O2", "-Wall", "-o", str(tmp), str(source)], check=True, timeout=120)
    tmp.replace(binary)
    return binary


def run_loadgen(loadgen: Path, port: int, conc: int, warmup: float, window: float, server_pid: int,
                hello: bytes, access: bytes, mode: str = "pair") -> dict[str, Any]:
    argv = [str(loadgen), HOST, str(port), str(conc), f"{warmup:g}", f"{window:g}", str(server_pid), mode,
            hello.hex(), access.hex()]
    done = subprocess.run(pinned(LOAD_CPU, argv), capture_output=True, text=True, timeout=warmup + window + 60)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        raise RuntimeError(f"loadgen printed {done.stdout!r}") from None
    return result


# ------------------------------------------------------------------ numbers and tables


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def median_run(runs: list[dict[str, Any]], key: str = "ops_s") -> dict[str, Any]:
    """The run whose `key` is the median (the middle one of an odd count): its figures
    stay consistent with each other."""
    ordered = sorted(runs, key=lambda r: r[key])
    return ordered[(len(ordered) - 1) // 2]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = right or [False] + [True] * (len(headers) - 1)
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if a else c.ljust(w) for c, w, a in zip(r, widths, align, strict=True)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_results(name: str, doc: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def versions() -> dict[str, str]:
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version(), "kernel": platform.release(), "cpus": str(os.cpu_count())}
    for name in ("msgpack", "uvloop", "redis", "hiredis", "cryptography"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "-"
    from licentia import native

    # which of the license path's modules run compiled (scripts/build_native.py), or "none"
    out["compiled"] = ", ".join(m.rsplit(".", 1)[1] for m in sorted(native.compiled())) or "none"
    redis = shutil.which("redis-server")
    if redis:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out["redis-server"] = subprocess.run([redis, "--version"], capture_output=True, text=True,
                                                 timeout=10).stdout.split()[2].removeprefix("v=")
    return out
