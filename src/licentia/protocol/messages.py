"""The message catalogue: operation names, their fields, and a check for requests.

Data only; the runtime decides what each request does. Every request is a map with
"id" (int, 1 and up, unique among the connection's requests in flight) and "op";
every reply carries the request's "id" and "ok" (bool); a refusal adds "code",
"message" and optionally "hint". Fields not listed here are ignored by the receiver,
so a newer peer may add fields without a new protocol version. docs/protocol.md
shows each message with an example.
"""

from __future__ import annotations

from licentia.model import ErrorCode
from licentia.protocol.frames import Message, ProtocolError

# A protected program imports this at start: typing only for the type checker.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Final

PROTOCOL_VERSION: Final = 1  # message-set version, agreed in hello
SUPPORTED_VERSIONS: Final = (1,)
DEFAULT_PORT: Final = 22350

# operations
HELLO: Final = "hello"
ACCESS: Final = "access"
RELEASE: Final = "release"
DECREMENT: Final = "decrement"
CHECK: Final = "check"
KEEPALIVE: Final = "keepalive"
SESSIONS: Final = "sessions"
INFO: Final = "info"
TMR_ITEMS: Final = "tmr.items"  # a TMR upstream's constituents, to its front ends
TMR_PROVE: Final = "tmr.prove"  # a TMR upstream's constituent proves a front end's grant
ADMIN_RELEASE: Final = "admin.release"
EVENTS: Final = "events"
RESCAN: Final = "rescan"
BORROW: Final = "borrow"
BORROW_IMPORT: Final = "borrow.import"
BORROW_RETURN: Final = "borrow.return"
BORROW_LIST: Final = "borrow.list"
BORROW_TAKE: Final = "borrow.take"
BORROW_GIVE_BACK: Final = "borrow.give-back"

# where an access looks for the license
LOCAL: Final = "local"
NETWORK: Final = "network"
LOCAL_FIRST: Final = "local-first"
NETWORK_FIRST: Final = "network-first"
WHERE: Final = (LOCAL, NETWORK, LOCAL_FIRST, NETWORK_FIRST)

# what a hello says it is
CLIENT_KINDS: Final = ("program", "runtime", "admin")

# session kinds, as licentia.model.SessionKind values
SESSION_KINDS: Final = ("local console", "remote desktop", "terminal server session")

# licentia.model.AccessMode's values, spelled out: the enum's module is not loaded at a
# protected program's start for this (tests/protocol checks that they agree)
MODES: Final = ("per-access", "per-station", "none", "exclusive")

# ---------------------------------------------------------------- field specs
#
# A spec maps a field name to (required, check). `check` is a type, a tuple of
# types, a nested spec (a map), a tuple of allowed values wrapped in `OneOf`, or
# `ListOf(check)`. Integers never accept bools.


class OneOf:
    __slots__ = ("values",)

    def __init__(self, *values: object) -> None:
        self.values = frozenset(values)


class ListOf:
    __slots__ = ("item",)

    def __init__(self, item: Any) -> None:
        self.item = item


Spec = dict[str, tuple[bool, "Any"]]

STATION: Spec = {
    "host_id": (True, str),
    "vm_id": (False, str),
    "session_id": (False, str),
}

CLIENT: Spec = {
    "kind": (False, OneOf(*CLIENT_KINDS)),
    "pid": (False, int),
    "pid_start": (False, (int, float)),
    "program": (False, str),
    "program_version": (False, str),
    "user": (False, str),
    "host": (False, str),
    "station": (False, STATION),
    "session": (False, OneOf(*SESSION_KINDS)),
    "in_vm": (False, bool),
    # an identity the server issued on an earlier connection, proved by its secret
    "resume": (False, {"client_id": (True, str), "secret": (True, bytes)}),
    "token": (False, str),  # the runtime's admin or reader token (network administration)
}

REQUESTS: dict[str, Spec] = {
    HELLO: {
        "versions": (True, ListOf(int)),
        "client": (True, CLIENT),
    },
    ACCESS: {
        "firm": (True, int),
        "product": (True, int),
        "mode": (False, OneOf(*MODES)),
        "feature": (False, int),
        "version": (False, str),
        "release_date": (False, int),
        "nonce": (False, bytes),
        "kx": (False, bytes),
        "keyed": (False, ListOf(str)),
        "where": (False, OneOf(*WHERE)),
        "container": (False, str),
        "server": (False, str),
    },
    RELEASE: {"handle": (True, int)},
    DECREMENT: {"handle": (True, int), "units": (True, int), "nonce": (False, bytes), "kx": (False, bytes),
                "keyed": (False, ListOf(str))},
    CHECK: {"handle": (True, int), "nonce": (False, bytes), "kx": (False, bytes), "keyed": (False, ListOf(str))},
    KEEPALIVE: {"handles": (False, ListOf(int)), "others": (False, bool)},
    SESSIONS: {"firm": (False, int), "product": (False, int), "container": (False, str)},
    INFO: {"what": (True, OneOf("server", "containers", "items")), "firm": (False, int)},
    ADMIN_RELEASE: {"handle": (True, int)},
    EVENTS: {"since": (False, int), "limit": (False, int)},
    RESCAN: {},
    # borrowing (docs/protocol.md, "Borrowing"): asked of the borrowing machine's runtime ...
    BORROW: {"firm": (True, int), "product": (True, int), "seconds": (True, int), "server": (False, str),
             "container": (False, str), "offline": (False, bool)},
    BORROW_IMPORT: {"certificate": (True, bytes)},
    BORROW_RETURN: {"borrow": (True, str), "offline": (False, bool)},
    BORROW_LIST: {},
    # ... and of the lending server
    BORROW_TAKE: {"request": (True, bytes)},
    BORROW_GIVE_BACK: {"receipt": (True, bytes)},
    TMR_ITEMS: {},
    TMR_PROVE: {"firm": (True, int), "tmr_id": (True, int), "nonce": (True, bytes), "handle": (True, int),
                "units": (False, int), "valid_until": (False, int)},
}

# What a successful reply carries, for the docs and for peers that check (not enforced).
REPLIES: dict[str, tuple[str, ...]] = {
    HELLO: ("version", "server", "client_id", "secret", "resumed", "role", "watch", "keepalive"),
    ACCESS: ("handle", "container", "location", "mode", "valid_until", "units", "proof", "kx", "mac"),
    RELEASE: (),
    DECREMENT: ("units", "valid_until", "proof", "kx", "mac"),
    CHECK: ("valid", "valid_until", "units", "proof", "kx", "mac"),
    KEEPALIVE: ("interval", "others"),
    SESSIONS: ("sessions",),
    INFO: ("server", "containers", "items"),
    ADMIN_RELEASE: (),
    EVENTS: ("events", "next"),
    RESCAN: ("added", "removed", "changed"),
    BORROW: ("borrow", "container", "item", "firm", "product", "until", "server", "request"),
    BORROW_IMPORT: ("borrow", "container", "item", "firm", "product", "until", "server"),
    BORROW_RETURN: ("borrow", "confirmed", "receipt", "already", "why"),
    BORROW_LIST: ("held", "lent", "unconfirmed_returns"),
    BORROW_TAKE: ("certificate", "borrow", "until"),
    BORROW_GIVE_BACK: ("freed", "state"),
    TMR_ITEMS: ("items", "at"),
    TMR_PROVE: ("license", "container", "item", "container_key", "proof"),
}


def request(request_id: int, op: str, /, **fields: Any) -> Message:
    """A request map (no check: the receiver checks)."""
    msg: Message = {"id": request_id, "op": op}
    msg.update(fields)
    return msg


def reply(request_id: int, /, **fields: Any) -> Message:
    """A successful reply map."""
    msg: Message = {"id": request_id, "ok": True}
    msg.update(fields)
    return msg


def validate_request(msg: Mapping[str, Any]) -> str:
    """Check a decoded request against the catalogue; return its op.

    Raises `ProtocolError` (not fatal) carrying the request id: code 1008 for an
    unknown op, 105 INVALID_PARAMETER for a missing or mistyped field."""
    rid = msg.get("id")
    if type(rid) is not int or rid < 1:
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "request id must be an integer of 1 or more")
    op = msg.get("op")
    spec = REQUESTS.get(op) if type(op) is str else None
    if spec is None:  # name the op without repr of a client's value (it may nest 1,000 deep)
        named = repr(op[:64]) if type(op) is str else f"of type {type(op).__name__}"
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"unknown operation {named}", request_id=rid)
    problem = _check_map(msg, spec, "")
    if problem:
        raise ProtocolError(ErrorCode.INVALID_PARAMETER, f"{op}: {problem}", request_id=rid)
    return op  # type: ignore[return-value]


def _check_map(msg: Mapping[str, Any], spec: Spec, prefix: str) -> str:
    for name, (required, check) in spec.items():
        if name not in msg:
            if required:
                return f"field {prefix}{name!s} is missing"
            continue
        problem = _check_value(msg[name], check, f"{prefix}{name}")
        if problem:
            return problem
    return ""


def _check_value(value: Any, check: Any, where: str) -> str:
    if isinstance(check, dict):
        if type(value) is not dict:
            return f"field {where} must be a map"
        return _check_map(value, check, where + ".")
    if isinstance(check, OneOf):
        if isinstance(value, bool) or not isinstance(value, str | int) or value not in check.values:
            allowed = ", ".join(sorted(str(v) for v in check.values))
            return f"field {where} must be one of {allowed}"
        return ""
    if isinstance(check, ListOf):
        if type(value) is not list:
            return f"field {where} must be a list"
        if type(check.item) is type and set(map(type, value)) <= {check.item}:
            return ""  # the usual list (a keep-alive's handles): items of exactly the type
        for i, item in enumerate(value):
            problem = _check_value(item, check.item, f"{where}[{i}]")
            if problem:
                return problem
        return ""
    types = check if isinstance(check, tuple) else (check,)
    if isinstance(value, bool) and bool not in types:
        return f"field {where} must be {_names(types)}"
    if not isinstance(value, types):
        return f"field {where} must be {_names(types)}"
    return ""


def _names(types: tuple[type, ...]) -> str:
    words = {int: "an integer", float: "a number", str: "text", bytes: "bytes", bool: "true or false"}
    return " or ".join(words.get(t, t.__name__) for t in types)
