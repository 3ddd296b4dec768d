"""The access list applied by a real runtime: network clients on its TLS port, groups from a
real slapd, the list edited with `licentia acl` while the runtime runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.runtime.harness import Procs, Program, Runtime, Vendor, base_env, make_home, wait_for
from tests.runtime.slapd import READER, READER_PASSWORD, SUFFIX, Slapd

from licentia.model import ErrorCode, LicentiaError, ProductItem
from licentia.protocol.client import Client
from licentia.protocol.tls import client_context

NETWORK = ("--network", "--network-address", "127.0.0.1", "--network-port", "0", "--client-timeout", "30")
SUPPORT = [f"sup{i}" for i in range(1, 6)]
DEVELOPMENT = [f"dev{i}" for i in range(1, 6)]


def people_ldif() -> str:
    out = []
    for u in SUPPORT + DEVELOPMENT + ["guest1", "guest2", "guest3"]:
        out.append(f"dn: uid={u},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {u}\ncn: {u}\nsn: {u}\n")
    for group, members in (("support", SUPPORT), ("development", DEVELOPMENT)):
        out.append(f"dn: cn={group},ou=groups,{SUFFIX}\nchangetype: modify\nadd: member\n"
                   + "".join(f"member: uid={u},ou=people,{SUFFIX}\n" for u in members))
    return "\n".join(out)


@pytest.fixture(scope="module")
def ldap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = Slapd(tmp_path_factory.mktemp("slapd"))
    try:
        server.load(people_ldif())
        yield server
    finally:
        server.stop()


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "licentia.cli.main", "--home", str(home), *args],
                          env=base_env(), capture_output=True, text=True, timeout=120)


class Net:
    """Network clients of the server, one connection per user."""

    def __init__(self, server: Runtime) -> None:
        self.server = server
        self.ctx = client_context(fingerprint=server.status["certificate_pin"], check_hostname=False)
        self.conns: list[Client] = []
        self.held: list[tuple[Client, int]] = []

    def access(self, user: str) -> dict[str, Any]:
        c = Client(self.server.network_address, ssl_context=self.ctx, server_hostname="licentia")
        self.conns.append(c)
        c.hello({"kind": "program", "program": "cad", "user": user, "host": f"{user}-pc",
                 "client_id": "prog-" + os.urandom(8).hex()})
        reply = c.request("access", firm=10001, product=7)
        self.held.append((c, reply["handle"]))
        return reply

    def release_all(self) -> None:
        for c, handle in self.held:
            c.request("release", handle=handle)
        self.held.clear()

    def refused(self, user: str) -> LicentiaError:
        with pytest.raises(LicentiaError) as info:
            self.access(user)
        return info.value

    def close(self) -> None:
        for c in self.conns:
            c.close()


@pytest.mark.slow
def test_the_seed_example_through_a_runtime(tmp_path: Path, root: Path, vendor: Vendor, procs: Procs,
                                            ldap: Slapd) -> None:
    home = tmp_path / "server"
    make_home(home, root, vendor, [ProductItem(product_code=7, quantity=10)])
    (home / "reader.password").write_text(READER_PASSWORD + "\n")
    (home / "runtime.toml").write_text(f'[directory]\nurl = "{ldap.url}"\nbase = "{SUFFIX}"\n'
                                       f'bind_dn = "{READER}"\npassword_file = "reader.password"\n')
    for name, group, n in (("support", "support", "3"), ("development", "development", "4")):
        done = cli(home, "acl", "add", name, "--scope", "product 10001:7", "--group", group, "--reserve", n)
        assert done.returncode == 0, done.stderr
    server = Runtime(procs, home, root, *NETWORK)
    net = Net(server)
    try:
        for u in SUPPORT[:4]:  # three reserved seats, and the fourth support user takes a free one
            assert net.access(u)["ok"]
        assert net.access("guest1")["ok"] and net.access("guest2")["ok"]  # the two free seats left
        refused = net.refused("guest3")
        assert refused.code is ErrorCode.ACCESS_LIST_DENIED and 'rule "development"' in refused.message
        for u in DEVELOPMENT[:4]:  # the free seats are gone: the reserved ones remain for their group
            assert net.access(u)["ok"]
        assert net.refused(DEVELOPMENT[4]).code is ErrorCode.NO_MORE_LICENSES
        grants = server.logged("ten grants", lambda e: e.get("event") == "grant" and e.get("product") == 7)
        wait_for("ten grants", lambda: len([e for e in server.usage_log() if e.get("event") == "grant"]) == 10)
        charges = [e.get("charge") for e in server.usage_log() if e.get("event") == "grant"]
        assert charges.count("support") == 4 and charges.count("development") == 4 and charges.count(None) == 2
        assert grants
        denied = server.logged("the list's denial", lambda e: e.get("event") == "deny" and e.get("code") == 1300)
        assert denied[0]["user"] == "guest3"

        # the list is reloaded without a restart, and the change is in the usage log
        done = cli(home, "acl", "add", "no-guests", "--scope", "server", "--deny", "--user", "guest9")
        assert done.returncode == 0, done.stderr
        server.logged("the reloaded list", lambda e: e.get("event") == "acl-changed" and e.get("rules") == 3)
        assert net.refused("guest9").code is ErrorCode.NO_MORE_LICENSES  # every seat taken: 212, as ever
        handles = [h for _, h in net.held]
    finally:
        net.close()

    # a restart restores the seats and charges them again, with the holders' groups
    server.stop()
    server.start()
    assert len(server.sessions()) == 10
    server.logged("the seats charged again", lambda e: e.get("event") == "acl-recharged" and e["unknown"] == 0)
    net = Net(server)
    try:
        with server.admin() as admin:
            admin.request("admin.release", handle=handles[0])  # sup1: support is back within its 3
        assert net.access("guest4")["ok"]  # so the fourth support seat's free seat is free again
        with server.admin() as admin:
            for h in [*handles[1:], net.held[0][1]]:
                admin.request("admin.release", handle=h)
        assert not server.sessions()
        assert net.access(SUPPORT[4])["ok"]
        refused = net.refused("guest9")
        assert refused.code is ErrorCode.ACCESS_LIST_DENIED and 'rule "no-guests"' in refused.message
    finally:
        net.close()
        server.stop()


def _as_nobody(port: int, firm: int) -> dict[str, Any]:
    """A program of another user (uid 65534, "nobody") taking a license over loopback TCP:
    the runtime learns the user from the kernel, not from the program."""
    code = ("import json, licentia\n"
            "try:\n"
            f"    lic = licentia.access({firm}, 7, verify=False)\n"
            "    print(json.dumps({'handle': lic.info.handle}))\n"
            "except licentia.LicentiaError as exc:\n"
            "    print(json.dumps({'error': int(exc.code), 'message': exc.message}))\n")
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    done = subprocess.run([*nobody, sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/",
                          env=base_env(PYTHONPATH=os.pathsep.join(sys.path), LICENTIA_RUNTIME=f"127.0.0.1:{port}"))
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = __import__("json").loads(done.stdout)
    return result


def test_programs_on_the_server_go_through_the_list(tmp_path: Path, root: Path, vendor: Vendor,
                                                    procs: Procs) -> None:
    """A program on the runtime's own machine (the plain access path) is judged by the list
    too, by the user the kernel names, and the list is reloaded without a restart."""
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=7, quantity=5)])
    rt = Runtime(procs, home, root)
    port = int(rt.status["local_port"])
    env = {"LICENTIA_HOME": str(home)}
    opts = {"firm_code": vendor.firm, "product_code": 7, "verify": False}
    me = __import__("pwd").getpwuid(os.getuid()).pw_name
    assert "handle" in _as_nobody(port, vendor.firm)  # no list yet
    assert cli(home, "acl", "add", "no-nobody", "--deny", "--user", "nobody").returncode == 0
    rt.logged("the list", lambda e: e.get("event") == "acl-changed" and e.get("rules") == 1)
    refused = _as_nobody(port, vendor.firm)
    assert refused["error"] == 1300 and 'rule "no-nobody"' in refused["message"]
    # a program cannot name itself into another user: USER is not who it is
    assert Program(procs, root, {**env, "USER": "nobody"}, **opts).granted
    assert cli(home, "acl", "add", "me-max", "--user", me, "--max", "1").returncode == 0
    rt.logged("the list", lambda e: e.get("event") == "acl-changed" and e.get("rules") == 2)
    refused = Program(procs, root, {**env, "USER": "someone-else"}, **opts).first  # the one seat is held already
    assert refused["error"] == 1300 and "me-max" in refused["message"]
    rt.stop()
