"""The request router: one table from operation to handler. A request is validated once,
here (the frequent ones by an inline check of their fields' exact types, anything
unusual by `licentia.protocol.messages.validate_request`, which says what is wrong);
its handler's answer, a reply or one to wait for, goes back on its connection."""

from __future__ import annotations

import asyncio
import reprlib
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from licentia.model import AccessMode, ErrorCode, LicentiaError
from licentia.protocol.frames import CONNECTION_ID, Message, error_reply
from licentia.protocol.messages import validate_request
from licentia.runtime.config import RuntimeConfig
from licentia.runtime.ident import Ident
from licentia.runtime.limits import MAX_DEPTH, too_deep


class Conn(Protocol):
    """A connection as the router sees it."""

    ident: Ident | None

    def send(self, reply: Message | bytes) -> None: ...

    def open(self) -> bool: ...


Handler = Callable[[Any, Message], "Message | bytes | Awaitable[Message | bytes]"]


class Router:
    def __init__(self, handlers: dict[str, Handler], note_problem: Callable[[str], None],
                 spawn: Callable[[Awaitable[Any]], None], config: RuntimeConfig) -> None:
        self.handlers = handlers
        self.max_keepalive_handles = config.max_keepalive_handles
        self._note_problem = note_problem
        self._spawn = spawn

    def dispatch(self, conn: Conn, msg: Message) -> None:
        rid = msg.get("id", CONNECTION_ID)
        try:
            raw_op: Any = msg.get("op")
            op: str = raw_op if _fast(raw_op, msg) else self._validate(msg)
            if conn.ident is None and op != "hello":
                raise LicentiaError(ErrorCode.PROTOCOL_ERROR, "say hello first: the first request names the client")
            result = self.handlers[op](conn, msg)
        except LicentiaError as exc:
            conn.send(error_reply(rid, exc.code, exc.message, exc.hint))
            return
        except Exception as exc:  # a bug, not a refusal: say so, keep serving
            conn.send(error_reply(rid, ErrorCode.INTERNAL, f"the runtime failed on this request: {exc!r}"))
            self._note_problem(f"request {_short(msg.get('op'))}: {exc!r}")
            return
        if type(result) is bytes or isinstance(result, dict):
            conn.send(result)
        elif isinstance(result, asyncio.Future):  # no task needed: answer when it is done
            result.add_done_callback(lambda fut: self._answer(conn, rid, fut))
        else:
            self._spawn(self._finish(conn, rid, result))  # type: ignore[arg-type]

    def _validate(self, msg: Message) -> str:
        """`validate_request`, after the bounds of a request's shape and size."""
        if too_deep(msg):
            raise LicentiaError(ErrorCode.INVALID_PARAMETER,
                                f"the request nests maps and lists deeper than {MAX_DEPTH} levels")
        if not _text_keys(msg):
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "the request's field names must be text")
        op = validate_request(msg)
        if op == "keepalive" and len(msg.get("handles", ())) > self.max_keepalive_handles:
            raise LicentiaError(ErrorCode.TOO_MANY_HANDLES,
                                f"a keep-alive may name at most {self.max_keepalive_handles} handles")
        return op

    def _answer(self, conn: Conn, rid: int, fut: asyncio.Future[Message | bytes]) -> None:
        """`_finish` for a future: send its reply, or its error."""
        if fut.cancelled():
            return
        exc = fut.exception()
        reply: Message | bytes
        if exc is None:
            reply = fut.result()
        elif isinstance(exc, LicentiaError):
            reply = error_reply(rid, exc.code, exc.message, exc.hint)
        else:
            reply = error_reply(rid, ErrorCode.INTERNAL, f"the runtime failed on this request: {exc!r}")
            self._note_problem(f"request {rid}: {exc!r}")
        if conn.open():
            conn.send(reply)

    async def _finish(self, conn: Conn, rid: int, pending: Awaitable[Message | bytes]) -> None:
        reply: Message | bytes
        try:
            reply = await pending
        except LicentiaError as exc:
            reply = error_reply(rid, exc.code, exc.message, exc.hint)
        except Exception as exc:
            reply = error_reply(rid, ErrorCode.INTERNAL, f"the runtime failed on this request: {exc!r}")
            self._note_problem(f"request {rid}: {exc!r}")
        if conn.open():
            conn.send(reply)


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother = 3, 60, 60
_short = _repr.repr  # a value for the log, bounded

# ====================================================================== inline checks

_MODES: Final = frozenset(m.value for m in AccessMode)

# field -> the exact types allowed (bool is not int here); a request that does not fit
# goes through `validate_request` for its error
_ACCESS_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "id": (int,), "op": (str,), "firm": (int,), "product": (int,), "mode": (str,), "feature": (int,),
    "version": (str,), "release_date": (int,), "nonce": (bytes,), "where": (str,), "container": (str,),
    "server": (str,), "client": (dict,), "kx": (bytes,), "keyed": (list,),
}
_HANDLE_TYPES: Final[dict[str, tuple[type, ...]]] = {"id": (int,), "op": (str,), "handle": (int,), "nonce": (bytes,),
                                              "kx": (bytes,), "keyed": (list,)}
_WHERE: Final = frozenset(("local", "network", "local-first", "network-first"))


def _fast_access(msg: Message) -> bool:
    rid = msg["id"]
    if type(rid) is not int or rid < 1 or type(msg.get("firm")) is not int or type(msg.get("product")) is not int:
        return False
    n = len(msg)
    if n == 4:
        return True
    if n == 5:
        mode = msg.get("mode")
        if type(mode) is str:
            return mode in _MODES
    elif n == 7 or n == 8:  # the SDK's challenge: its mode, nonce, exchange key (and the serials keyed)
        mode = msg.get("mode")
        if type(mode) is str and type(msg.get("nonce")) is bytes and type(msg.get("kx")) is bytes \
                and mode in _MODES:
            if n == 7:
                return True
            keyed = msg.get("keyed")
            if type(keyed) is list and all(type(s) is str for s in keyed):
                return True
    return _fits(msg, _ACCESS_TYPES, ("firm", "product"))


def _fast_decrement(msg: Message) -> bool:
    rid = msg["id"]
    return len(msg) == 4 and type(rid) is int and rid >= 1 and type(msg.get("handle")) is int \
        and type(msg.get("units")) is int


def _fast_handle(msg: Message) -> bool:
    rid = msg["id"]
    if type(rid) is not int or rid < 1 or type(msg.get("handle")) is not int:
        return False
    return len(msg) == 3 or _fits(msg, _HANDLE_TYPES, ("handle",))


def _fast(op: Any, msg: Message) -> bool:
    """Whether `msg` is one of the frequent requests in the exact shape the inline checks
    accept (direct calls: this runs for every request)."""
    if op == "access":
        return _fast_access(msg)
    if op == "release" or op == "check":
        return _fast_handle(msg)
    if op == "decrement":
        return _fast_decrement(msg)
    return False


def _text_keys(msg: dict[Any, Any]) -> bool:
    """Whether every field name is text (typed Any: the compiled router checks, not raises)."""
    return all(type(k) is str for k in msg)


def _fits(msg: dict[Any, Any], types: dict[str, tuple[type, ...]], required: tuple[str, ...]) -> bool:
    for name, value in msg.items():
        if type(name) is not str:
            return False  # `_validate` says what is wrong
        allowed = types.get(name)
        if allowed is not None and type(value) not in allowed:
            return False
        if (type(value) is dict or type(value) is list) and too_deep(value, MAX_DEPTH - 1):
            return False  # `_validate` says what is wrong
        if name == "keyed" and not all(type(s) is str for s in value):
            return False  # serials are text
    for name in required:
        if name not in msg:
            return False
    if msg["id"] < 1:
        return False
    mode = msg.get("mode")
    if mode is not None and mode not in _MODES:
        return False
    where = msg.get("where")
    return where is None or where in _WHERE
