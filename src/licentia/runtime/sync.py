"""Sync with central: the runtime does `licentia sync` for its containers, on a schedule.

With `[central] url` set, the runtime contacts central for every soft and token container
it serves: it makes a request (signed by the container, inside the token for a token),
sends it to `POST /api/sync`, applies the update central answers with through the
container's writer (so it never races a grant), and sends the receipt back. One round
trip brings everything central holds for the container:

- automatic activation: tickets of the customer whose registered license server (or
  single-user machine) this container is, once they are old enough;
- honeypot locks of a blacklisted container, revocations of replaced licenses;
- checkpoint renewal: every checkpoint item of the firm restarts its period;
- central's signed time, which advances the virtual clock and heals a clock set back.

When: at start, then every `[central] interval` seconds (default one hour), and sooner
for a container holding a checkpoint license that central renewed, as soon as less than
half of its period remains (`next_sync_at`, a pure function). A failed round trip is tried
again after a tenth of the interval (1 s to 60 s). Offline, nothing is invented: items
whose checkpoint passes lapse (1010), and the virtual clock still only moves forward.

Programs holding an item the update changed see `item-changed` at their next check; the
usage log records each round trip (`sync`) and the first failure of a streak
(`sync-failed`). The HTTP calls go straight to central's REST API (`CentralHTTP`, httpx).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from licentia.core.content import ContainerContent
from licentia.model import ErrorCode, LicentiaError
from licentia.protocol.rest import central_context, read_reply, unreachable
from licentia.runtime.licenses import Changes, _changed_items

if TYPE_CHECKING:
    from licentia.runtime.host import Runtime

MIN_GAP = 1.0  # never two round trips of one container closer than this


# ====================================================================== talking to central


class CentralHTTP:
    """Central's REST API over HTTP: JSON in, JSON out, refusals as the LicentiaError central
    raised (same code). Blocking: the runtime calls it from worker threads. An https:// central
    is trusted by the pin stored in `pins` at the first connection (shared with the
    command line's `licentia activate` of the same home)."""

    def __init__(self, url: str, timeout: float, pins: Path) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._httpx = httpx
        verify = central_context(self.url, pins)
        self.http = httpx.Client(base_url=self.url, timeout=timeout, verify=verify if verify is not None else True)

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        httpx = self._httpx
        try:
            response = self.http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise unreachable(self.url, exc, "check the URL and the network; the runtime tries again by itself") from None
        return read_reply(response)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        result = self.call("POST", path, body)
        if not isinstance(result, dict):
            raise LicentiaError(ErrorCode.CENTRAL_ERROR, f"central answered {path} with no JSON object")
        return result


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ====================================================================== when to sync (pure)


def renewal_due(content: ContainerContent, firm_code: int, renewed_since: float | None) -> float | None:
    """When the first checkpoint item of `firm_code` has half its period left, counting only
    items renewed at or after `renewed_since` (the start of the last successful round trip:
    central renewed those; an item it did not renew would otherwise call for a round trip
    on every tick). None: no such item."""
    firm = content.firms.get(firm_code)
    if firm is None:
        return None
    due: float | None = None
    for entry in firm.items.values():
        period = entry.item.checkpoint_period
        at = entry.state.checkpoint_at
        if period is None or at is None:
            continue
        if renewed_since is not None and at < int(renewed_since) - 1:
            continue
        half = at + period / 2
        due = half if due is None else min(due, half)
    return due


def next_sync_at(content: ContainerContent | None, firm_code: int | None, *, interval: float,
                 last_attempt: float | None, last_ok: float | None, failed: bool) -> float:
    """The time of a container's next round trip with central.

    `last_attempt` is when the last round trip started, `last_ok` when the last successful
    one ended. Never before `last_attempt + MIN_GAP`; after a failure, a tenth of the
    interval later (1 to 60 s); after a success, one interval later, or when a checkpoint
    item that round trip renewed has half its period left, whichever comes first."""
    if last_attempt is None:
        return 0.0
    floor = last_attempt + min(MIN_GAP, interval)
    if failed:
        return max(floor, last_attempt + retry_after(interval))
    base = (last_ok if last_ok is not None else last_attempt) + interval
    if content is not None and firm_code is not None:
        due = renewal_due(content, firm_code, last_attempt)
        if due is not None:
            base = min(base, due)
    return max(floor, base)


def retry_after(interval: float) -> float:
    return min(max(interval / 10, 1.0), 60.0, interval)


# ====================================================================== the runtime's side


@dataclass
class SyncState:
    last_attempt: float | None = None
    last_ok: float | None = None
    failed: bool = False
    last_error: str = ""
    last_code: int | None = None
    counter: int | None = None
    next_at: float = 0.0
    syncs: int = 0


class CentralSync:
    """Runs the round trips of a runtime's containers with central."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.states: dict[str, SyncState] = {}
        self.firm_code: int | None = None
        self._http: CentralHTTP | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: set[str] = set()

    @property
    def enabled(self) -> bool:
        return bool(self.rt.config.central_url)

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._http is not None:
            http, self._http = self._http, None
            await asyncio.get_running_loop().run_in_executor(None, http.close)

    def http(self) -> CentralHTTP:
        if self._http is None:
            cfg = self.rt.config
            self._http = CentralHTTP(cfg.central_url, cfg.central_timeout, self.rt.home.tls / "pins")
        return self._http

    def _serials(self) -> list[str]:
        """The containers to sync: soft and token (cloud containers live in central already)."""
        containers = self.rt.containers
        kind_of = getattr(containers, "kind_of", lambda s: "soft")
        return [s for s in sorted(containers.loaded) if kind_of(s) in ("soft", "token")]

    async def _loop(self) -> None:
        interval = self.rt.config.central_interval
        tick = min(1.0, max(interval / 4, 0.05))
        while True:
            serials = self._serials()
            for gone in set(self.states) - set(serials):
                del self.states[gone]
            now = time.time()
            for serial in serials:
                state = self.states.setdefault(serial, SyncState())
                if now >= state.next_at and serial not in self._running:
                    try:
                        await self.sync(serial)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # keep syncing the others; say what failed
                        self.rt._note_problem(f"sync of {serial}: {exc!r}")
            await asyncio.sleep(tick)

    async def sync(self, serial: str) -> dict[str, Any] | None:
        """One round trip for container `serial`: request → update → apply → receipt."""
        rt = self.rt
        state = self.states.setdefault(serial, SyncState())
        ld = rt.containers.loaded.get(serial)
        if ld is None:
            return None
        self._running.add(serial)
        state.last_attempt = time.time()
        result: dict[str, Any] | None = None
        try:
            done = await self._round_trip(serial, ld)
        except LicentiaError as exc:
            if not state.failed or state.last_code != int(exc.code):
                self._note({"event": "sync-failed", "container": serial, "code": int(exc.code),
                            "detail": exc.message[:300], "central": rt.config.central_url})
            state.failed, state.last_error, state.last_code = True, exc.message, int(exc.code)
        else:
            result = done
            state.failed, state.last_error, state.last_code = False, "", None
            state.last_ok = time.time()
            state.counter = done["counter"]
            state.syncs += 1
        finally:
            self._running.discard(serial)
        current = rt.containers.loaded.get(serial)
        state.next_at = next_sync_at(current.content if current else None, self.firm_code,
                                     interval=rt.config.central_interval, last_attempt=state.last_attempt,
                                     last_ok=state.last_ok, failed=state.failed)
        return result

    async def _round_trip(self, serial: str, ld: Any) -> dict[str, Any]:
        from licentia.core import updates

        rt = self.rt
        loop = asyncio.get_running_loop()
        http = self.http()
        health = await loop.run_in_executor(None, http.call, "GET", "/api/health", None)
        try:
            firm_code = int(health["firm_code"])
        except (KeyError, TypeError, ValueError):
            raise LicentiaError(ErrorCode.CENTRAL_ERROR, f"{http.url} does not look like licentia central") from None
        self.firm_code = firm_code
        held = rt.tokens.held.get(serial) if hasattr(rt, "tokens") else None
        keys = held.container.keys if held is not None else None
        env = rt.environment
        environment = updates.request_environment(rt.fingerprint, os.uname().nodename, firm_code)
        t = int(time.time())

        def request_op(c: ContainerContent) -> tuple[ContainerContent, bytes]:
            c = c.with_clock(c.clock.observe(t))
            return c, updates.make_request(c, firm_code, t, environment, keys=keys)

        request = await ld.writer.submit(request_op)
        answer = await loop.run_in_executor(None, http.post, "/api/sync", {"request": b64(request)})
        if answer.get("update") is None and "counter" in answer:  # nothing to renew, deliver or revoke
            result = {"container": serial, "firm": firm_code, "counter": answer["counter"], "changes": [], "confirmed": True}
            self._note({"event": "sync", **result, "central": http.url})
            return result
        try:
            update = base64.b64decode(answer["update"], validate=True)
        except (KeyError, TypeError, ValueError):
            raise LicentiaError(ErrorCode.CENTRAL_ERROR, "central's sync answer carries no update") from None

        def apply_op(c: ContainerContent) -> tuple[ContainerContent, tuple[updates.Applied, set[tuple[str, int, int]]]]:
            applied = updates.apply_update(c, update, int(time.time()), in_vm=env.in_vm, keys=keys)
            return applied.content, (applied, _changed_items(serial, c, applied.content))

        applied, changed = await ld.writer.submit(apply_op)
        if changed:
            rt._container_changes(Changes(changed_items=changed))
        confirmed = True
        try:
            await loop.run_in_executor(None, http.post, "/api/receipts", {"receipt": b64(applied.receipt)})
        except LicentiaError as exc:
            if exc.code is not ErrorCode.NETWORK_FAULT:
                raise
            confirmed = False  # the container's next request tells central the same
        result = {"container": serial, "firm": firm_code, "counter": applied.counter,
                  "changes": list(applied.changes), "confirmed": confirmed}
        self._note({"event": "sync", **result, "central": http.url})
        return result

    def _note(self, fields: dict[str, Any]) -> None:
        rt = self.rt
        fields = {"at": round(time.time(), 3), **fields}
        if rt.log is not None:
            rt.log.note(fields)
        rt.recent_seq += 1
        rt.recent.append((rt.recent_seq, fields))

    def status(self) -> dict[str, Any] | None:
        """What the status API shows: central's URL and each container's last round trip."""
        if not self.enabled:
            return None
        return {"url": self.rt.config.central_url, "interval": self.rt.config.central_interval,
                "firm": self.firm_code,
                "containers": {s: {"last_ok": st.last_ok, "last_attempt": st.last_attempt, "failed": st.failed,
                                   "error": st.last_error or None, "counter": st.counter, "next_at": st.next_at,
                                   "syncs": st.syncs}
                               for s, st in sorted(self.states.items())}}


__all__ = ["CentralHTTP", "CentralSync", "SyncState", "next_sync_at", "renewal_due", "retry_after"]
