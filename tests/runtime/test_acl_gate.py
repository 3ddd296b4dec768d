"""The access list in front of a real seat table, as the runtime will call it."""

from __future__ import annotations

from pathlib import Path

import pytest

from licentia.core.acl import Action, Match, Rule, Scope, with_rule
from licentia.core.seats import EventKind, Holder, ItemKey, SeatRefused, SeatTable, Station
from licentia.model import AccessMode, ErrorCode, SessionKind
from licentia.runtime.acl import AccessGate, edit, load

KEY = ItemKey("130-1", 10001, 7, 1)
GROUPS = {"s": frozenset({"support"}), "d": frozenset({"development"}), "x": frozenset()}


def seed(path: Path) -> None:
    product = Scope.parse("product 10001:7")
    edit(path, lambda a: with_rule(with_rule(a, Rule("support", product, Action.ALLOW, Match.GROUP, ("support",),
                                                     reserve=3)),
                                   Rule("development", product, Action.ALLOW, Match.GROUP, ("development",),
                                        reserve=4)))


class Server:
    """A seat table and a gate, called the way the runtime's access path calls them."""

    def __init__(self, path: Path) -> None:
        self.seats = SeatTable()
        self.gate = AccessGate(path)
        self.logged: list[tuple[str, object]] = []

    def access(self, user: str, station: str | None = None, mode: AccessMode = AccessMode.PER_ACCESS,
               quantity: int = 10) -> int:
        holder = Holder.network(f"client-{user}", user=user, host=f"{user}-pc")
        st = Station(station or f"{user}-pc")
        try:
            d = self.gate.check(self.seats, key=KEY, quantity=quantity, mode=mode, station=st, holder=holder,
                                address="10.0.0.5", groups=GROUPS[user[0]], now=1.0)
            grant = self.seats.access(key=KEY, quantity=quantity, mode=mode, station=st, holder=holder, local=False,
                                      session=SessionKind.LOCAL, now=1.0)
        except SeatRefused as exc:
            self.logged.append(("deny", exc.event.code))
            raise
        extra = self.gate.granted(grant, d)
        self.logged.append(("grant", extra))
        return grant.handle

    def release(self, handle: int) -> None:
        for ev in self.seats.release(handle, 2.0).events:
            self.gate.released(ev)


def test_the_seed_example_in_front_of_a_seat_table(tmp_path: Path) -> None:
    seed(tmp_path / "acl.toml")
    srv = Server(tmp_path / "acl.toml")
    support = [srv.access(f"s{i}") for i in range(4)]  # the fourth takes a free seat
    assert srv.logged[:4] == [("grant", {"charge": "support"})] * 4
    srv.access("x1")
    srv.access("x2")
    with pytest.raises(SeatRefused) as info:
        srv.access("x3")
    assert info.value.code is ErrorCode.ACCESS_LIST_DENIED and 'rule "development"' in info.value.message
    assert info.value.event.kind is EventKind.DENY and info.value.event.code is ErrorCode.ACCESS_LIST_DENIED
    devs = [srv.access(f"d{i}") for i in range(4)]
    with pytest.raises(SeatRefused) as info:
        srv.access("d9")
    assert info.value.code is ErrorCode.NO_MORE_LICENSES
    assert srv.seats.used(KEY) == 10 == srv.gate.held(KEY).total
    srv.release(support[0])  # support is back to its 3 reserved seats: the free seat is free again
    srv.access("x3")
    with pytest.raises(SeatRefused) as info:
        srv.access("s9")
    assert info.value.code is ErrorCode.NO_MORE_LICENSES
    for h in devs:
        srv.release(h)
    assert srv.gate.held(KEY).by_charge == {"support": 3, None: 3}
    with pytest.raises(SeatRefused) as info:
        srv.access("s9")  # 4 seats left, all reserved for development
    assert info.value.code is ErrorCode.ACCESS_LIST_DENIED


def test_per_station_handles_share_one_charged_seat(tmp_path: Path) -> None:
    seed(tmp_path / "acl.toml")
    srv = Server(tmp_path / "acl.toml")
    first = srv.access("s1", station="ts-1", mode=AccessMode.PER_STATION)
    second = srv.access("s1", station="ts-1", mode=AccessMode.PER_STATION)
    assert srv.gate.held(KEY).by_charge == {"support": 1}
    srv.release(first)
    assert srv.gate.held(KEY).total == 1
    srv.release(second)
    assert srv.gate.held(KEY).total == 0
    srv.access("x1", mode=AccessMode.NONE)
    assert srv.gate.held(KEY).total == 0


def test_seats_taken_before_the_list_count_and_edits_reload(tmp_path: Path) -> None:
    path = tmp_path / "acl.toml"
    srv = Server(path)
    for i in range(3):
        srv.access(f"x{i}", quantity=5)
    assert srv.gate.reload() is None  # nothing changed
    edit(path, lambda a: with_rule(a, Rule("support", Scope.parse("server"), Action.ALLOW, Match.GROUP,
                                           ("support",), reserve=2)))
    note = srv.gate.reload()
    assert note is not None and note["event"] == "acl-changed" and note["rules"] == 1 and len(note["sha256"]) == 64
    with pytest.raises(SeatRefused) as info:
        srv.access("x9", quantity=5)  # 3 of 5 held (by no rule), 2 reserved for support
    assert 'rule "support"' in info.value.message
    srv.access("s1", quantity=5)
    path.write_text("[[rule]]\nname = 1\n")
    problem = srv.gate.reload()
    assert problem is not None and problem["event"] == "problem" and "acl.toml" in problem["message"]
    assert [r.name for r in srv.gate.acl.rules] == ["support"]  # the old list stays in force
    with pytest.raises(Exception, match="rule 1"):
        load(path)


def test_rebuild_after_a_restart(tmp_path: Path) -> None:
    seed(tmp_path / "acl.toml")
    srv = Server(tmp_path / "acl.toml")
    for user in ("s1", "s2", "x1", "d1"):
        srv.access(user)
    restored = SeatTable.restore(srv.seats.snapshot(), 3.0)
    gate = AccessGate(tmp_path / "acl.toml")
    gate.rebuild(restored.sessions(), 3.0)
    # without the clients' groups, their seats are charged to the free pool
    assert gate.held(KEY).total == 4 and gate.held(KEY).by_charge == {None: 4}
    gate.rebuild(restored.sessions(), 3.0, lambda user: GROUPS[user[0]])
    assert gate.held(KEY).by_charge == {"support": 2, None: 1, "development": 1}
