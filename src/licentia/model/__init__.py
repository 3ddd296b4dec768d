"""licentia's data model: identifiers, product items, states, machine descriptions, errors.

Plain frozen dataclasses and their encoding; imports nothing else of licentia.
"""

from licentia.model.errors import ErrorCode, LicentiaError, hint_for
from licentia.model.ids import (
    DEFAULT_MASK,
    MASKS,
    ContainerKind,
    ContainerSerial,
    firm_code,
    kind_of_mask,
    product_code,
)
from licentia.model.item import (
    UNLIMITED,
    AccessMode,
    ContainerStatus,
    ItemRequest,
    ItemState,
    ItemStatus,
    ProductItem,
    Verdict,
    Version,
    VersionRange,
    format_version,
    parse_version,
)
from licentia.model.machine import (
    Environment,
    Fingerprint,
    MachineKind,
    MachineProperty,
    SessionKind,
    Tolerance,
)

__all__ = [
    "DEFAULT_MASK", "MASKS", "UNLIMITED", "AccessMode", "ContainerKind", "ContainerSerial",
    "ContainerStatus", "Environment", "ErrorCode", "Fingerprint", "ItemRequest", "ItemState",
    "ItemStatus", "LicentiaError", "MachineKind", "MachineProperty", "ProductItem",
    "SessionKind", "Tolerance", "Verdict", "Version", "VersionRange", "firm_code",
    "format_version", "hint_for", "kind_of_mask", "parse_version", "product_code",
]
