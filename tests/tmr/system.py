"""A TMR system of real processes for the tests and benchmarks: a 3-member etcd cluster,
three upstream runtimes (one constituent each) and two front ends (`licentia tmr serve`)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.runtime.harness import (
    Procs,
    Runtime,
    Vendor,
    base_env,
    machine,
    processes,
    put_items,
    wait_for,
)
from tests.tmr.etcd import EtcdCluster

from licentia.binding import collect_fingerprint
from licentia.containers import ContainerStore
from licentia.core import updates as U
from licentia.core.tmrgroup import tmr_item
from licentia.model import ProductItem, Tolerance
from licentia.protocol.client import Client
from licentia.protocol.tls import client_context

LICENTIA = [sys.executable, "-c", "import sys; from licentia.cli.main import main; sys.exit(main(sys.argv[1:]))"]
QUANTITY = 3
UNITS = 100
ITEM = ProductItem(product_code=9, quantity=QUANTITY, units=UNITS, tmr_id=1)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    """A CA and a client certificate it signed (what an administrator's CA gives a front end)."""
    d.mkdir(parents=True, exist_ok=True)
    ca, ca_key = d / f"{name}-ca.pem", d / f"{name}-ca.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(ca_key),
             "-out", str(ca), "-days", "2", "-subj", f"/CN={name} CA")
    key, csr, cert = d / f"{name}-fe.key", d / f"{name}-fe.csr", d / f"{name}-fe.pem"
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key),
             "-out", str(csr), "-subj", f"/CN={name} front end")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(cert), "-days", "2")
    return ca, cert


@dataclass
class FrontEndProc:
    procs: Procs
    state: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    status: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        status = self.state / "front-end.json"
        status.unlink(missing_ok=True)
        log = open(self.state.parent / f"{self.state.name}.log", "ab")  # noqa: SIM115
        self.proc = proc = self.procs.spawn([*LICENTIA, "tmr", "serve", "--state",
                                             str(self.state), *self.args], env=base_env(), stdout=log, stderr=log)

        def ready() -> dict[str, Any] | None:
            if proc.poll() is not None:
                raise AssertionError(f"the front end exited: {self.output()}")
            try:
                doc: dict[str, Any] = json.loads(status.read_text())
            except (OSError, ValueError):
                return None
            return doc if doc.get("pid") == proc.pid else None

        self.status = wait_for("the front end to start", ready)

    def output(self) -> str:
        try:
            return (self.state.parent / f"{self.state.name}.log").read_text()[-3000:]
        except OSError:
            return ""

    def read_status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.state / "front-end.json").read_text())
        return doc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.status['network_port']}"

    def client(self, client_id: str, identity: dict[str, Any] | None = None) -> Client:
        """A connection as a client runtime makes it: TLS with the front end's pin, then hello.
        With `identity`, it proves the identity an earlier hello issued (a dict this call
        fills with the issued `client_id` and `secret` when it is empty)."""
        c = Client(self.address, ssl_context=client_context(fingerprint=self.status["certificate_pin"]), timeout=15)
        hello: dict[str, Any] = {"kind": "runtime", "client_id": client_id, "host": "client-host",
                                 "station": {"host_id": "h-1"}}
        if identity:
            hello["resume"] = dict(identity)
        reply = c.hello(hello)
        if identity is not None:
            identity.update(client_id=reply["client_id"], secret=reply.get("secret"))
        return c

    def available(self) -> bool:
        try:
            items = self.read_status()["items"]
        except (OSError, ValueError):
            return False
        return any(i["available"] for i in items)


@dataclass
class System:
    procs: Procs
    etcd: EtcdCluster
    upstreams: list[Runtime]
    front_ends: list[FrontEndProc]
    ca: Path
    fe_cert: Path
    vendor: Vendor
    tmp: Path
    serials: list[str]  # the constituent containers, in the upstreams' order


def program(n: int) -> dict[str, Any]:
    return {"kind": "program", "pid": 1000 + n, "program": f"app{n}", "user": "u", "host": "client-host",
            "station": {"host_id": "h-1", "vm_id": "", "session_id": ""}, "session": "local console", "in_vm": False}


def access(c: Client, n: int = 1, **extra: Any) -> dict[str, Any]:
    return c.request("access", firm=10_001, product=9, mode="per-access", where="local", client=program(n), **extra)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_constituents(homes: list[Path], root: Path, vendor: Vendor, item: ProductItem) -> list[str]:
    """One soft container in each home, and `item` (a TMR item) as one TMR license naming
    the three (`licentia vendor issue --tmr`); returns their serials."""
    now = int(time.time())
    fp = collect_fingerprint(root, environ={})
    containers = [ContainerStore(home / "containers", fp).create_soft(Tolerance.MEDIUM, now) for home in homes]
    requests = [U.read_request(U.make_request(c.read(), vendor.firm, now, {})) for c in containers]
    licensed = tmr_item(item, item.tmr_id or 1, requests)
    for c in containers:
        put_items(c, vendor, [licensed])
    return [str(c.serial) for c in containers]


def kill_upstream(s: System, i: int) -> None:
    s.upstreams[i].stop(9)
    s.etcd.kill(i)


@contextmanager
def tmr_system(tmp_path: Path, item: ProductItem = ITEM, front_end_args: tuple[str, ...] = ()) -> Iterator[System]:
    """Three upstream runtimes beside a 3-member etcd cluster, two front ends (with
    `front_end_args` beside their own), all started."""
    root = machine(tmp_path / "machine")
    vendor = Vendor(tmp_path / "vendor")
    ca, fe_cert = make_ca(tmp_path / "pki", "site")
    with EtcdCluster() as etcd, processes() as procs:
        urls = [f"http://{e}" for e in etcd.endpoints]
        ups = []
        homes = [tmp_path / f"up{i + 1}" for i in range(3)]
        serials = make_constituents(homes, root, vendor, item)
        for home in homes:
            # a fixed port: a restarted upstream is found where the front ends look for it
            flags = ["--network", "--network-port", str(_free_port()), "--network-address", "127.0.0.1", "--tmr-role", "upstream",
                     "--tmr-front-end-ca", str(ca)]
            for u in urls:
                flags += ["--tmr-etcd", u]
            ups.append(Runtime(procs, home, root, *flags))
        fes = []
        for i in range(2):
            # a fixed port too: a restarted front end is found where the search lists name it
            args = ["--port", str(_free_port()), "--address", "127.0.0.1", "--certificate", str(fe_cert),
                    "--private-key", str(fe_cert.with_suffix(".key")), "--poll-interval", "0.3",
                    "--client-timeout", "5", *front_end_args]
            for e in urls:
                args += ["--etcd", e]
            for up in ups:
                args += ["--upstream", up.network_address]
            fe = FrontEndProc(procs, tmp_path / f"fe{i + 1}", args)
            fe.start()
            fes.append(fe)
        for fe in fes:
            wait_for("the TMR item in the virtual container", fe.available)
        yield System(procs, etcd, ups, fes, ca, fe_cert, vendor, tmp_path, serials)


