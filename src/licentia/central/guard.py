"""What central accepts before a handler sees a request: a bounded body and bounded JSON.

    BodyLimit(app, max_body=2 MiB)   ASGI middleware: a larger body is answered 413, unread
    parse_json(raw)                  JSON text to a value, or LicentiaError(INVALID_PARAMETER)

`parse_json` refuses what Python's `json` module accepts but nothing downstream can hold:
nesting deeper than `MAX_DEPTH`, a string with a lone surrogate (`"\\ud800"`: not Unicode,
no database or encoder takes it), an integer outside 64 bits, `NaN` and `Infinity`.
Every refusal is the typed error central answers with 422, never an internal error.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from licentia.model import ErrorCode, LicentiaError

MAX_BODY = 2 * 1024 * 1024
MAX_DEPTH = 32
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def _no_constant(name: str) -> Any:
    raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"the request body holds {name}, which is not a JSON number")


def parse_json(raw: bytes | str) -> Any:
    """The JSON value of `raw`, checked for depth, strings and numbers central can hold."""
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER, f"the request body nests deeper than {MAX_DEPTH} levels"
        ) from None
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError, too many digits, bad UTF-8
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "the request body is not JSON") from None
    check_value(value)
    return value


def check_value(value: Any) -> None:
    """Walk a parsed JSON value without recursion; raise for what central cannot hold."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > MAX_DEPTH:
                raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"the request body nests deeper than {MAX_DEPTH} levels")
            for key, inner in item.items():
                _check_text(key)
                stack.append((inner, depth + 1))
        elif isinstance(item, list):
            if depth > MAX_DEPTH:
                raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"the request body nests deeper than {MAX_DEPTH} levels")
            stack.extend((inner, depth + 1) for inner in item)
        elif isinstance(item, str):
            _check_text(item)
        elif isinstance(item, int) and not isinstance(item, bool) and not _INT_MIN <= item <= _INT_MAX:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "a number in the request body does not fit in 64 bits")


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER, "a string in the request body holds a lone surrogate (\\ud800-\\udfff); send Unicode text"
        ) from None


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Answer 413 to a request whose body is over `max_body` bytes, by its Content-Length or as
    it streams in; the handler never buffers more than that."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_body):
                await self._refuse(send)
                return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"error": {
            "code": int(ErrorCode.INVALID_PARAMETER), "name": "PAYLOAD_TOO_LARGE",
            "message": f"the request body is larger than {self.max_body} bytes",
            "hint": "send a smaller body"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
