"""Network mode with real processes on loopback: a client runtime, direct programs, TLS pins,
discovery, and the quantity-0 and terminal-session rules."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest
from tests.runtime.harness import Procs, Program, Runtime, Vendor, make_home, wait_for

from licentia.model import ProductItem
from licentia.runtime import searchlist

NETWORK = ("--network", "--network-address", "127.0.0.1", "--network-port", "0", "--client-timeout", "5")


def server_home(tmp_path: Path, root: Path, vendor: Vendor, name: str = "server") -> Path:
    home = tmp_path / name
    make_home(home, root, vendor, [
        ProductItem(product_code=7, quantity=1, units=20),
        ProductItem(product_code=12, quantity=0),
        ProductItem(product_code=14, quantity=1),
    ])
    return home


@pytest.mark.slow
def test_client_runtime_takes_and_loses_seats_on_a_server(
    tmp_path: Path, root: Path, other_root: Path, vendor: Vendor, procs: Procs
) -> None:
    server = Runtime(procs, server_home(tmp_path, root, vendor), root, *NETWORK)
    client_home = tmp_path / "client"
    searchlist.add(client_home / "servers.json", server.network_address)
    client = Runtime(procs, client_home, other_root)
    opts = {"firm_code": vendor.firm, "product_code": 7, "firm_key": str(vendor.public_file)}
    via_client = {"LICENTIA_HOME": str(client_home)}
    # a program on a machine without a runtime talks to the server itself and pins it on first use
    direct = Program(procs, other_root, {"LICENTIA_SERVER": server.network_address,
                                         "LICENTIA_HOME": str(tmp_path / "program-home")},
                     firm_code=vendor.firm, product_code=14, firm_key=str(vendor.public_file))
    assert direct.first["location"] == "network" and direct.first["verified"]
    assert (tmp_path / "program-home" / "pins").is_dir()

    prog = Program(procs, other_root, via_client, **opts)
    assert prog.first["location"] == "network" and prog.first["verified"], prog.first
    assert prog.first["server"] == server.network_address
    rows = server.sessions()
    assert sorted((r["location"], r["pid"]) for r in rows) == sorted(
        [("network client", prog.pid), ("network client", direct.pid)])
    assert [r["location"] for r in client.sessions()] == [f"server {server.network_address}"]
    assert prog.ask("decrement 3") == {"units": 17}  # units are spent on the server, verified by the program

    local = Program(procs, root, {"LICENTIA_HOME": str(server.home)}, **opts)
    assert local.first["error"] == 212  # the one seat is held over the network

    prog.kill()  # the client runtime reaps it and frees the seat on the server
    wait_for("the server to free the seat of the killed program",
             lambda: [r["pid"] for r in server.sessions()] == [direct.pid])

    again = Program(procs, other_root, via_client, **opts)
    assert again.granted
    client.stop()  # a restart of the client runtime keeps the seats of its live programs
    client.start()
    assert again.ask("check")["valid"] is True
    assert sorted(r["pid"] for r in server.sessions()) == sorted([again.pid, direct.pid])
    client.stop(signal.SIGKILL)  # the client runtime dies: its keep-alives stop
    wait_for("the server to time the silent client out",
             lambda: [r["pid"] for r in server.sessions()] == [direct.pid], timeout=20)
    wait_for("the timeout in the server's log", lambda: [
        e for e in server.usage_log() if e["event"] == "release" and e.get("reason") == "timeout"])
    # meanwhile the direct program's keep-alives held its seat past the 5 s timeout
    assert direct.ask("check")["valid"] is True

    local_only = Program(procs, root, {"LICENTIA_HOME": str(server.home)}, firm_code=vendor.firm, product_code=12,
                         verify=False)
    assert local_only.granted  # quantity 0 is for this machine ...
    client.start()
    remote = Program(procs, other_root, via_client, firm_code=vendor.firm, product_code=12, verify=False)
    assert remote.first["error"] == 1006  # ... and never over the network


def test_tls_pin_refuses_a_substituted_server(
    tmp_path: Path, root: Path, other_root: Path, vendor: Vendor, procs: Procs
) -> None:
    server = Runtime(procs, server_home(tmp_path, root, vendor), root, *NETWORK)
    pin = server.status["certificate_pin"]
    client_home = tmp_path / "client"
    searchlist.add(client_home / "servers.json", server.network_address)
    client = Runtime(procs, client_home, other_root)
    opts = {"firm_code": vendor.firm, "product_code": 7, "firm_key": str(vendor.public_file)}
    first = Program(procs, other_root, {"LICENTIA_HOME": str(client_home)}, **opts)
    assert first.granted  # trust on first use: the client pinned the server
    assert first.ask("release") == {"released": True}
    direct = {"LICENTIA_SERVER": server.network_address, "LICENTIA_SERVER_PIN": pin}
    assert Program(procs, other_root, direct, **opts).first["location"] == "network"

    port = server.status["network_port"]
    server.stop()
    impostor = Runtime(procs, server_home(tmp_path, root, vendor, "impostor"), root,
                       *NETWORK[:4], str(port), "--client-timeout", "5")
    assert impostor.status["certificate_pin"] != pin
    refused = Program(procs, other_root, {"LICENTIA_HOME": str(client_home)}, **opts)
    assert refused.first["error"] == 109, refused.first
    refused_direct = Program(procs, other_root, direct, **opts)
    assert refused_direct.first["error"] == 109, refused_direct.first
    assert impostor.sessions() == []
    del client


def test_discovery_by_udp_on_loopback(
    tmp_path: Path, root: Path, other_root: Path, vendor: Vendor, procs: Procs
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        udp = s.getsockname()[1]
    server = Runtime(procs, server_home(tmp_path, root, vendor), root, *NETWORK, "--discovery",
                     "--discovery-port", str(udp))
    client_home = tmp_path / "client"
    Runtime(procs, client_home, other_root, "--broadcast", "--broadcast-address", "127.0.0.1",
            "--broadcast-port", str(udp), "--broadcast-wait", "0.5")
    prog = Program(procs, other_root, {"LICENTIA_HOME": str(client_home)}, firm_code=vendor.firm, product_code=7,
                   firm_key=str(vendor.public_file))
    assert prog.first["location"] == "network" and prog.first["server"] == server.network_address


def test_quantity_zero_and_terminal_session_rules(tmp_path: Path, root: Path, vendor: Vendor, procs: Procs) -> None:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=12, quantity=0), ProductItem(product_code=13, quantity=1)])
    Runtime(procs, home, root)
    env = {"LICENTIA_HOME": str(home)}

    def run(product: int, mode: str = "per-access", **session: str) -> Program:
        return Program(procs, root, {**env, **session}, firm_code=vendor.firm, product_code=product, mode=mode,
                       firm_key=str(vendor.public_file))

    assert run(12).granted
    assert run(12, LICENTIA_SESSION="remote-desktop").granted  # a remote view of this machine is local use
    assert run(12, LICENTIA_SESSION="terminal-server", LICENTIA_SESSION_ID="s1").first["error"] == 1007
    assert run(12, LICENTIA_SESSION="terminal-server", LICENTIA_SESSION_ID="s1").first["error"] == 1007

    # per-station: one seat per terminal-server session; programs of one session share it
    ts1 = {"LICENTIA_SESSION": "terminal-server", "LICENTIA_SESSION_ID": "s1"}
    ts2 = {"LICENTIA_SESSION": "terminal-server", "LICENTIA_SESSION_ID": "s2"}
    a = run(13, "per-station", **ts1)
    b = run(13, "per-station", **ts1)
    assert a.granted and b.granted
    assert run(13, "per-station", **ts2).first["error"] == 212
    assert run(13, "exclusive", **ts1).first["error"] == 213


@pytest.mark.slow
def test_a_client_runtime_killed_before_its_snapshot_gives_back_the_seats_it_forgot(
    tmp_path: Path, root: Path, other_root: Path, vendor: Vendor, procs: Procs
) -> None:
    server = Runtime(procs, server_home(tmp_path, root, vendor), root, *NETWORK)
    client_home = tmp_path / "client"
    searchlist.add(client_home / "servers.json", server.network_address)
    # its seats never reach its snapshot before it is killed
    client = Runtime(procs, client_home, other_root, "--snapshot-delay", "600")
    via_client = {"LICENTIA_HOME": str(client_home)}
    opts = {"firm_code": vendor.firm, "product_code": 14, "firm_key": str(vendor.public_file)}
    first = Program(procs, other_root, via_client, **opts)
    assert first.granted
    forgotten = [r["handle"] for r in server.sessions()]
    client.stop(signal.SIGKILL)  # the machine goes down: the runtime and its program
    first.kill()
    client.start()  # it proves the same identity to the server, and knows nothing of that seat
    keeper = Program(procs, other_root, via_client, **{**opts, "product_code": 7})
    assert keeper.granted  # its seat is kept alive by the client runtime's keep-alives, as the forgotten one was
    # the new connection's first keep-alive learns the seat taken before, and gives it back
    wait_for("the forgotten seat to be given back",
             lambda: [r["pid"] for r in server.sessions()] == [keeper.pid], timeout=30)
    again = Program(procs, other_root, via_client, **opts)  # the item's one seat is free again
    assert again.granted, again.first
    assert forgotten[0] not in [r["handle"] for r in server.sessions()]
    problems = [e["detail"] for e in client.usage_log() if e["event"] == "problem"]
    assert any("taken before this runtime restarted" in p for p in problems), problems
