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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from licentia.core.content import ContainerContent, ItemEntry
from licentia.core.seats import ItemKey
from licentia.model import (
    ContainerStatus,
    ErrorCode,
    ItemRequest,
    ItemStatus,
    LicentiaError,
    Verdict,
)
from licentia.runtime.commit import ContainerWriter
from licentia.runtime.licenses import (
    Candidate,
    Changes,
    Loaded,
    LocalContainers,
    ScanResult,
    _changed_items,
)

if TYPE_CHECKING:
    from licentia.runtime.host import Runtime

REMOVED = "container-removed"  # the release reason of seats whose container went away


# ====================================================================== the container table


class RuntimeContainers(LocalContainers):
    """Soft containers from the home's directory, and containers kept elsewhere."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.external: dict[str, str] = {}  # serial -> kind ("token", "cloud")
        # Tokens this runtime lost: what they held, and their error as of a time. An access
        # to what only they held finds them as candidates that the judge refuses with that
        # error (1117 pulled, 1118 taken away, 1119 locked out and the seconds left), so the
        # program learns why instead of 200 (not found).
        self.withdrawn: dict[str, tuple[Loaded, Callable[[int], LicentiaError]]] = {}

    def candidates(self, firm: int, product: int, container: str | None = None) -> list[Candidate]:
        found = super().candidates(firm, product, container)
        if found or not self.withdrawn:
            return found
        return [Candidate(ld, entry, ItemKey(serial, firm, product, item_id))
                for serial, (ld, _) in sorted(self.withdrawn.items()) if container in (None, serial)
                for item_id, entry in _items_of(ld.content, firm, product)]

    def judge(self, cand: Candidate, request: ItemRequest, now: int) -> tuple[Verdict, bool]:
        if self.withdrawn:
            gone = self.withdrawn.get(cand.key.container)
            if gone is not None and cand.loaded is gone[0]:
                error = gone[1](now)
                return Verdict(ItemStatus.DISABLED, error.code, error.message), False
        return super().judge(cand, request, now)

    def withdrawn_token(self, serial: str, content: ContainerContent | None,
                        why: Callable[[int], LicentiaError] | None) -> None:
        """Remember (or, with `why` None, forget) what a lost token held and why it is gone."""
        if why is None or content is None:
            if self.withdrawn.pop(serial, None) is not None:
                self._changed()
            return
        # only serial and content are read: the token's container and writer are closed
        tomb = Loaded(serial, Path(f"pkcs11:withdrawn={serial}"), cast(Any, None), content, None,
                      cast(Any, None), b"", ContainerStatus.INVALID)
        self.withdrawn[serial] = (tomb, why)
        self._changed()

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


def _items_of(content: ContainerContent, firm: int, product: int) -> list[tuple[int, ItemEntry]]:
    firm_entry = content.firms.get(firm)
    if firm_entry is None:
        return []
    return [(item_id, entry) for item_id, entry in sorted(firm_entry.items.items())
            if entry.item.product_code == product]


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
