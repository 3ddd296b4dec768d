"""A throw-away 3-member etcd cluster on 127.0.0.1 (or `host`) for tests and benchmarks.

Each member is a real `etcd` process (Debian's etcd-server) with its own temporary data
directory and free ports; the test can kill, stop (SIGSTOP, a partition from the member's
side), continue and restart one member at a time:

    from tests.tmr.etcd import EtcdCluster, etcd_binary
    with EtcdCluster() as cluster:
        cluster.endpoints          # ["127.0.0.1:PORT", …], one per member
        cluster.kill(0); cluster.restart(0)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

READY_SECONDS = 30.0  # how long a cluster may take to elect a leader on a loaded machine


def etcd_binary() -> str | None:
    """The etcd server binary, or None when etcd-server is not installed."""
    return shutil.which("etcd")


def _die_with_parent(argv: list[str]) -> list[str]:
    """`argv` started so that the member gets SIGKILL when the test process dies (no member
    outlives its test): util-linux's setpriv sets the parent-death signal, then execs it. Not
    a preexec_fn: a fork of a process whose gRPC threads are busy (the test's own etcd
    clients) can break the child before it execs, and the member never starts."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class EtcdCluster:
    """Three etcd members on loopback; `endpoints` lists their client addresses."""

    def __init__(self, size: int = 3, host: str = "127.0.0.1") -> None:
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError("etcd is not installed (apt-get install etcd-server etcd-client)")
        self.binary = binary
        self.size = size
        self.host = host  # an address of this host the members listen on
        self.dir = Path(tempfile.mkdtemp(prefix="licentia-etcd-"))
        ports = _free_ports(2 * size)
        self.client_ports = ports[:size]
        self.peer_ports = ports[size:]
        self.names = [f"m{i + 1}" for i in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self.stopped: set[int] = set()

    @property
    def endpoints(self) -> list[str]:
        return [f"{self.host}:{p}" for p in self.client_ports]

    def _args(self, i: int) -> list[str]:
        initial = ",".join(
            f"{n}=http://{self.host}:{p}" for n, p in zip(self.names, self.peer_ports, strict=True)
        )
        peer = f"http://{self.host}:{self.peer_ports[i]}"
        client = f"http://{self.host}:{self.client_ports[i]}"
        return [
            self.binary,
            "--name", self.names[i],
            "--data-dir", str(self.dir / self.names[i]),
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--initial-cluster", initial,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.dir.name,
        ]

    def start(self) -> EtcdCluster:
        for i in range(self.size):
            self._spawn(i)
        self.wait_healthy()
        return self

    def _spawn(self, i: int) -> None:
        log = open(self.dir / f"{self.names[i]}.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.procs[i] = subprocess.Popen(
                _die_with_parent(self._args(i)), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()

    def healthy(self, i: int) -> bool:
        """The member answers /health with a leader known (it is part of a quorum)."""
        url = f"http://{self.host}:{self.client_ports[i]}/health"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def wait_healthy(self, members: list[int] | None = None) -> None:
        members = list(range(self.size)) if members is None else members
        deadline = time.monotonic() + READY_SECONDS
        while not all(self.healthy(i) for i in members):
            for i in members:
                proc = self.procs[i]
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"etcd member {self.names[i]} exited: {self.log(i)[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd members {members} not healthy in {READY_SECONDS:g} s")
            time.sleep(0.1)

    def log(self, i: int) -> str:
        return (self.dir / f"{self.names[i]}.log").read_text(errors="replace")

    # -- faults ----------------------------------------------------------------

    def kill(self, i: int) -> None:
        """SIGKILL member `i` (its data directory stays, so `restart` brings it back)."""
        proc = self.procs[i]
        if proc is not None:
            if i in self.stopped:
                self.cont(i)
            proc.kill()
            proc.wait()
            self.procs[i] = None

    def stop(self, i: int) -> None:
        """SIGSTOP member `i`: it holds its sockets open and answers nothing."""
        proc = self.procs[i]
        if proc is not None and i not in self.stopped:
            proc.send_signal(signal.SIGSTOP)
            self.stopped.add(i)

    def cont(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and i in self.stopped:
            proc.send_signal(signal.SIGCONT)
            self.stopped.discard(i)

    def restart(self, i: int, *, wait: bool = True) -> None:
        """Start member `i` again from its data directory."""
        self.kill(i)
        self._spawn(i)
        if wait:
            self.wait_healthy([i])

    # -- lifetime --------------------------------------------------------------

    def close(self) -> None:
        for i in range(self.size):
            with contextlib.suppress(OSError):
                self.kill(i)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _main() -> None:  # pragma: no cover - a manual aid: python -m tests.tmr.etcd [ADDRESS]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with EtcdCluster(host=sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1") as c:
        print(",".join(c.endpoints), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    _main()
    os._exit(0)
