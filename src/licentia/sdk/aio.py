"""`licentia.access_async()`: the asyncio API, the same semantics as `licentia.access()`.

    async with licentia.access_async(firm_code=10001, product_code=7, firm_key=KEY) as lic:
        await lic.decrement(1)
        events = await lic.check()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref

from licentia.model.errors import ErrorCode, LicentiaError
from licentia.sdk.access import Event, Held, access_fields, blacklisted, check_args, firm_key_for
from licentia.sdk.connect import Target, hello_client, issued_identity, targets, tls_context
from licentia.sdk.proof import NONCE_SIZE
from licentia.sdk.verify import ProofKeys, verify_grant

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Generator
    from typing import Any

    from licentia.sdk.access import EventCallback
    from licentia.sdk.blacklist import ShippedBlacklist
    from licentia.sdk.verify import FirmKey, Verified

# the runtime went away, or closed the connection for silence (1402): connect again, once
_RECONNECT = frozenset({ErrorCode.NETWORK_FAULT, ErrorCode.NO_LOCAL_RUNTIME, ErrorCode.CONNECTION_TIMEOUT})


class _AsyncLink:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.client: Any = None
        self.keys: ProofKeys | None = None  # the proof keys of `client` (see licentia.sdk.access._Link)
        self.lock = asyncio.Lock()
        self.licenses: dict[int, AsyncLicense] = {}
        self.keepalive_interval = 30.0
        self._keepalive: asyncio.Task[None] | None = None
        self.identity: dict[str, Any] | None = None  # the server-issued client id and its secret

    async def connect(self) -> Any:
        async with self.lock:
            c = self.client
            if c is not None and not c.closed:
                return c
            from licentia.protocol.aio import AsyncClient

            ctx = tls_context(self.target) if self.target.network else None
            c = await AsyncClient.connect(self.target.address, ssl_context=ctx)
            try:
                reply = await c.hello(hello_client(self.target, resume=self.identity))
            except BaseException:
                await c.close()
                raise
            interval = reply.get("keepalive")
            if isinstance(interval, int | float) and interval > 0:
                self.keepalive_interval = float(interval)
            self.identity = issued_identity(reply)  # proved again after a reconnect: the seats stay
            self.client = c
            self.keys = None  # a new connection agrees new keys
            if (self.target.network or reply.get("watch") == "keepalive") and self._keepalive is None:
                self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive())
            return c

    async def request(self, op: str, /, **fields: Any) -> dict[str, Any]:
        try:
            client = await self.connect()
            reply: dict[str, Any] = await client.request(op, **fields)
            return reply
        except LicentiaError as exc:
            if exc.code not in _RECONNECT:
                raise
        client = await self.connect()
        reply = await client.request(op, **fields)
        return reply

    async def prove_request(self, op: str, /, **fields: Any) -> tuple[dict[str, Any], ProofKeys]:
        """`request` for one whose answer is verified: sends the connection's proof-key
        fields with it; returns the answer and the keys to check it with."""
        try:
            client = await self.connect()
            keys = self._keys(client)
            reply: dict[str, Any] = await client.request(op, **fields, **keys.fields())
            return reply, keys
        except LicentiaError as exc:
            if exc.code not in _RECONNECT:
                raise
        client = await self.connect()
        keys = self._keys(client)
        reply = await client.request(op, **fields, **keys.fields())
        return reply, keys

    def _keys(self, client: Any) -> ProofKeys:
        keys = self.keys
        if keys is None or self.client is not client:
            keys = ProofKeys()
            if self.client is client:
                self.keys = keys
        return keys

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(max(self.keepalive_interval, 0.2))
            handles = list(self.licenses)
            if not handles:
                continue
            try:
                reply = await self.request("keepalive", handles=handles)
            except LicentiaError:
                for lic in list(self.licenses.values()):
                    lic._note(Event.SERVER_LOST, "the license server does not answer")
                continue
            for handle in reply.get("lost") or ():
                gone = self.licenses.get(handle)
                if gone is not None:
                    gone._gone("the server freed the license")


_links: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Target, _AsyncLink]] = weakref.WeakKeyDictionary()


def _link_for(target: Target) -> _AsyncLink:
    per_loop = _links.setdefault(asyncio.get_running_loop(), {})
    found = per_loop.get(target)
    if found is not None:
        return found
    link = per_loop[target] = _AsyncLink(target)
    return link


class AsyncLicense(Held):
    """A held license (asyncio). Release with `await release()` or by leaving `async with`."""

    def __init__(self, link: _AsyncLink, firm_code: int, product_code: int, mode: str, reply: dict[str, Any],
                 verified: Verified | None, on_event: EventCallback | None, watch_interval: float) -> None:
        super().__init__(firm_code, product_code, mode, reply, verified, on_event)
        self._link = link
        self._watcher: asyncio.Task[None] | None = None
        link.licenses[self.handle] = self
        if on_event is not None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(watch_interval))

    async def decrement(self, units: int = 1) -> int:
        if self.released or not self.valid:
            raise LicentiaError(ErrorCode.INVALID_HANDLE, "the license was released or is gone")
        nonce = self._nonce()
        if nonce is None:
            return self._after_decrement(await self._link.request("decrement", handle=self.handle, units=units),
                                         None, None)
        reply, keys = await self._link.prove_request("decrement", handle=self.handle, units=units, nonce=nonce)
        return self._after_decrement(reply, nonce, keys)

    async def check(self) -> list[Event]:
        if self.released:
            raise LicentiaError(ErrorCode.INVALID_HANDLE, "the license was released")
        if self._gone_told:
            return self._drain()  # gone for good: license-gone was told once
        nonce = self._nonce()
        keys: ProofKeys | None = None
        try:
            if nonce is None:
                reply = await self._link.request("check", handle=self.handle)
            else:
                reply, keys = await self._link.prove_request("check", handle=self.handle, nonce=nonce)
        except LicentiaError as exc:
            if exc.code in (ErrorCode.NETWORK_FAULT, ErrorCode.NO_LOCAL_RUNTIME, ErrorCode.SERVER_NOT_FOUND):
                self._note(Event.SERVER_LOST, exc.message)
                return self._drain()
            raise
        self._after_check(reply, nonce, keys)
        return self._drain()

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self._watcher is not None:
            self._watcher.cancel()
        self._link.licenses.pop(self.handle, None)
        if not self.valid:
            return
        try:
            await self._link.request("release", handle=self.handle)
        except LicentiaError as exc:
            if exc.code is not ErrorCode.INVALID_HANDLE:
                raise

    async def __aenter__(self) -> AsyncLicense:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()

    def __repr__(self) -> str:
        where = self._reply.get("location", "local")
        return (f"<licentia AsyncLicense firm {self._firm_code} product {self._product_code} "
                f"handle {self.handle} ({where})>")

    def _gone(self, detail: str) -> None:
        self.valid = False
        self._link.licenses.pop(self.handle, None)
        if not self._gone_told:
            self._gone_told = True
            self._note(Event.LICENSE_GONE, detail)

    async def _watch(self, interval: float) -> None:
        while not self.released and self.valid:
            await asyncio.sleep(interval)
            with contextlib.suppress(LicentiaError):
                await self.check()


class _Pending:
    """What `access_async()` returns: await it, or use it in `async with`."""

    def __init__(self, coro_factory: Any) -> None:
        self._factory = coro_factory
        self._license: AsyncLicense | None = None

    def __await__(self) -> Generator[Any, None, AsyncLicense]:
        return self._factory().__await__()  # type: ignore[no-any-return]

    async def __aenter__(self) -> AsyncLicense:
        self._license = await self._factory()
        return self._license

    async def __aexit__(self, *exc: object) -> None:
        if self._license is not None:
            await self._license.release()


def access_async(
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
) -> _Pending:
    """Take a license (asyncio): `lic = await access_async(...)` or `async with access_async(...) as lic:`.

    `blacklist`, `blacklist_delay_days`: as for `licentia.access`."""
    check_args(firm_code, product_code, mode, where)
    key = firm_key_for(verify, firm_key, firm_code)

    async def take() -> AsyncLicense:
        nonce = os.urandom(NONCE_SIZE) if key is not None else None
        fields = access_fields(product_code, firm_code, mode, feature, version, release_date, where, container, nonce)
        best: LicentiaError | None = None
        for target in targets():
            link = _link_for(target)
            keys: ProofKeys | None = None
            try:
                if nonce is None:
                    reply = await link.request("access", **fields)
                else:
                    reply, keys = await link.prove_request("access", **fields)
            except LicentiaError as exc:
                if exc.code not in (ErrorCode.NO_LOCAL_RUNTIME, ErrorCode.SERVER_NOT_FOUND) or target.network:
                    raise
                best = best or exc
                continue
            verified: Verified | None = None
            try:
                if key is not None and nonce is not None:
                    verified = verify_grant(key, firm_code, product_code, nonce, reply, keys)
                if blacklist is not None:
                    blacklisted(blacklist, blacklist_delay_days, key, firm_key, firm_code, verified, reply)
            except LicentiaError:
                with contextlib.suppress(LicentiaError):
                    await link.request("release", handle=reply.get("handle"))
                raise
            return AsyncLicense(link, firm_code, product_code, mode, reply, verified, on_event, watch_interval)
        raise best or LicentiaError(ErrorCode.NO_LOCAL_RUNTIME, "no licentia runtime was found")

    return _Pending(take)
