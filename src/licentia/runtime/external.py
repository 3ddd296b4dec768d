"""Containers kept outside the home's directory (tokens, `licentia.runtime.tokens`; cloud
containers, `licentia.runtime.cloud`) as the runtime serves them.

`RuntimeContainers` is the runtime's container table: the home's soft containers plus
containers kept elsewhere, which a scan of the containers directory must not report gone.
`withdraw` takes such a container away and frees its seats; `release_seat` gives back a
seat whose grant failed.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from licentia.core.content import ContainerContent
from licentia.model import ErrorCode, LicentiaError
from licentia.runtime.commit import ContainerWriter
from licentia.runtime.licenses import Changes, Loaded, LocalContainers, ScanResult, _changed_items

if TYPE_CHECKING:
    from licentia.runtime.host import Runtime

REMOVED = "container-removed"  # the release reason of seats whose container went away


# ====================================================================== the container table


class RuntimeContainers(LocalContainers):
    """Soft containers from the home's directory, and containers kept elsewhere."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.external: dict[str, str] = {}  # serial -> kind ("token", "cloud")

    def scan_disk(self, now: int) -> ScanResult:
        result = super().scan_disk(now)
        if self.external:
            result.gone = [s for s in result.gone if s not in self.external]
        return result

    def put(self, ld: Loaded, kind: str) -> None:
        """Serve `ld` (a token or cloud container) beside the soft containers.

        The table is replaced, not changed in place: a scan reading it in a worker thread
        keeps the table it started with."""
        loaded = dict(self.loaded)
        loaded[ld.serial] = ld
        self.loaded = loaded
        self.external[ld.serial] = kind
        self._changed()

    def drop(self, serial: str) -> Loaded | None:
        """Stop serving an external container; returns it (its writer still open)."""
        if serial not in self.loaded:
            self.external.pop(serial, None)
            return None
        loaded = dict(self.loaded)
        ld = loaded.pop(serial)
        self.loaded = loaded
        self.external.pop(serial, None)
        self._changed()
        return ld

    def replace_content(self, serial: str, content: ContainerContent) -> Changes:
        """New content for an external container; the items that changed."""
        changes = Changes()
        ld = self.loaded.get(serial)
        if ld is None:
            return changes
        changes.changed_items = _changed_items(serial, ld.content, content)
        ld.content = content
        ld.status = ld.container.status(content)
        self._changed()
        return changes

    def writer_for(self, container: Any, serial: str) -> ContainerWriter:
        return self._writer(container, serial)

    def kind_of(self, serial: str) -> str:
        return self.external.get(serial, "soft")


def withdraw(rt: Runtime, serial: str, kind: str, reason: str, detail: str, code: ErrorCode | None) -> int:
    """Take container `serial` out of service: every seat of it freed and logged, the
    container reported removed. Returns the number of seats freed."""
    ld = rt.containers.drop(serial) if isinstance(rt.containers, RuntimeContainers) else None
    if ld is not None:
        writer = ld.writer
        asyncio.get_running_loop().run_in_executor(None, writer.close)
    now = time.time()
    log = rt.log
    freed = 0
    for sess in [s for s in rt.seats.sessions() if s.key.container == serial]:
        try:
            rel = rt.seats.force_release(sess.handle, now)
        except LicentiaError:
            continue
        for ev in rel.events:
            fields = {"reason": REMOVED, "detail": detail[:300]}
            if log is not None:
                log.record(ev, fields)
            rt.recent_seq += 1
            rt.recent.append((rt.recent_seq, {
                "event": ev.kind.value, "at": round(ev.at, 3), "handle": ev.handle, "container": serial,
                "firm": ev.key.firm_code, "product": ev.key.product_code, "station": str(ev.station),
                "program": ev.holder.program, "user": ev.holder.user, "host": ev.holder.host, "used": ev.used,
                **fields}))
        rt.handle_events.pop(sess.handle, None)
        rt.net_pids.pop(sess.handle, None)
        rt._forget_later(sess.handle, f"{REMOVED}: {detail}"[:300])
        freed += 1
    note: dict[str, Any] = {"event": "container-removed", "at": round(now, 3), "container": serial, "kind": kind,
                            "reason": reason, "detail": detail[:500], "released": freed}
    if code is not None:
        note["code"] = int(code)
    if log is not None:
        log.note(note)
    rt.recent_seq += 1
    rt.recent.append((rt.recent_seq, note))
    if freed:
        rt._seats_changed()
    return freed


def release_seat(rt: Runtime, handle: int) -> None:
    """Give back a seat granted a moment ago whose answer failed (logged as the program's)."""
    if handle in rt.seats:
        rel = rt.seats.release(handle, time.time())
        rt._log_events(rel.events)
        rt._seats_changed()
