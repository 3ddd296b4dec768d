"""`licentia central serve` in a subprocess on 127.0.0.1, for the runtime's sync and cloud tests
(plain HTTP, `--insecure-http`: these tests are about sync and cloud seats; central over TLS
has its own tests in tests/central/test_central_tls.py).

One firm keystore per test module (`vendor init` once); each `LiveCentral` is a central
process with its own home and SQLite database, stopped (or killed) by the test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.runtime.harness import WAIT, Procs

from licentia.central.client import CentralClient
from licentia.model import LicentiaError
from licentia.vendor.keystore import FirmInfo, export_public

FIRM = 6_000_010
EXE = [sys.executable, "-m", "licentia.cli.main"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LICENTIA_")}


@dataclass
class Keystore:
    home: Path
    passphrase_file: Path

    @classmethod
    def make(cls, directory: Path) -> Keystore:
        directory.mkdir(parents=True, exist_ok=True)
        passfile = directory / "passphrase"
        passfile.write_text("correct horse battery\n")
        home = directory / "vendor-home"
        subprocess.run([*EXE, "--home", str(home), "vendor", "init", "--firm-code", str(FIRM), "--name",
                        "Example Firm", "--passphrase-file", str(passfile)],
                       check=True, capture_output=True, env=_env(), timeout=120)
        return cls(home, passfile)

    @property
    def file(self) -> Path:
        (found,) = [p for p in (self.home / "vendor").iterdir() if p.is_file() and not p.name.startswith(".")]
        return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveCentral:
    def __init__(self, procs: Procs, keystore: Keystore, home: Path, port: int | None = None) -> None:
        self.procs = procs
        self.keystore = keystore
        self.home = home
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()
        with CentralClient(self.url) as c:
            health = c.health()
        self.firm_code = int(health["firm_code"])
        self.public_key = bytes.fromhex(health["public_key"])
        self.public_file = home / "firm.pub"
        self.public_file.write_text(export_public(FirmInfo(self.firm_code, "Example Firm", self.public_key)))

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "serve.log", "ab")  # noqa: SIM115
        self.proc = self.procs.spawn(
            [*EXE, "--home", str(self.home), "central", "serve", "--insecure-http", "--port", str(self.port), "--keystore",
             str(self.keystore.file), "--passphrase-file", str(self.keystore.passphrase_file)],
            env=_env(), stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + WAIT
        while True:
            if self.proc.poll() is not None:
                raise AssertionError((self.home / "serve.log").read_text()[-3000:])
            try:
                with CentralClient(self.url, timeout=2) as c:
                    c.health()
                return
            except LicentiaError:
                if time.monotonic() > deadline:
                    raise AssertionError("central did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(WAIT)

    def admin(self) -> CentralClient:
        token = (self.home / "central" / "admin.token").read_text().strip()
        return CentralClient(self.url, token=token)

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        with self.admin() as c:
            return c.call(method, path, body)
