"""Central's REST API as its callers read it: the JSON of a success, or the LicentiaError
central raised (same code, message and hint). Shared by the command line's client and the
runtime's sync; neither the HTTP library nor the transport matters here."""

from __future__ import annotations

from typing import Any, Protocol

from licentia.model.errors import ErrorCode, LicentiaError


class Response(Protocol):
    """What is read of an HTTP response (an httpx.Response is one)."""

    @property
    def status_code(self) -> int: ...

    @property
    def is_success(self) -> bool: ...

    def json(self) -> Any: ...


def unreachable(url: str, exc: Exception, hint: str) -> LicentiaError:
    """The refusal for a call that got no answer at all."""
    return LicentiaError(ErrorCode.NETWORK_FAULT, f"central at {url} cannot be reached: {exc}", hint)


def read_reply(response: Response) -> Any:
    """The JSON body of a successful answer; otherwise raise what central said."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.is_success:
        return data
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), int):
        try:
            code = ErrorCode(error["code"])
        except ValueError:
            code = ErrorCode.CENTRAL_ERROR
        raise LicentiaError(code, str(error.get("message", "")), error.get("hint") or None)
    raise LicentiaError(ErrorCode.CENTRAL_ERROR, f"central answered HTTP {response.status_code}")
