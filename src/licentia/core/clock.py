"""The container's virtual clock: a high-water mark of the latest time it has seen.

Every time a container is used, the shell passes the system time here. Time only moves
forward: a system clock earlier than the mark by more than `CLOCK_SKEW` seconds is clock
manipulation, and the container stays manipulated (time-limited items fail closed) until
a signed time from the vendor's side heals it. A signed time also corrects a mark that a
clock set far into the future once pushed ahead.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from licentia.model import ErrorCode, LicentiaError

# A system clock may be this much behind the mark without counting as set back:
# NTP corrections, a VM resumed on a host whose clock is a little behind.
CLOCK_SKEW = 600
# A signed time heals the clock only when the system clock agrees with it this closely.
SIGNED_TIME_TOLERANCE = 86_400
# The mark moves in steps of at least this much, so a busy container is not rewritten on
# every access only to record a few seconds; the lag stays far inside CLOCK_SKEW.
CLOCK_STEP = 60


@dataclass(frozen=True)
class VirtualClock:
    high_water: int = 0
    manipulated: bool = False
    manipulated_at: int | None = None  # the system time when it was detected
    signed_at: int | None = None  # the latest signed time received

    def observe(self, now: int) -> VirtualClock:
        """The clock after the system showed `now`."""
        if now + CLOCK_SKEW < self.high_water:
            if self.manipulated:
                return self
            return replace(self, manipulated=True, manipulated_at=now)
        if now >= self.high_water + CLOCK_STEP or (self.high_water == 0 and now > 0):
            return replace(self, high_water=now)
        return self

    def heal(self, signed_time: int, now: int) -> VirtualClock:
        """Apply a verified signed time from the vendor's side.

        It raises the mark to the signed time, and clears manipulation when the system
        clock now agrees with the signed time (within a day). A signed time older than
        one already received is ignored: replaying an old update must not turn time back.
        """
        if self.signed_at is not None and signed_time < self.signed_at:
            return self
        agrees = abs(now - signed_time) <= SIGNED_TIME_TOLERANCE
        if agrees:
            # Trust the vendor's time over a mark that a future-dated clock pushed ahead.
            return VirtualClock(
                high_water=max(signed_time, now), manipulated=False, signed_at=signed_time
            )
        return replace(self, high_water=max(self.high_water, signed_time), signed_at=signed_time)

    @property
    def effective_now(self) -> int:
        """The time licenses are judged by: never earlier than the mark."""
        return self.high_water

    def check(self) -> None:
        if self.manipulated:
            raise LicentiaError(
                ErrorCode.CLOCK_MANIPULATED,
                "the system clock was set back before the latest time this container has seen",
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "high_water": self.high_water,
            "manipulated": self.manipulated,
            "manipulated_at": self.manipulated_at,
            "signed_at": self.signed_at,
        }

    @classmethod
    def from_dict(cls, data: Any) -> VirtualClock:
        if not isinstance(data, dict):
            raise LicentiaError(ErrorCode.WRONG_CONTENT, "virtual clock is not a mapping")
        return cls(
            high_water=int(data["high_water"]),
            manipulated=bool(data["manipulated"]),
            manipulated_at=data.get("manipulated_at"),
            signed_at=data.get("signed_at"),
        )
