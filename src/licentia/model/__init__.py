"""licentia's data model: identifiers, product items, states, machine descriptions, errors.

Plain frozen dataclasses and their encoding; imports nothing else of licentia.

Names are loaded on first use (PEP 562), so a protected program that needs only the
error codes does not pay for the dataclasses of items and machines at start.
"""

from __future__ import annotations

# Not `typing.TYPE_CHECKING`: importing typing alone costs a protected program ~20 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from licentia.model.errors import (
        ErrorCode as ErrorCode,
        LicentiaError as LicentiaError,
        hint_for as hint_for,
    )
    from licentia.model.ids import (
        DEFAULT_MASK as DEFAULT_MASK,
        MASKS as MASKS,
        ContainerKind as ContainerKind,
        ContainerSerial as ContainerSerial,
        firm_code as firm_code,
        kind_of_mask as kind_of_mask,
        product_code as product_code,
    )
    from licentia.model.item import (
        UNLIMITED as UNLIMITED,
        ItemRequest as ItemRequest,
        ItemState as ItemState,
        ProductItem as ProductItem,
        Verdict as Verdict,
        Version as Version,
        VersionRange as VersionRange,
        format_version as format_version,
        parse_version as parse_version,
    )
    from licentia.model.machine import (
        Environment as Environment,
        Fingerprint as Fingerprint,
        MachineKind as MachineKind,
        MachineProperty as MachineProperty,
        SessionKind as SessionKind,
        Tolerance as Tolerance,
    )
    from licentia.model.states import (
        AccessMode as AccessMode,
        ContainerStatus as ContainerStatus,
        ItemStatus as ItemStatus,
    )

_WHERE = {
    "ErrorCode": "errors", "LicentiaError": "errors", "hint_for": "errors",
    "DEFAULT_MASK": "ids", "MASKS": "ids", "ContainerKind": "ids", "ContainerSerial": "ids",
    "firm_code": "ids", "kind_of_mask": "ids", "product_code": "ids",
    "UNLIMITED": "item", "ItemRequest": "item", "ItemState": "item", "ProductItem": "item",
    "Verdict": "item", "Version": "item", "VersionRange": "item", "format_version": "item",
    "parse_version": "item",
    "Environment": "machine", "Fingerprint": "machine", "MachineKind": "machine",
    "MachineProperty": "machine", "SessionKind": "machine", "Tolerance": "machine",
    "AccessMode": "states", "ContainerStatus": "states", "ItemStatus": "states",
}

__all__ = [
    "DEFAULT_MASK",
    "MASKS",
    "UNLIMITED",
    "AccessMode",
    "ContainerKind",
    "ContainerSerial",
    "ContainerStatus",
    "Environment",
    "ErrorCode",
    "Fingerprint",
    "ItemRequest",
    "ItemState",
    "ItemStatus",
    "LicentiaError",
    "MachineKind",
    "MachineProperty",
    "ProductItem",
    "SessionKind",
    "Tolerance",
    "Verdict",
    "Version",
    "VersionRange",
    "firm_code",
    "format_version",
    "hint_for",
    "kind_of_mask",
    "parse_version",
    "product_code",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'licentia.model' has no attribute {name!r}")
    # __import__, not importlib: importlib loads warnings, ~2 ms of a program's start
    value = getattr(__import__(f"licentia.model.{module}", fromlist=(name,)), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
