"""The usage aggregation: true denials, seats over time, seat time, the period's edges."""

from __future__ import annotations

from licentia.core.usage import Record, Usage, reservations, top

ITEM = b'"container":"130-1","firm":10001,"product":7,"item":1'
ITEM2 = b'"container":"130-2","firm":10001,"product":7,"item":1'
PROD = (10001, 7)


def grant(at: float, handle: int, used: int, user: bytes = b"alice", item: bytes = ITEM,
          charge: bytes = b"") -> Record:
    return Record(b"grant", str(at).encode(), item, user, b"pc", str(handle).encode(), str(used).encode(), b"",
                  charge)


def release(at: float, handle: int, used: int, user: bytes = b"alice", item: bytes = ITEM) -> Record:
    return Record(b"release", str(at).encode(), item, user, b"pc", str(handle).encode(), str(used).encode(), b"",
                  b"")


def deny(at: float, used: int, user: bytes = b"alice", code: bytes = b"212") -> Record:
    return Record(b"deny", str(at).encode(), ITEM, user, b"pc", b"", str(used).encode(), code, b"")


def run(records: list[Record], **kw: float) -> Usage:
    u = Usage(**kw)  # type: ignore[arg-type]
    u.feed(records)
    u.finish()
    return u


def test_a_denial_followed_by_a_grant_within_the_window_is_not_true() -> None:
    u = run([deny(100, 1), grant(200, 1, 1), deny(1000, 1, b"bob"), deny(1100, 1), grant(1500, 2, 1)], window=300)
    p = u.products[PROD]
    assert (p.denials, p.true_denials) == (3, 2)  # bob never got it; alice's second wait was 400 s
    assert p.by_code == {212: 3}


def test_repeated_denials_of_one_user_each_count() -> None:
    u = run([deny(0, 1), deny(10, 1), deny(20, 1), grant(30, 1, 1)], window=300)
    assert u.products[PROD].true_denials == 0
    u = run([deny(0, 1), deny(1000, 1), grant(1100, 1, 1)], window=300)
    assert u.products[PROD].true_denials == 1


def test_seats_sum_over_items_and_the_timeline_carries_levels() -> None:
    u = run([grant(10, 1, 1), grant(20, 2, 1, item=ITEM2), grant(3700, 3, 2), release(3800, 1, 1),
             release(3900, 3, 0), release(11000, 2, 0, item=ITEM2)], interval=3600)
    p = u.products[PROD]
    assert p.peak == 3 and p.peak_at == 3700
    # hour 0: up to 2; hour 1: 3; hour 2 (no events): the level left by hour 1 (1); hour 3: 1 then 0
    assert u.timeline(PROD) == [(0.0, 2), (3600.0, 3), (7200.0, 1), (10800.0, 1)]


def test_seat_time_is_cut_at_the_period() -> None:
    u = run([grant(0, 1, 1), grant(50, 2, 2, user=b"bob", charge=b'"support"'), release(150, 1, 1),
             release(400, 2, 0, user=b"bob")], start=100, end=300)
    assert u.per_user[b"alice"].seconds == 50 and u.per_user[b"alice"].grants == 0
    assert u.per_user[b"bob"].seconds == 200
    assert u.per_rule["support"].seconds == 200
    assert [name for name, _t in top(u.per_user, 1)] == ["bob"]
    lines = reservations(u, [("support", "product 10001:7", 3), ("qa", "server", 2)])
    assert [(r.rule, r.grants, r.never_used) for r in lines] == [("support", 0, False), ("qa", 0, True)]


def test_handles_still_open_at_the_end_count_to_the_end() -> None:
    u = run([grant(0, 1, 1), grant(10, 2, 2, user=b"bob")], end=100)
    assert u.per_user[b"alice"].seconds == 100 and u.per_user[b"bob"].seconds == 90
    u = run([deny(0, 1, b"zed")])
    assert u.products[PROD].true_denials == 1
