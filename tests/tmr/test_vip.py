"""One virtual address for the TMR twin front ends: keepalived (VRRP) in network namespaces
moves it to the surviving twin, and a client runtime whose search list names only that
address keeps its program's seat (tests/tmr/vip.py builds the network)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.runtime.harness import wait_for
from tests.tmr.system import UNITS
from tests.tmr.vip import VipSystem, kill_holder, served_again, vip_system, vip_unavailable


@pytest.fixture
def system(tmp_path: Path) -> Iterator[VipSystem]:
    why = vip_unavailable()
    if why:
        pytest.skip(why)
    pytest.importorskip("aetcd", reason="the tmr extra is not installed: pip install -e '.[tmr]'")
    with vip_system(tmp_path) as s:
        yield s


def test_the_virtual_address_moves_to_the_twin_and_the_program_keeps_its_seat(system: VipSystem) -> None:
    s = system
    runtime, prog = s.client()
    assert "error" not in prog.first, prog.first
    # served through the virtual address, proven by a constituent's signature
    assert prog.first["location"] == "network" and prog.first["server"] == s.server, prog.first
    assert prog.first["verified"], prog.first
    assert prog.ask("decrement 2") == {"units": UNITS - 2}
    spent = 2
    for round_ in range(2):  # one way, then back: each twin dies once while holding the address
        killed, other = kill_holder(s)
        got, took = served_again(prog, "decrement 1")
        spent += 1
        assert got == {"units": UNITS - spent}, (round_, got)  # the same seat, served by the twin
        assert s.holder() is other, f"round {round_}: the address is not on {other.name}"
        print(f"{killed.name} killed: the program's next decrement served through {s.server} "
              f"after {took * 1000:.0f} ms")
        assert prog.ask("check")["valid"] is True
        killed.front_end.start()  # it comes back as the backup (nopreempt): the address stays
        wait_for(f"{killed.name} ready again", killed.ready, timeout=30, interval=0.1)
        assert s.holder() is other
    # the handle is the one the program took first, all along: it releases it
    assert prog.ask("release") == {"released": True}
    assert runtime.proc is not None and runtime.proc.poll() is None
