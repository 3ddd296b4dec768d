"""Identifiers: firm code, product code, and the container serial `MASK-NUMBER`.

The mask byte says what kind of container a serial names, with the values the
documents use: 1-3 token, 128-130 soft, 131 TMR virtual, 140 cloud.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from licentia.model.errors import ErrorCode, LicentiaError

UINT32_MAX = 0xFFFF_FFFF


def firm_code(value: int) -> int:
    """Validate a firm code (uint32, not 0: firm code 0 is reserved)."""
    return _uint32(value, "firm code", allow_zero=False)


def product_code(value: int) -> int:
    """Validate a product code (uint32; 0 addresses the firm item)."""
    return _uint32(value, "product code", allow_zero=True)


def _uint32(value: int, what: str, *, allow_zero: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        got = repr(value)[:64] if isinstance(value, str | bytes | float | bool | None) else f"a {type(value).__name__}"
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"{what} must be an integer, got {got}")
    if not (0 if allow_zero else 1) <= value <= UINT32_MAX:
        low = 0 if allow_zero else 1
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER, f"{what} must be between {low} and {UINT32_MAX}, got {value}"
        )
    return value


class ContainerKind(StrEnum):
    TOKEN = "token"
    SOFT = "soft"
    TMR = "tmr"
    CLOUD = "cloud"


MASKS: dict[ContainerKind, tuple[int, ...]] = {
    ContainerKind.TOKEN: (1, 2, 3),
    ContainerKind.SOFT: (128, 129, 130),
    ContainerKind.TMR: (131,),
    ContainerKind.CLOUD: (140,),
}

# The mask a new container of each kind receives.
DEFAULT_MASK: dict[ContainerKind, int] = {
    ContainerKind.TOKEN: 3,
    ContainerKind.SOFT: 130,
    ContainerKind.TMR: 131,
    ContainerKind.CLOUD: 140,
}

_SERIAL_RE = re.compile(r"^(\d{1,3})-(\d{1,10})$")


def kind_of_mask(mask: int) -> ContainerKind:
    for kind, masks in MASKS.items():
        if mask in masks:
            return kind
    raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"mask byte {mask} names no container kind")


@dataclass(frozen=True, order=True)
class ContainerSerial:
    mask: int
    number: int

    def __post_init__(self) -> None:
        kind_of_mask(self.mask)
        if not 0 <= self.number <= UINT32_MAX:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"serial number {self.number} out of range")

    @property
    def kind(self) -> ContainerKind:
        return kind_of_mask(self.mask)

    def __str__(self) -> str:
        return f"{self.mask}-{self.number}"

    @classmethod
    def parse(cls, text: str) -> ContainerSerial:
        if not isinstance(text, str):  # decoded from a file or a request: anything may come
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER, f"a container serial must be text, not a {type(text).__name__}"
            )
        m = _SERIAL_RE.match(text.strip())
        if not m:
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER,
                f"{text!r} is not a container serial; expected MASK-NUMBER such as 130-12345678",
            )
        return cls(int(m.group(1)), int(m.group(2)))
