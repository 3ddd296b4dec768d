"""The seat table against a brute-force model, under random access, release, reaping,
keep-alives, expiry, administrator releases and restarts."""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from licentia.core.seats import (
    EventKind,
    Holder,
    ItemKey,
    ProcessId,
    ReleaseReason,
    SeatRefused,
    SeatTable,
    Station,
)
from licentia.model import AccessMode, ErrorCode, LicentiaError, SessionKind

QUANTITY = {
    ItemKey("130-1", 10, 1, 0): 2,
    ItemKey("130-1", 10, 2, 0): 1,
    ItemKey("130-1", 10, 2, 1): 0,  # local only
    ItemKey("3-7", 10, 1, 0): None,  # unlimited
}
KEYS = list(QUANTITY)
STATIONS = [Station("pc-a"), Station("pc-b"), Station("pc-a", vm_id="vm1"),
            Station("ts", session_id="1"), Station("ts", session_id="2")]
# a PID reused by a later process (same pid, another start time) is another holder
PROCESSES = [ProcessId(s, pid, start) for s in STATIONS for pid, start in ((100, 1.0), (100, 2.0), (200, 1.0))]
CLIENTS = ["c1", "c2", "c3"]


@dataclass
class Held:
    handle: int
    key: ItemKey
    mode: AccessMode
    station: Station
    holder: Holder


def seats_of(model: dict[int, Held], key: ItemKey) -> int:
    per_station = set()
    n = 0
    for h in model.values():
        if h.key != key:
            continue
        if h.mode in (AccessMode.PER_ACCESS, AccessMode.EXCLUSIVE):
            n += 1
        elif h.mode is AccessMode.PER_STATION:
            per_station.add(h.station)
    return n + len(per_station)


class SeatMachine(RuleBasedStateMachine):
    handles = Bundle("handles")

    @initialize()
    def start(self) -> None:
        self.table = SeatTable()
        self.model: dict[int, Held] = {}
        self.last_seen: dict[str, float] = {}
        self.now = 1000.0
        self.issued = 0

    # -- rules -------------------------------------------------------------

    @rule(
        target=handles,
        key=st.sampled_from(KEYS),
        mode=st.sampled_from(list(AccessMode)),
        station_index=st.integers(0, len(STATIONS) - 1),
        who=st.one_of(st.integers(0, 2).map(lambda i: ("process", i)),
                      st.sampled_from(CLIENTS).map(lambda c: ("client", c))),
        local=st.booleans(),
    )
    def access(self, key: ItemKey, mode: AccessMode, station_index: int, who: tuple[str, object],
               local: bool) -> object:
        station = STATIONS[station_index]
        if who[0] == "process":
            proc = PROCESSES[station_index * 3 + int(who[1])]  # type: ignore[call-overload]
            holder = Holder(proc, None, "app", "user", station.host_id)
        else:
            holder = Holder.network(str(who[1]), program="app")
        session = SessionKind.TERMINAL_SERVER if station.session_id else SessionKind.LOCAL
        expected = self.expect(key, mode, station, local, session)
        try:
            grant = self.table.access(key=key, quantity=QUANTITY[key], mode=mode, station=station,
                                      holder=holder, local=local, session=session, now=self.now)
        except SeatRefused as exc:
            assert exc.code is expected, (exc.code, expected)
            assert exc.event.kind is EventKind.DENY and exc.event.used == seats_of(self.model, key)
            return multiple()
        assert expected is None, f"granted, expected {expected}"
        assert grant.handle > self.issued
        self.issued = grant.handle
        assert grant.events[0].kind is EventKind.GRANT
        self.model[grant.handle] = Held(grant.handle, key, mode, station, holder)
        if holder.client_id is not None:
            self.last_seen[holder.client_id] = self.now
        return grant.handle

    def expect(self, key: ItemKey, mode: AccessMode, station: Station, local: bool,
               session: SessionKind) -> ErrorCode | None:
        quantity = QUANTITY[key]
        if quantity == 0:
            if not local:
                return ErrorCode.LOCAL_ONLY
            if session is SessionKind.TERMINAL_SERVER:
                return ErrorCode.TERMINAL_SESSION_DENIED
        here = [h for h in self.model.values()
                if h.key == key and h.station == station and h.mode is not AccessMode.NONE]
        if mode is AccessMode.EXCLUSIVE and here:
            return ErrorCode.EXCLUSIVE_CONFLICT
        if mode is not AccessMode.NONE and any(h.mode is AccessMode.EXCLUSIVE for h in here):
            return ErrorCode.EXCLUSIVE_CONFLICT
        new_seat = mode in (AccessMode.PER_ACCESS, AccessMode.EXCLUSIVE) or (
            mode is AccessMode.PER_STATION and not any(h.mode is AccessMode.PER_STATION for h in here))
        if new_seat and quantity and seats_of(self.model, key) >= quantity:
            return ErrorCode.NO_MORE_LICENSES
        return None

    @rule(handle=consumes(handles))
    def release(self, handle: int) -> None:
        held = self.model.pop(handle, None)
        if held is None:  # reaped, expired or forced meanwhile
            with pytest.raises(LicentiaError) as info:
                self.table.release(handle, self.now)
            assert info.value.code is ErrorCode.INVALID_HANDLE
            return
        result = self.table.release(handle, self.now, holder=held.holder)
        assert result.events[0].reason is ReleaseReason.PROGRAM
        assert result.used == seats_of(self.model, held.key)
        self.forget_client(held.holder)

    @rule(handle=handles)
    def force_release(self, handle: int) -> None:
        held = self.model.pop(handle, None)
        if held is None:
            with pytest.raises(LicentiaError):
                self.table.force_release(handle, self.now)
            return
        assert self.table.force_release(handle, self.now).events[0].reason is ReleaseReason.ADMIN
        self.forget_client(held.holder)

    @rule(dead=st.sets(st.sampled_from(PROCESSES), max_size=4))
    def reap(self, dead: set[ProcessId]) -> None:
        events = self.table.reap_processes(dead, self.now)
        gone = {h for h, held in self.model.items() if held.holder.process in dead}
        assert {e.handle for e in events} == gone
        assert all(e.reason is ReleaseReason.REAPED for e in events)
        for h in gone:
            self.forget_client(self.model.pop(h).holder)
        assert not any(s.holder.process in dead for s in self.table.sessions())

    @rule(seconds=st.floats(0.0, 200.0))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @rule(client=st.sampled_from(CLIENTS))
    def heartbeat(self, client: str) -> None:
        known = self.table.heartbeat(client, self.now)
        assert known == (client in self.last_seen)
        if known:
            self.last_seen[client] = self.now

    @rule(timeout=st.sampled_from([5.0, 60.0, 120.0]))
    def expire(self, timeout: float) -> None:
        events = self.table.expire_clients(self.now, timeout)
        lost = {c for c, seen in self.last_seen.items() if self.now - seen > timeout}
        gone = {h for h, held in self.model.items() if held.holder.client_id in lost}
        assert {e.handle for e in events} == gone
        for h in gone:
            del self.model[h]
        for c in lost:
            del self.last_seen[c]

    @rule()
    def restart(self) -> None:
        before = self.table.sessions()
        data = msgpack.unpackb(msgpack.packb(self.table.snapshot()))
        self.table = SeatTable.restore(data, now=self.now)
        assert self.table.sessions() == before
        for c in self.last_seen:
            self.last_seen[c] = self.now

    def forget_client(self, holder: Holder) -> None:
        c = holder.client_id
        if c is not None and not any(h.holder.client_id == c for h in self.model.values()):
            del self.last_seen[c]

    # -- invariants ----------------------------------------------------------

    @invariant()
    def matches_the_model(self) -> None:
        sessions = self.table.sessions()
        assert [s.handle for s in sessions] == sorted(self.model)
        for s in sessions:
            held = self.model[s.handle]
            assert (s.key, s.mode, s.station, s.holder) == (held.key, held.mode, held.station, held.holder)
        assert self.table.clients() == self.last_seen
        assert set(self.table.processes()) == {
            h.holder.process for h in self.model.values() if h.holder.process is not None}
        assert self.table.next_handle > self.issued

    @invariant()
    def a_keepalive_names_lost_exactly_the_handles_its_client_does_not_hold(self) -> None:
        named = [*self.model, self.table.next_handle, 0, 1 << 40]
        for client in CLIENTS:
            lost = self.table.not_held_by(client, named)
            assert lost == [h for h in named if h not in self.model or self.model[h].holder.client_id != client]

    @invariant()
    def a_client_learns_the_seats_it_took_before_a_time_and_did_not_name(self) -> None:
        sessions = self.table.sessions()
        named = [s.handle for s in sessions[::2]]
        for client in CLIENTS:
            for before in (self.now, self.now - 50.0, self.now + 1.0):
                assert self.table.taken_before(client, before, named) == sorted(
                    s.handle for s in sessions
                    if s.holder.client_id == client and s.since < before and s.handle not in named)

    @invariant()
    def never_more_seats_than_quantity(self) -> None:
        for key, quantity in QUANTITY.items():
            used = self.table.used(key)
            assert used == seats_of(self.model, key)
            if quantity:
                assert used <= quantity

    @invariant()
    def one_seat_per_station_and_exclusivity(self) -> None:
        by_place: dict[tuple[ItemKey, Station], list[AccessMode]] = {}
        for s in self.table.sessions():
            by_place.setdefault((s.key, s.station), []).append(s.mode)
        for modes in by_place.values():
            counted = [m for m in modes if m is not AccessMode.NONE]
            if AccessMode.EXCLUSIVE in counted:
                assert counted == [AccessMode.EXCLUSIVE]


TestSeatTable = SeatMachine.TestCase
TestSeatTable.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)

