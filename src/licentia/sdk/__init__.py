"""The application SDK: what a protected program calls.

    import licentia

    with licentia.access(firm_code=10001, product_code=7, firm_key="acme.pub") as lic:
        ...

    @licentia.require(firm_code=10001, product_code=7, firm_key="acme.pub")
    def export_report(...): ...

    async with licentia.access_async(firm_code=10001, product_code=7, firm_key=KEY) as lic:
        ...

Cheap to import: the network client, msgpack and the model load on the first access,
`cryptography` only when an answer is verified. docs/sdk.md has the details.
"""

from __future__ import annotations

TYPE_CHECKING = False  # nothing heavy at import: see licentia/__init__.py
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    from licentia.sdk.access import Event, License, LicenseInfo, access
    from licentia.sdk.aio import AsyncLicense, access_async

    F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["AsyncLicense", "Event", "License", "LicenseInfo", "access", "access_async", "require"]

_LAZY = {
    "access": "licentia.sdk.access",
    "License": "licentia.sdk.access",
    "LicenseInfo": "licentia.sdk.access",
    "Event": "licentia.sdk.access",
    "access_async": "licentia.sdk.aio",
    "AsyncLicense": "licentia.sdk.aio",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(__import__(module, fromlist=(name,)), name)


def require(firm_code: int, product_code: int, **options: Any) -> Callable[[F], F]:
    """Run the decorated function (sync or async) only while holding the license.

    The license is taken on each call and released when the call returns; the refusal
    (a `LicentiaError` with its code) propagates to the caller. The keyword options are
    those of `licentia.access()`. A function that wants its license declares a `license`
    parameter and receives it."""

    import functools  # loaded already (enum needs it)

    def decorate(fn: F) -> F:
        wants, is_async = _shape(fn)
        if is_async:

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                from licentia.sdk.aio import access_async

                async with access_async(firm_code, product_code, **options) as lic:
                    if wants:
                        kwargs["license"] = lic
                    return await fn(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from licentia.sdk.access import access

            with access(firm_code, product_code, **options) as lic:
                if wants:
                    kwargs["license"] = lic
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE


def _shape(fn: Callable[..., Any]) -> tuple[bool, bool]:
    """(takes a `license` parameter, is an `async def`): read from a plain function's code
    object; anything else (a partial, a wrapped or callable object) asks `inspect`."""
    code = getattr(fn, "__code__", None)
    if code is not None and not hasattr(fn, "__wrapped__") and type(fn).__name__ == "function":
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        return "license" in names, bool(code.co_flags & _CO_COROUTINE)
    import inspect

    return "license" in inspect.signature(fn).parameters, inspect.iscoroutinefunction(fn)
