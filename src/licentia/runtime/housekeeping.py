"""Housekeeping off the license path: seats of ended programs reaped, network clients that
fell silent expired, the containers rescanned, the seat snapshot written shortly after a
change (and read back at start), the usage log flushed and checkpointed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Awaitable
from typing import Any, Protocol

import msgpack

from licentia.core.seats import Event, ProcessId, ReleaseReason, SeatTable
from licentia.fsutil import atomic_write
from licentia.model import ErrorCode, LicentiaError
from licentia.protocol.frames import Message
from licentia.runtime import procs
from licentia.runtime.config import RuntimeConfig
from licentia.runtime.events import CONTAINER_REMOVED, ITEM_CHANGED, Events
from licentia.runtime.home import RuntimeHome
from licentia.runtime.licenses import Changes
from licentia.runtime.network import REMOTE_BASE, NetworkClient, RemoteHold
from licentia.runtime.tokens import RuntimeContainers
from licentia.runtime.usagelog import UsageLog

SNAPSHOT_FORMAT = "licentia.runtime-state"


class HousekeepingHost(Protocol):
    """What housekeeping uses of the runtime."""

    home: RuntimeHome
    config: RuntimeConfig
    seats: SeatTable
    containers: RuntimeContainers
    network: NetworkClient
    events: Events
    log: UsageLog | None

    def _note_problem(self, text: str) -> None: ...

    def _spawn(self, coro: Awaitable[Any]) -> None: ...


class Housekeeping:
    def __init__(self, rt: HousekeepingHost) -> None:
        self.rt = rt
        self._snapshot_handle: asyncio.TimerHandle | None = None
        # a snapshot is due and not begun: a change now is in it (so callers on the license
        # path may skip `seats_changed`)
        self.snapshot_pending = False
        self._snapshot_running = False
        self._snapshot_again = False
        self._snapshot_future: asyncio.Future[None] | None = None
        self._log_timer: asyncio.TimerHandle | None = None
        self._rescan_lock = asyncio.Lock()
        # the runtime's loop, once known: asking asyncio costs a getpid() system call
        # (Python 3.11), too much for every batch of the usage log and every seat change
        self._loop: asyncio.AbstractEventLoop | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    # ================================================================== reaping

    def reap_now(self) -> None:
        """Free the seats of programs that ended and of network clients that fell silent."""
        rt = self.rt
        now = time.time()
        dead = [p for p in rt.seats.processes() if not procs.alive(p.pid, p.start_time)]
        if dead:
            self.after_release(rt.seats.reap_processes(dead, now))
        expired = rt.seats.expire_clients(now, rt.config.client_timeout)
        if expired:
            self.after_release(expired)
        for hold in list(rt.network.remote.values()):
            p = hold.holder.process
            if p is not None and not procs.alive(p.pid, p.start_time):
                rt._spawn(rt.network.release(0, hold, ReleaseReason.REAPED))

    def check_process_soon(self, process: ProcessId) -> None:
        """A program's connection closed: if it ended, free its seats without waiting."""
        loop = asyncio.get_running_loop()
        rt = self.rt

        def check(tries: int) -> None:
            if procs.alive(process.pid, process.start_time):
                if tries:
                    loop.call_later(0.1, check, tries - 1)
                return
            if process in rt.seats.processes():
                self.after_release(rt.seats.reap_processes([process], time.time()))
            for hold in list(rt.network.remote.values()):
                if hold.holder.process == process:
                    rt._spawn(rt.network.release(0, hold, ReleaseReason.REAPED))

        loop.call_soon(check, 3)

    def after_release(self, events: tuple[Event, ...]) -> None:
        """Log seats freed by the runtime (not by their programs) and remember why."""
        ev_memory = self.rt.events
        ev_memory.log_events(events)
        for ev in events:
            if ev.handle is not None:
                ev_memory.handle_events.pop(ev.handle, None)
                ev_memory.net_pids.pop(ev.handle, None)
                if ev.reason is not None and ev.reason is not ReleaseReason.PROGRAM:
                    ev_memory.forget_later(ev.handle, ev.reason.value)
        self.seats_changed()

    # ================================================================== containers

    async def rescan(self) -> Changes:
        """Read the containers directory again and apply what changed. One scan at a
        time: a scan that read the disk earlier must not be applied after a later one."""
        async with self._rescan_lock:
            loop = asyncio.get_running_loop()
            containers = self.rt.containers
            result = await loop.run_in_executor(None, containers.scan_disk, int(time.time()))
            changes = containers.apply_scan(result)
            if changes.added or changes.removed or changes.changed_items:
                self.container_changes(changes)
            return changes

    async def op_rescan(self, conn: Any, msg: Message) -> Message:
        """`rescan` (an administrator's, e.g. `licentia update apply` after it changed a
        container): the containers read again now, so the next access sees the change."""
        ident = conn.ident
        if ident is None or ident.kind != "admin":
            raise LicentiaError(ErrorCode.ACCESS_DENIED, "a rescan needs an admin connection",
                                "run it as the runtime's user or root; the runtime rescans by itself every few seconds")
        changes = await self.rescan()
        return {"id": msg["id"], "ok": True, "added": len(changes.added), "removed": len(changes.removed),
                "changed": len(changes.changed_items)}

    def container_changes(self, changes: Changes) -> None:
        rt = self.rt
        assert rt.log is not None
        for serial in changes.added:
            rt.log.note({"event": "container-added", "container": serial})
        for serial in changes.removed:
            rt.log.note({"event": "container-removed", "container": serial})
        if changes.changed_items and rt.events.free_gone_items(rt.seats, rt.containers.loaded,
                                                               changes.changed_items, time.time()):
            self.seats_changed()
        removed = set(changes.removed)
        for sess in rt.seats.sessions():
            key = sess.key
            if key.container in removed:
                rt.events.notify(sess.handle, CONTAINER_REMOVED)
            elif (key.container, key.firm_code, key.item_id) in changes.changed_items:
                rt.events.notify(sess.handle, ITEM_CHANGED)

    # ================================================================== usage log

    def log_pending(self, full: bool) -> None:
        """The usage log has entries to write: a full batch is written right after the
        requests at hand; else one timer bounds how long any entry waits (no timer runs
        while nothing happens)."""
        if full:
            self._running_loop().call_soon(self.flush_log)
        elif self._log_timer is None:
            self._log_timer = self._running_loop().call_later(self.rt.config.log_flush_interval,
                                                              self._log_timer_fired)

    def _log_timer_fired(self) -> None:
        self._log_timer = None
        self.flush_log()

    def flush_log(self) -> None:
        log = self.rt.log
        if log is not None and log.pending:
            try:
                log.flush()
            except OSError as exc:  # a full disk must not stop the license service; say so where one can
                print(f"licentia runtime: cannot write the usage log: {exc}", file=sys.stderr)

    def checkpoint_log(self) -> None:
        if self.rt.log is not None:
            self.rt.log.checkpoint(sync=True)

    # ================================================================== the seat snapshot

    def seats_changed(self) -> None:
        if self._snapshot_handle is None and not self._snapshot_running:
            self._snapshot_handle = self._running_loop().call_later(self.rt.config.snapshot_delay,
                                                                    self._start_snapshot)
            self.snapshot_pending = True
        elif self._snapshot_running:
            self._snapshot_again = True

    def _snapshot_bytes(self) -> bytes:
        rt = self.rt
        doc = {"format": SNAPSHOT_FORMAT, "version": 1, "seats": rt.seats.snapshot(),
               "remote": [h.to_list() for h in rt.network.remote.values()], "next_remote": rt.network.next_remote,
               "net_pids": list(rt.events.net_pids.items())}
        data: bytes = msgpack.packb(doc, use_bin_type=True)
        return data

    def _start_snapshot(self) -> None:
        self._snapshot_handle = None
        self.snapshot_pending = False
        self._snapshot_running = True
        data = self._snapshot_bytes()
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, atomic_write, self.rt.home.snapshot, data)
        self._snapshot_future = fut

        def done(f: asyncio.Future[None]) -> None:
            self._snapshot_running = False
            if f.exception() is not None:
                self.rt._note_problem(f"seat snapshot: {f.exception()!r}")
            if self._snapshot_again:
                self._snapshot_again = False
                self.seats_changed()

        fut.add_done_callback(done)

    async def stop(self) -> None:
        """Cancel the timers; the last snapshot, written once the one under way is done."""
        if self._snapshot_handle is not None:
            self._snapshot_handle.cancel()
        if self._log_timer is not None:
            self._log_timer.cancel()
        if self._snapshot_future is not None:  # one writer of the snapshot file at a time
            with contextlib.suppress(Exception):  # its failure was noted when it failed
                await asyncio.wait_for(asyncio.shield(self._snapshot_future), 10.0)
        try:
            atomic_write(self.rt.home.snapshot, self._snapshot_bytes())
        except OSError as exc:
            self.rt._note_problem(f"seat snapshot: {exc!r}")

    def restore(self) -> None:
        """The seats of the snapshot the runtime wrote last, if any; a damaged one is set aside."""
        rt = self.rt
        path = rt.home.snapshot
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        now = time.time()
        network = rt.network
        try:
            doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
            if not isinstance(doc, dict) or doc.get("format") != SNAPSHOT_FORMAT:
                raise ValueError("not a runtime state file")
            rt.seats = SeatTable.restore(doc["seats"], now)
            network.remote = {}
            for raw in doc.get("remote", []):
                hold = RemoteHold.from_list(raw)
                network.remote[hold.handle] = hold
            network.next_remote = max(int(doc.get("next_remote", REMOTE_BASE)), REMOTE_BASE,
                                      *[h + 1 for h in network.remote])
            rt.events.net_pids = {int(h): int(p) for h, p in doc.get("net_pids", []) if int(h) in rt.seats}
        except (LicentiaError, ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
            broken = path.with_name(f"{path.name}.damaged")
            os.replace(path, broken)
            rt._note_problem(f"the seat snapshot could not be read ({exc}); moved to {broken.name}")
            rt.seats = SeatTable()
            return
        # sessions of items no longer here are dropped; the reaper drops ended programs
        assert rt.log is not None
        rt.log.note({"event": "restore", "sessions": len(rt.seats), "remote": len(network.remote)})
