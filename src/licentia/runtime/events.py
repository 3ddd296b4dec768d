"""What the runtime remembers of what happened: the recent events (status API, `licentia
events`), the notices a program's `check()` reads per handle, the handles freed behind
their programs' backs (to say why), and the pids of network holders (for display)."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from licentia.core.seats import Event, Holder
from licentia.model import ErrorCode, LicentiaError
from licentia.runtime.external import REMOVED
from licentia.runtime.usagelog import UsageLog

GONE_MEMORY = 10_000  # freed handles remembered to tell their programs why
RECENT = 1000  # events kept for the status API

# event names programs see through check()
LICENSE_GONE = "license-gone"
SERVER_LOST = "server-lost"
CONTAINER_REMOVED = "container-removed"
ITEM_CHANGED = "item-changed"

Message = dict[str, Any]


class Events:
    """The runtime's memory of events; `log` is the usage log once the runtime started."""

    def __init__(self) -> None:
        self.log: UsageLog | None = None
        self.recent: collections.deque[tuple[int, Event | dict[str, Any]]] = collections.deque(maxlen=RECENT)
        self.seq = 0
        self.handle_events: dict[int, set[str]] = {}  # handle -> notices for its program's next check()
        self.gone: collections.OrderedDict[int, str] = collections.OrderedDict()
        self.net_pids: dict[int, int] = {}  # handle -> program pid, for network holders (display)

    def remember(self, ev: Event | dict[str, Any]) -> None:
        self.seq += 1
        self.recent.append((self.seq, ev))

    def log_events(self, events: tuple[Event, ...]) -> None:
        """Log `events` and remember them."""
        log = self.log
        assert log is not None
        for ev in events:
            log.record(ev)
            self.remember(ev)

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
                out.append({"seq": seq, "event": ev.kind.value, "at": ev.at, "handle": ev.handle,
                            "container": ev.key.container, "firm": ev.key.firm_code,
                            "product": ev.key.product_code, "station": str(ev.station),
                            "program": ev.holder.program, "user": ev.holder.user, "host": ev.holder.host,
                            "reason": ev.reason.value if ev.reason else None,
                            "code": int(ev.code) if ev.code is not None else None, "used": ev.used})
            if len(out) >= limit:
                break
        return out


def why_text(reason: str | None) -> str:
    return {
        "admin": "an administrator released it",
        "timeout": "its client fell silent for longer than the timeout",
        "reaped": "its program ended",
        "freed on the server": "the network server freed it",
    }.get(reason or "", reason or "")
