"""The runtime with real programs on this machine: seats, 212, SIGKILL, restart, admin, units."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.runtime.harness import Procs, Program, Runtime, Vendor, make_home, wait_for

from licentia.model import ProductItem


def test_quantity_one_second_program_gets_212_and_sigkill_frees_the_seat(
    tmp_path: Path, root: Path, vendor: Vendor, procs: Procs
) -> None:
    home = tmp_path / "home"
    serial = make_home(home, root, vendor, [ProductItem(product_code=7, quantity=1, units=10)])
    rt = Runtime(procs, home, root)
    opts = {"firm_code": vendor.firm, "product_code": 7, "firm_key": str(vendor.public_file)}
    env = {"LICENTIA_HOME": str(home)}

    first = Program(procs, root, env, **opts)
    assert first.granted, first.first
    assert first.first["verified"] and first.first["container"] == serial and first.first["units"] == 10

    second = Program(procs, root, env, **opts)
    assert second.first["error"] == 212

    rows = rt.sessions()
    assert [(r["pid"], r["firm"], r["product"], r["location"]) for r in rows] == [(first.pid, vendor.firm, 7, "local")]
    assert rows[0]["user"] and rows[0]["host"] and rows[0]["since"] > 0

    first.kill()
    wait_for("the killed program's seat to be freed", lambda: rt.sessions() == [])
    third = Program(procs, root, env, **opts)
    assert third.granted

    events = wait_for("the log to show the reaping", lambda: [
        e for e in rt.usage_log() if e["event"] == "release" and e.get("reason") == "reaped"])
    assert events[0]["pid"] == first.pid
    denials = [e for e in rt.usage_log() if e["event"] == "deny"]
    assert denials[0]["code"] == 212 and denials[0]["pid"] == second.proc.pid


def test_units_decrement_durably_and_admin_release_reaches_the_program(
    tmp_path: Path, root: Path, vendor: Vendor, procs: Procs
) -> None:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=8, quantity=2, units=5)])
    rt = Runtime(procs, home, root)
    env = {"LICENTIA_HOME": str(home)}
    prog = Program(procs, root, env, firm_code=vendor.firm, product_code=8, firm_key=str(vendor.public_file))
    assert prog.ask("decrement 2") == {"units": 3}
    assert prog.ask("decrement 4")["error"] == 1011  # not enough units: refused, nothing spent
    assert prog.ask("check")["units"] == 3

    rt.stop()  # the decrement is on disk: a fresh runtime sees it
    rt.start()
    with urllib.request.urlopen(f"{rt.http}/api/items", timeout=10) as r:
        items = json.loads(r.read())
    assert [(i["product_code"], i["units_remaining"]) for i in items] == [(8, 3)]

    handle = prog.first["handle"]
    with rt.admin() as admin:
        admin.request("admin.release", handle=handle)
    answer = prog.ask("check")
    assert answer["valid"] is False and "license-gone" in answer["events"]
    assert prog.ask("decrement 1")["error"] == 106
    released = wait_for("the admin release in the log", lambda: [
        e for e in rt.usage_log() if e["event"] == "release" and e.get("reason") == "admin"])
    assert released[0]["handle"] == handle


def test_restart_reattaches_live_programs_and_drops_ended_ones(
    tmp_path: Path, root: Path, vendor: Vendor, procs: Procs
) -> None:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=9, quantity=2)])
    rt = Runtime(procs, home, root)
    env = {"LICENTIA_HOME": str(home)}
    opts = {"firm_code": vendor.firm, "product_code": 9, "firm_key": str(vendor.public_file)}
    stays = Program(procs, root, env, **opts)
    goes = Program(procs, root, env, **opts)
    assert stays.granted and goes.granted
    wait_for("the snapshot", lambda: (home / "state" / "seats.snapshot").exists())

    rt.stop()
    assert stays.ask("check")["events"] == ["server-lost"]  # the program notices the runtime is gone
    goes.kill()  # ends while the runtime is down
    rt.start()
    rows = wait_for("the restored seats", lambda: [r for r in rt.sessions()] if len(rt.sessions()) == 1 else None)
    assert rows[0]["pid"] == stays.pid and rows[0]["handle"] == stays.first["handle"]
    answer = stays.ask("check")  # the program reconnects on its own and still holds its license
    assert answer["valid"] is True and "error" not in answer
    third = Program(procs, root, env, **opts)
    assert third.granted  # the seat of the ended program is free
    fourth = Program(procs, root, env, **opts)
    assert fourth.first["error"] == 212


def test_status_page_and_json_api(tmp_path: Path, root: Path, vendor: Vendor, procs: Procs) -> None:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=11, quantity=3, text="Acme Pro")])
    rt = Runtime(procs, home, root)
    prog = Program(procs, root, {"LICENTIA_HOME": str(home)}, firm_code=vendor.firm, product_code=11, verify=False)
    with urllib.request.urlopen(f"{rt.http}/api/status", timeout=10) as r:
        doc = json.loads(r.read())
    assert doc["containers"][0]["status"] == "ok"
    assert doc["items"][0]["in_use"] == 1 and doc["items"][0]["text"] == "Acme Pro"
    assert doc["sessions"][0]["pid"] == prog.pid
    assert rt.http.startswith("https://")  # HTTPS by default, with the runtime's certificate
    with urllib.request.urlopen(f"{rt.http}/", timeout=10) as r:  # WebAdmin asks to log in first
        assert r.url.endswith("/login") and "Log in" in r.read().decode()

    handle = prog.first["handle"]
    url = f"{rt.http}/api/sessions/{handle}/release"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10)
        raise AssertionError("released without the admin token")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    token = (home / "admin.token").read_text().strip() if (home / "admin.token").exists() else None
    if token is None:
        from licentia.runtime.home import RuntimeHome

        token = RuntimeHome(home).admin_token()
    req = urllib.request.Request(url, method="POST", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.loads(r.read()) == {"released": handle}
    assert rt.sessions() == []


def test_hot_path_replies_carry_what_full_replies_carry(tmp_path: Path, root: Path, vendor: Vendor,
                                                        procs: Procs) -> None:
    """Grant replies without a challenge are frames encoded in part ahead (per item state):
    they say what the reply built for a challenge says, and follow the item's changes."""
    import os

    from licentia.model import ErrorCode, LicentiaError
    from licentia.protocol.client import Client
    from licentia.sdk.connect import process_start

    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=7, quantity=50, units=100)])
    rt = Runtime(procs, home, root)
    with Client(rt.socket) as c:
        c.hello({"kind": "program", "program": "hot-path", "pid": os.getpid(), "pid_start": process_start()})
        ask = {"firm": vendor.firm, "product": 7, "mode": "per-access"}

        def without(reply: dict[str, object], *names: str) -> dict[str, object]:
            return {k: v for k, v in reply.items() if k not in ("id", "handle", *names)}

        first, second = c.request("access", **ask), c.request("access", **ask)
        proven = c.request("access", **ask, nonce=os.urandom(32))
        assert first["handle"] != second["handle"] != proven["handle"]
        assert without(first) == without(second) == without(proven, "proof") and first["units"] == 100
        assert set(without(first)) >= {"ok", "container", "item", "license", "container_key", "mode", "units"}
        assert c.request("decrement", handle=first["handle"], units=3)["units"] == 97
        for handle, units, code in ((first["handle"], 500, ErrorCode.NOT_ENOUGH_UNITS),
                                    (first["handle"], 0, ErrorCode.INVALID_PARAMETER),
                                    (10**9, 1, ErrorCode.INVALID_HANDLE)):
            try:
                c.request("decrement", handle=handle, units=units)
                raise AssertionError(f"decrement of {units} on handle {handle} was not refused")
            except LicentiaError as exc:
                assert exc.code is code
        after = c.request("access", **ask)
        assert after["units"] == 97 and without(after, "units") == without(first, "units")
        for reply in (first, second, proven, after):
            released = c.request("release", handle=reply["handle"])
            assert set(released) == {"id", "ok"} and released["ok"] is True
    assert rt.sessions() == []


def test_hot_path_refusals_take_the_general_path_once(tmp_path: Path, root: Path, vendor: Vendor,
                                                     procs: Procs) -> None:
    """A plain access the seat table refuses, and a release of a handle one does not hold, are
    answered and logged as before: one denial entry, the same error codes."""
    from licentia.model import ErrorCode, LicentiaError
    from licentia.protocol.client import Client

    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=7, quantity=1)])
    rt = Runtime(procs, home, root)
    address = ("127.0.0.1", int(rt.status["local_port"]))
    with Client(address) as a, Client(address) as b:
        for c in (a, b):
            c.hello({"kind": "program", "program": "hot-path"})
        held = a.request("access", firm=vendor.firm, product=7)["handle"]
        for c in (b, a):
            try:
                c.request("access", firm=vendor.firm, product=7, mode="per-access")
                raise AssertionError("a second seat of quantity 1 was granted")
            except LicentiaError as exc:
                assert exc.code is ErrorCode.NO_MORE_LICENSES
        # not the handle of another process (both connections here are this process's)
        other = subprocess.run([sys.executable, "-c", (
            "import sys\nfrom licentia.protocol.client import Client\nfrom licentia.model import LicentiaError\n"
            f"c = Client(('127.0.0.1', {address[1]}))\nc.hello({{'kind': 'program'}})\n"
            f"try:\n    c.request('release', handle={held})\nexcept LicentiaError as exc:\n    print(int(exc.code))\n"
        )], capture_output=True, text=True, check=True, timeout=60)
        assert other.stdout.strip() == str(int(ErrorCode.INVALID_HANDLE)), other
        assert a.request("release", handle=held)["ok"] is True
        try:
            a.request("release", handle=held)
            raise AssertionError("released a handle twice")
        except LicentiaError as exc:
            assert exc.code is ErrorCode.INVALID_HANDLE
    entries = wait_for("the log", lambda: [e for e in rt.usage_log() if e["event"] in ("grant", "deny", "release")]
                       if len([e for e in rt.usage_log() if e["event"] in ("grant", "deny", "release")]) >= 4
                       else None)
    assert [e["event"] for e in entries] == ["grant", "deny", "deny", "release"]
    assert [e.get("code") for e in entries if e["event"] == "deny"] == [212, 212]


def test_a_clean_stop_writes_every_waiting_log_entry_and_signs_the_chain(tmp_path: Path, root: Path,
                                                                        vendor: Vendor, procs: Procs) -> None:
    from licentia.protocol.client import Client
    from licentia.runtime.usagelog import verify_log

    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=7, quantity=5)])
    # a long flush interval: only the batch size and the stop itself write entries
    rt = Runtime(procs, home, root, "--log-flush-interval", "600")
    with Client(("127.0.0.1", int(rt.status["local_port"]))) as c:
        c.hello({"kind": "program", "program": "log-at-stop"})
        for _ in range(149):  # 300 entries: six batches of 48 written, the rest waits for the stop
            c.request("release", handle=c.request("access", firm=vendor.firm, product=7)["handle"])
        c.hello({"kind": "program", "program": "renamed"})  # a new name: the lines say it from now on
        c.request("release", handle=c.request("access", firm=vendor.firm, product=7)["handle"])
    rt.stop()
    path = home / "logs" / "usage.jsonl"
    entries = rt.usage_log()
    kinds = [e["event"] for e in entries]
    assert kinds.count("grant") == 150 and kinds.count("release") == 150 and kinds[-1] == "checkpoint"
    seats = [e for e in entries if e["event"] in ("grant", "release")]
    assert {e["program"] for e in seats[:-2]} == {"log-at-stop"} and {e["program"] for e in seats[-2:]} == {"renamed"}
    assert len({e["handle"] for e in seats}) == 150
    report = verify_log([path])
    assert report.ok and report.unsigned_tail == 0, report.problems
