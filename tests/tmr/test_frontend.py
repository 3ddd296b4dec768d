"""The TMR system with real processes: three upstream runtimes, each beside one member of
a real etcd cluster, and two front ends (`licentia tmr serve`); clients speak the network
protocol over TLS to the front ends, as a client runtime does."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.runtime.harness import Program, Runtime, base_env, machine, wait_for
from tests.tmr.conftest import _need_etcd
from tests.tmr.system import (
    ITEM,
    LICENTIA,
    QUANTITY,
    UNITS,
    FrontEndProc,
    System,
    access,
    kill_upstream,
    make_ca,
    tmr_system,
)

from licentia.model import ErrorCode, LicentiaError
from licentia.protocol.client import Client
from licentia.protocol.tls import client_context


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    _need_etcd()
    with tmr_system(tmp_path) as s:
        yield s


def _error(call: Any) -> int:
    with pytest.raises(LicentiaError) as info:
        call()
    return int(info.value.code)


def test_upstream_serves_front_ends_only_and_front_end_shows_the_virtual_container(system: System) -> None:
    s = system
    up = s.upstreams[0]
    # an ordinary client (no client certificate) asking the upstream for its constituents: refused
    pin = client_context(pin_file=s.tmp / "pin-up1")
    plain = Client(up.network_address, ssl_context=pin, timeout=10)
    plain.hello({"kind": "runtime", "client_id": "client-runtime-1", "host": "h"})
    assert _error(lambda: plain.request("tmr.items")) == ErrorCode.TMR_FRONT_END_ONLY
    # ... and asking it for the license itself: the constituent is no license of its own
    assert _error(lambda: access(plain)) == ErrorCode.REDUNDANCY_SERVER_MISSING
    plain.close()
    # a certificate from another CA is no front end's either
    _other_ca, other_cert = make_ca(s.tmp / "pki", "other")
    ctx = client_context(pin_file=s.tmp / "pin-up1")
    ctx.load_cert_chain(str(other_cert), str(other_cert.with_suffix(".key")))
    with pytest.raises(LicentiaError):
        foreign = Client(up.network_address, ssl_context=ctx, timeout=10)
        foreign.hello({"kind": "runtime", "client_id": "client-runtime-2", "host": "h"})
        foreign.request("tmr.items")

    # the front end shows the TMR item, from all three upstreams, in its virtual container 131-…
    st = s.front_ends[0].read_status()
    assert st["serial"].startswith("131-") and st["serial"] == s.front_ends[1].read_status()["serial"]
    [item] = st["items"]
    assert item["available"] and item["quantity"] == QUANTITY and len(item["upstreams"]) == 3
    assert all(m["healthy"] for m in st["etcd"]) and all(u["reachable"] for u in st["upstreams"])
    shown = subprocess.run([*LICENTIA, "tmr", "status", "--state", str(s.front_ends[0].state)],
                           capture_output=True, text=True, env=base_env(), check=True).stdout
    assert f"virtual container {st['serial']}" in shown and "TMR license 1: served, quantity 3" in shown

    # a client runtime uses it like a network server: seats counted across both front ends
    a, b = s.front_ends[0].client("client-runtime-a"), s.front_ends[1].client("client-runtime-b")
    h1 = access(a, 1)["handle"]
    h2 = access(b, 2)["handle"]
    got = access(a, 3)
    assert got["container"] == st["serial"] and got["units"] == UNITS
    assert _error(lambda: access(b, 4)) == ErrorCode.NO_MORE_LICENSES  # quantity 3, over two front ends
    assert a.request("decrement", handle=h1, units=7)["units"] == UNITS - 7
    assert b.request("check", handle=h2)["units"] == UNITS - 7
    assert _error(lambda: b.request("release", handle=h1)) == ErrorCode.INVALID_HANDLE  # not b's
    a.request("release", handle=h1)
    # the request is judged against the item as any server judges it
    assert _error(lambda: access(b, 4, feature=1)) == ErrorCode.FEATURE_MAP_INCOMPATIBLE
    assert access(b, 4)["handle"]
    a.close()
    b.close()


def test_one_dead_upstream_is_not_seen_two_take_the_item_away_one_back_returns_it(system: System) -> None:
    s = system
    fe = s.front_ends[0]
    identity: dict[str, Any] = {}
    c = fe.client("client-runtime-a", identity)
    held = access(c, 1)["handle"]

    kill_upstream(s, 0)  # runtime and etcd member
    for n in range(6):  # no client sees an error, whenever the front end notices
        h = access(c, 2)["handle"]
        assert c.request("decrement", handle=held, units=1)["units"] == UNITS - 1 - n
        c.request("keepalive", handles=[held, h])
        c.request("release", handle=h)
    wait_for("upstream 1 marked unreachable", lambda: not fe.read_status()["upstreams"][0]["reachable"])
    st = fe.read_status()
    assert st["items"][0]["available"] and sorted(st["items"][0]["upstreams"]) == sorted(
        u.network_address for u in s.upstreams[1:])
    assert access(c, 3)["handle"]

    kill_upstream(s, 1)  # a second: the item is gone and accesses get 130
    wait_for("the item to go", lambda: not fe.available())
    assert _error(lambda: access(c, 4)) == ErrorCode.REDUNDANCY_SERVER_MISSING
    assert not c.request("check", handle=held)["valid"]
    shown = subprocess.run([*LICENTIA, "tmr", "status", "--state", str(fe.state)],
                           capture_output=True, text=True, env=base_env(), check=True).stdout
    assert "MISSING (error 130)" in shown and "UNREACHABLE" in shown

    s.etcd.restart(1)  # one back: the item returns, with the seats and units etcd kept
    s.upstreams[1].start()
    wait_for("the item to return", fe.available)
    c2 = wait_for("a client to attach again", lambda: _attach(fe, "client-runtime-a", identity))
    assert c2.request("check", handle=held)["units"] == UNITS - 6
    assert access(c2, 5)["handle"]


def _attach(fe: FrontEndProc, client_id: str, identity: dict[str, Any] | None = None) -> Client | None:
    try:
        return fe.client(client_id, identity)
    except LicentiaError:
        return None


def test_a_dead_client_runtimes_seats_come_back_after_its_lease(system: System) -> None:
    """A client runtime's seats hang on its lease; one that comes back under the same
    identity learns the seats it took before and no longer names (killed before its
    snapshot held them), so it can give them back instead of keeping them alive for ever."""
    s = system
    fe1, fe2 = s.front_ends
    identity: dict[str, Any] = {}
    first = fe1.client("client-runtime-forgetful", identity)
    forgot = access(first, 0)["handle"]
    first.close()
    again = fe2.client("client-runtime-forgetful", identity)  # on the twin, the same identity resumed
    assert again.request("keepalive", handles=[], others=True)["others"] == [forgot]
    assert again.request("keepalive", handles=[forgot], others=True)["others"] == []
    again.request("release", handle=forgot)
    again.close()

    dead = fe1.client("client-runtime-dead")
    for n in range(QUANTITY):
        access(dead, n)
    other = fe2.client("client-runtime-alive")
    assert _error(lambda: access(other, 9)) == ErrorCode.NO_MORE_LICENSES
    dead.close()  # it says nothing more (a killed client runtime): its lease (5 s) runs out

    def granted() -> bool:
        try:
            other.request("keepalive")
            return bool(access(other, 9)["handle"])
        except LicentiaError as exc:
            assert exc.code is ErrorCode.NO_MORE_LICENSES
            return False

    t0 = time.monotonic()
    wait_for("the dead client's seats to come back", granted, timeout=20, interval=0.5)
    assert time.monotonic() - t0 >= 2  # not freed at once: the lease's time runs first


def test_a_client_runtime_moves_to_the_twin_when_its_front_end_dies(system: System) -> None:
    s = system
    fe1, fe2 = s.front_ends
    from licentia.runtime import searchlist

    other_root = machine(s.tmp / "client-machine")
    client_home = s.tmp / "client"
    for fe in (fe1, fe2):  # no virtual address here: the search list names both twins
        searchlist.add(client_home / "servers.json", fe.address)
        pins = client_home / "tls" / "pins"
        pins.mkdir(parents=True, exist_ok=True)
    client = Runtime(s.procs, client_home, other_root)
    prog = Program(s.procs, other_root, {"LICENTIA_HOME": str(client_home)}, firm_code=10_001, product_code=9,
                   firm_key=str(s.vendor.public_file))
    assert "error" not in prog.first, prog.first
    # verified: a constituent's signature over the program's challenge, with its license
    assert prog.first["location"] == "network" and prog.first["verified"], prog.first
    assert prog.first["server"] == fe1.address
    assert prog.ask("decrement 2") == {"units": UNITS - 2}

    fe1.kill()
    t0 = time.monotonic()
    assert prog.ask("decrement 1") == {"units": UNITS - 3}  # served again by the twin, same seat
    served_again = time.monotonic() - t0
    print(f"front end killed: the program's next decrement served after {served_again * 1000:.0f} ms")
    assert prog.ask("check")["valid"] is True
    time.sleep(6)  # longer than the client lease: the twin's keep-alives kept the seat
    assert prog.ask("check")["valid"] is True
    assert [r["location"] for r in client.sessions()] == [f"server {fe2.address}"]
    assert prog.ask("release") == {"released": True}


def _etcd_state(s: System, serial: str) -> tuple[int, int | None, int]:
    """(seats in use, units remaining, handles held) of the TMR item, read from etcd itself."""
    import asyncio

    from licentia.core.seats import ItemKey
    from licentia.tmr.seats import SeatStore

    async def read() -> tuple[int, int | None, int]:
        async with SeatStore([f"http://{e}" for e in s.etcd.endpoints], op_timeout=10) as store:
            key = ItemKey(serial, 10_001, 9, 1)
            return await store.used(key), await store.units(key, ITEM), len(await store.sessions())

    return asyncio.run(read())


def test_randomized_faults_keep_the_invariants(system: System) -> None:
    """Kill/restart upstreams (runtime and etcd member), stop/continue etcd members, kill and
    restart front ends at random while three client runtimes access, decrement and release;
    after every step: never more seats than the quantity, every acknowledged decrement
    counted exactly once (the ones whose answer was lost at most once), no held seat lost."""
    import random

    s = system
    seed = int(time.time())
    rng = random.Random(seed)
    faults = ["upstream", "etcd-stop", "front-end", "none"] * 3  # each kind, in a random order
    rng.shuffle(faults)
    serial = s.front_ends[0].read_status()["serial"]
    held: dict[str, list[int]] = {f"client-{i}": [] for i in range(3)}
    conns: dict[str, Client] = {}
    identities: dict[str, dict[str, Any]] = {}  # the identity each client was issued, proved again
    acked = unsure = 0
    down: int | None = None  # the upstream (runtime + etcd member) down or stopped, one at a time
    stopped = False

    heard = dict.fromkeys(held, time.monotonic())  # each client's last answered request

    def lapsed(cid: str, what: str) -> None:
        """A client's seats are gone: right only when the restarts of a loaded machine kept
        it silent for its lease's time (5 s); it starts again as a new client."""
        assert time.monotonic() - heard[cid] >= 4.5, what
        held[cid].clear()
        identities.pop(cid, None)
        conn = conns.pop(cid, None)
        if conn is not None:
            conn.close()

    def client(cid: str) -> Client:
        c = conns.get(cid)
        if c is None:
            fe = rng.choice([f for f in s.front_ends if f.proc is not None and f.proc.poll() is None])
            issued = identities.get(cid, {}).get("client_id")
            c = conns[cid] = fe.client(cid, identities.setdefault(cid, {}))
            # the twin, or the same front end restarted, knows the identity: same id, same seats
            assert issued is None or identities[cid]["client_id"] == issued, (cid, issued, identities[cid])
        return c

    for step, fault in enumerate(faults):
        if down is not None:  # bring the last one back first
            if stopped:
                s.etcd.cont(down)
            else:
                s.etcd.restart(down)
                for cid, c in conns.items():  # as a client runtime keeps its lease during the restart
                    with contextlib.suppress(LicentiaError):
                        c.request("keepalive")
                        heard[cid] = time.monotonic()
                s.upstreams[down].start()
            down, stopped = None, False
        elif fault == "upstream":
            down = rng.randrange(3)
            kill_upstream(s, down)
        elif fault == "etcd-stop":
            down, stopped = rng.randrange(3), True
            s.etcd.stop(down)
        if fault == "front-end":
            fe = rng.choice(s.front_ends)
            fe.kill()
            for cid in list(conns):
                conns.pop(cid).close()
            fe.start()
        for cid, handles in held.items():
            for _ in range(3):
                op = rng.choice(["access", "decrement", "release", "keepalive"])
                try:
                    c = client(cid)
                    if op == "access":
                        handles.append(access(c, len(handles))["handle"])
                    elif op == "decrement" and handles:
                        unsure += 1
                        c.request("decrement", handle=handles[0], units=1)
                        unsure, acked = unsure - 1, acked + 1
                    elif op == "release" and handles:
                        c.request("release", handle=handles[-1])
                        handles.pop()
                    else:
                        lost = c.request("keepalive", handles=handles)["lost"]
                        if lost:
                            lapsed(cid, f"seed {seed}, step {step} ({fault}): {lost} lost")
                    heard[cid] = time.monotonic()
                except LicentiaError as exc:
                    if exc.code is ErrorCode.INVALID_HANDLE and "no lease" in str(exc):
                        lapsed(cid, f"seed {seed}, step {step} ({fault}), {op}: {exc}")
                    elif exc.code is ErrorCode.NETWORK_FAULT and fault == "front-end":
                        conns.pop(cid).close()  # its front end died: it attaches to the other
                    elif exc.code is not ErrorCode.NO_MORE_LICENSES:
                        raise AssertionError(f"seed {seed}, step {step} ({fault}), {op}: {exc}") from None
        used, units, sessions = _etcd_state(s, serial)
        ours = sum(len(h) for h in held.values())
        assert used <= QUANTITY, f"step {step}: {used} seats in use of {QUANTITY}"
        assert sessions == ours == used, f"step {step}: etcd holds {sessions} handles, the clients {ours}"
        assert units is not None and UNITS - acked - unsure <= units <= UNITS - acked, (
            f"step {step}: {units} units left after {acked} acknowledged decrements ({unsure} unanswered)")
    print(f"faults (seed {seed}): {len(faults)} steps, {acked} decrements acknowledged, {unsure} unanswered")


def test_a_stopped_upstream_grants_nothing_and_rejoins_when_continued(system: System) -> None:
    """SIGSTOP one upstream's runtime and etcd member (a partition from its side): clients
    see only right answers from the other two; SIGCONT: it rejoins, its constituent
    identical again in `licentia tmr status`."""
    s = system
    fe1, fe2 = s.front_ends
    serial = fe1.read_status()["serial"]
    c = fe1.client("client-runtime-a", {})
    held = access(c, 1)["handle"]
    assert c.request("decrement", handle=held, units=5)["units"] == UNITS - 5
    up = s.upstreams[0]
    assert up.proc is not None
    up.proc.send_signal(signal.SIGSTOP)
    s.etcd.stop(0)
    try:
        spent = 5
        for n in range(4):  # whenever the front ends notice, every answer is the right one
            others = [access(c, 2 + k)["handle"] for k in range(QUANTITY - 1)]
            assert _error(lambda: access(c, 9)) == ErrorCode.NO_MORE_LICENSES  # never more than 3
            spent += 1
            assert c.request("decrement", handle=held, units=1)["units"] == UNITS - spent
            assert c.request("keepalive", handles=[held, *others])["lost"] == []
            for h in others:
                c.request("release", handle=h)
            assert _etcd_state(s, serial) == (1, UNITS - spent, 1), n  # nothing granted beside
        for fe in (fe1, fe2):
            wait_for("the stopped upstream marked unreachable", lambda fe=fe: not fe.read_status()["upstreams"][0]["reachable"])
            assert fe.available()  # served by the other two
    finally:
        s.etcd.cont(0)
        up.proc.send_signal(signal.SIGCONT)
    label = f"{10_001}/{ITEM.tmr_id}"

    def rejoined(fe: FrontEndProc) -> bool:
        c.request("keepalive", handles=[held])  # the client lives on while the upstream rejoins
        [row] = [u for u in fe.read_status()["upstreams"] if u["address"] == up.network_address]
        return bool(row["reachable"]) and row["constituents"].get(label) == "identical"

    def healthy() -> bool:
        c.request("keepalive", handles=[held])
        return bool(s.etcd.healthy(0))

    for fe in (fe1, fe2):
        wait_for("the continued upstream to rejoin", lambda fe=fe: rejoined(fe))
    wait_for("its etcd member healthy again", healthy)
    c.request("keepalive", handles=[held])
    shown = subprocess.run([*LICENTIA, "tmr", "status", "--state", str(fe1.state)],
                           capture_output=True, text=True, env=base_env(), check=True).stdout
    [line] = [ln for ln in shown.splitlines() if ln.strip().startswith(up.network_address)]
    assert f"reachable; {label} identical" in line, shown
    assert shown.count(f"{label} identical") == 3, shown  # all three agree again
    # what it missed while stopped came from the quorum: the same seats and units everywhere
    assert c.request("check", handle=held)["units"] == UNITS - spent
    assert _etcd_state(s, serial) == (1, UNITS - spent, 1)
