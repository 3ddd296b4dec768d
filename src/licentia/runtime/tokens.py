"""Token containers in the runtime: found, claimed, proven on every access, watched.

At start (and every `[tokens] scan_interval` seconds) the runtime looks at the tokens of
its PKCS#11 module (`[tokens] module`, else $LICENTIA_PKCS11_MODULE, else the module
recorded in `containers/tokens.json`). Each token that carries a licentia container is
opened with its PIN (`[tokens] pin_file`, else $LICENTIA_PIN_FILE or $LICENTIA_PIN, else
the PIN file recorded for that container) and **claimed** with this runtime's id, kept in
`HOME/state/runtime.id` so a restart is no change of hands. The container then serves like
a soft one (same candidates, same seat table), with two differences:

- every grant is **proven by the token**: it signs the program's challenge (or, without
  one, a fresh presence challenge) through `TokenContainer.prove`, which also checks that
  this runtime still holds the token; the proof never comes from a cached key;
- a **watch** checks the token every `[tokens] watch_interval` seconds (0.5 s). When the
  token is pulled, its slot vanishes, another runtime claims it, or it is locked out for
  changing hands too fast, the runtime frees every seat of the container (usage log:
  `release` with reason `container-removed`), logs `container-removed`, shows the reason
  on the status API, and the programs see `container-removed` and `license-gone` at their
  next check. An access that finds the token gone does the same at once.

A token taken away is not claimed back while another runtime holds it (two runtimes
would otherwise hand it back and forth into a lockout); it is claimed again once it is
free (the other runtime released it, or a lockout ended). A wrong PIN is tried once and
not again until the PIN source changes, so the runtime never uses up the token's tries.

While a token is gone, each scan reads the module's slot list afresh
(`licentia.containers.token.refresh_slots`): plugged back, the token is claimed again (the
same runtime id: no change of hands) and served. Programs asking for what only a lost token
held get its error (1117 pulled, 1118 taken away, 1119 locked out with the seconds left),
not 200; the console (standard error) says when a token is claimed, lost and taken back;
the status API's texts that count seconds are computed when asked.

The container table that serves them beside the soft containers, and `withdraw`, are in
`licentia.runtime.external`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from licentia.core.content import ContainerContent
from licentia.core.evaluate import valid_until
from licentia.core.seats import Session
from licentia.model import (
    ErrorCode,
    ItemRequest,
    LicentiaError,
)
from licentia.runtime.external import REMOVED, RuntimeContainers, release_seat, withdraw
from licentia.runtime.licenses import (
    Changes,
    Loaded,
    _changed_items,
    decrement_op,
    first_use_op,
)
from licentia.runtime.tokenscan import (
    Held,
    Lost,
    ScanResult,
    close_all,
    runtime_id,
    scan_tokens,
    token_pin,
)
from licentia.sdk.proof import proof_message

if TYPE_CHECKING:
    from licentia.containers.token import TokenContainer, TokenEvent
    from licentia.runtime.host import Runtime

Message = dict[str, Any]

# Errors that mean this runtime cannot use the token any more.
LOST = frozenset({ErrorCode.TOKEN_REMOVED, ErrorCode.TOKEN_TAKEN_AWAY, ErrorCode.TOKEN_LOCKED_OUT})
_LOST_CODES = frozenset(int(code) for code in LOST)


class RuntimeTokens:
    """The token containers a runtime serves."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.held: dict[str, Held] = {}
        self.lost: dict[str, Lost] = {}
        self.module: str | None = None
        self.runtime_id = ""
        self.scan_error = ""
        self._task: asyncio.Task[None] | None = None
        self._scanning = False

    # -- life --

    async def start(self) -> None:
        rt = self.rt
        if not rt.config.tokens:
            return
        self.module = self._module()
        if not self.module:
            return
        self.runtime_id = runtime_id(rt.home.state)
        try:
            await self.scan()
        except Exception as exc:  # a module that misbehaves must not keep the runtime from starting
            self.scan_error = f"{self.module}: {exc!r}"
            rt._note_problem(f"token scan: {exc!r}")
        self._task = asyncio.get_running_loop().create_task(self._scan_loop())

    def _module(self) -> str | None:
        cfg = self.rt.config
        if cfg.token_module:
            return str(cfg.path(self.rt.home.path, cfg.token_module))
        from licentia.containers.store import ContainerStore

        store = ContainerStore(self.rt.home.containers, self.rt.fingerprint)
        try:
            return store.configured_module()
        except LicentiaError as exc:
            self.scan_error = exc.message
            return None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        held, self.held = list(self.held.values()), {}
        writers = []
        for h in held:
            ld = self.rt.containers.drop(h.serial) if isinstance(self.rt.containers, RuntimeContainers) else None
            if ld is not None:
                writers.append(ld.writer)
        if held:
            await asyncio.get_running_loop().run_in_executor(None, close_all, held, True, writers)

    async def _scan_loop(self) -> None:
        interval = self.rt.config.token_scan_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.scan()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep serving; say what failed
                self.rt._note_problem(f"token scan: {exc!r}")

    # -- finding and claiming --

    async def scan(self) -> None:
        """Open and claim the token containers not served yet; refresh the served ones."""
        if self._scanning or self.module is None:
            return
        self._scanning = True
        try:
            loop = asyncio.get_running_loop()
            skip = set(self.held)
            pins = {serial: lost.pin_mark for serial, lost in self.lost.items() if not lost.retry}
            held_elsewhere = {serial for serial, lost in self.lost.items() if lost.kind in ("taken away", "locked out")}
            # a pulled token is looked for again in a fresh slot list: plugged back, it is taken back
            refresh = any(lost.kind == "gone" for lost in self.lost.values())
            result = await loop.run_in_executor(None, self._scan_tokens, self.module, skip, pins, held_elsewhere,
                                                int(time.time()), refresh)
            self.scan_error = result.error
            for serial, lost in result.refused.items():
                previous = self.lost.get(serial)
                if previous is not None and previous.kind == "gone" and lost.kind in ("gone", "refused"):
                    continue  # a pulled token's remains: it stays reported as gone
                if previous is not None and lost.content is None:
                    lost.content = previous.content
                self._set_lost(serial, lost)
                if previous is None or (previous.kind, previous.code) != (lost.kind, lost.code):
                    self.rt._note_problem(f"token container {serial}: {lost.detail}")
                    _say(f"token container {serial}: {lost.kind} ({lost.code}): {lost.detail}")
            for serial, container, content, outcome in result.opened:
                self._serve(serial, container, content, outcome)
            for serial in list(self.held):
                await self._refresh(serial)
        finally:
            self._scanning = False

    def _scan_tokens(self, module: str, skip: set[str], pins: dict[str, str], held_elsewhere: set[str],
                     now: int, refresh: bool = False) -> ScanResult:
        """In a worker thread: the token containers of `module` not in `skip`, opened and claimed."""
        rt = self.rt
        return scan_tokens(module, skip, pins, held_elsewhere, now, refresh, runtime_id=self.runtime_id,
                           home=rt.home.path, pin_for=lambda serial: token_pin(rt, serial))

    def _serve(self, serial: str, container: TokenContainer, content: ContainerContent, outcome: str) -> None:
        rt = self.rt
        containers = rt.containers
        assert isinstance(containers, RuntimeContainers)
        label, slot = container.token.label, container.token.slot_id
        writer = containers.writer_for(container, serial)
        ld = Loaded(serial, Path(f"pkcs11:token={label};slot={slot}"), container,  # type: ignore[arg-type]
                    content, None, writer, container.sign_public, container.status(content))
        containers.put(ld, "token")
        before = self.lost.pop(serial, None)
        containers.withdrawn_token(serial, None, None)
        back = f" (taken back: it was {before.kind})" if before is not None and before.code is not None else ""
        _say(f"token container {serial} on token '{label}' slot {slot}: {outcome}{back}")
        held = Held(serial, container, label, slot, time.time(), outcome)
        self.held[serial] = held
        loop = asyncio.get_running_loop()

        def on_event(event: TokenEvent) -> None:  # on the watch thread
            loop.call_soon_threadsafe(self._on_event, serial, container, event)

        held.watch = container.watch(on_event, interval=rt.config.token_watch_interval)
        note = {"event": "container-added", "at": round(time.time(), 3), "container": serial, "kind": "token",
                "token": label, "slot": slot, "runtime_id": self.runtime_id, "claim": outcome}
        if rt.log is not None:
            rt.log.note(note)
        rt.recent_seq += 1
        rt.recent.append((rt.recent_seq, note))

    async def _refresh(self, serial: str) -> None:
        """Read the token's content again (a tool may have applied an update meanwhile)."""
        h = self.held.get(serial)
        ld = self.rt.containers.loaded.get(serial)
        if h is None or ld is None or ld.container is not cast(Any, h.container):
            return
        before = ld.content
        try:
            after = await ld.writer.submit(lambda c: (c, c))  # read through the writer: never stale
        except LicentiaError as exc:
            if exc.code in LOST:
                self.lose(serial, exc)
            return
        changed = _changed_items(serial, before, after)
        if changed:
            self.rt._container_changes(Changes(changed_items=changed))

    # -- losing a token --

    def _on_event(self, serial: str, container: TokenContainer, event: TokenEvent) -> None:
        h = self.held.get(serial)
        if h is None or h.container is not container:
            return
        self.lose(serial, event.error, kind=event.kind.value)

    def lose(self, serial: str, error: LicentiaError, *, kind: str | None = None) -> None:
        """The token is no longer ours: free its seats, report it, close it."""
        h = self.held.pop(serial, None)
        if h is None:
            return
        kind = kind or {ErrorCode.TOKEN_REMOVED: "gone", ErrorCode.TOKEN_TAKEN_AWAY: "taken away",
                        ErrorCode.TOKEN_LOCKED_OUT: "locked out"}.get(error.code, "failed")
        if error.code is ErrorCode.TOKEN_LOCKED_OUT and h.container.lockout is not None:
            error = h.container.lockout  # the lockout itself (a copy that passed the writer only has its text)
        ld = self.rt.containers.loaded.get(serial)
        self._set_lost(serial, Lost(kind, int(error.code), error.message, time.time(), h.label,
                                    content=None if ld is None else ld.content, error=error))
        freed = withdraw(self.rt, serial, "token", f"token {kind}", error.message, error.code)
        _say(f"token container {serial} on token '{h.label}' {kind} ({int(error.code)}): {error.message}; "
             f"{freed} seat(s) freed")
        asyncio.get_running_loop().run_in_executor(None, close_all, [h], False)

    def _set_lost(self, serial: str, lost: Lost) -> None:
        self.lost[serial] = lost
        if isinstance(self.rt.containers, RuntimeContainers):
            lost_for_programs = lost.code in _LOST_CODES
            self.rt.containers.withdrawn_token(serial, lost.content, lost.error_at if lost_for_programs else None)

    # -- the license path --

    def _prove(self, serial: str, challenge: bytes) -> Awaitable[bytes]:
        h = self.held.get(serial)
        if h is None:
            raise LicentiaError(ErrorCode.CONTAINER_NOT_FOUND, f"token container {serial} is no longer here")
        return asyncio.get_running_loop().run_in_executor(None, h.container.prove, challenge, int(time.time()))

    async def grant(self, msg: Message, ld: Loaded, item_id: int, handle: int, mode: Any, request: ItemRequest,
                    now: int, local: bool, write: bool) -> Message:
        """Finish a grant on a token: record a first use if needed, then have the token
        prove it is here (signing the program's challenge, or a fresh one)."""
        rt = self.rt
        firm = msg["firm"]
        nonce = msg.get("nonce")
        try:
            if write:
                entry = await ld.writer.submit(first_use_op(firm, item_id, request, now))
            else:
                entry = ld.content.firms[firm].items[item_id]
            until = valid_until(entry.item, entry.state)
            if nonce:
                challenge = proof_message(nonce, handle, ld.serial, firm, item_id, entry.state.units_remaining, until)
            else:
                from licentia.containers.token import presence_challenge

                challenge = presence_challenge(os.urandom(32))
            signature = await self._prove(ld.serial, challenge)
        except LicentiaError as exc:
            release_seat(rt, handle)
            if exc.code in LOST:
                self.lose(ld.serial, exc)
            raise
        if handle not in rt.seats:
            raise LicentiaError(ErrorCode.INVALID_HANDLE, "the license was released while it was being granted")
        bare = dict(msg)
        bare.pop("nonce", None)
        reply = rt._grant_reply(bare, ld, entry, handle, mode, local)
        if nonce:
            reply["proof"] = signature
        return reply

    async def decrement(self, msg: Message, ld: Loaded, sess: Session, units: int) -> Message:
        key = sess.key
        try:
            remaining = await ld.writer.submit(decrement_op(key.firm_code, key.item_id, units, int(time.time())))
            self.rt._log_decrement(sess, units, remaining)
            reply: Message = {"id": msg["id"], "ok": True, "units": remaining}
            nonce = msg.get("nonce")
            if isinstance(nonce, bytes) and nonce:
                entry = ld.content.firms[key.firm_code].items[key.item_id]
                until = valid_until(entry.item, entry.state)
                reply["valid_until"] = until
                reply["proof"] = await self._prove(ld.serial, proof_message(
                    nonce, sess.handle, ld.serial, key.firm_code, key.item_id, remaining, until))
        except LicentiaError as exc:
            if exc.code in LOST:
                self.lose(ld.serial, exc)
            raise
        return reply

    async def prove_reply(self, reply: Message, ld: Loaded, nonce: bytes, handle: int, firm: int, item_id: int,
                          units: int | None, until: int | None) -> Message:
        """A check answer with the token's proof; if the token is gone, the answer says so."""
        try:
            reply["proof"] = await self._prove(ld.serial, proof_message(nonce, handle, ld.serial, firm, item_id,
                                                                        units, until))
        except LicentiaError as exc:
            if exc.code not in LOST and exc.code is not ErrorCode.CONTAINER_NOT_FOUND:
                raise
            if exc.code in LOST:
                self.lose(ld.serial, exc)
            return self.rt._gone_reply(reply["id"], handle)
        return reply

    # -- what the status API shows --

    def rows(self) -> list[dict[str, Any]]:
        """The status API's rows; texts that count time are computed now."""
        now = int(time.time())
        rows: list[dict[str, Any]] = []
        for serial, h in sorted(self.held.items()):
            ld = self.rt.containers.loaded.get(serial)
            rows.append({"serial": serial, "kind": "token", "status": ld.status.value if ld else "ok",
                         "binding": f"token '{h.label}' slot {h.slot}; claimed by this runtime ({self.runtime_id}, "
                                    f"{h.outcome})",
                         "items": len(ld.content.entries()) if ld else None,
                         "path": f"pkcs11:token={h.label};slot={h.slot}", "runtime_id": self.runtime_id})
        for serial, lost in sorted(self.lost.items()):
            if serial in self.held:
                continue
            rows.append({"serial": serial, "kind": "token", "status": lost.kind, "binding": lost.detail_at(now),
                         "items": None, "path": f"pkcs11:token={lost.label}", "code": lost.code, "since": lost.at})
        if self.scan_error:
            rows.append({"serial": "-", "kind": "token", "status": "unavailable", "binding": self.scan_error,
                         "items": None, "path": self.module or ""})
        return rows


def _say(text: str) -> None:
    """A line on the runtime's console (its standard error)."""
    with contextlib.suppress(OSError, ValueError):
        print(f"licentia runtime: {text}", file=sys.stderr, flush=True)


__all__ = ["LOST", "REMOVED", "RuntimeContainers", "RuntimeTokens", "release_seat", "runtime_id", "withdraw"]
