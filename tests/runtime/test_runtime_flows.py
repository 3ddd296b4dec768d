"""The runtime's flows as a user meets them, with real processes: a port another program
holds, the admin token from the start, `access --hold` and an administrator's release,
the 213 hint, decrements in the usage log, license-gone once, seats freed when their item
goes, and `update apply` reaching the running runtime."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from tests.machine_cli import command
from tests.runtime.harness import (
    WAIT,
    Procs,
    Program,
    Runtime,
    Vendor,
    base_env,
    make_home,
    open_container,
    wait_for,
)

from licentia.core import updates as U
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
    # an address not of this machine: said as such, no traceback either
    out = run(root, home, "runtime", "serve", "--local-port", "0", "--http-port", "-1",
              "--local-address", "192.0.2.1")
    assert out.returncode == 2 and "error 1421 (listen failed): the local TCP endpoint: cannot listen on TCP " \
        "192.0.2.1:0" in out.stderr and "Traceback" not in out.stderr, out.stderr
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


def _update_file(home: Path, root: Path, vendor: Vendor, serial: str, ops: list[U.Operation], path: Path) -> Path:
    """An update file from the vendor for container `serial`, as `licentia update apply` takes it."""
    now = int(time.time())
    content = open_container(home, root, serial).read()
    request = U.read_request(U.make_request(content, vendor.firm, now, {}))
    path.write_bytes(U.issue_update(request, vendor.firm, vendor.private, ops, now))
    return path


EVENTS_PROGRAM = textwrap.dedent("""
    import json, sys
    import licentia
    calls = []
    lic = licentia.access(int(sys.argv[1]), 7, firm_key=sys.argv[2],
                          on_event=lambda l, e, d: calls.append(e.value), watch_interval=0.1)
    print(json.dumps({"handle": lic.handle}), flush=True)
    for line in sys.stdin:
        if line.strip() == "check":
            print(json.dumps({"events": [e.value for e in lic.check()], "valid": lic.valid,
                              "calls": calls}), flush=True)
        else:
            print(json.dumps({"calls": calls}), flush=True)
""")


def test_license_gone_is_told_once_by_check_and_by_the_callback(
    tmp_path: Path, root: Path, vendor: Vendor, procs: Procs
) -> None:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=7, quantity=1)])
    Runtime(procs, home, root)
    prog = procs.spawn([sys.executable, "-c", EVENTS_PROGRAM, str(vendor.firm), str(vendor.public_file)],
                       env=base_env(LICENTIA_HOME=str(home)), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert prog.stdin is not None and prog.stdout is not None
    handle = json.loads(prog.stdout.readline())["handle"]

    def ask(command: str) -> dict[str, Any]:
        assert prog.stdin is not None and prog.stdout is not None
        prog.stdin.write(command.encode() + b"\n")
        prog.stdin.flush()
        answer: dict[str, Any] = json.loads(prog.stdout.readline())
        return answer

    assert run(root, home, "release", str(handle)).returncode == 0
    wait_for("the callback to tell license-gone", lambda: ask("calls")["calls"] == ["license-gone"])
    for _ in range(3):  # neither check() nor the callback tells it again
        assert ask("check") == {"events": [], "valid": False, "calls": ["license-gone"]}


def test_removing_or_locking_an_item_frees_its_seats_and_tells_the_program(
    tmp_path: Path, root: Path, vendor: Vendor, procs: Procs
) -> None:
    home = tmp_path / "home"
    serial = make_home(home, root, vendor, [ProductItem(product_code=7, quantity=2),
                                            ProductItem(product_code=8, quantity=2)])
    rt = Runtime(procs, home, root)
    env = {"LICENTIA_HOME": str(home)}
    on_7 = Program(procs, root, env, firm_code=vendor.firm, product_code=7,
                   firm_key=str(vendor.public_file))
    on_8 = Program(procs, root, env, firm_code=vendor.firm, product_code=8,
                   firm_key=str(vendor.public_file))
    assert on_7.granted and on_8.granted

    out = run(root, home, "update", "apply", str(_update_file(home, root, vendor, serial, [U.RemoveItem(1)],
                                                              tmp_path / "remove.lcu")))
    assert out.returncode == 0, out.stderr
    # freed at once (not when the program ends), logged with why
    assert [r["handle"] for r in rt.sessions()] == [on_8.first["handle"]]
    freed = rt.logged("the release of the removed item's seat", lambda e: e["event"] == "release"
                      and e.get("handle") == on_7.first["handle"])
    assert freed[0]["reason"] == "item-removed" and freed[0]["pid"] == on_7.pid
    gone = on_7.ask("check")
    assert gone["events"] == ["license-gone"] and gone["valid"] is False
    assert on_7.ask("check")["events"] == []

    out = run(root, home, "update", "apply", str(_update_file(home, root, vendor, serial, [U.LockFirm()],
                                                              tmp_path / "lock.lcu")))
    assert out.returncode == 0, out.stderr
    assert rt.sessions() == []
    freed = rt.logged("the release of the locked item's seat", lambda e: e["event"] == "release"
                      and e.get("handle") == on_8.first["handle"])
    assert freed[0]["reason"] == "item-locked"
    assert on_8.ask("check")["events"] == ["license-gone"]
    on_7.kill()
    on_8.kill()
    rt.stop()
    assert not [e for e in rt.usage_log() if e.get("reason") == "reaped"]


def test_update_apply_reaches_the_running_runtime_before_the_next_access(
    tmp_path: Path, root: Path, vendor: Vendor, procs: Procs
) -> None:
    home = tmp_path / "home"
    serial = make_home(home, root, vendor, [ProductItem(product_code=7, quantity=1)])
    Runtime(procs, home, root, "--reap-interval", "60")  # its own rescan: every two minutes
    update = _update_file(home, root, vendor, serial, [U.PutItem(2, ProductItem(product_code=8, quantity=1))],
                          tmp_path / "add.lcu")
    out = run(root, home, "update", "apply", str(update))
    assert out.returncode == 0, out.stderr
    assert "the running runtime serves the new content now" in out.stdout
    prog = Program(procs, root, {"LICENTIA_HOME": str(home)}, firm_code=vendor.firm, product_code=8,
                   firm_key=str(vendor.public_file))
    assert prog.granted, prog.first
