"""One runtime per token, and the lockout of a token that changes hands too fast.

A token container serves one runtime at a time. A runtime **claims** the token when it
starts using it; the claim (runtime id and time) is written into the token. A second
runtime that claims the token takes it over: the first notices at its next access (it
reads the claim record when it proves the token is present), releases every seat it gave
out from that token and reports the token as taken away.

A token that changes hands fast is being passed between machines on purpose — attached
to one virtual machine after another, or through a reverse USB hub — so one license can
serve several machines in turn. The rule:

- a **change of hands** is a claim by a runtime other than the last one that held the
  token (whether or not that one released it); a runtime claiming again, e.g. after a
  restart with the same runtime id, is no change;
- at most `MAX_CHANGES` (3) changes of hands are accepted within any `WINDOW` (60 s);
  the next change within the window is refused and **locks the token out** for
  `LOCKOUT` (300 s, five minutes) for every runtime, the last holder included;
- when the lockout ends the token starts afresh: no holder, no history.

Times come from the runtime's clock (`now` is a parameter everywhere). Different
machines may disagree about the time, so the state is normalised against the clock of
whoever looks at it: a change recorded "in the future" counts as happening now, and a
lockout that would last longer than `LOCKOUT` by this clock is re-anchored to end
`LOCKOUT` seconds from now. So a slow clock cannot stretch a lockout without bound, and
setting a clock back does not shorten the window.

Everything here is pure: states in, states out. The token container stores the state
(`ClaimState.to_dict`) as a record signed inside the token.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final

from licentia.model import ErrorCode, LicentiaError

MAX_CHANGES: Final = 3
"""Changes of hands accepted within any `WINDOW`; one more locks the token out."""
WINDOW: Final = 60
"""Seconds over which changes of hands are counted."""
LOCKOUT: Final = 300
"""Seconds a token stays locked out (five minutes, as the documents say)."""
RUNTIME_ID_MAX: Final = 128


def runtime_id(value: str) -> str:
    """Validate a runtime id: 1 to 128 printable ASCII characters, no spaces."""
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= RUNTIME_ID_MAX
        or not all("!" <= ch <= "~" for ch in value)
    ):
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER,
            f"a runtime id must be 1 to {RUNTIME_ID_MAX} printable ASCII characters "
            f"without spaces, got {value!r}",
        )
    return value


@dataclass(frozen=True)
class Claim:
    runtime_id: str
    claimed_at: int


@dataclass(frozen=True)
class ClaimState:
    """What a token records about who uses it."""

    holder: Claim | None = None
    last_runtime: str | None = None  # the runtime that held the token last, even if released
    changes: tuple[int, ...] = field(default=())  # times of recent changes of hands, oldest first
    locked_at: int | None = None
    locked_until: int | None = None

    def locked(self, now: int) -> bool:
        return self.locked_until is not None and now < self.locked_until

    # -- encoding (plain types for msgpack) ---------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "holder": None
            if self.holder is None
            else {"runtime_id": self.holder.runtime_id, "claimed_at": self.holder.claimed_at},
            "last_runtime": self.last_runtime,
            "changes": list(self.changes),
            "locked_at": self.locked_at,
            "locked_until": self.locked_until,
        }

    @classmethod
    def from_dict(cls, data: Any) -> ClaimState:
        try:
            if not isinstance(data, dict):
                raise TypeError
            raw_holder = data["holder"]
            holder = (
                None
                if raw_holder is None
                else Claim(runtime_id(str(raw_holder["runtime_id"])), _int(raw_holder["claimed_at"]))
            )
            last = data["last_runtime"]
            changes = tuple(_int(t) for t in data["changes"])
            locked_at = None if data["locked_at"] is None else _int(data["locked_at"])
            until = None if data["locked_until"] is None else _int(data["locked_until"])
            return cls(
                holder=holder,
                last_runtime=None if last is None else runtime_id(str(last)),
                changes=tuple(sorted(changes)),
                locked_at=locked_at,
                locked_until=until,
            )
        except (KeyError, TypeError, ValueError, LicentiaError):
            raise LicentiaError(
                ErrorCode.LICENSE_INVALID, "the token's claim record is malformed"
            ) from None


class Outcome(StrEnum):
    CLAIMED = "claimed"  # nobody held the token; now this runtime does
    RENEWED = "renewed"  # this runtime already held it
    TOOK_OVER = "took over"  # another runtime held it; it has lost the token
    LOCKED_OUT = "locked out"  # refused: the token is (now) locked out


@dataclass(frozen=True)
class ClaimResult:
    state: ClaimState
    outcome: Outcome
    previous: str | None  # the runtime that held the token before, if any
    triggered_lockout: bool = False

    @property
    def granted(self) -> bool:
        return self.outcome is not Outcome.LOCKED_OUT


class Standing(StrEnum):
    HOLDER = "holder"  # this runtime holds the token
    HELD_ELSEWHERE = "held elsewhere"  # another runtime holds it
    UNCLAIMED = "unclaimed"  # nobody holds it
    LOCKED_OUT = "locked out"  # nobody may use it until the lockout ends


def normalise(state: ClaimState, now: int) -> ClaimState:
    """The state as seen by a clock reading `now`: expired lockouts and old changes gone."""
    if state.locked_until is not None:
        if now >= state.locked_until:
            return ClaimState()
        if state.locked_until - now > LOCKOUT:
            # Locked by a clock ahead of this one: end LOCKOUT seconds from now instead.
            return replace(state, locked_until=now + LOCKOUT)
        return state
    changes = tuple(min(t, now) for t in state.changes if t > now - WINDOW)
    holder = state.holder
    if holder is not None and holder.claimed_at > now:
        holder = Claim(holder.runtime_id, now)
    if changes == state.changes and holder == state.holder:
        return state
    return replace(state, changes=changes, holder=holder)


def standing(state: ClaimState, runtime: str, now: int) -> Standing:
    """Where `runtime` stands with the token at `now`."""
    state = normalise(state, now)
    if state.locked(now):
        return Standing.LOCKED_OUT
    if state.holder is None:
        return Standing.UNCLAIMED
    if state.holder.runtime_id == runtime:
        return Standing.HOLDER
    return Standing.HELD_ELSEWHERE


def claim(state: ClaimState, runtime: str, now: int) -> ClaimResult:
    """`runtime` claims the token at `now`. Persist `ClaimResult.state` whatever the outcome."""
    runtime_id(runtime)
    state = normalise(state, now)
    current = state.holder.runtime_id if state.holder is not None else None
    if state.locked(now):
        return ClaimResult(state, Outcome.LOCKED_OUT, current)
    if current == runtime:
        return ClaimResult(state, Outcome.RENEWED, current)
    previous = current if current is not None else state.last_runtime
    changes = state.changes
    if previous is not None and previous != runtime:
        changes = (*changes, now)
        if len(changes) > MAX_CHANGES:
            locked = ClaimState(locked_at=now, locked_until=now + LOCKOUT)
            return ClaimResult(locked, Outcome.LOCKED_OUT, current, triggered_lockout=True)
    new = ClaimState(holder=Claim(runtime, now), last_runtime=runtime, changes=changes)
    return ClaimResult(new, Outcome.TOOK_OVER if current is not None else Outcome.CLAIMED, current)


def release(state: ClaimState, runtime: str, now: int) -> ClaimState:
    """`runtime` stops using the token; a release by anyone but the holder changes nothing."""
    state = normalise(state, now)
    if state.holder is None or state.holder.runtime_id != runtime:
        return state
    return replace(state, holder=None)


def lockout_remaining(state: ClaimState, now: int) -> int:
    """Seconds until the lockout ends as seen at `now` (0 when not locked)."""
    state = normalise(state, now)
    if state.locked_until is None:
        return 0
    return max(0, state.locked_until - now)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected an integer")
    return value


__all__ = [
    "LOCKOUT", "MAX_CHANGES", "WINDOW", "Claim", "ClaimResult", "ClaimState", "Outcome",
    "Standing", "claim", "lockout_remaining", "normalise", "release", "runtime_id", "standing",
]
