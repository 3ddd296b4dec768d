"""Real runtimes and programs in subprocesses, for the runtime and SDK tests.

Everything here is bounded: every wait has a deadline, every child is killed at the end
(`Procs.close()`), and ports are chosen by the kernel (port 0, read back from runtime.json).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.machine_cli import command as machine_command
from tests.machines import build, kvm_guest, workstation

from licentia.binding import collect_fingerprint
from licentia.containers import ContainerStore
from licentia.core import updates as U
from licentia.core.content import ContainerContent
from licentia.crypto import new_signing_key, signing_public_key
from licentia.model import ProductItem, Tolerance
from licentia.vendor.keystore import FirmInfo, export_public

FIRM = 10_001
WAIT = 20.0  # the longest any single wait in these tests may take


class Vendor:
    """A firm key made in the test (no keystore needed) and its exported public key file."""

    def __init__(self, directory: Path, firm: int = FIRM) -> None:
        self.firm = firm
        self.private = new_signing_key()
        self.public = signing_public_key(self.private)
        directory.mkdir(parents=True, exist_ok=True)
        self.public_file = directory / f"firm-{firm}.pub"
        self.public_file.write_text(export_public(FirmInfo(firm, "Test Firm", self.public)))


def machine(root: Path, kind: str = "workstation") -> Path:
    if not (root / "etc").exists():
        build(workstation() if kind == "workstation" else kvm_guest(), root)
    return root


def make_home(home: Path, machine_root: Path, vendor: Vendor, items: list[ProductItem]) -> str:
    """A home with one soft container holding `items` (item ids 1, 2, ...); returns its serial."""
    fp = collect_fingerprint(machine_root, environ={})
    store = ContainerStore(home / "containers", fp)
    now = int(time.time())
    container = store.create_soft(Tolerance.MEDIUM, now)
    put_items(container, vendor, items)
    return str(container.serial)


def put_items(container: Any, vendor: Vendor, items: list[ProductItem], first_id: int = 1) -> None:
    now = int(time.time())

    def change(c: ContainerContent) -> tuple[ContainerContent, U.Applied]:
        request = U.read_request(U.make_request(c, vendor.firm, now, {}))
        ops: list[U.Operation] = [U.PutItem(first_id + i, item) for i, item in enumerate(items)]
        applied = U.apply_update(c, U.issue_update(request, vendor.firm, vendor.private, ops, now), now, in_vm=False)
        return applied.content, applied

    container.transact(change)


def open_container(home: Path, machine_root: Path, serial: str) -> Any:
    from licentia.model import ContainerSerial

    fp = collect_fingerprint(machine_root, environ={})
    return ContainerStore(home / "containers", fp).open(ContainerSerial.parse(serial))


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LICENTIA_")}
    env.update(PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class Runtime:
    """`licentia runtime serve` in a subprocess, on free ports."""

    def __init__(self, procs: Procs, home: Path, machine_root: Path, *flags: str,
                 env: dict[str, str] | None = None) -> None:
        self.procs = procs
        self.env = env or {}
        self.home = home
        self.machine_root = machine_root
        self.flags = flags
        self.proc: subprocess.Popen[bytes] | None = None
        self.status: dict[str, Any] = {}
        self.start()

    def start(self) -> None:
        status_file = self.home / "runtime.json"
        if status_file.exists():
            status_file.unlink()
        args = [*machine_command(self.machine_root), "--home", str(self.home), "runtime", "serve",
                "--local-port", "0", "--http-port", "0", "--reap-interval", "0.2", "--log-flush-interval", "0.02",
                "--snapshot-delay", "0.05", *self.flags]
        self.log = open(self.home.parent / f"{self.home.name}.serve.log", "ab")  # noqa: SIM115
        self.proc = self.procs.spawn(args, env=base_env(**self.env), stdout=self.log, stderr=self.log)
        proc = self.proc

        def ready() -> dict[str, Any] | None:
            if proc.poll() is not None:
                raise AssertionError(f"the runtime exited with {proc.returncode}: {self.output()}")
            try:
                doc: dict[str, Any] = json.loads(status_file.read_text())
            except (OSError, ValueError):
                return None
            return doc if doc.get("pid") == proc.pid else None

        self.status = wait_for("the runtime to start", ready)

    def output(self) -> str:
        try:
            return (self.home.parent / f"{self.home.name}.serve.log").read_text()[-3000:]
        except OSError:
            return ""

    @property
    def socket(self) -> str:
        return str(self.status["socket"])

    @property
    def network_address(self) -> str:
        return f"127.0.0.1:{self.status['network_port']}"

    @property
    def http(self) -> str:
        return f"{self.status.get('http_scheme', 'http')}://127.0.0.1:{self.status['http_port']}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()

    def admin(self) -> Any:
        from licentia.sdk.admin import admin_client

        return admin_client(self.home)

    def sessions(self) -> list[dict[str, Any]]:
        with self.admin() as c:
            rows: list[dict[str, Any]] = c.request("sessions")["sessions"]
            return rows

    def usage_log(self) -> list[dict[str, Any]]:
        path = self.home / "logs" / "usage.jsonl"
        text = path.read_text()
        # a stretch being written may show as a line without its newline yet: not read
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]

    def logged(self, what: str, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """The usage-log entries that `match`, once there is one: the runtime writes its
        log a little after the effect a test sees elsewhere (status, answers)."""
        found: list[dict[str, Any]] = wait_for(what, lambda: [e for e in self.usage_log() if match(e)])
        return found


PROGRAM = textwrap.dedent("""
    import json, os, sys, time
    import licentia
    opts = json.loads(sys.argv[1])
    try:
        lic = licentia.access(**opts)
    except licentia.LicentiaError as exc:
        print(json.dumps({"error": int(exc.code), "message": exc.message}), flush=True)
        sys.exit(2)
    info = lic.info
    print(json.dumps({"handle": info.handle, "location": info.location, "units": info.units,
                      "container": info.container, "verified": info.verified, "pid": os.getpid(),
                      "server": info.server}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        try:
            if cmd == "check":
                out = {"events": [e.value for e in lic.check()], "valid": lic.valid, "units": lic.info.units}
            elif cmd.startswith("decrement"):
                out = {"units": lic.decrement(int(cmd.split()[1]))}
            elif cmd == "release":
                lic.release()
                out = {"released": True}
            else:
                out = {"unknown": cmd}
        except licentia.LicentiaError as exc:
            out = {"error": int(exc.code), "message": exc.message}
        print(json.dumps(out), flush=True)
    time.sleep(3600)
""")


class Program:
    """A protected program in a subprocess: takes a license, then obeys lines on stdin."""

    def __init__(self, procs: Procs, machine_root: Path, env: dict[str, str], **options: Any) -> None:
        self.proc = procs.spawn([sys.executable, "-c", PROGRAM, json.dumps(options)], env=base_env(**env),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.first = self.read()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read(self, timeout: float = WAIT) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError("the program did not answer in time")
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise AssertionError(f"the program ended without answering: {err[-2000:]}")
        result: dict[str, Any] = json.loads(line)
        return result

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        return self.read()

    @property
    def granted(self) -> bool:
        return "handle" in self.first

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(WAIT)


class Procs:
    """Every child process a test starts, killed at the end whatever happens."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def spawn(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, **kwargs)
        self.children.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.children):
            if proc.poll() is None:
                proc.kill()
        for proc in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


@contextmanager
def processes() -> Iterator[Procs]:
    procs = Procs()
    try:
        yield procs
    finally:
        procs.close()
