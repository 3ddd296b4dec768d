"""States and modes: plain enumerations, cheap to import (a protected program loads them)."""

from __future__ import annotations

from enum import StrEnum


class ItemStatus(StrEnum):
    VALID = "valid"
    EXPIRED = "expired"
    NOT_YET_ACTIVE = "not yet active"
    USED_UP = "used up"
    DISABLED = "disabled"
    LOCKED = "locked"


class ContainerStatus(StrEnum):
    OK = "ok"
    INVALID = "invalid"  # tampered with, or not ours
    BROKEN = "broken"  # the machine binding no longer holds
    CLOCK_MANIPULATED = "clock manipulated"


class AccessMode(StrEnum):
    PER_ACCESS = "per-access"  # each handle takes a seat
    PER_STATION = "per-station"  # all handles of one station share a seat
    NONE = "none"  # no seat; the item must only be valid
    EXCLUSIVE = "exclusive"  # one handle per station
