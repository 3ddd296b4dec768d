"""licentia: software licensing and protection.

The application SDK is here, loaded on first use so `import licentia` stays cheap:

    import licentia

    with licentia.access(firm_code=10001, product_code=7, firm_key="acme.pub") as lic:
        ...

`licentia.access`, `licentia.access_async`, `licentia.require`, `licentia.License`,
`licentia.Event`, and the errors `licentia.LicentiaError` / `licentia.ErrorCode`.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported: a protected program pays for every import at start
if TYPE_CHECKING:
    from typing import Any

    from licentia.model.errors import ErrorCode, LicentiaError
    from licentia.sdk import require
    from licentia.sdk.access import Event, License, LicenseInfo, access
    from licentia.sdk.aio import AsyncLicense, access_async

__all__ = ["AsyncLicense", "ErrorCode", "Event", "License", "LicenseInfo", "LicentiaError", "access",
           "access_async", "require"]

_LAZY = {
    "access": "licentia.sdk.access",
    "License": "licentia.sdk.access",
    "LicenseInfo": "licentia.sdk.access",
    "Event": "licentia.sdk.access",
    "access_async": "licentia.sdk.aio",
    "AsyncLicense": "licentia.sdk.aio",
    "require": "licentia.sdk",
    "LicentiaError": "licentia.model.errors",
    "ErrorCode": "licentia.model.errors",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'licentia' has no attribute {name!r}")
    value = getattr(__import__(module, fromlist=(name,)), name)  # the submodule itself, without importlib
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
