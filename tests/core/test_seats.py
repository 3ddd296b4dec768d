"""The seat table's rules, one by one (the state machine in test_seats_statemachine.py
checks them all together)."""

from __future__ import annotations

import gc
import tracemalloc

import msgpack
import pytest

from licentia.core.seats import (
    DEFAULT_CLIENT_TIMEOUT,
    EventKind,
    Holder,
    ItemKey,
    ProcessId,
    ReleaseReason,
    SeatRefused,
    SeatTable,
    Station,
    check_client_timeout,
)
from licentia.model import AccessMode, ErrorCode, LicentiaError, SessionKind

KEY = ItemKey("130-1001", 10, 13, 0)
OTHER = ItemKey("130-1001", 10, 14, 0)
PC1 = Station("host-a")
PC2 = Station("host-b")
VM1 = Station("host-a", vm_id="vm-1")
TS1 = Station("ts-host", session_id="7")
TS2 = Station("ts-host", session_id="8")
LOCAL = SessionKind.LOCAL


def proc(station: Station, pid: int, start: float = 100.0) -> Holder:
    return Holder.local(station, pid, start, program="cad.exe", user="ann", host=station.host_id)


def grab(
    table: SeatTable,
    mode: AccessMode = AccessMode.PER_ACCESS,
    station: Station = PC1,
    holder: Holder | None = None,
    *,
    key: ItemKey = KEY,
    quantity: int | None = 2,
    local: bool = True,
    session: SessionKind = LOCAL,
    now: float = 1000.0,
) -> int:
    holder = holder or proc(station, 1)
    grant = table.access(
        key=key, quantity=quantity, mode=mode, station=station, holder=holder,
        local=local, session=session, now=now,
    )
    return grant.handle


def refused(code: ErrorCode, table: SeatTable, *args: object, **kwargs: object) -> SeatRefused:
    with pytest.raises(SeatRefused) as info:
        grab(table, *args, **kwargs)  # type: ignore[arg-type]
    assert info.value.code is code
    assert info.value.event.kind is EventKind.DENY and info.value.event.code is code
    return info.value


# -- counting modes ------------------------------------------------------------


def test_per_access_each_handle_takes_a_seat_and_212_when_full() -> None:
    t = SeatTable()
    h1 = grab(t, station=PC1)
    h2 = grab(t, station=PC1, holder=proc(PC1, 2))
    assert t.used(KEY) == 2
    err = refused(ErrorCode.NO_MORE_LICENSES, t, station=PC2, holder=proc(PC2, 3))
    assert err.event.used == 2 and err.event.handle is None
    assert "all 2 seats" in err.message
    t.release(h1, 1001.0)
    assert t.used(KEY) == 1
    h3 = grab(t, station=PC2, holder=proc(PC2, 3))
    assert h1 < h2 < h3


def test_per_station_handles_of_one_station_share_one_seat() -> None:
    t = SeatTable()
    a = [grab(t, AccessMode.PER_STATION, PC1, proc(PC1, pid), quantity=1) for pid in (1, 2, 3)]
    assert t.used(KEY) == 1
    # a second station needs its own seat: refused at quantity 1
    refused(ErrorCode.NO_MORE_LICENSES, t, AccessMode.PER_STATION, PC2, proc(PC2, 9), quantity=1)
    # releasing two of three keeps the shared seat
    t.release(a[0], 1.0)
    t.release(a[1], 1.0)
    assert t.used(KEY) == 1
    last = t.release(a[2], 1.0)
    assert last.seat_freed and t.used(KEY) == 0


def test_per_station_joins_its_seat_even_when_the_item_is_full() -> None:
    t = SeatTable()
    grab(t, AccessMode.PER_STATION, PC1, proc(PC1, 1), quantity=1)
    g = t.access(
        key=KEY, quantity=1, mode=AccessMode.PER_STATION, station=PC1, holder=proc(PC1, 2),
        local=True, session=LOCAL, now=1.0,
    )
    assert not g.new_seat and g.used == 1


def test_terminal_sessions_and_vms_are_stations_of_their_own() -> None:
    t = SeatTable()
    for st in (PC1, VM1, TS1, TS2):
        grab(t, AccessMode.PER_STATION, st, proc(st, 1), quantity=None)
    assert t.used(KEY) == 4


def test_mode_none_takes_no_seat() -> None:
    t = SeatTable()
    grab(t, AccessMode.PER_ACCESS, quantity=1)
    for pid in range(5):
        grab(t, AccessMode.NONE, PC2, proc(PC2, pid), quantity=1)
    assert t.used(KEY) == 1
    assert len(t.sessions(KEY)) == 6


def test_unlimited_quantity_counts_but_never_refuses() -> None:
    t = SeatTable()
    for pid in range(50):
        grab(t, holder=proc(PC1, pid), quantity=None)
    assert t.used(KEY) == 50


def test_quantity_lowered_below_use_refuses_new_seats_only() -> None:
    t = SeatTable()
    grab(t, AccessMode.PER_STATION, PC1, proc(PC1, 1), quantity=3)
    grab(t, AccessMode.PER_ACCESS, PC2, proc(PC2, 1), quantity=3)
    refused(ErrorCode.NO_MORE_LICENSES, t, AccessMode.PER_ACCESS, PC2, proc(PC2, 2), quantity=1)
    grab(t, AccessMode.PER_STATION, PC1, proc(PC1, 2), quantity=1)  # shares
    grab(t, AccessMode.NONE, PC2, proc(PC2, 3), quantity=1)


# -- exclusive -------------------------------------------------------------------


def test_exclusive_once_per_station() -> None:
    t = SeatTable()
    grab(t, AccessMode.EXCLUSIVE, PC1, proc(PC1, 1))
    err = refused(ErrorCode.EXCLUSIVE_CONFLICT, t, AccessMode.EXCLUSIVE, PC1, proc(PC1, 2))
    assert "exclusively" in err.message
    grab(t, AccessMode.EXCLUSIVE, PC2, proc(PC2, 1))  # another station may
    assert t.used(KEY) == 2


@pytest.mark.parametrize("other", [AccessMode.PER_ACCESS, AccessMode.PER_STATION])
def test_exclusive_and_shared_seats_exclude_each_other_on_a_station(other: AccessMode) -> None:
    t = SeatTable()
    grab(t, other, PC1, proc(PC1, 1), quantity=5)
    refused(ErrorCode.EXCLUSIVE_CONFLICT, t, AccessMode.EXCLUSIVE, PC1, proc(PC1, 2), quantity=5)
    t2 = SeatTable()
    grab(t2, AccessMode.EXCLUSIVE, PC1, proc(PC1, 1), quantity=5)
    refused(ErrorCode.EXCLUSIVE_CONFLICT, t2, other, PC1, proc(PC1, 2), quantity=5)
    grab(t2, other, PC2, proc(PC2, 2), quantity=5)


def test_mode_none_is_outside_exclusivity() -> None:
    t = SeatTable()
    grab(t, AccessMode.NONE, PC1, proc(PC1, 1))
    grab(t, AccessMode.EXCLUSIVE, PC1, proc(PC1, 2))
    grab(t, AccessMode.NONE, PC1, proc(PC1, 3))


def test_exclusive_conflict_is_answered_before_capacity() -> None:
    t = SeatTable()
    grab(t, AccessMode.EXCLUSIVE, PC1, proc(PC1, 1), quantity=1)
    refused(ErrorCode.EXCLUSIVE_CONFLICT, t, AccessMode.EXCLUSIVE, PC1, proc(PC1, 2), quantity=1)
    refused(ErrorCode.NO_MORE_LICENSES, t, AccessMode.EXCLUSIVE, PC2, proc(PC2, 2), quantity=1)


def test_items_are_counted_apart() -> None:
    t = SeatTable()
    grab(t, AccessMode.EXCLUSIVE, PC1, proc(PC1, 1), quantity=1)
    grab(t, AccessMode.EXCLUSIVE, PC1, proc(PC1, 1), key=OTHER, quantity=1)
    assert t.used(KEY) == t.used(OTHER) == 1


# -- quantity 0: local only ------------------------------------------------------


def test_quantity_zero_is_local_only() -> None:
    t = SeatTable()
    refused(ErrorCode.LOCAL_ONLY, t, quantity=0, local=False)
    refused(ErrorCode.TERMINAL_SESSION_DENIED, t, AccessMode.PER_ACCESS, TS1, proc(TS1, 1),
            quantity=0, session=SessionKind.TERMINAL_SERVER)
    # the local console and a remote desktop to the machine itself are fine, uncounted
    for pid, kind in enumerate((SessionKind.LOCAL, SessionKind.REMOTE_DESKTOP, SessionKind.LOCAL)):
        grab(t, holder=proc(PC1, pid), quantity=0, session=kind)
    assert len(t) == 3
    # the local rule comes first, then exclusivity
    grab(t, AccessMode.EXCLUSIVE, VM1, proc(VM1, 1), quantity=0)
    refused(ErrorCode.EXCLUSIVE_CONFLICT, t, AccessMode.EXCLUSIVE, VM1, proc(VM1, 2), quantity=0)
    refused(ErrorCode.LOCAL_ONLY, t, AccessMode.EXCLUSIVE, VM1, proc(VM1, 2), quantity=0, local=False)


def test_local_rules_do_not_apply_to_network_licenses() -> None:
    t = SeatTable()
    grab(t, station=TS1, holder=proc(TS1, 1), quantity=1, local=False, session=SessionKind.TERMINAL_SERVER)


def test_bad_quantity_is_a_parameter_error() -> None:
    with pytest.raises(LicentiaError) as info:
        grab(SeatTable(), quantity=-1)
    assert info.value.code is ErrorCode.INVALID_PARAMETER


# -- release ---------------------------------------------------------------------


def test_release_twice_or_by_another_holder_is_an_invalid_handle() -> None:
    t = SeatTable()
    h = grab(t, holder=proc(PC1, 1))
    with pytest.raises(LicentiaError) as info:
        t.release(h, 1.0, holder=proc(PC1, 2))
    assert info.value.code is ErrorCode.INVALID_HANDLE
    r = t.release(h, 1.0, holder=Holder.local(PC1, 1, 100.0))  # display fields do not matter
    assert r.events[0].reason is ReleaseReason.PROGRAM and r.used == 0
    with pytest.raises(LicentiaError) as info:
        t.release(h, 1.0)
    assert info.value.code is ErrorCode.INVALID_HANDLE
    with pytest.raises(LicentiaError):
        t.get(h)
    assert h not in t


def test_handles_are_never_reused() -> None:
    t = SeatTable()
    seen = []
    for _ in range(20):
        h = grab(t)
        seen.append(h)
        t.release(h, 1.0)
    assert seen == sorted(set(seen))


def test_reaping_frees_every_handle_of_a_dead_process_and_only_its() -> None:
    t = SeatTable()
    dead = proc(PC1, 42, start=5.0)
    reused_pid = proc(PC1, 42, start=9.0)  # same PID, later process
    mine = [grab(t, holder=dead, quantity=None) for _ in range(3)]
    other = grab(t, holder=reused_pid, quantity=None)
    grab(t, AccessMode.PER_STATION, holder=dead, quantity=None)
    assert dead.process is not None
    events = t.reap_processes([dead.process, ProcessId(PC2, 1, 1.0)], now=2000.0)
    assert [e.reason for e in events] == [ReleaseReason.REAPED] * 4
    assert {e.handle for e in events} >= set(mine)
    assert [s.handle for s in t.sessions()] == [other]
    assert t.processes() == [reused_pid.process]


def test_network_clients_expire_after_their_timeout() -> None:
    t = SeatTable()
    quiet = Holder.network("client-1", program="cad", user="bob", host="10.0.0.9")
    chatty = Holder.network("client-2")
    grab(t, station=PC1, holder=quiet, now=0.0, quantity=None)
    grab(t, station=PC1, holder=quiet, now=0.0, quantity=None)
    grab(t, station=PC2, holder=chatty, now=0.0, quantity=None)
    assert t.heartbeat("client-2", 100.0)
    assert not t.heartbeat("nobody", 100.0)
    assert t.expire_clients(120.0) == ()  # silent for exactly the timeout: kept
    events = t.expire_clients(121.0, DEFAULT_CLIENT_TIMEOUT)
    assert [(e.reason, e.holder.client_id) for e in events] == [(ReleaseReason.TIMEOUT, "client-1")] * 2
    assert t.clients() == {"client-2": 100.0}
    assert t.expire_clients(105.5, timeout=5.0)[0].holder.client_id == "client-2"
    assert len(t) == 0 and t.clients() == {}


def test_admin_force_release() -> None:
    t = SeatTable()
    h = grab(t)
    r = t.force_release(h, 5.0)
    assert r.events[0].reason is ReleaseReason.ADMIN and r.seat_freed
    with pytest.raises(LicentiaError) as info:
        t.force_release(h, 5.0)
    assert info.value.code is ErrorCode.INVALID_HANDLE


def test_client_timeout_setting() -> None:
    assert check_client_timeout(5) == 5.0
    for bad in (4.9, 0, -1, float("nan"), True, "10"):
        with pytest.raises(LicentiaError) as info:
            check_client_timeout(bad)  # type: ignore[arg-type]
        assert info.value.code is ErrorCode.INVALID_PARAMETER
    with pytest.raises(LicentiaError):
        SeatTable().expire_clients(1.0, 0)


def test_holder_needs_an_identity() -> None:
    with pytest.raises(LicentiaError):
        Holder()


def test_events_carry_what_the_log_needs() -> None:
    t = SeatTable()
    g = t.access(
        key=KEY, quantity=1, mode=AccessMode.PER_ACCESS, station=PC1, holder=proc(PC1, 1),
        local=True, session=LOCAL, now=7.0,
    )
    (e,) = g.events
    assert (e.kind, e.at, e.key, e.handle, e.used, e.holder.program) == (
        EventKind.GRANT, 7.0, KEY, g.handle, 1, "cad.exe")


# -- snapshot and restore ----------------------------------------------------------


def test_snapshot_restore_round_trip_through_msgpack() -> None:
    t = SeatTable()
    grab(t, AccessMode.PER_STATION, PC1, proc(PC1, 1))
    grab(t, AccessMode.PER_STATION, PC1, proc(PC1, 2))
    grab(t, AccessMode.EXCLUSIVE, PC2, Holder.network("c9", user="u"), now=3.5)
    grab(t, AccessMode.NONE, TS1, proc(TS1, 4), key=OTHER)
    gone = grab(t, AccessMode.PER_ACCESS, VM1, proc(VM1, 5), quantity=None)
    t.release(gone, 1.0)
    blob = msgpack.packb(t.snapshot())
    back = SeatTable.restore(msgpack.unpackb(blob), now=50.0)
    assert back.sessions() == t.sessions()
    assert back.used(KEY) == t.used(KEY) == 2 and back.used(OTHER) == 0
    assert back.next_handle == t.next_handle
    assert back.clients() == {"c9": 50.0}
    assert sorted(back.processes(), key=lambda p: p.pid) == sorted(t.processes(), key=lambda p: p.pid)
    # the restored table keeps enforcing the rules and never reuses a handle
    refused(ErrorCode.EXCLUSIVE_CONFLICT, back, AccessMode.EXCLUSIVE, PC2, proc(PC2, 8))
    assert grab(back, station=PC2, holder=proc(PC2, 8), key=OTHER) == gone + 1


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.update(version=2),
        lambda d: d.update(format="other"),
        lambda d: d.update(next_handle=1),
        lambda d: d["sessions"].append(d["sessions"][0]),
        lambda d: d["sessions"][0].__setitem__(2, "sometimes"),
        lambda d: d["sessions"][0].__setitem__(4, [None, None, "", "", ""]),
        lambda d: d["sessions"][0].__setitem__(1, ["130-1", "ten", 13, 0]),
        lambda d: d["sessions"][0].pop(),
        lambda d: d.pop("sessions"),
        lambda d: d["sessions"].append([9, d["sessions"][0][1], "exclusive", d["sessions"][0][3],
                                        d["sessions"][0][4], 0.0]),
    ],
)
def test_damaged_snapshot_is_wrong_content(damage: object) -> None:
    t = SeatTable()
    grab(t, AccessMode.PER_ACCESS, quantity=None)
    grab(t, AccessMode.PER_ACCESS, quantity=None)
    data = msgpack.unpackb(msgpack.packb(t.snapshot()))
    data["next_handle"] = 20
    damage(data)  # type: ignore[operator]
    with pytest.raises(LicentiaError) as info:
        SeatTable.restore(data, 0.0)
    assert info.value.code is ErrorCode.WRONG_CONTENT


def test_memory_per_held_session_at_ten_thousand() -> None:
    """Each session with its own process (the costly case) stays under 2 KiB."""
    n = 10_000
    keys = [ItemKey("130-1001", 10, pc, 0) for pc in range(10)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        t = SeatTable()
        for i in range(n):
            st = Station(f"host-{i % 2000:04d}", "", str(i % 3))
            holder = Holder.local(st, 10_000 + i, 1.7e9 + i, program="cad.exe", user=f"user{i % 500}",
                                  host=st.host_id)
            t.access(key=keys[i % 10], quantity=None, mode=AccessMode.PER_ACCESS, station=st,
                     holder=holder, local=True, session=LOCAL, now=float(i))
        del holder, st
        gc.collect()
        per_session = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert len(t) == n
    assert per_session < 2048, per_session
