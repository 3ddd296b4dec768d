"""What the runtime remembers of what happened: the recent events (status API, `licentia
events`), the notices a program's `check()` reads per handle, the handles freed behind
their programs' backs (to say why), and the pids of network holders (for display)."""

from __future__ import annotations

import collections
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from licentia.core.seats import Event, Holder, SeatTable, Session
from licentia.model import ErrorCode, LicentiaError
from licentia.runtime.external import REMOVED
from licentia.runtime.usagelog import UsageLog

if TYPE_CHECKING:
    from licentia.runtime.acl import AccessGate

GONE_MEMORY = 10_000  # freed handles remembered to tell their programs why
RECENT = 1000  # events kept for the status API

# event names programs see through check()
LICENSE_GONE = "license-gone"
SERVER_LOST = "server-lost"
CONTAINER_REMOVED = "container-removed"
ITEM_CHANGED = "item-changed"

# why the runtime freed seats whose item went (the usage log's `reason`)
ITEM_REMOVED = "item-removed"
ITEM_LOCKED = "item-locked"

Message = dict[str, Any]


class Events:
    """The runtime's memory of events; `log` is the usage log once the runtime started."""

    def __init__(self) -> None:
        self.log: UsageLog | None = None
        self.recent: collections.deque[tuple[int, Event | dict[str, Any]]] = collections.deque(maxlen=RECENT)
        self._keep = self.recent.append  # bound once: `remember` runs on every grant and release
        self.seq = 0
        self.handle_events: dict[int, set[str]] = {}  # handle -> notices for its program's next check()
        self.gone: collections.OrderedDict[int, str] = collections.OrderedDict()
        self.net_pids: dict[int, int] = {}  # handle -> program pid, for network holders (display)
        self.gate: AccessGate | None = None  # the access list in force, told of every release (aclwatch)

    def remember(self, ev: Event | dict[str, Any]) -> None:
        self.seq += 1
        self._keep((self.seq, ev))
        gate = self.gate
        if gate is not None and type(ev) is Event:
            gate.released(ev)

    def log_events(self, events: tuple[Event, ...]) -> None:
        """Log `events` and remember them."""
        log = self.log
        assert log is not None
        for ev in events:
            log.record(ev)
            self.remember(ev)

    def log_decrement(self, sess: Session, units: int, remaining: int | None) -> None:
        """Log units spent on `sess`'s item (once they are on disk): who spent how many,
        and how many are left. Only the decrement path pays for it."""
        log = self.log
        if log is None:
            return
        key, h = sess.key, sess.holder
        fields: dict[str, Any] = {"event": "decrement", "container": key.container, "firm": key.firm_code,
                                  "product": key.product_code, "item": key.item_id, "handle": sess.handle,
                                  "units": units, "left": remaining, "station": str(sess.station),
                                  "user": h.user, "host": h.host, "program": h.program}
        if h.process is not None:
            fields["pid"] = h.process.pid
        if h.client_id is not None:
            fields["client"] = h.client_id
        log.note(fields)

    def notify(self, handle: int, event: str) -> None:
        """Tell the program holding `handle` about `event` at its next check()."""
        self.handle_events.setdefault(handle, set()).add(event)

    def freed(self, handle: int) -> None:
        """`handle` is no longer held: nothing more to tell its program or show of it."""
        if self.handle_events:
            self.handle_events.pop(handle, None)
        if self.net_pids:
            self.net_pids.pop(handle, None)

    def forget_later(self, handle: int, why: str) -> None:
        self.gone[handle] = why
        while len(self.gone) > GONE_MEMORY:
            self.gone.popitem(last=False)

    def not_held(self, handle: int) -> LicentiaError:
        why = self.gone.get(handle)
        if why:
            return LicentiaError(ErrorCode.INVALID_HANDLE, f"handle {handle} was freed ({why_text(why)})")
        return LicentiaError(ErrorCode.INVALID_HANDLE,
                             f"handle {handle} is not held (released already, or never granted)")

    def gone_reply(self, rid: int, handle: int) -> Message:
        why = self.gone.get(handle)
        reason = f"the license was freed ({why_text(why)})" if why else "the handle is not held"
        events = [CONTAINER_REMOVED, LICENSE_GONE] if why and why.startswith(REMOVED) else [LICENSE_GONE]
        return {"id": rid, "ok": True, "valid": False, "events": events, "reason": reason}

    def free_gone_items(self, seats: SeatTable, loaded: Mapping[str, Any],
                        changed_items: Collection[tuple[str, int, int]], now: float) -> int:
        """Free at once the seats on items that an update (or a lock) took away: the item
        removed from its container, or locked. Each release is logged with its reason
        (`item-removed`, `item-locked`); the program learns `license-gone` at its next
        check. Returns the number of seats freed."""
        gone: dict[tuple[str, int, int], str] = {}
        for serial, firm, item_id in changed_items:
            ld = loaded.get(serial)
            if ld is None:
                continue  # the whole container went: not an item's change
            firm_entry = ld.content.firms.get(firm)
            entry = firm_entry.items.get(item_id) if firm_entry is not None else None
            if entry is None:
                gone[(serial, firm, item_id)] = ITEM_REMOVED
            elif entry.state.locked:
                gone[(serial, firm, item_id)] = ITEM_LOCKED
        if not gone:
            return 0
        log = self.log
        freed = 0
        for sess in list(seats.sessions()):
            key = sess.key
            why = gone.get((key.container, key.firm_code, key.item_id))
            if why is None:
                continue
            rel = seats.force_release(sess.handle, now)
            for ev in rel.events:
                if log is not None:
                    log.record(ev, {"reason": why})
                self.remember({**_event_row(ev), "reason": why})
            self.freed(sess.handle)
            self.forget_later(sess.handle, why)
            freed += 1
        return freed

    def recent_events(self, since: int = 0, limit: int = 1000,
                      visible: Callable[[Holder], bool] | None = None) -> list[dict[str, Any]]:
        """Recent grants, denials and releases as plain data, oldest first; with
        `visible`, only the seat events of the holders it accepts."""
        out: list[dict[str, Any]] = []
        for seq, ev in self.recent:
            if seq <= since:
                continue
            if visible is not None and (isinstance(ev, dict) or not visible(ev.holder)):
                continue
            if isinstance(ev, dict):
                out.append({"seq": seq, **ev})
            else:
                out.append({"seq": seq, **_event_row(ev)})
            if len(out) >= limit:
                break
        return out


def _event_row(ev: Event) -> dict[str, Any]:
    """A seat-table event as the status API shows it."""
    return {"event": ev.kind.value, "at": ev.at, "handle": ev.handle, "container": ev.key.container,
            "firm": ev.key.firm_code, "product": ev.key.product_code, "station": str(ev.station),
            "program": ev.holder.program, "user": ev.holder.user, "host": ev.holder.host,
            "reason": ev.reason.value if ev.reason else None,
            "code": int(ev.code) if ev.code is not None else None, "used": ev.used}


def why_text(reason: str | None) -> str:
    return {
        ITEM_REMOVED: "an update removed its item from the container",
        ITEM_LOCKED: "the vendor locked its item",
        "admin": "an administrator released it",
        "timeout": "its client fell silent for longer than the timeout",
        "reaped": "its program ended",
        "freed on the server": "the network server freed it",
    }.get(reason or "", reason or "")
