"""One runtime per token and the lockout on rapid changes of hands: the pure rules."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from licentia.core import claims as C
from licentia.model import ErrorCode, LicentiaError

T0 = 1_800_000_000
RUNTIMES = ("rt-a", "rt-b", "rt-c")


def run(schedule: list[tuple[str, int]], state: C.ClaimState | None = None) -> list[tuple[str, int, C.ClaimResult]]:
    """Apply claims (runtime, time) in order; return each with its result."""
    state = state or C.ClaimState()
    out: list[tuple[str, int, C.ClaimResult]] = []
    for runtime, now in schedule:
        result = C.claim(state, runtime, now)
        out.append((runtime, now, result))
        state = result.state
    return out


def test_first_claim_then_renew_then_take_over() -> None:
    first = C.claim(C.ClaimState(), "rt-a", T0)
    assert first.outcome is C.Outcome.CLAIMED and first.previous is None
    again = C.claim(first.state, "rt-a", T0 + 5)
    assert again.outcome is C.Outcome.RENEWED and again.state == first.state
    taken = C.claim(again.state, "rt-b", T0 + 6)
    assert taken.outcome is C.Outcome.TOOK_OVER and taken.previous == "rt-a"
    assert C.standing(taken.state, "rt-a", T0 + 7) is C.Standing.HELD_ELSEWHERE
    assert C.standing(taken.state, "rt-b", T0 + 7) is C.Standing.HOLDER


def test_fourth_change_within_the_window_locks_out_for_five_minutes() -> None:
    state = C.claim(C.ClaimState(), "rt-a", T0).state  # first claim: no change of hands
    for i, runtime in enumerate(["rt-b", "rt-a", "rt-b"], start=1):  # three changes: accepted
        result = C.claim(state, runtime, T0 + i)
        assert result.granted, result
        state = result.state
    fourth = C.claim(state, "rt-a", T0 + 10)
    assert fourth.outcome is C.Outcome.LOCKED_OUT and fourth.triggered_lockout
    locked = fourth.state
    assert locked.holder is None and locked.locked_until == T0 + 10 + C.LOCKOUT
    # Honoured by every runtime, the last holder included, until the very last second.
    for runtime in RUNTIMES:
        assert C.standing(locked, runtime, T0 + 10 + C.LOCKOUT - 1) is C.Standing.LOCKED_OUT
        refused = C.claim(locked, runtime, T0 + 10 + C.LOCKOUT - 1)
        assert refused.outcome is C.Outcome.LOCKED_OUT and not refused.triggered_lockout
    assert C.lockout_remaining(locked, T0 + 10) == C.LOCKOUT
    # Five minutes later the token starts afresh.
    end = T0 + 10 + C.LOCKOUT
    assert C.standing(locked, "rt-b", end) is C.Standing.UNCLAIMED
    after = C.claim(locked, "rt-b", end)
    assert after.outcome is C.Outcome.CLAIMED and after.state.changes == ()


def test_changes_spread_wider_than_the_window_never_lock_out() -> None:
    schedule = [(RUNTIMES[i % 2], T0 + i * (C.WINDOW // C.MAX_CHANGES + 1)) for i in range(40)]
    assert all(r.granted for _, _, r in run(schedule))


def test_release_then_claim_by_another_counts_as_a_change() -> None:
    state = C.claim(C.ClaimState(), "rt-a", T0).state
    state = C.release(state, "rt-a", T0 + 1)
    assert state.holder is None and C.standing(state, "rt-a", T0 + 1) is C.Standing.UNCLAIMED
    result = C.claim(state, "rt-b", T0 + 2)
    assert result.outcome is C.Outcome.CLAIMED and result.state.changes == (T0 + 2,)


def test_release_by_someone_else_changes_nothing() -> None:
    state = C.claim(C.ClaimState(), "rt-a", T0).state
    assert C.release(state, "rt-b", T0 + 1) == state


def test_lockout_set_by_a_clock_far_ahead_ends_five_minutes_after_this_clock_sees_it() -> None:
    ahead = C.ClaimState(locked_at=T0 + 3600, locked_until=T0 + 3600 + C.LOCKOUT)
    result = C.claim(ahead, "rt-a", T0)
    assert result.outcome is C.Outcome.LOCKED_OUT
    assert result.state.locked_until == T0 + C.LOCKOUT
    assert C.claim(result.state, "rt-a", T0 + C.LOCKOUT).granted


def test_changes_recorded_in_the_future_count_now() -> None:
    state = C.ClaimState(holder=C.Claim("rt-a", T0 + 500), last_runtime="rt-a", changes=(T0 + 500,) * 3)
    assert C.claim(state, "rt-b", T0).outcome is C.Outcome.LOCKED_OUT


@pytest.mark.parametrize("bad", ["", "two words", "x" * (C.RUNTIME_ID_MAX + 1), "é"])
def test_runtime_ids_are_checked(bad: str) -> None:
    with pytest.raises(LicentiaError) as exc:
        C.claim(C.ClaimState(), bad, T0)
    assert exc.value.code is ErrorCode.INVALID_PARAMETER


@pytest.mark.parametrize(
    "raw", [None, [], {"holder": None}, {**C.ClaimState().to_dict(), "changes": ["x"]},
            {**C.ClaimState().to_dict(), "holder": {"runtime_id": "a b", "claimed_at": 1}}]
)
def test_malformed_records_are_invalid(raw: object) -> None:
    with pytest.raises(LicentiaError) as exc:
        C.ClaimState.from_dict(raw)
    assert exc.value.code is ErrorCode.LICENSE_INVALID


# -- properties -------------------------------------------------------------------------------

schedules = st.lists(
    st.tuples(st.sampled_from(RUNTIMES), st.integers(min_value=0, max_value=90)), max_size=60
).map(lambda steps: _timed(steps))


def _timed(steps: list[tuple[str, int]]) -> list[tuple[str, int]]:
    now, out = T0, []
    for runtime, gap in steps:
        now += gap
        out.append((runtime, now))
    return out


def _is_change(result: C.ClaimResult, runtime: str, before: C.ClaimState, now: int) -> bool:
    state = C.normalise(before, now)
    previous = state.holder.runtime_id if state.holder else state.last_runtime
    return result.granted and previous is not None and previous != runtime


@given(schedules)
def test_no_window_ever_holds_more_than_the_allowed_changes(schedule: list[tuple[str, int]]) -> None:
    state = C.ClaimState()
    accepted: list[int] = []
    for runtime, now in schedule:
        result = C.claim(state, runtime, now)
        if _is_change(result, runtime, state, now):
            accepted.append(now)
        state = result.state
    for start in accepted:
        assert sum(1 for t in accepted if start <= t < start + C.WINDOW) <= C.MAX_CHANGES


@given(schedules)
def test_one_holder_at_most_and_it_is_the_last_granted_claimer(schedule: list[tuple[str, int]]) -> None:
    state = C.ClaimState()
    for runtime, now in schedule:
        result = C.claim(state, runtime, now)
        state = result.state
        holders = [r for r in RUNTIMES if C.standing(state, r, now) is C.Standing.HOLDER]
        if result.granted:
            assert holders == [runtime]
            assert all(
                C.standing(state, r, now) is C.Standing.HELD_ELSEWHERE for r in RUNTIMES if r != runtime
            )
        else:
            assert holders == []
            assert all(C.standing(state, r, now) is C.Standing.LOCKED_OUT for r in RUNTIMES)


@given(schedules)
def test_a_lockout_lasts_exactly_five_minutes(schedule: list[tuple[str, int]]) -> None:
    state = C.ClaimState()
    for runtime, now in schedule:
        result = C.claim(state, runtime, now)
        state = result.state
        if result.triggered_lockout:
            assert state.locked_until == now + C.LOCKOUT
            for r in RUNTIMES:
                assert not C.claim(state, r, now + C.LOCKOUT - 1).granted
                assert C.claim(state, r, now + C.LOCKOUT).outcome is C.Outcome.CLAIMED
            return


@given(st.lists(st.integers(min_value=0, max_value=5), max_size=50))
def test_one_runtime_reclaiming_never_locks_out(gaps: list[int]) -> None:
    schedule = _timed([("rt-a", g) for g in gaps])
    assert all(r.granted for _, _, r in run(schedule))


@given(schedules, st.integers(min_value=-10_000, max_value=10_000))
def test_no_clock_makes_a_lockout_longer_than_five_minutes(schedule: list[tuple[str, int]], skew: int) -> None:
    state = C.ClaimState()
    for runtime, now in schedule:
        state = C.claim(state, runtime, now).state
    if schedule:
        other_clock = schedule[-1][1] + skew
        seen = C.claim(state, "rt-c", other_clock).state
        assert C.lockout_remaining(seen, other_clock) <= C.LOCKOUT
        assert C.claim(seen, "rt-c", other_clock + C.LOCKOUT).granted


@given(schedules)
def test_states_survive_their_encoding(schedule: list[tuple[str, int]]) -> None:
    state = C.ClaimState()
    for runtime, now in schedule:
        state = C.claim(state, runtime, now).state
        assert C.ClaimState.from_dict(state.to_dict()) == state
