"""Product items, their options, and their dynamic state.

A `ProductItem` is what the vendor signs: its options never change inside the
container. What does change while the license is used (remaining units, the start
of a usage period, user-writable text and data, a lock) lives in `ItemState`, kept
by the container beside the signed item.

Times are integer seconds since the Unix epoch, UTC. Durations are seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from licentia.model.errors import ErrorCode, LicentiaError
from licentia.model.ids import UINT32_MAX, product_code
from licentia.model.states import AccessMode, ContainerStatus, ItemStatus

__all__ = [
    "AccessMode", "ContainerStatus", "ItemRequest", "ItemState", "ItemStatus", "ProductItem",
    "Verdict", "Version", "VersionRange", "format_version", "parse_version",
]

Version = tuple[int, ...]

# Limits on data options (bytes), as in the documents' sizes.
TEXT_MAX = 256
DATA_MAX = 256
HIDDEN_MAX = 4096


def parse_version(text: str) -> Version:
    parts = text.strip().split(".")
    try:
        version = tuple(int(p) for p in parts)
    except ValueError:
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER, f"{text!r} is not a version; expected numbers like 2.1.0"
        ) from None
    if any(p < 0 for p in version) or not version:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"{text!r} is not a version")
    return version


def format_version(version: Version) -> str:
    return ".".join(str(p) for p in version)


@dataclass(frozen=True)
class VersionRange:
    """Permitted program versions, both ends inclusive, compared by prefix.

    `2.0-3` admits 2.0 through every 3.x; `2.0-` has no upper end; `-3` no lower end.
    """

    low: Version | None = None
    high: Version | None = None

    def admits(self, version: Version) -> bool:
        if self.low is not None and _pad(version, len(self.low)) < self.low:
            return False
        return not (self.high is not None and version[: len(self.high)] > self.high)

    def __str__(self) -> str:
        low = format_version(self.low) if self.low else ""
        high = format_version(self.high) if self.high else ""
        return f"{low}-{high}"

    @classmethod
    def parse(cls, text: str) -> VersionRange:
        m = re.fullmatch(r"\s*([0-9.]*)\s*-\s*([0-9.]*)\s*", text)
        if not m or not (m.group(1) or m.group(2)):
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER,
                f"{text!r} is not a version range; expected LOW-HIGH such as 2.0-3 (either end may be empty)",
            )
        low = parse_version(m.group(1)) if m.group(1) else None
        high = parse_version(m.group(2)) if m.group(2) else None
        if low is not None and high is not None and high < low[: len(high)]:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"version range {text!r} is empty")
        return cls(low, high)


def _pad(version: Version, length: int) -> Version:
    return version + (0,) * (length - len(version))


UNLIMITED = None  # quantity value meaning "no limit on concurrent use"


@dataclass(frozen=True)
class ProductItem:
    """One license: a product code and its options, as the vendor signed them."""

    product_code: int
    quantity: int | None = 1  # 0 = local only; None = unlimited
    feature_map: int = 0
    expires_at: int | None = None
    activates_at: int | None = None
    usage_period: int | None = None  # seconds from first use
    units: int | None = None  # initial unit counter
    maintenance_from: int | None = None
    maintenance_until: int | None = None
    versions: VersionRange | None = None
    text: str = ""
    user_data: bytes = b""
    protected_data: bytes = b""
    hidden_data: bytes = b""  # sealed: readable only with the vendor's hidden-data key
    tmr_id: int | None = None
    # a TMR license's three constituent containers, (serial, container public key) each, as the
    # vendor signed them: a program accepts a proof from any of them (docs/tmr.md, "Proofs")
    tmr_constituents: tuple[tuple[str, bytes], ...] = ()
    borrow_max: int = 0
    checkpoint_period: int | None = None  # seconds; must be renewed within it
    vm_allowed: bool = True
    disabled: bool = False

    def __post_init__(self) -> None:
        product_code(self.product_code)
        if self.quantity is not None and not 0 <= self.quantity <= UINT32_MAX:
            _bad("quantity must be 0 (local only), a positive count, or unlimited")
        if not 0 <= self.feature_map <= UINT32_MAX:
            _bad("feature map must fit in 32 bits")
        for name in ("expires_at", "activates_at", "maintenance_from", "maintenance_until"):
            value = getattr(self, name)
            if value is not None and value < 0:
                _bad(f"{name} must not be before 1970")
        for name in ("usage_period", "checkpoint_period"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                _bad(f"{name} must be a positive duration")
        if self.units is not None and not 0 <= self.units <= UINT32_MAX:
            _bad("unit counter must fit in 32 bits")
        if (
            self.expires_at is not None
            and self.activates_at is not None
            and self.expires_at <= self.activates_at
        ):
            _bad("expiration time must be after activation time")
        if len(self.text.encode()) > TEXT_MAX:
            _bad(f"text is longer than {TEXT_MAX} bytes")
        for name, limit in (("user_data", DATA_MAX), ("protected_data", DATA_MAX), ("hidden_data", HIDDEN_MAX)):
            if len(getattr(self, name)) > limit:
                _bad(f"{name} is longer than {limit} bytes")
        if self.borrow_max < 0:
            _bad("borrow maximum must not be negative")
        if self.tmr_constituents:
            _check_constituents(self.tmr_constituents, self.tmr_id)

    @property
    def local_only(self) -> bool:
        return self.quantity == 0

    @property
    def time_limited(self) -> bool:
        return (
            self.expires_at is not None
            or self.activates_at is not None
            or self.usage_period is not None
            or self.checkpoint_period is not None
        )

    # -- encoding (plain types only, for msgpack) --

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            out[f.name] = str(value) if isinstance(value, VersionRange) else value
        out["product_code"] = self.product_code
        return out

    @classmethod
    def from_dict(cls, data: Any) -> ProductItem:
        if not isinstance(data, dict):
            raise LicentiaError(ErrorCode.WRONG_CONTENT, "product item is not a mapping")
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise LicentiaError(ErrorCode.WRONG_CONTENT, f"unknown item option {key!r}")
            if key == "versions" and value is not None:
                if not isinstance(value, str):
                    raise LicentiaError(ErrorCode.WRONG_CONTENT, "versions must be text")
                value = VersionRange.parse(value)
            elif key == "tmr_constituents":
                value = _constituents(value)
            else:
                _check_type(key, value)
            kwargs[key] = value
        if "product_code" not in kwargs:
            raise LicentiaError(ErrorCode.WRONG_CONTENT, "product item lacks a product code")
        try:
            return cls(**kwargs)
        except LicentiaError as exc:
            raise LicentiaError(ErrorCode.WRONG_CONTENT, exc.message) from None


_INT_OPTIONAL = {
    "quantity", "expires_at", "activates_at", "usage_period", "units",
    "maintenance_from", "maintenance_until", "tmr_id", "checkpoint_period",
}
_TYPES: dict[str, type] = {
    "product_code": int, "feature_map": int, "borrow_max": int,
    "text": str, "user_data": bytes, "protected_data": bytes, "hidden_data": bytes,
    "vm_allowed": bool, "disabled": bool,
}


TMR_CONSTITUENTS = 3
_CONTAINER_KEY_SIZE = 32


def _constituents(value: Any) -> tuple[tuple[str, bytes], ...]:
    """The decoded `tmr_constituents` (lists from msgpack) as pairs; anything else is 215 (wrong content)."""
    if not isinstance(value, list | tuple) or not all(isinstance(p, list | tuple) and len(p) == 2 for p in value):
        raise LicentiaError(ErrorCode.WRONG_CONTENT, "item option 'tmr_constituents' has the wrong type")
    return tuple((p[0], p[1]) for p in value)


def _check_constituents(pairs: tuple[tuple[str, bytes], ...], tmr_id: int | None) -> None:
    if tmr_id is None:
        _bad("only a TMR item names constituent containers")
    for serial, key in pairs:
        if not isinstance(serial, str) or not isinstance(key, bytes) or len(key) != _CONTAINER_KEY_SIZE:
            _bad("a TMR constituent is a container serial and its 32-byte public key")
    if len(pairs) != TMR_CONSTITUENTS or len({serial for serial, _ in pairs}) != TMR_CONSTITUENTS:
        _bad("a TMR item names three different constituent containers")


def _check_type(key: str, value: Any) -> None:
    if key in _INT_OPTIONAL:
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
    else:
        expected = _TYPES[key]
        ok = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
    if not ok:
        raise LicentiaError(ErrorCode.WRONG_CONTENT, f"item option {key!r} has the wrong type")


def _bad(message: str) -> None:
    raise LicentiaError(ErrorCode.INVALID_LICENSE_PARAMETER, message)


@dataclass(frozen=True)
class ItemState:
    """What changes while an item is used; held by the container, persisted atomically."""

    units_remaining: int | None = None
    usage_started_at: int | None = None
    text: str | None = None  # user's override of the vendor's text
    user_data: bytes | None = None  # user's override of the vendor's user data
    locked: bool = False  # blacklisted by the vendor
    checkpoint_at: int | None = None  # last renewal of a checkpoint item

    @classmethod
    def initial(cls, item: ProductItem, now: int) -> ItemState:
        return cls(units_remaining=item.units, checkpoint_at=now if item.checkpoint_period else None)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Any) -> ItemState:
        if not isinstance(data, dict):
            raise LicentiaError(ErrorCode.WRONG_CONTENT, "item state is not a mapping")
        names = {f.name for f in fields(cls)}
        if set(data) - names:
            raise LicentiaError(ErrorCode.WRONG_CONTENT, "unknown item state field")
        return cls(**data)

    def with_(self, **changes: Any) -> ItemState:
        return replace(self, **changes)


@dataclass(frozen=True)
class Verdict:
    """The answer to "may this item be used now": a status, and the refusal if not valid."""

    status: ItemStatus
    error: ErrorCode | None = None
    reason: str = ""
    valid_until: int | None = None  # earliest of expiry, usage-period end, checkpoint

    @property
    def ok(self) -> bool:
        return self.error is None

    def raise_if_refused(self) -> None:
        if self.error is not None:
            raise LicentiaError(self.error, self.reason)


@dataclass(frozen=True)
class ItemRequest:
    """What a program asks of an item."""

    feature_code: int = 0
    version: Version | None = None
    release_date: int | None = None  # of the program, checked against the maintenance period
    in_vm: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
