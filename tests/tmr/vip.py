"""The TMR twin front ends behind one virtual address, with real network namespaces.

    root namespace: a bridge on 10.A.B.254/24, the 3 etcd members and 3 upstream runtimes
    namespace fe1:  eth0 10.A.B.1, `licentia tmr serve` on port 22350, keepalived
    namespace fe2:  eth0 10.A.B.2, the same, its twin
    namespace cl:   eth0 10.A.B.3, a client runtime whose search list names only the
                    virtual address 10.A.B.100:22350, and its programs

keepalived runs with the `keepalived.conf` and the front ends with the server certificate
that `licentia tmr init` writes for these addresses (`--advert-interval 0.5`). The names carry the
test process's id, the subnet is one no route of this machine uses, and `vip_system` removes
every namespace, link and process it made, whatever happens. It needs root, `ip netns` and
keepalived: `vip_unavailable()` says why not, for a skip.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.runtime.harness import (
    Procs,
    Program,
    Runtime,
    Vendor,
    base_env,
    machine,
    make_home,
    processes,
    wait_for,
)
from tests.tmr.etcd import EtcdCluster, etcd_binary
from tests.tmr.system import ITEM, LICENTIA, FrontEndProc, _free_port, make_ca

from licentia.runtime import searchlist

KEEPALIVED = "/usr/sbin/keepalived"
PORT = 22350  # the front ends' port, in namespaces of their own
ADVERT = 0.5  # VRRP advertisements in the tests (`licentia tmr init` writes 1 s by default)


def vip_unavailable() -> str | None:
    """Why the virtual-address system cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespaces and keepalived need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if not (shutil.which("keepalived") or os.path.exists(KEEPALIVED)):
        return "keepalived is not installed: apt-get install keepalived (scripts/system-packages.sh)"
    if etcd_binary() is None:
        return "etcd is not installed: apt-get install etcd-server etcd-client (scripts/system-packages.sh)"
    probe = f"lvprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.0.0.0/8 that no route or address of this machine overlaps."""
    used = []
    out = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    out += subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for word in re.findall(r"\d+\.\d+\.\d+\.\d+(?:/\d+)?", out):
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(word, strict=False))
    start = os.getpid() % 200
    for k in range(200):
        net = ipaddress.IPv4Network(f"10.213.{(start + k) % 200 + 20}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free 10.213.x.0/24 subnet for the test network")


class NetnsProcs(Procs):
    """Spawns into a network namespace (`ip netns exec` runs the command itself: same pid);
    the processes are the parent's, killed with the others."""

    def __init__(self, parent: Procs, namespace: str) -> None:
        super().__init__()
        self.parent = parent
        self.namespace = namespace

    def spawn(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return self.parent.spawn(["ip", "netns", "exec", self.namespace, *args], **kwargs)


class Network:
    """A bridge in the root namespace and namespaces joined to it by veth pairs."""

    def __init__(self) -> None:
        self.tag = f"lv{os.getpid()}"
        self.subnet = _free_subnet()
        hosts = list(self.subnet.hosts())
        self.gateway = str(hosts[-1])  # .254, on the bridge: the root namespace's address
        self.bridge = f"{self.tag}br"
        self.namespaces: list[str] = []
        self.links: list[str] = [self.bridge]
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def address(self, n: int) -> str:
        return str(self.subnet.network_address + n)

    def add(self, name: str, n: int) -> str:
        """Namespace `<tag><name>` with eth0 at address `n` of the subnet."""
        ns, veth = f"{self.tag}{name}", f"{self.tag}{name}v"
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.links.append(veth)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", ns, "addr", "add", f"{self.address(n)}/{self.subnet.prefixlen}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def holds(self, ns: str, address: str) -> bool:
        out = subprocess.run(["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "eth0"], capture_output=True,
                             text=True).stdout
        return f" {address}/" in out

    def close(self) -> None:
        for ns in self.namespaces:  # whatever still runs in them (started here) goes first
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for link in self.links:  # a veth goes with its namespace; the bridge is ours to delete
            subprocess.run(["ip", "link", "del", link], capture_output=True)


@dataclass
class Keepalived:
    procs: Procs
    namespace: str
    conf: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.conf.with_suffix(".log"), "ab")  # noqa: SIM115 - handed to the child
        run = self.conf.parent
        self.proc = self.procs.spawn(
            ["ip", "netns", "exec", self.namespace, shutil.which("keepalived") or KEEPALIVED, "-f", str(self.conf),
             "-p", str(run / "keepalived.pid"), "-r", str(run / "vrrp.pid"), "-n", "-l", "-D"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()

    def state(self) -> str:
        """The VRRP instance's last state in the log: BACKUP, MASTER, FAULT or ''."""
        states = re.findall(r"Entering (\w+) STATE", self.log())
        return states[-1] if states else ""

    def log(self) -> str:
        try:
            return self.conf.with_suffix(".log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM: keepalived stops its VRRP child and gives the address up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Twin:
    name: str
    namespace: str
    address: str
    front_end: FrontEndProc
    keepalived: Keepalived

    def ready(self) -> bool:
        """Serving the item, and its keepalived able to take the address (BACKUP or MASTER)."""
        return self.front_end.available() and self.keepalived.state() in ("BACKUP", "MASTER")


@dataclass
class VipSystem:
    procs: Procs
    net: Network
    twins: list[Twin]
    client_ns: str
    virtual: str  # the virtual address, without the prefix
    vendor: Vendor
    tmp: Path

    @property
    def server(self) -> str:
        return f"{self.virtual}:{PORT}"

    def holder(self) -> Twin | None:
        held = [t for t in self.twins if self.net.holds(t.namespace, self.virtual)]
        return held[0] if len(held) == 1 else None

    def client(self, name: str = "client") -> tuple[Runtime, Program]:
        """A client runtime in the client namespace, its search list naming only the
        virtual address, and a protected program (verifying proofs) holding a seat."""
        root = machine(self.tmp / f"{name}-machine")
        home = self.tmp / name
        searchlist.add(home / "servers.json", self.server)
        inside = NetnsProcs(self.procs, self.client_ns)
        runtime = Runtime(inside, home, root)
        prog = Program(inside, root, {"LICENTIA_HOME": str(home)}, firm_code=10_001, product_code=9,
                       firm_key=str(self.vendor.public_file))
        return runtime, prog


@contextmanager
def vip_system(tmp_path: Path) -> Iterator[VipSystem]:
    """Everything started and the virtual address on one twin; everything removed after."""
    net = Network()
    try:
        vendor = Vendor(tmp_path / "vendor")
        ca, fe_cert = make_ca(tmp_path / "pki", "site")
        root = machine(tmp_path / "machine")
        twins_ns = [net.add("fe1", 1), net.add("fe2", 2)]
        client_ns = net.add("cl", 3)
        virtual = net.address(100)
        with EtcdCluster(host=net.gateway) as etcd, processes() as procs:
            try:
                yield _start(procs, net, etcd, twins_ns, client_ns, virtual, vendor, ca, fe_cert, root, tmp_path)
            finally:
                for ns in net.namespaces:  # keepalived gives its address up and stops its child
                    with contextlib.suppress(Exception):
                        _stop_keepalived(procs, ns)
    finally:
        net.close()


def _stop_keepalived(procs: Procs, ns: str) -> None:
    for p in procs.children:
        if p.poll() is None and isinstance(p.args, list) and p.args[:4] == ["ip", "netns", "exec", ns] and \
                "keepalived" in str(p.args[4]):
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)


def _start(procs: Procs, net: Network, etcd: EtcdCluster, twins_ns: list[str], client_ns: str, virtual: str,
           vendor: Vendor, ca: Path, fe_cert: Path, root: Path, tmp: Path) -> VipSystem:
    urls = [f"http://{e}" for e in etcd.endpoints]
    ups = []
    for i in range(3):
        home = tmp / f"up{i + 1}"
        make_home(home, root, vendor, [ITEM])
        port = _free_port()
        flags = ["--network", "--network-port", str(port), "--network-address", net.gateway, "--tmr-role",
                 "upstream", "--tmr-front-end-ca", str(ca)]
        for u in urls:
            flags += ["--tmr-etcd", u]
        Runtime(procs, home, root, *flags)
        ups.append(f"{net.gateway}:{port}")
    site = tmp / "site"  # what `licentia tmr init` writes for these hosts
    subprocess.run([*LICENTIA, "tmr", "init", "-o", str(site), "--upstream", f"up1={net.gateway}", "--upstream",
                    f"up2={net.gateway}", "--upstream", f"up3={net.gateway}", "--front-end", f"fe1={net.address(1)}",
                    "--front-end", f"fe2={net.address(2)}", "--virtual-address", f"{virtual}/{net.subnet.prefixlen}",
                    "--interface", "eth0", "--network-port", str(PORT), "--advert-interval", str(ADVERT)],
                   check=True, capture_output=True, env=base_env())
    twins = []
    for i, ns in enumerate(twins_ns):
        name = f"fe{i + 1}"
        state = tmp / name
        state.mkdir(parents=True, exist_ok=True)
        for f in ("server.crt", "server.key"):  # one certificate for both: clients pin the virtual address's
            shutil.copy2(site / name / f, state / f)
        args = ["--port", str(PORT), "--address", "0.0.0.0", "--certificate", str(fe_cert),
                "--private-key", str(fe_cert.with_suffix(".key")), "--poll-interval", "0.3", "--client-timeout", "5"]
        for e in urls:
            args += ["--etcd", e]
        for up in ups:
            args += ["--upstream", up]
        fe = FrontEndProc(NetnsProcs(procs, ns), state, args)
        fe.start()
        run = tmp / f"{name}-keepalived"
        run.mkdir()
        conf = run / "keepalived.conf"
        shutil.copy2(site / name / "keepalived.conf", conf)
        ka = Keepalived(procs, ns, conf)
        ka.start()
        twins.append(Twin(name, ns, net.address(i + 1), fe, ka))
    s = VipSystem(procs, net, twins, client_ns, virtual, vendor, tmp)
    for t in twins:
        wait_for(f"{t.name} serving, its keepalived ready", t.ready, timeout=30, interval=0.1)
    wait_for("the virtual address on one twin", s.holder, timeout=30, interval=0.1)
    return s


def kill_holder(s: VipSystem) -> tuple[Twin, Twin]:
    """SIGKILL the `licentia tmr serve` holding the virtual address; (killed, its twin)."""
    held = s.holder()
    assert held is not None, "the virtual address is on no twin, or on both"
    [other] = [t for t in s.twins if t is not held]
    held.front_end.kill()
    return held, other


def served_again(prog: Program, command: str) -> tuple[dict[str, Any], float]:
    """The program's answer to `command` and the seconds it took."""
    t0 = time.monotonic()
    got = prog.ask(command)
    return got, time.monotonic() - t0
