"""The runtime syncs its containers with a real `licentia central serve`: checkpoint licenses
renewed before their period ends (and lapsing offline), tickets of the registered license
server activated without a user step; and the schedule, as properties of a pure function."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, strategies as st
from tests.runtime.central_live import Keystore, LiveCentral
from tests.runtime.harness import Procs, Program, Runtime, wait_for

from licentia.binding import collect_fingerprint
from licentia.central.client import CentralClient
from licentia.containers import ContainerStore
from licentia.core import updates
from licentia.core.content import ContainerContent, FirmEntry, ItemEntry
from licentia.model import ContainerSerial, ItemState, ProductItem, Tolerance
from licentia.runtime.sync import MIN_GAP, next_sync_at, renewal_due, retry_after


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> Keystore:
    return Keystore.make(tmp_path_factory.mktemp("firm"))


@pytest.fixture
def central(tmp_path: Path, procs: Procs, keystore: Keystore) -> Iterator[LiveCentral]:
    c = LiveCentral(procs, keystore, tmp_path / "central")
    yield c
    c.stop()


def soft_home(home: Path, root: Path) -> str:
    fp = collect_fingerprint(root, environ={})
    return str(ContainerStore(home / "containers", fp).create_soft(Tolerance.MEDIUM, int(time.time())).serial)


def activate(home: Path, root: Path, serial: str, url: str, ticket: str) -> None:
    """The user's one step, as `licentia activate TICKET` does it."""
    fp = collect_fingerprint(root, environ={})
    container = ContainerStore(home / "containers", fp).open(ContainerSerial.parse(serial))
    with CentralClient(url) as c:
        firm = int(c.health()["firm_code"])
        t = int(time.time())
        content = container.observe_clock(t)
        request = updates.make_request(content, firm, t, {"kind": fp.environment.kind.value,
                                                          "hostname": os.uname().nodename})
        update, _ = c.activate(ticket, request)

        def change(cc: ContainerContent) -> tuple[ContainerContent, updates.Applied]:
            applied = updates.apply_update(cc, update, int(time.time()), in_vm=False)
            return applied.content, applied

        c.receipt(container.transact(change).receipt)


def get(rt: Runtime, path: str) -> Any:
    with urllib.request.urlopen(f"{rt.http}{path}", timeout=10) as r:
        return json.loads(r.read())


def items(rt: Runtime, product: int) -> list[dict[str, Any]]:
    return [i for i in get(rt, "/api/items") if i["product_code"] == product]


def syncs(rt: Runtime, serial: str) -> int:
    state = (get(rt, "/api/server").get("central") or {}).get("containers", {}).get(serial) or {}
    return int(state.get("syncs") or 0)


@pytest.mark.slow
def test_checkpoint_license_is_renewed_by_the_runtime_and_lapses_offline(
    tmp_path: Path, root: Path, procs: Procs, central: LiveCentral
) -> None:
    period = 4
    central.api("POST", "/api/products", {"product_code": 42, "name": "CAD", "template": {"checkpoint_period": period}})
    ticket = central.api("POST", "/api/orders", {"lines": [{"product_code": 42, "quantity": 2}]})["ticket"]
    home = tmp_path / "home"
    serial = soft_home(home, root)
    activate(home, root, serial, central.url, ticket)

    rt = Runtime(procs, home, root, "--central-url", central.url, "--central-interval", "20")
    (item,) = items(rt, 42)
    first_end = item["valid_until"]
    prog = Program(procs, root, {"LICENTIA_HOME": str(home)}, firm_code=central.firm_code, product_code=42,
                   firm_key=str(central.public_file))
    assert prog.granted and prog.first["verified"], prog.first

    # renewed at half the period, again and again, well past the first checkpoint
    wait_for("three renewals", lambda: syncs(rt, serial) >= 3)
    wait_for("the first checkpoint to pass", lambda: time.time() > first_end + 1, timeout=period + 10)
    (item,) = items(rt, 42)
    assert item["status"] == "valid" and item["valid_until"] > first_end, item
    assert prog.ask("check")["valid"] is True
    entries = rt.logged("the syncs in the log", lambda e: e.get("event") == "sync" and e.get("container") == serial)
    assert entries and all("renewed checkpoint licenses" in e["changes"] for e in entries)
    assert all(e["confirmed"] for e in entries)

    # offline: the item lapses at its checkpoint; the clock stays sound
    central.stop()
    lapsed = wait_for("the item to lapse", lambda: items(rt, 42)[0] if items(rt, 42)[0]["error"] == 1010 else None,
                      timeout=period + 10)
    assert lapsed["status"] != "valid"
    answer = prog.ask("check")
    assert answer["valid"] is False
    failed = rt.logged("the failed sync in the log", lambda e: e.get("event") == "sync-failed")
    assert failed and failed[0]["code"] == 100  # network fault, logged once per streak
    assert get(rt, "/api/containers")[0]["status"] == "ok"

    # central back: the next round trip renews it
    central.start()
    (renewed,) = wait_for("the item to be renewed", lambda: [i for i in items(rt, 42) if i["error"] is None])
    assert renewed["status"] == "valid" and renewed["valid_until"] > time.time()


@pytest.mark.slow
def test_a_ticket_for_the_registered_license_server_is_activated_without_a_user_step(
    tmp_path: Path, root: Path, procs: Procs, central: LiveCentral
) -> None:
    host = os.uname().nodename.lower()
    if not host.replace("-", "").isalnum() or not host.isascii():
        pytest.skip(f"this machine's host name {host!r} cannot be a registered license server's")
    central.api("POST", "/api/products", {"product_code": 50, "name": "Base"})
    central.api("POST", "/api/products", {"product_code": 51, "name": "Add-on"})
    customer = central.api("POST", "/api/customers", {"company": "ACME", "site": "Kobe", "license_type": "multi-user",
                                                      "server_host": host, "server_ip": "127.0.0.1",
                                                      "auto_activate_after": 0})["id"]
    first = central.api("POST", "/api/orders", {"customer": customer, "lines": [{"product_code": 50}]})["ticket"]
    home = tmp_path / "home"
    serial = soft_home(home, root)
    activate(home, root, serial, central.url, first)  # registers this container as the license server
    assert central.api("GET", f"/api/customers/{customer}")["server_serial"] == serial

    rt = Runtime(procs, home, root, "--central-url", central.url, "--central-interval", "1")
    assert items(rt, 51) == []
    second = central.api("POST", "/api/orders", {"customer": customer, "lines": [{"product_code": 51, "quantity": 3}]})
    (item,) = wait_for("the new ticket in the runtime's container", lambda: items(rt, 51))
    assert item["container"] == serial and item["quantity"] == 3
    prog = Program(procs, root, {"LICENTIA_HOME": str(home)}, firm_code=central.firm_code, product_code=51,
                   firm_key=str(central.public_file))
    assert prog.granted and prog.first["verified"], prog.first
    licenses = wait_for("central to count it active", lambda: [
        lic for lic in central.api("GET", f"/api/tickets/{second['ticket']}")["licenses"] if lic["status"] == "active"])
    assert licenses
    (entry, *_) = rt.logged("the sync in the log", lambda e: e.get("event") == "sync" and any(
        "added item" in c for c in e["changes"]))
    assert entry["container"] == serial and entry["confirmed"]
    # later round trips have nothing to renew (no checkpoint item): no update, the step stays
    idle = rt.logged("a round trip with nothing to do", lambda e: e.get("event") == "sync" and e["changes"] == []
                     and e["counter"] == entry["counter"])
    assert idle and not any(e.get("event") == "sync" and e["counter"] > entry["counter"] for e in rt.logged(
        "the log", lambda e: True))


# -- the schedule ---------------------------------------------------------------------------

T0 = 1_800_000_000


def content_with(checkpoints: list[tuple[int, int]], firm: int = 7) -> ContainerContent:
    """A container whose items have (checkpoint period, last renewal)."""
    items = {i + 1: ItemEntry(i + 1, b"", ProductItem(product_code=1, checkpoint_period=p),
                              ItemState(checkpoint_at=at)) for i, (p, at) in enumerate(checkpoints)}
    content = ContainerContent(ContainerSerial(130, 1), T0, b"", b"")
    return content.with_firm(FirmEntry(firm, b"k" * 32, 1, "", items))


@given(
    interval=st.floats(min_value=0.5, max_value=86_400),
    attempt=st.integers(min_value=T0, max_value=T0 + 10_000),
    took=st.floats(min_value=0, max_value=30),
    failed=st.booleans(),
    checkpoints=st.lists(st.tuples(st.integers(1, 100_000), st.integers(-200_000, 200_000)), max_size=4),
)
def test_the_schedule_renews_in_time_and_never_hammers_central(
    interval: float, attempt: int, took: float, failed: bool, checkpoints: list[tuple[int, int]]
) -> None:
    content = content_with([(p, attempt + d) for p, d in checkpoints])
    last_ok = None if failed else attempt + took
    at = next_sync_at(content, 7, interval=interval, last_attempt=attempt, last_ok=last_ok, failed=failed)
    assert at >= attempt + min(MIN_GAP, interval)  # never two round trips closer than the gap
    if failed:
        assert at == max(attempt + min(MIN_GAP, interval), attempt + retry_after(interval))
        return
    assert last_ok is not None
    assert at <= max(last_ok + interval, attempt + min(MIN_GAP, interval))  # at least once an interval
    for period, delta in checkpoints:
        renewed = attempt + delta
        if renewed >= attempt - 1:  # renewed by the round trip that just ended: renew at half the period
            assert at <= max(renewed + period / 2, attempt + min(MIN_GAP, interval))


def test_items_central_did_not_renew_do_not_call_for_a_round_trip() -> None:
    content = content_with([(100, T0 - 500)])  # long overdue, not renewed by the last round trip
    assert renewal_due(content, 7, T0) is None
    assert next_sync_at(content, 7, interval=3600, last_attempt=T0, last_ok=T0 + 1, failed=False) == T0 + 3601
    assert renewal_due(content, 7, None) == T0 - 450  # before any round trip: it counts
    assert renewal_due(content, 8, None) is None  # another firm's items are not central's to renew
    assert next_sync_at(None, None, interval=3600, last_attempt=None, last_ok=None, failed=False) == 0.0
