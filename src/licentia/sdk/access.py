"""`licentia.access()`: take a license for the time a block of code runs (blocking API).

    import licentia

    with licentia.access(firm_code=10001, product_code=7, firm_key="acme.pub") as lic:
        print(lic.info.units, lic.info.valid_until)
        lic.decrement(1)

`firm_key` is the firm's public key (the file `licentia vendor export-public` writes,
its hex, or its 32 bytes). With it, every answer is verified: the license must carry the
firm's signature and the container the license names must sign this program's fresh
challenge, so a faked runtime cannot fake a license. Without a key, pass `verify=False`
(trying licenses by hand; never in a product).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from licentia.model import ErrorCode, LicentiaError
from licentia.protocol.client import Client
from licentia.sdk.connect import Target, hello_client, targets, tls_context
from licentia.sdk.proof import NONCE_SIZE
from licentia.sdk.verify import (
    FirmKey,
    Verified,
    load_firm_key,
    read_unverified,
    verify_grant,
    verify_proof,
)

MODES = ("per-access", "per-station", "none", "exclusive")
WHERE = ("local", "network", "local-first", "network-first")
_RECONNECT = frozenset({ErrorCode.NETWORK_FAULT, ErrorCode.NO_LOCAL_RUNTIME})


class Event(StrEnum):
    """What can happen to a license while a program holds it."""

    LICENSE_GONE = "license-gone"  # freed by an administrator, a timeout, or the server
    SERVER_LOST = "server-lost"  # the runtime or the network server does not answer
    CONTAINER_REMOVED = "container-removed"  # the container holding the license went away
    ITEM_CHANGED = "item-changed"  # the license was updated (options, units, lock)


EventCallback = Callable[["License | Any", Event, str], None]


@dataclass(frozen=True)
class LicenseInfo:
    """What a program may know about its license."""

    firm_code: int
    product_code: int
    handle: int
    container: str
    item_id: int
    mode: str
    location: str  # "local" or "network"
    server: str
    options: dict[str, Any] = field(default_factory=dict)  # item options, as the vendor signed them
    units: int | None = None  # units remaining on the unit counter
    valid_until: int | None = None  # earliest of expiry, usage-period end, checkpoint
    verified: bool = False

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


def make_info(firm_code: int, product_code: int, mode: str, reply: dict[str, Any], verified: Verified | None) -> LicenseInfo:
    options = verified.item if verified is not None else read_unverified(reply.get("license"))
    return LicenseInfo(
        firm_code=firm_code, product_code=product_code, handle=int(reply["handle"]),
        container=str(reply.get("container", "")), item_id=int(reply.get("item", 0) or 0),
        mode=str(reply.get("mode", mode)), location=str(reply.get("location", "local")),
        server=str(reply.get("server", "")), options=options,
        units=verified.units if verified is not None else reply.get("units"),
        valid_until=verified.valid_until if verified is not None else reply.get("valid_until"),
        verified=verified is not None,
    )


# ---------------------------------------------------------------------------- connection


class _Link:
    """This process's connection to its runtime (or network server): shared by every
    license the process holds, re-made after the runtime restarts."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.lock = threading.Lock()
        self.client: Client | None = None
        self.pid = os.getpid()
        self.licenses: dict[int, License] = {}
        self.keepalive_interval = 30.0
        self._keepalive: threading.Thread | None = None

    def connect(self) -> Client:
        with self.lock:
            c = self.client
            if c is not None and not c.closed:
                return c
            ctx = tls_context(self.target) if self.target.network else None
            c = Client(self.target.address, ssl_context=ctx)
            try:
                reply = c.hello(hello_client(self.target))
            except BaseException:
                c.close()
                raise
            interval = reply.get("keepalive")
            if isinstance(interval, int | float) and interval > 0:
                self.keepalive_interval = float(interval)
            self.client = c
            if self.target.network and self._keepalive is None:
                self._keepalive = threading.Thread(target=self._keep_alive, name="licentia-keepalive", daemon=True)
                self._keepalive.start()
            return c

    def request(self, op: str, /, **fields: Any) -> dict[str, Any]:
        try:
            client = self.connect()
            return client.request(op, **fields)
        except LicentiaError as exc:
            if exc.code not in _RECONNECT:
                raise
        # the runtime went away (a restart?): connect again, once
        return self.connect().request(op, **fields)

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


_links: dict[Target, _Link] = {}
_links_lock = threading.Lock()


def _link_for(target: Target) -> _Link:
    with _links_lock:
        found = _links.get(target)
        if found is not None and found.pid == os.getpid():
            return found
        link = _links[target] = _Link(target)  # new, or for a forked child: its own connection
        return link


def _try_targets(call: Callable[[_Link], dict[str, Any]]) -> tuple[_Link, dict[str, Any]]:
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


class License:
    """A held license. Release it with `release()` or by leaving the `with` block."""

    def __init__(self, link: _Link, info: LicenseInfo, firm_key: bytes | None, verified: Verified | None,
                 on_event: EventCallback | None, watch_interval: float) -> None:
        self._link = link
        self.info = info
        self._firm_key = firm_key
        self._verified = verified
        self._events: list[tuple[Event, str]] = []
        self._on_event = on_event
        self._lock = threading.Lock()
        self.valid = True
        self.released = False
        self._watch_stop = threading.Event()
        link.licenses[info.handle] = self
        if on_event is not None:
            threading.Thread(target=self._watch, args=(watch_interval,), name="licentia-events", daemon=True).start()

    @property
    def handle(self) -> int:
        return self.info.handle

    def decrement(self, units: int = 1) -> int:
        """Spend `units` from the unit counter; durable when this returns. Returns what remains."""
        self._live()
        fields: dict[str, Any] = {"handle": self.handle, "units": units}
        nonce = os.urandom(NONCE_SIZE) if self._verified is not None else None
        if nonce is not None:
            fields["nonce"] = nonce
        reply = self._link.request("decrement", **fields)
        remaining = reply.get("units")
        if self._verified is not None and nonce is not None:
            proof_reply = dict(reply)
            proof_reply.setdefault("handle", self.handle)
            self._verified = verify_proof(self._verified, nonce, proof_reply)
            remaining = self._verified.units
        self.info = _with(self.info, units=remaining, valid_until=reply.get("valid_until", self.info.valid_until))
        return int(remaining or 0)

    def check(self) -> list[Event]:
        """Ask whether the license still holds; returns the events since the last check
        (also passed to the callback). After LICENSE_GONE, `valid` is False."""
        if self.released:
            raise LicentiaError(ErrorCode.INVALID_HANDLE, "the license was released")
        nonce = os.urandom(NONCE_SIZE) if self._verified is not None else None
        fields: dict[str, Any] = {"handle": self.handle}
        if nonce is not None:
            fields["nonce"] = nonce
        try:
            reply = self._link.request("check", **fields)
        except LicentiaError as exc:
            if exc.code in (ErrorCode.NETWORK_FAULT, ErrorCode.NO_LOCAL_RUNTIME, ErrorCode.SERVER_NOT_FOUND):
                self._note(Event.SERVER_LOST, exc.message)
                return self._drain()
            raise
        for name in reply.get("events") or ():
            try:
                event = Event(name)
            except ValueError:
                continue
            if event is Event.LICENSE_GONE:
                self._gone(str(reply.get("reason", "")))
            else:
                self._note(event, str(reply.get("reason", "")))
        if reply.get("valid") is False and not reply.get("events"):
            self.valid = False
        if "proof" in reply and self._verified is not None and nonce is not None:
            proof_reply = dict(reply)
            proof_reply.setdefault("handle", self.handle)
            self._verified = verify_proof(self._verified, nonce, proof_reply)
            self.info = _with(self.info, units=self._verified.units, valid_until=self._verified.valid_until)
        elif "units" in reply:
            self.info = _with(self.info, units=reply.get("units"), valid_until=reply.get("valid_until"))
        return self._drain()

    def release(self) -> None:
        """Give the seat back (idempotent)."""
        if self.released:
            return
        self.released = True
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
        i = self.info
        return f"<licentia License firm {i.firm_code} product {i.product_code} handle {i.handle} ({i.location})>"

    # -- events --

    def _live(self) -> None:
        if self.released:
            raise LicentiaError(ErrorCode.INVALID_HANDLE, "the license was released")
        if not self.valid:
            raise LicentiaError(ErrorCode.INVALID_HANDLE, "the license is gone (freed by an administrator or the server)")

    def _note(self, event: Event, detail: str) -> None:
        with self._lock:
            if any(e is event for e, _ in self._events):
                return
            self._events.append((event, detail))

    def _gone(self, detail: str) -> None:
        self.valid = False
        self._link.licenses.pop(self.handle, None)
        self._note(Event.LICENSE_GONE, detail)

    def _drain(self) -> list[Event]:
        with self._lock:
            events, self._events = self._events, []
        if self._on_event is not None:
            for event, detail in events:
                with contextlib.suppress(Exception):  # a callback's failure must not stop the watcher
                    self._on_event(self, event, detail)
        return [e for e, _ in events]

    def _watch(self, interval: float) -> None:
        while not self._watch_stop.wait(interval):
            if self.released:
                return
            with contextlib.suppress(LicentiaError):
                self.check()
            if not self.valid:
                return


def _with(info: LicenseInfo, **changes: Any) -> LicenseInfo:
    from dataclasses import replace

    return replace(info, **changes)


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
) -> License:
    """Take a license: returns a `License` (a context manager) or raises `LicentiaError`
    with a stable code (212: all seats taken, 200: no such license, 35: expired, …)."""
    check_args(firm_code, product_code, mode, where)
    key: bytes | None = None
    if verify:
        if firm_key is None:
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER,
                "no firm public key to verify the license with",
                "pass firm_key= (the file from `licentia vendor export-public`), or verify=False to try without",
            )
        key = load_firm_key(firm_key, firm_code)
    nonce = os.urandom(NONCE_SIZE) if key is not None else None
    fields = access_fields(product_code, firm_code, mode, feature, version, release_date, where, container, nonce)
    link, reply = _try_targets(lambda lk: lk.request("access", **fields))
    verified: Verified | None = None
    if key is not None and nonce is not None:
        try:
            verified = verify_grant(key, firm_code, product_code, nonce, reply)
        except LicentiaError:
            with contextlib.suppress(LicentiaError):
                link.request("release", handle=reply.get("handle"))
            raise
    info = make_info(firm_code, product_code, mode, reply, verified)
    return License(link, info, key, verified, on_event, watch_interval)
