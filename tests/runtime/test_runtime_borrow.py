"""Borrowing with real processes: a network server, a client runtime on another machine,
the `licentia borrow` command and protected programs that verify what they get."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from tests.machine_cli import command
from tests.runtime.harness import Procs, Program, Runtime, Vendor, base_env, make_home, wait_for

from licentia.binding import collect_fingerprint
from licentia.containers import ContainerStore
from licentia.model import ProductItem, Tolerance

NETWORK = ("--network", "--network-address", "127.0.0.1", "--network-port", "0", "--client-timeout", "5")
DAY = 86400


def licentia(root: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command(root), "--home", str(home), *args], env=base_env(), capture_output=True,
                          text=True, timeout=60, check=False)


def server_home(tmp_path: Path, root: Path, vendor: Vendor) -> Path:
    home = tmp_path / "server"
    make_home(home, root, vendor, [
        ProductItem(product_code=7, quantity=1, borrow_max=7 * DAY),
        ProductItem(product_code=8, quantity=2, borrow_max=DAY, tmr_id=5),
        ProductItem(product_code=9, quantity=2),  # no borrow maximum: not lent
    ])
    return home


def client_home(tmp_path: Path, root: Path) -> tuple[Path, str]:
    """A home with one empty soft container (it knows no firm yet)."""
    home = tmp_path / "client"
    store = ContainerStore(home / "containers", collect_fingerprint(root, environ={}))
    return home, str(store.create_soft(Tolerance.MEDIUM, int(time.time())).serial)


def borrow_list(root: Path, home: Path) -> dict[str, list[dict[str, object]]]:
    out = licentia(root, home, "borrow", "list", "--json")
    assert out.returncode == 0, out.stderr
    doc: dict[str, list[dict[str, object]]] = json.loads(out.stdout)
    return doc


@pytest.mark.slow
def test_a_borrowed_seat_works_without_the_server_and_comes_back(
    tmp_path: Path, root: Path, other_root: Path, vendor: Vendor, procs: Procs
) -> None:
    server = Runtime(procs, server_home(tmp_path, root, vendor), root, *NETWORK)
    home, serial = client_home(tmp_path, other_root)
    client = Runtime(procs, home, other_root)
    address = server.network_address
    firm = str(vendor.firm)

    refused = licentia(other_root, home, "borrow", f"{firm}:8", "--for", "1h", "--server", address)
    assert refused.returncode == 2 and "error 1441" in refused.stderr, refused.stderr  # TMR: never lent
    refused = licentia(other_root, home, "borrow", f"{firm}:9", "--for", "1h", "--server", address)
    assert refused.returncode == 2 and "error 1440" in refused.stderr, refused.stderr
    refused = licentia(other_root, home, "borrow", f"{firm}:7", "--for", "8d", "--server", address)
    assert refused.returncode == 2 and "error 1442" in refused.stderr and "7d" in refused.stderr, refused.stderr
    assert server.sessions() == []

    out = licentia(other_root, home, "borrow", f"{firm}:7", "--for", "2d", "--server", address)
    assert out.returncode == 0, out.stderr
    assert f"of container {serial}" in out.stdout
    [held] = borrow_list(other_root, home)["held"]
    [lent] = borrow_list(root, server.home)["lent"]
    assert held["borrow"] == lent["borrow"] and lent["state"] == "active" and lent["client"] == serial
    assert [r["location"] for r in server.sessions()] == ["borrowed"]
    # the server counts the seat taken: its one seat is gone for everybody else
    opts = {"firm_code": vendor.firm, "product_code": 7, "firm_key": str(vendor.public_file)}
    assert Program(procs, root, {"LICENTIA_HOME": str(server.home)}, **opts).first["error"] == 212
    refused = licentia(root, server.home, "release", str(server.sessions()[0]["handle"]))
    assert refused.returncode == 2 and "borrowed seat" in refused.stderr

    server.stop()  # no network from here on: the borrowed seat is in this machine's container
    prog = Program(procs, other_root, {"LICENTIA_HOME": str(home)}, **opts)
    assert prog.first["location"] == "local" and prog.first["verified"], prog.first
    assert prog.first["container"] == serial
    assert prog.ask("release") == {"released": True}
    # returned while the server is away: the item leaves now, the server is told later
    out = licentia(other_root, home, "borrow", "return", str(held["borrow"]))
    assert out.returncode == 0 and "could not be told" in out.stdout, out.stdout + out.stderr
    assert borrow_list(other_root, home)["held"] == []
    assert borrow_list(other_root, home)["unconfirmed_returns"] == [held["borrow"]]
    assert not Program(procs, other_root, {"LICENTIA_HOME": str(home)}, **opts).granted

    server.flags = (*NETWORK[:4], str(server.status["network_port"]), *NETWORK[5:])
    server.start()  # a restart (on the same port) keeps the borrowed seat taken
    assert [r["location"] for r in server.sessions()] == ["borrowed"]
    out = licentia(other_root, home, "borrow", "return", str(held["borrow"]))  # tells it now
    assert out.returncode == 0 and "free again" in out.stdout, out.stdout + out.stderr
    assert borrow_list(other_root, home)["unconfirmed_returns"] == []
    assert server.sessions() == []
    assert borrow_list(other_root, home)["held"] == []
    assert borrow_list(root, server.home)["lent"][0]["state"] == "returned"
    again = licentia(other_root, home, "borrow", "return", str(held["borrow"]))
    assert again.returncode == 0 and "returned already" in again.stdout  # once only
    local = Program(procs, root, {"LICENTIA_HOME": str(server.home)}, **opts)
    assert local.granted  # the seat is back
    assert local.ask("release") == {"released": True}

    # a short borrow ends by itself on both sides
    out = licentia(other_root, home, "borrow", f"{firm}:7", "--for", "2s", "--server", address)
    assert out.returncode == 0, out.stderr
    wait_for("the server to take the seat back", lambda: server.sessions() == [])
    wait_for("the client to drop the ended item", lambda: borrow_list(other_root, home)["held"] == [])
    states = [r["state"] for r in borrow_list(root, server.home)["lent"]]
    assert sorted(states) == ["expired", "returned"]
    wait_for("borrow-expired in both logs", lambda: server.logged("expiry", lambda e: e["event"] == "borrow-expired")
             and client.logged("expiry", lambda e: e["event"] == "borrow-expired"))
    events = [e["event"] for e in server.usage_log() if str(e["event"]).startswith("borrow")]
    assert events == ["borrow", "borrow-return", "borrow", "borrow-expired"]
    report = licentia(root, server.home, "report", "borrowed")
    assert report.returncode == 0 and "borrow-expired" in report.stdout, report.stdout + report.stderr


def test_borrowing_the_offline_way(tmp_path: Path, root: Path, other_root: Path, vendor: Vendor,
                                   procs: Procs) -> None:
    server = Runtime(procs, server_home(tmp_path, root, vendor), root, *NETWORK)
    home, serial = client_home(tmp_path, other_root)
    Runtime(procs, home, other_root)  # knows no server at all
    firm = str(vendor.firm)
    request, certificate, receipt = tmp_path / "borrow.request", tmp_path / "borrow.cert", tmp_path / "borrow.return"

    out = licentia(other_root, home, "borrow", f"{firm}:7", "--for", "1d", "--offline", "-o", str(request))
    assert out.returncode == 0, out.stderr
    tampered = bytearray(request.read_bytes())
    tampered[40] ^= 1
    (tmp_path / "bad.request").write_bytes(bytes(tampered))
    bad = licentia(root, server.home, "borrow", "grant", str(tmp_path / "bad.request"), "-o", str(certificate))
    assert bad.returncode == 2 and "error 1443" in bad.stderr, bad.stderr
    out = licentia(root, server.home, "borrow", "grant", str(request), "-o", str(certificate))
    assert out.returncode == 0, out.stderr
    assert [r["location"] for r in server.sessions()] == ["borrowed"]
    out = licentia(other_root, home, "borrow", "import", str(certificate))
    assert out.returncode == 0 and serial in out.stdout, out.stderr

    opts = {"firm_code": vendor.firm, "product_code": 7, "firm_key": str(vendor.public_file)}
    prog = Program(procs, other_root, {"LICENTIA_HOME": str(home)}, **opts)
    assert prog.first["verified"] and prog.first["container"] == serial, prog.first
    prog.ask("release")

    [held] = borrow_list(other_root, home)["held"]
    out = licentia(other_root, home, "borrow", "return", str(held["borrow"]), "--offline", "-o", str(receipt))
    assert out.returncode == 0, out.stderr
    assert borrow_list(other_root, home)["held"] == []
    assert Program(procs, other_root, {"LICENTIA_HOME": str(home)}, **opts).first["error"] == 200
    out = licentia(root, server.home, "borrow", "accept-return", str(receipt))
    assert out.returncode == 0 and "free again" in out.stdout, out.stderr
    assert server.sessions() == []
    out = licentia(root, server.home, "borrow", "accept-return", str(receipt))
    assert out.returncode == 0 and "nothing changed" in out.stdout  # a return counts once
