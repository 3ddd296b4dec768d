"""`licentia.access()`: take a license for the time a block of code runs (blocking API).

    import licentia

    with licentia.access(firm_code=10001, product_code=7, firm_key="acme.pub") as lic:
        print(lic.info.units, lic.info.valid_until)
        lic.decrement(1)

`firm_key` is the firm's public key (the file `licentia vendor export-public` writes,
its hex, or its 32 bytes). With it, every answer is verified: the license must carry the
firm's signature and the container the license names must prove this program's fresh
challenge (its signature, or a MAC under a key that container signed for this
connection), so a faked runtime cannot fake a license. Without a key, pass
`verify=False` (trying licenses by hand; never in a product).
"""

from __future__ import annotations

import os
import threading
from enum import StrEnum  # loaded already: the error codes are an IntEnum

from licentia.model.errors import ErrorCode, LicentiaError
from licentia.protocol.client import Client
from licentia.sdk.connect import Target, hello_client, issued_identity, targets, tls_context
from licentia.sdk.proof import NONCE_SIZE
from licentia.sdk.verify import (
    ProofKeys,
    load_firm_key,
    read_unverified,
    verify_grant,
    verify_proof,
)

# A protected program pays for every import at start: no typing, dataclasses or contextlib
# at run time; annotations are strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    from licentia.model import ProductItem
    from licentia.sdk.blacklist import ShippedBlacklist
    from licentia.sdk.verify import FirmKey, Verified

    EventCallback = Callable[["License | Any", "Event", str], None]
    T = TypeVar("T")

MODES = ("per-access", "per-station", "none", "exclusive")
WHERE = ("local", "network", "local-first", "network-first")
# the runtime went away, or closed the connection for silence (1402): connect again, once
_RECONNECT = frozenset({ErrorCode.NETWORK_FAULT, ErrorCode.NO_LOCAL_RUNTIME, ErrorCode.CONNECTION_TIMEOUT})
_UNREACHABLE = (ErrorCode.NETWORK_FAULT, ErrorCode.NO_LOCAL_RUNTIME, ErrorCode.SERVER_NOT_FOUND)


class Event(StrEnum):
    """What can happen to a license while a program holds it."""

    LICENSE_GONE = "license-gone"  # freed by an administrator, a timeout, or the server
    SERVER_LOST = "server-lost"  # the runtime or the network server does not answer
    CONTAINER_REMOVED = "container-removed"  # the container holding the license went away
    ITEM_CHANGED = "item-changed"  # the license was updated (options, units, lock)


_INFO_FIELDS = ("firm_code", "product_code", "handle", "container", "item_id", "mode", "location", "server",
                "options", "units", "valid_until", "verified")


class LicenseInfo:
    """What a program may know about its license (read-only)."""

    __slots__ = (*_INFO_FIELDS, "_item")

    firm_code: int
    product_code: int
    handle: int
    container: str
    item_id: int
    mode: str
    location: str  # "local" or "network"
    server: str
    options: dict[str, Any]  # item options, as the vendor signed them
    units: int | None  # units remaining on the unit counter
    valid_until: int | None  # earliest of expiry, usage-period end, checkpoint
    verified: bool
    _item: ProductItem | None

    def __init__(self, firm_code: int, product_code: int, handle: int, container: str, item_id: int, mode: str,
                 location: str, server: str, options: dict[str, Any] | None = None, units: int | None = None,
                 valid_until: int | None = None, verified: bool = False) -> None:
        setter = object.__setattr__
        setter(self, "firm_code", firm_code)
        setter(self, "product_code", product_code)
        setter(self, "handle", handle)
        setter(self, "container", container)
        setter(self, "item_id", item_id)
        setter(self, "mode", mode)
        setter(self, "location", location)
        setter(self, "server", server)
        setter(self, "options", {} if options is None else options)
        setter(self, "units", units)
        setter(self, "valid_until", valid_until)
        setter(self, "verified", verified)
        setter(self, "_item", None)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"LicenseInfo is read-only (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"LicenseInfo is read-only (cannot delete {name!r})")

    def replace(self, **changes: Any) -> LicenseInfo:
        """A copy with some fields changed."""
        values = {name: getattr(self, name) for name in _INFO_FIELDS}
        values.update(changes)
        return LicenseInfo(**values)

    def __eq__(self, other: object) -> bool:
        if type(other) is not LicenseInfo:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in _INFO_FIELDS)

    __hash__ = None  # type: ignore[assignment]  # options is a dict

    def __repr__(self) -> str:
        return "LicenseInfo(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in _INFO_FIELDS) + ")"

    @property
    def item(self) -> ProductItem:
        """The options as a `licentia.model.ProductItem` (built on first use)."""
        item = self._item
        if item is None:
            from licentia.model.item import ProductItem

            item = ProductItem.from_dict(dict(self.options))
            object.__setattr__(self, "_item", item)
        return item

    @property
    def expires_at(self) -> int | None:
        value = self.options.get("expires_at")
        return value if isinstance(value, int) else None

    @property
    def feature_map(self) -> int:
        value = self.options.get("feature_map", 0)
        return value if isinstance(value, int) else 0

    @property
    def text(self) -> str:
        value = self.options.get("text", "")
        return value if isinstance(value, str) else ""

    @property
    def quantity(self) -> int | None:
        value = self.options.get("quantity", 1)
        return value if isinstance(value, int) else None


def check_args(firm_code: int, product_code: int, mode: str, where: str | None) -> None:
    for name, value in (("firm_code", firm_code), ("product_code", product_code)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"{name} must be an integer from 0 to 4294967295")
    if mode not in MODES:
        raise LicentiaError(ErrorCode.WRONG_ACCESS_MODE, f"mode {mode!r} is unknown; use {', '.join(MODES)}")
    if where is not None and where not in WHERE:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"where {where!r} is unknown; use {', '.join(WHERE)}")


def firm_key_for(verify: bool, firm_key: FirmKey | None, firm_code: int) -> bytes | None:
    """The firm key the answers are checked with; None when verification is waived."""
    if not verify:
        return None
    if firm_key is None:
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER,
            "no firm public key to verify the license with",
            "pass firm_key= (the file from `licentia vendor export-public`), or verify=False to try without",
        )
    return load_firm_key(firm_key, firm_code)


def blacklisted(shipped: ShippedBlacklist, delay_days: int, key: bytes | None, firm_key: FirmKey | None,
                firm_code: int, verified: Verified | None, reply: dict[str, Any]) -> None:
    """Refuse (1213) a license held in a container of the firm's shipped blacklist."""
    from licentia.sdk.blacklist import refuse_if_listed

    if key is None:
        if firm_key is None:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "a blacklist is checked with the firm key",
                                "pass firm_key= with blacklist=")
        key = load_firm_key(firm_key, firm_code)
    serial = verified.serial if verified is not None else str(reply.get("container", ""))
    refuse_if_listed(shipped, key, firm_code, serial, delay_days)


def access_fields(product_code: int, firm_code: int, mode: str, feature: int, version: str | None,
                  release_date: int | None, where: str | None, container: str | None, nonce: bytes | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"firm": firm_code, "product": product_code, "mode": mode}
    if feature:
        fields["feature"] = feature
    if version:
        fields["version"] = version
    if release_date is not None:
        fields["release_date"] = release_date
    if where:
        fields["where"] = where
    if container:
        fields["container"] = container
    if nonce is not None:
        fields["nonce"] = nonce
    return fields


class Held:
    """What a held license knows, sync or async: the access answer, what its signatures
    vouch for, and the events not yet reported. `info` is built on first use."""

    def __init__(self, firm_code: int, product_code: int, mode: str, reply: dict[str, Any],
                 verified: Verified | None, on_event: EventCallback | None) -> None:
        self.handle: int = int(reply["handle"])
        self._firm_code = firm_code
        self._product_code = product_code
        self._mode = mode
        self._reply = reply
        self._verified = verified
        self._units: Any = verified.units if verified is not None else reply.get("units")
        self._valid_until: Any = verified.valid_until if verified is not None else reply.get("valid_until")
        self._options: dict[str, Any] | None = None
        self._info: LicenseInfo | None = None
        self._events: list[tuple[Event, str]] = []
        self._on_event = on_event
        self.valid = True
        self.released = False
        self._gone_told = False  # license-gone is told once; later checks do not ask again

    @property
    def info(self) -> LicenseInfo:
        """What the program may know about its license (see `LicenseInfo`)."""
        info = self._info
        if info is None:
            options = self._options
            if options is None:
                verified = self._verified
                options = self._options = (dict(verified.item) if verified is not None
                                           else read_unverified(self._reply.get("license")))
            reply = self._reply
            info = self._info = LicenseInfo(
                self._firm_code, self._product_code, self.handle, str(reply.get("container", "")),
                int(reply.get("item", 0) or 0), str(reply.get("mode", self._mode)),
                str(reply.get("location", "local")), str(reply.get("server", "")), options,
                self._units, self._valid_until, self._verified is not None,
            )
        return info

    def _state(self, units: Any, valid_until: Any) -> None:
        self._units = units
        self._valid_until = valid_until
        self._info = None

    def _nonce(self) -> bytes | None:
        return os.urandom(NONCE_SIZE) if self._verified is not None else None

    def _after_decrement(self, reply: dict[str, Any], nonce: bytes | None, keys: ProofKeys | None) -> int:
        remaining = reply.get("units")
        verified = self._verified
        if verified is not None and nonce is not None:
            proof_reply = dict(reply)
            proof_reply.setdefault("handle", self.handle)
            verified = self._verified = verify_proof(verified, nonce, proof_reply, keys)
            remaining = verified.units
        self._state(remaining, reply.get("valid_until", self._valid_until))
        return int(remaining or 0)

    def _after_check(self, reply: dict[str, Any], nonce: bytes | None, keys: ProofKeys | None) -> None:
        events = reply.get("events")
        for name in events or ():
            try:
                event = Event(name)
            except ValueError:
                continue
            if event is Event.LICENSE_GONE:
                self._gone(str(reply.get("reason", "")))
            else:
                self._note(event, str(reply.get("reason", "")))
        if reply.get("valid") is False and not events:
            self.valid = False
        verified = self._verified
        if ("proof" in reply or "mac" in reply) and verified is not None and nonce is not None:
            proof_reply = dict(reply)
            proof_reply.setdefault("handle", self.handle)
            verified = self._verified = verify_proof(verified, nonce, proof_reply, keys)
            self._state(verified.units, verified.valid_until)
        elif "units" in reply:
            self._state(reply.get("units"), reply.get("valid_until"))

    def _note(self, event: Event, detail: str) -> None:
        if not any(e is event for e, _ in self._events):
            self._events.append((event, detail))

    def _gone(self, detail: str) -> None:
        raise NotImplementedError

    def _take_events(self) -> list[tuple[Event, str]]:
        events, self._events = self._events, []
        return events

    def _drain(self) -> list[Event]:
        events = self._take_events()
        if self._on_event is not None:
            for event, detail in events:
                self._call_back(event, detail)
        return [e for e, _ in events]

    def _call_back(self, event: Event, detail: str) -> None:
        import contextlib  # not on a program's start path

        assert self._on_event is not None
        with contextlib.suppress(Exception):  # a callback's failure must not stop the watcher
            self._on_event(self, event, detail)


# ---------------------------------------------------------------------------- connection


class _Link:
    """This process's connection to its runtime (or network server): shared by every
    license the process holds, re-made after the runtime restarts. Each connection has
    its own proof keys (`ProofKeys`), made with its first verified request."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.lock = threading.Lock()
        self.client: Client | None = None
        self.keys: ProofKeys | None = None  # the proof keys of `client`
        self.pid = os.getpid()
        self.licenses: dict[int, License] = {}
        self.keepalive_interval = 30.0
        self._keepalive = False
        self.identity: dict[str, Any] | None = None  # the server-issued client id and its secret

    def connect(self) -> Client:
        with self.lock:
            c = self.client
            if c is not None and not c.closed:
                return c
            ctx = tls_context(self.target) if self.target.network else None
            c = Client(self.target.address, ssl_context=ctx)
            try:
                reply = c.hello(hello_client(self.target, resume=self.identity))
            except BaseException:
                c.close()
                raise
            interval = reply.get("keepalive")
            if isinstance(interval, int | float) and interval > 0:
                self.keepalive_interval = float(interval)
            self.identity = issued_identity(reply)  # proved again after a reconnect: the seats stay
            self.client = c
            self.keys = None  # a new connection agrees new keys
            if (self.target.network or reply.get("watch") == "keepalive") and not self._keepalive:
                self._keepalive = True
                _start_thread(self._keep_alive, "licentia-keepalive")
            return c

    def request(self, op: str, /, **fields: Any) -> dict[str, Any]:
        c = self.client
        if c is None or c.closed:
            c = self.connect()
        try:
            return c.request(op, **fields)
        except LicentiaError as exc:
            if exc.code not in _RECONNECT:
                raise
        # the runtime went away (a restart?): connect again, once
        return self.connect().request(op, **fields)

    def prove_request(self, op: str, /, **fields: Any) -> tuple[dict[str, Any], ProofKeys]:
        """`request` for one whose answer is verified (it carries a `nonce`): sends the
        connection's proof-key fields with it; returns the answer and the keys to check it with."""
        c = self.client
        if c is None or c.closed:
            c = self.connect()
        keys = self._keys(c)
        try:
            return c.request(op, **fields, **keys.fields()), keys
        except LicentiaError as exc:
            if exc.code not in _RECONNECT:
                raise
        c = self.connect()  # the runtime went away (a restart?): connect again, once; new keys
        keys = self._keys(c)
        return c.request(op, **fields, **keys.fields()), keys

    def _keys(self, c: Client) -> ProofKeys:
        with self.lock:
            keys = self.keys
            if keys is None or self.client is not c:
                keys = ProofKeys()
                if self.client is c:
                    self.keys = keys
            return keys

    def _keep_alive(self) -> None:
        import time

        while True:
            time.sleep(max(self.keepalive_interval, 0.2))
            handles = list(self.licenses)
            if not handles:
                continue
            try:
                reply = self.request("keepalive", handles=handles)
            except LicentiaError:
                for lic in list(self.licenses.values()):
                    lic._note(Event.SERVER_LOST, "the license server does not answer")
                continue
            for handle in reply.get("lost") or ():
                gone = self.licenses.get(handle)
                if gone is not None:
                    gone._gone("the server freed the license")


def _start_thread(target: Callable[..., None], name: str, *args: Any) -> Any:
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread


_links: dict[Target, _Link] = {}
_links_lock = threading.Lock()


def _link_for(target: Target) -> _Link:
    with _links_lock:
        found = _links.get(target)
        if found is not None and found.pid == os.getpid():
            return found
        link = _links[target] = _Link(target)  # new, or for a forked child: its own connection
        return link


def _try_targets(call: Callable[[_Link], T]) -> tuple[_Link, T]:
    best: LicentiaError | None = None
    for target in targets():
        link = _link_for(target)
        try:
            return link, call(link)
        except LicentiaError as exc:
            if exc.code not in (ErrorCode.NO_LOCAL_RUNTIME, ErrorCode.SERVER_NOT_FOUND) or target.network:
                raise
            best = best or exc
    raise best or LicentiaError(ErrorCode.NO_LOCAL_RUNTIME, "no licentia runtime was found")


# ---------------------------------------------------------------------------- the license


class License(Held):
    """A held license. Release it with `release()` or by leaving the `with` block.

    `info` (a `LicenseInfo`), `handle`, `valid` (False once the license is gone),
    `released`; `decrement()`, `check()`, `release()`."""

    def __init__(self, link: _Link, firm_code: int, product_code: int, mode: str, reply: dict[str, Any],
                 verified: Verified | None, on_event: EventCallback | None, watch_interval: float) -> None:
        super().__init__(firm_code, product_code, mode, reply, verified, on_event)
        self._link = link
        self._lock = threading.Lock()
        self._watch_stop: Any = None
        link.licenses[self.handle] = self
        if on_event is not None:
            self._watch_stop = threading.Event()
            _start_thread(self._watch, "licentia-events", watch_interval)

    def decrement(self, units: int = 1) -> int:
        """Spend `units` from the unit counter; durable when this returns. Returns what remains."""
        self._live()
        fields: dict[str, Any] = {"handle": self.handle, "units": units}
        nonce = self._nonce()
        if nonce is None:
            return self._after_decrement(self._link.request("decrement", **fields), None, None)
        reply, keys = self._link.prove_request("decrement", nonce=nonce, **fields)
        return self._after_decrement(reply, nonce, keys)

    def check(self) -> list[Event]:
        """Ask whether the license still holds; returns the events since the last check
        (also passed to the callback). After LICENSE_GONE, `valid` is False; the event is
        told once, and later checks return no events without asking the runtime."""
        if self.released:
            raise LicentiaError(ErrorCode.INVALID_HANDLE, "the license was released")
        if self._gone_told:
            return self._drain()  # gone for good: nothing new to ask, license-gone was told once
        nonce = self._nonce()
        keys: ProofKeys | None = None
        try:
            if nonce is None:
                reply = self._link.request("check", handle=self.handle)
            else:
                reply, keys = self._link.prove_request("check", handle=self.handle, nonce=nonce)
        except LicentiaError as exc:
            if exc.code in _UNREACHABLE:
                self._note(Event.SERVER_LOST, exc.message)
                return self._drain()
            raise
        self._after_check(reply, nonce, keys)
        return self._drain()

    def release(self) -> None:
        """Give the seat back (idempotent)."""
        if self.released:
            return
        self.released = True
        if self._watch_stop is not None:
            self._watch_stop.set()
        self._link.licenses.pop(self.handle, None)
        if not self.valid:
            return
        try:
            self._link.request("release", handle=self.handle)
        except LicentiaError as exc:
            if exc.code is not ErrorCode.INVALID_HANDLE:
                raise

    def __enter__(self) -> License:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        where = self._reply.get("location", "local")
        return f"<licentia License firm {self._firm_code} product {self._product_code} handle {self.handle} ({where})>"

    # -- events --

    def _live(self) -> None:
        if self.released:
            raise LicentiaError(ErrorCode.INVALID_HANDLE, "the license was released")
        if not self.valid:
            raise LicentiaError(ErrorCode.INVALID_HANDLE, "the license is gone (freed by an administrator or the server)")

    def _note(self, event: Event, detail: str) -> None:
        with self._lock:
            super()._note(event, detail)

    def _gone(self, detail: str) -> None:
        self.valid = False
        self._link.licenses.pop(self.handle, None)
        if not self._gone_told:
            self._gone_told = True
            self._note(Event.LICENSE_GONE, detail)

    def _take_events(self) -> list[tuple[Event, str]]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def _watch(self, interval: float) -> None:
        import contextlib

        while not self._watch_stop.wait(interval):
            if self.released:
                return
            with contextlib.suppress(LicentiaError):
                self.check()
            if not self.valid:
                return


def access(
    firm_code: int,
    product_code: int,
    *,
    mode: str = "per-access",
    firm_key: FirmKey | None = None,
    verify: bool = True,
    feature: int = 0,
    version: str | None = None,
    release_date: int | None = None,
    where: str | None = None,
    container: str | None = None,
    on_event: EventCallback | None = None,
    watch_interval: float = 10.0,
    blacklist: ShippedBlacklist | None = None,
    blacklist_delay_days: int = 0,
) -> License:
    """Take a license: returns a `License` (a context manager) or raises `LicentiaError`
    with a stable code (212: all seats taken, 200: no such license, 35: expired, …).

    `blacklist`: the firm's signed blacklist (its bytes or file) shipped with the
    program; a container on it is refused with 1213, after `blacklist_delay_days`
    (licentia.sdk.blacklist)."""
    check_args(firm_code, product_code, mode, where)
    key = firm_key_for(verify, firm_key, firm_code)
    nonce = os.urandom(NONCE_SIZE) if key is not None else None
    fields = access_fields(product_code, firm_code, mode, feature, version, release_date, where, container, nonce)
    keys: ProofKeys | None = None
    if nonce is None:
        link, reply = _try_targets(lambda lk: lk.request("access", **fields))
    else:
        link, (reply, keys) = _try_targets(lambda lk: lk.prove_request("access", **fields))
    verified: Verified | None = None
    try:
        if key is not None and nonce is not None:
            verified = verify_grant(key, firm_code, product_code, nonce, reply, keys)
        if blacklist is not None:
            blacklisted(blacklist, blacklist_delay_days, key, firm_key, firm_code, verified, reply)
    except LicentiaError:
        import contextlib  # a refusal is not on the start path

        with contextlib.suppress(LicentiaError):
            link.request("release", handle=reply.get("handle"))
        raise
    return License(link, firm_code, product_code, mode, reply, verified, on_event, watch_interval)
