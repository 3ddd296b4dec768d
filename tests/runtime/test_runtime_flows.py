"""The runtime's flows as a user meets them, with real processes: a port another program
holds, the admin token from the start, `access --hold` and an administrator's release,
the 213 hint, decrements in the usage log, license-gone once, seats freed when their item
goes, and `update apply` reaching the running runtime."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.machine_cli import command
from tests.runtime.harness import (
    WAIT,
    Procs,
    Program,
    Runtime,
    Vendor,
    base_env,
    make_home,
    wait_for,
)

from licentia.model import ProductItem

HOLD_PORT = textwrap.dedent("""
    import socket, sys, time
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    print(s.getsockname()[1], flush=True)
    time.sleep(3600)
""")


def run(root: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command(root), "--home", str(home), *args],
                          env=base_env(), capture_output=True, text=True, timeout=120)


def test_a_port_another_program_holds_is_named_and_nothing_is_left_behind(
    tmp_path: Path, root: Path, vendor: Vendor, procs: Procs
) -> None:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=7, quantity=1)])
    holder = procs.spawn([sys.executable, "-c", HOLD_PORT], stdout=subprocess.PIPE)
    assert holder.stdout is not None
    port = int(holder.stdout.readline())
    out = run(root, home, "runtime", "serve", "--local-port", str(port), "--http-port", "-1")
    assert out.returncode == 2, out.stderr
    assert f"error 1420 (port in use): the local TCP endpoint: TCP port {port} on 127.0.0.1 is in use by " \
        in out.stderr, out.stderr
    assert f"(pid {holder.pid})" in out.stderr and "Traceback" not in out.stderr
    assert not (home / "runtime.sock").exists() and not (home / "runtime.json").exists()
    # the same for the status page's port; and the home serves once the port is free
    out = run(root, home, "runtime", "serve", "--local-port", "0", "--http-port", str(port))
    assert out.returncode == 2 and f"the status page (HTTP): TCP port {port}" in out.stderr, out.stderr
    assert not (home / "runtime.sock").exists() and not (home / "runtime.json").exists()
    holder.kill()
    holder.wait(WAIT)
    Runtime(procs, home, root)


def test_admin_token_exists_from_the_start(tmp_path: Path, root: Path, vendor: Vendor, procs: Procs) -> None:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=7, quantity=1)])
    Runtime(procs, home, root)
    token = home / "admin.token"
    assert token.exists() and len(token.read_text().strip()) >= 32
    assert token.stat().st_mode & 0o077 == 0


def _hold(procs: Procs, root: Path, home: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    """`licentia access … --hold 600` in the background; returns it and its handle."""
    proc = procs.spawn([*command(root), "--home", str(home), "access", *args, "--hold", "600"],
                       env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert line.startswith("granted handle "), (line, proc.stderr.read().decode() if proc.stderr else "")
    return proc, int(line.split()[2].rstrip(":"))


def test_access_hold_ends_when_an_administrator_releases_it(
    tmp_path: Path, root: Path, vendor: Vendor, procs: Procs
) -> None:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=7, quantity=1)])
    Runtime(procs, home, root)
    held, handle = _hold(procs, root, home, "--firm-code", str(vendor.firm), "--product-code", "7")
    out = run(root, home, "release", str(handle))
    assert out.returncode == 0, out.stderr
    assert held.wait(WAIT) == 2
    assert held.stderr is not None
    err = held.stderr.read().decode()
    assert f"error 106 (invalid handle): handle {handle} was taken back while held: the license was freed " \
        "(an administrator released it)" in err, err


def test_213_says_which_holder_blocks_an_exclusive_request(
    tmp_path: Path, root: Path, vendor: Vendor, procs: Procs
) -> None:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=7, quantity=5)])
    Runtime(procs, home, root)
    firm = ("--firm-code", str(vendor.firm), "--product-code", "7")
    _hold(procs, root, home, *firm, "--mode", "per-station")
    out = run(root, home, "access", *firm, "--mode", "exclusive", "--hold", "0")
    assert out.returncode == 2 and "error 213" in out.stderr, out.stderr
    assert "(1 per-station use(s)); exclusive access needs it alone" in out.stderr, out.stderr
    assert "where 1 per-station use(s) hold it" in out.stderr and "used exclusively" not in out.stderr


def test_decrements_are_logged_for_local_and_network_programs(
    tmp_path: Path, root: Path, other_root: Path, vendor: Vendor, procs: Procs
) -> None:
    home = tmp_path / "home"
    serial = make_home(home, root, vendor, [ProductItem(product_code=7, quantity=3, units=20)])
    rt = Runtime(procs, home, root, "--network", "--network-address", "127.0.0.1", "--network-port", "0")
    opts = {"firm_code": vendor.firm, "product_code": 7, "firm_key": str(vendor.public_file)}
    local = Program(procs, root, {"LICENTIA_HOME": str(home)}, **opts)
    assert local.ask("decrement 3") == {"units": 17}
    remote = Program(procs, other_root, {"LICENTIA_SERVER": rt.network_address,
                                         "LICENTIA_HOME": str(tmp_path / "program-home")}, **opts)
    assert remote.first["location"] == "network", remote.first
    assert remote.ask("decrement 5") == {"units": 12}
    logged = wait_for("two decrements in the log", lambda: [
        e for e in rt.usage_log() if e["event"] == "decrement"][1:] and [
        e for e in rt.usage_log() if e["event"] == "decrement"])
    first, second = logged
    assert (first["units"], first["left"], first["pid"], first["handle"], first["container"]) == (
        3, 17, local.pid, local.first["handle"], serial)
    assert (second["units"], second["left"], second["handle"]) == (5, 12, remote.first["handle"])
    assert second["client"] and second.get("pid") is None
