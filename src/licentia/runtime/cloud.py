"""Cloud containers in the runtime: licenses that stay in central, offered through a credential file.

`licentia runtime serve --cloud-credential FILE` (repeatable; or `[cloud] credentials` in
runtime.toml) makes the runtime offer the licenses of each cloud container (mask 140) to
its programs and, in network mode, to other machines. Central counts the seats:

- every `[cloud] refresh` seconds the runtime asks central for the container's items
  (`POST /api/cloud/items`); they are served like the items of any container, so the
  status API, the seat table and the usage log show them;
- an access first takes a seat in the runtime's own table, then takes one in central
  (`/api/cloud/access`); only when central grants it does the program get its answer.
  The runtime sends its own Ed25519 key for the container (kept in
  `state/cloud-SERIAL.key`), and central answers with a grant (magic LCCG) and a license
  for that key, both signed by the firm: the runtime checks them against the firm key in
  the credential file, and the program verifies the license and the runtime's proof as
  for any other container;
- the seat is leased (`[cloud] lease`, 300 s) and kept by heartbeats every third of the
  lease; when the program releases or ends, the runtime gives the seat back to central
  (within a quarter second);
- central refusing the credential (a new credential file was issued) or the container
  (blacklisted) ends it at once: the runtime frees every seat of it and reports the
  container removed, as for a pulled token. A new credential file put in the same place
  is read at the next refresh.

Without central, a cloud container grants nothing (the items stay listed, accesses are
refused with 100). A seat whose lease central let run out is freed here at the next
heartbeat. Seats are persisted across a restart (`state/cloud-seats.json`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from licentia.core.clock import VirtualClock
from licentia.core.cloud import (
    Credential,
    check_grant,
    item_from_wire,
    parse_credential,
    read_grant,
)
from licentia.core.content import ContainerContent, FirmEntry, ItemEntry
from licentia.core.evaluate import valid_until
from licentia.core.licenses import check_license_for, read_license
from licentia.crypto import new_signing_key, signing_public_key
from licentia.fsutil import atomic_write
from licentia.model import (
    ContainerSerial,
    ErrorCode,
    ItemState,
    LicentiaError,
)
from licentia.runtime.cloudsource import CloudHold, MemoryContainer, Source
from licentia.runtime.licenses import Loaded
from licentia.runtime.proofs import make_proof
from licentia.runtime.sync import CentralHTTP
from licentia.runtime.tokens import RuntimeContainers, release_seat, withdraw

if TYPE_CHECKING:
    from licentia.runtime.host import Runtime
    from licentia.runtime.ident import Ident

Message = dict[str, Any]
T = TypeVar("T")

HOLDS_FILE = "cloud-seats.json"
TICK = 0.25  # seconds between looks at released seats and due heartbeats
# Central's answers that end a cloud container here.
ENDING = {ErrorCode.CREDENTIAL_INVALID: "credential refused", ErrorCode.LOCKED: "locked by the vendor"}


class RuntimeCloud:
    """The cloud containers a runtime offers."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.sources: list[Source] = []
        self.by_serial: dict[str, Source] = {}
        self.holds: dict[int, CloudHold] = {}
        self._task: asyncio.Task[None] | None = None

    # -- life --

    async def start(self) -> None:
        rt = self.rt
        paths = [rt.config.path(rt.home.path, p) for p in rt.config.cloud_credential]
        if not paths:
            return
        self.sources = [Source(path) for path in dict.fromkeys(paths)]
        for src in self.sources:
            self._read_source(src)
        self._restore_holds()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.sources:
            self._save_holds()
        clients = [s.http for s in self.sources if s.http is not None]
        for s in self.sources:
            s.http = None
        for client in clients:
            await asyncio.get_running_loop().run_in_executor(None, client.close)

    def _holds_path(self) -> Path:
        return self.rt.home.state / HOLDS_FILE

    def _save_holds(self) -> None:
        doc = [{"handle": h.handle, "serial": h.serial, "central_handle": h.central_handle, "item_id": h.item_id,
                "expires_at": h.expires_at} for h in self.holds.values()]
        with contextlib.suppress(OSError):
            atomic_write(self._holds_path(), json.dumps(doc).encode(), mode=0o600)

    def _restore_holds(self) -> None:
        """Seats held in central before a restart: kept for the programs whose seats came back
        with the seat snapshot, given back (by the loop) for the others."""
        path = self._holds_path()
        try:
            doc = json.loads(path.read_text())
            path.unlink()
        except (OSError, ValueError):
            doc = []
        for raw in doc if isinstance(doc, list) else []:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                hold = CloudHold(int(raw["handle"]), str(raw["serial"]), str(raw["central_handle"]),
                                 int(raw["item_id"]), int(raw["expires_at"]))
                self.holds[hold.handle] = hold

    async def _loop(self) -> None:
        while True:
            now = time.time()
            self._reconcile()
            for src in self.sources:
                if now >= src.next_refresh and not src.refreshing:
                    src.refreshing = True
                    self.rt._spawn(self._refresh(src))
            for hold in list(self.holds.values()):
                if now >= hold.next_beat and not hold.beating:
                    hold.beating = True
                    self.rt._spawn(self._heartbeat(hold))
            await asyncio.sleep(TICK)

    # -- the credential and the items --

    def _read_source(self, src: Source) -> bool:
        """Read the credential file if it changed; True when it did."""
        try:
            st = src.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp == src.stamp and (src.credential is not None or src.state == "invalid"):
            return False
        src.stamp = stamp
        old = src.serial
        credential: Credential | None = None
        try:
            credential = parse_credential(src.path.read_bytes())
        except OSError as exc:
            error = LicentiaError(ErrorCode.INVALID_PARAMETER, f"cannot read {src.path}: {exc.strerror}")
        except LicentiaError as exc:
            error = exc
        if old is not None and (credential is None or str(credential.serial) != old):
            self._end(src, "credential replaced", "the credential file names another container now", None)
            self.by_serial.pop(old, None)
        if credential is None:
            src.credential, src.state, src.detail, src.code = None, "invalid", f"{src.path}: {error.message}", int(error.code)
            self.rt._note_problem(f"cloud credential {src.path}: {error.message}")
            return True
        if src.http is not None and (src.credential is None or src.credential.central != credential.central):
            http, src.http = src.http, None
            asyncio.get_running_loop().run_in_executor(None, http.close)
        src.credential = credential
        serial = str(credential.serial)
        self.by_serial[serial] = src
        src.key = self._key(serial)
        src.firm_key = credential.firm_public_key or src.firm_key
        src.firm_code = credential.firm_code
        if src.state in ("invalid", "credential refused", "locked by the vendor", "starting"):
            src.state, src.detail, src.code = "starting", "", None
        return True

    def _key(self, serial: str) -> bytes:
        """This runtime's key for a cloud container (central binds its licenses to it)."""
        path = self.rt.home.state / f"cloud-{serial}.key"
        with contextlib.suppress(OSError):
            data = path.read_bytes()
            if len(data) == 32:
                return data
        key = new_signing_key()
        atomic_write(path, key, mode=0o600)
        return key

    def _client(self, src: Source) -> CentralHTTP:
        assert src.credential is not None
        if src.http is None:
            src.http = CentralHTTP(src.credential.central, self.rt.config.central_timeout, self.rt.home.tls / "pins")
        return src.http

    async def _call(self, src: Source, path: str, **body: Any) -> dict[str, Any]:
        assert src.credential is not None
        http = self._client(src)
        payload = {"serial": str(src.credential.serial), "secret": src.credential.secret, **body}
        return await asyncio.get_running_loop().run_in_executor(None, http.post, path, payload)

    async def _refresh(self, src: Source) -> None:
        try:
            await self._refresh_now(src)
        except Exception as exc:  # keep serving; say what failed
            self.rt._note_problem(f"cloud container {src.serial or src.path}: {exc!r}")
        finally:
            src.refreshing = False
            src.next_refresh = time.time() + (self.rt.config.cloud_refresh if src.state == "ok"
                                               else min(self.rt.config.cloud_refresh, 5.0))

    async def _refresh_now(self, src: Source) -> None:
        self._read_source(src)
        credential = src.credential
        if credential is None or src.state in ENDING.values():
            return
        loop = asyncio.get_running_loop()
        try:
            if src.firm_key is None:  # an older credential file: trust central's key on first use
                health = await loop.run_in_executor(None, self._client(src).call, "GET", "/api/health", None)
                src.firm_key = bytes.fromhex(str(health["public_key"]))
            answer = await self._call(src, "/api/cloud/items")
            firm_code = int(answer["firm_code"])
            if credential.firm_code is not None and firm_code != credential.firm_code:
                raise LicentiaError(ErrorCode.SECURITY_PROBLEM, f"central serves firm {firm_code}, the credential "
                                                                f"names firm {credential.firm_code}")
            content = self._content(src, firm_code, answer["items"])
        except LicentiaError as exc:
            if exc.code in ENDING:
                self._end(src, ENDING[exc.code], exc.message, exc.code)
            else:
                if src.state != "unreachable" or src.code != int(exc.code):
                    self.rt._note_problem(f"cloud container {credential.serial}: {exc.message}")
                src.state, src.detail, src.code = "unreachable", exc.message, int(exc.code)
            return
        except (KeyError, TypeError, ValueError) as exc:
            src.state, src.detail, src.code = "unreachable", f"central's answer is malformed: {exc!r}", None
            return
        src.firm_code = firm_code
        src.state, src.detail, src.code = "ok", "", None
        src.items = len(answer["items"])
        self._serve(src, content)

    def _content(self, src: Source, firm_code: int, rows: list[dict[str, Any]]) -> ContainerContent:
        assert src.credential is not None and src.firm_key is not None
        now = int(time.time())
        items: dict[int, ItemEntry] = {}
        for row in rows:
            item_id = int(row["item_id"])
            item = item_from_wire(row["item"])
            since = row.get("since")
            state = ItemState(units_remaining=item.units, usage_started_at=since if isinstance(since, int) else None,
                              checkpoint_at=now if item.checkpoint_period else None)
            items[item_id] = ItemEntry(item_id, src.licenses.get(item_id, b""), item, state)
        content = ContainerContent(src.credential.serial, now, src.key, os.urandom(32),
                                   VirtualClock(high_water=now))
        return content.with_firm(FirmEntry(firm_code, src.firm_key, 0, "", items))

    def _serve(self, src: Source, content: ContainerContent) -> None:
        rt = self.rt
        src.products = {(f, e.item.product_code) for f, fe in content.firms.items() for e in fe.items.values()}
        containers = rt.containers
        assert isinstance(containers, RuntimeContainers)
        serial = str(content.serial)
        if src.served and serial in containers.loaded:
            changes = containers.replace_content(serial, content)
            ld = containers.loaded[serial]
            if isinstance(ld.container, MemoryContainer):
                ld.container.content = content
            if changes.changed_items:
                rt._container_changes(changes)
            return
        mem = MemoryContainer(content)
        ld = Loaded(serial, src.path, mem, content, None, containers.writer_for(mem, serial),  # type: ignore[arg-type]
                    signing_public_key(src.key), mem.status(content))
        containers.put(ld, "cloud")
        src.served = True
        self._drop_orphans(serial)
        assert src.credential is not None
        note = {"event": "container-added", "at": round(time.time(), 3), "container": serial, "kind": "cloud",
                "central": src.credential.central, "items": len(content.entries())}
        if rt.log is not None:
            rt.log.note(note)
        rt.recent_seq += 1
        rt.recent.append((rt.recent_seq, note))

    def _drop_orphans(self, serial: str) -> None:
        """Seats of this container that came back with the snapshot but hold nothing in central."""
        rt = self.rt
        held = {h.handle for h in self.holds.values()}
        orphans = [s.handle for s in rt.seats.sessions() if s.key.container == serial and s.handle not in held]
        for handle in orphans:
            rel = rt.seats.force_release(handle, time.time())
            if rt.log is not None:
                for ev in rel.events:
                    rt.log.record(ev, {"reason": "cloud-seat-lost", "detail": "no seat in central after a restart"})
            rt._forget_later(handle, "freed on the server")
        if orphans:
            rt._seats_changed()

    def _end(self, src: Source, state: str, detail: str, code: ErrorCode | None) -> None:
        """Central refuses the container: every seat of it freed, the container reported removed."""
        serial = src.serial
        src.state, src.detail, src.code = state, detail, int(code) if code is not None else None
        if serial is None:
            return
        for handle in [h for h, hold in self.holds.items() if hold.serial == serial]:
            del self.holds[handle]  # nothing to give back: central no longer knows this credential
        if src.served:
            src.served = False
            withdraw(self.rt, serial, "cloud", state, detail, code)

    # -- the license path --

    async def grant(self, msg: Message, ld: Loaded, entry: ItemEntry, handle: int, mode: Any, ident: Ident,
                    local: bool) -> Message:
        """Take the seat in central too; answer with central's license for this runtime's key."""
        rt = self.rt
        serial = ld.serial
        src = self.by_serial.get(serial)
        firm, product = msg["firm"], msg["product"]
        lease = rt.config.cloud_lease
        public = ld.public_key
        try:
            if src is None or src.credential is None or src.firm_key is None or src.state in ENDING.values():
                raise LicentiaError(ErrorCode.CONTAINER_NOT_FOUND, f"cloud container {serial} is no longer offered")
            station = str(ident.station)[:200] or rt.host_name
            answer = await self._call(src, "/api/cloud/access", product_code=product, station=station,
                                      feature_code=int(msg.get("feature", 0)), lease=lease, container_key=public.hex())
            try:
                grant_bytes = bytes.fromhex(str(answer["grant"]))
                license_bytes = bytes.fromhex(str(answer["license"]))
                central_handle = str(answer["handle"])
            except (KeyError, ValueError) as exc:
                raise LicentiaError(ErrorCode.CENTRAL_ERROR, f"central's seat answer is malformed ({exc!r})") from None
            grant = read_grant(grant_bytes, src.firm_key)
            check_grant(grant, serial=serial, firm_code=firm, product_code=product, handle=central_handle)
            lic = read_license(license_bytes, src.firm_key)
            check_license_for(lic, ContainerSerial.parse(serial), public, firm)
            if lic.item_id != grant.item_id or lic.item.product_code != product:
                raise LicentiaError(ErrorCode.SECURITY_PROBLEM, "central's license and grant name different items")
        except LicentiaError as exc:
            release_seat(rt, handle)
            if src is not None and exc.code in ENDING:
                self._end(src, ENDING[exc.code], exc.message, exc.code)
            raise
        except BaseException:
            release_seat(rt, handle)
            raise
        self.holds[handle] = CloudHold(handle, serial, central_handle, grant.item_id, grant.expires_at,
                                       next_beat=time.time() + lease / 3)
        if handle not in rt.seats:  # released while central was asked: the loop gives the seat back
            raise LicentiaError(ErrorCode.INVALID_HANDLE, "the license was released while it was being granted")
        src.licenses[grant.item_id] = license_bytes
        current = ld.content.firms.get(firm)
        known = current.items.get(grant.item_id) if current is not None else None
        if known is None:
            known = ItemEntry(grant.item_id, license_bytes, lic.item, ItemState(units_remaining=lic.item.units))
        item_entry = replace(known, license=license_bytes)
        bare = dict(msg)
        bare.pop("nonce", None)
        reply = rt._grant_reply(bare, ld, item_entry, handle, mode, local)
        nonce = msg.get("nonce")
        if nonce:
            state = item_entry.state
            reply["proof"] = make_proof(ld.content, nonce, handle, firm, grant.item_id, state.units_remaining,
                                        valid_until(item_entry.item, state))
        reply["cloud"] = {"central": src.credential.central, "lease_until": grant.expires_at, "grant": grant_bytes}
        return reply

    def _reconcile(self) -> None:
        """Seats released here (program, reaper, administrator) go back to central."""
        seats = self.rt.seats
        for handle in [h for h in self.holds if h not in seats]:
            hold = self.holds.pop(handle)
            src = self.by_serial.get(hold.serial)
            if src is not None and src.credential is not None and src.state not in ENDING.values():
                self.rt._spawn(self._give_back(src, hold))

    async def _give_back(self, src: Source, hold: CloudHold) -> None:
        try:
            await self._call(src, "/api/cloud/release", handle=hold.central_handle)
        except LicentiaError as exc:
            if exc.code in ENDING:
                self._end(src, ENDING[exc.code], exc.message, exc.code)
            elif exc.code is not ErrorCode.INVALID_HANDLE:
                self.rt._note_problem(f"giving cloud seat {hold.central_handle} of {hold.serial} back: {exc.message}")

    async def _heartbeat(self, hold: CloudHold) -> None:
        rt = self.rt
        lease = rt.config.cloud_lease
        try:
            src = self.by_serial.get(hold.serial)
            if src is None or src.credential is None or hold.handle not in self.holds:
                return
            try:
                answer = await self._call(src, "/api/cloud/heartbeat", handle=hold.central_handle, lease=lease)
            except LicentiaError as exc:
                if exc.code in ENDING:
                    self._end(src, ENDING[exc.code], exc.message, exc.code)
                elif exc.code is ErrorCode.INVALID_HANDLE:
                    self._seat_lost(hold, exc.message)
                else:
                    hold.next_beat = time.time() + min(5.0, lease / 6)
                return
            hold.expires_at = int(answer.get("expires_at", hold.expires_at))
            hold.next_beat = time.time() + lease / 3
        finally:
            hold.beating = False

    def _seat_lost(self, hold: CloudHold, why: str) -> None:
        """Central no longer holds the seat (its lease ran out): free it here too."""
        rt = self.rt
        self.holds.pop(hold.handle, None)
        if hold.handle not in rt.seats:
            return
        rel = rt.seats.force_release(hold.handle, time.time())
        if rt.log is not None:
            for ev in rel.events:
                rt.log.record(ev, {"reason": "cloud-seat-lost", "detail": why[:300]})
        rt._forget_later(hold.handle, "freed on the server")
        rt._seats_changed()

    def refusal(self, firm: int, product: int, container: str | None) -> LicentiaError | None:
        """Why no container offers firm/product any more, when a cloud container that did (or,
        never served, names that firm) was refused by central: its code (1210 for a replaced
        credential) and the status page's text, instead of "not found"."""
        for src in self.sources:
            if src.state not in ENDING.values() or src.code is None or (container and container != src.serial):
                continue
            if (firm, product) in src.products or (not src.products and src.firm_code == firm):
                return LicentiaError(ErrorCode(src.code), f"cloud container {src.serial} ({src.state}): {src.detail}")
        return None

    # -- what the status API shows --

    def rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for src in self.sources:
            serial = src.serial or "-"
            central = src.credential.central if src.credential is not None else ""
            row: dict[str, Any] = {
                "serial": serial, "kind": "cloud", "status": src.state,
                "binding": f"central {central}" + (f"; {src.detail}" if src.detail else "") if central else src.detail,
                "items": src.items if src.served else None, "path": str(src.path),
                "seats": sum(1 for h in self.holds.values() if h.serial == serial)}
            if src.code is not None:
                row["code"] = src.code
            rows.append(row)
        return rows


__all__ = ["CloudHold", "MemoryContainer", "RuntimeCloud", "Source"]
