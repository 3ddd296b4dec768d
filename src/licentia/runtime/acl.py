"""The access list in the runtime's home: `acl.toml`, read, written atomically, reloaded.

The decisions are `licentia.core.acl`'s; this module only moves the list between the file
and memory. `licentia acl …` edits the file; a running runtime notices the change
(`AclFile.current`) and uses the new list for the next access, without a restart. A file
that does not parse is refused with the mistake named, and the runtime keeps the list it
had (it logs the problem).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from licentia.core.acl import (
    EMPTY,
    AccessList,
    Decision,
    Held,
    Identity,
    decide,
    from_document,
    to_toml,
)
from licentia.core.seats import (
    Event,
    EventKind,
    Grant,
    Holder,
    ItemKey,
    SeatRefused,
    SeatTable,
    Session,
    Station,
)
from licentia.fsutil import atomic_write
from licentia.model import AccessMode, ErrorCode, LicentiaError
from licentia.runtime.directory import Directory

FILE_NAME = "acl.toml"
_PER_STATION = AccessMode.PER_STATION
_RELEASE = EventKind.RELEASE
MAX_BYTES = 16 << 20


def acl_path(home: Path) -> Path:
    return Path(home) / FILE_NAME


def load(path: Path) -> AccessList:
    """The list in `path`; no file is no list (everything allowed)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return EMPTY
    except OSError as exc:
        raise LicentiaError(ErrorCode.WRONG_CONTENT, f"cannot read the access list {path}: {exc.strerror}",
                            "check the file's permissions") from None
    if len(data) > MAX_BYTES:
        raise LicentiaError(ErrorCode.WRONG_CONTENT, f"the access list {path} is larger than {MAX_BYTES >> 20} MiB")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise LicentiaError(ErrorCode.WRONG_CONTENT, f"{path} is not UTF-8 text",
                            "save the access list as UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as exc:
        raise LicentiaError(ErrorCode.WRONG_CONTENT, f"{path} is not valid TOML: {exc}",
                            "fix the line named, or edit the list with `licentia acl`") from None
    return from_document(doc, str(path))


def save(path: Path, acl: AccessList) -> None:
    atomic_write(path, to_toml(acl).encode(), mode=0o644)


class AclFile:
    """The list of one home as the runtime keeps it: reloaded when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self.acl: AccessList = EMPTY
        self.problem: str | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> AccessList:
        """The list now: re-read when the file changed since the last call (one stat).
        A bad file leaves the previous list in force and sets `problem`."""
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.acl = load(self.path)
                self.problem = None
            except LicentiaError as exc:
                self.problem = exc.message
        return self.acl

    def reload(self) -> dict[str, Any] | None:
        """Re-read the file if it changed: the usage-log entry to write (the new list, or
        the problem that kept the old one), or None when nothing changed."""
        if not self.changed():
            return None
        self.current()
        if self.problem is not None:
            return {"event": "problem", "what": "acl", "message": self.problem}
        return change_note(self.acl, self.path)

    def changed(self) -> bool:
        """Whether the file changed since the list was last read (for a housekeeping timer
        that reloads and logs, so the access path need not stat the file)."""
        return self._stat() != self._stamp


def edit(path: Path, change: Callable[[AccessList], AccessList]) -> AccessList:
    """Read, change and write the list under an exclusive lock, so two edits at once do
    not lose one another; the file is replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        new = change(load(path))
        save(path, new)
        return new
    finally:
        os.close(fd)


def change_note(acl: AccessList, path: Path) -> dict[str, Any]:
    """The usage-log entry for a reloaded list (`UsageLog.note`)."""
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        digest = ""
    return {"event": "acl-changed", "rules": len(acl.rules), "enabled": acl.enabled, "sha256": digest}


# -- the runtime's side: one object to call on every access and release --------------------


class AccessGate:
    """The access list applied to a seat table: the runtime asks `check` before
    `SeatTable.access`, then tells `granted` about the grant and `released` about every
    release event. It keeps, per item, which rule each held seat was charged to.

    Seats are charged per handle (per-access, exclusive) or per station (per-station: the
    first handle takes the seat, the last one to go frees it)."""

    def __init__(self, path: Path, directory: Directory | None = None) -> None:
        self.file = AclFile(path)
        self.file.current()
        self.directory = directory
        self._held: dict[ItemKey, Held] = {}
        # seat -> (item, charge, counted, handles sharing it); a seat is a handle or (item, station)
        self._seats: dict[object, list[Any]] = {}

    @property
    def acl(self) -> AccessList:
        return self.file.acl

    def reload(self) -> dict[str, Any] | None:
        """Call from housekeeping: re-reads acl.toml when it changed; the usage-log entry
        to write (`UsageLog.note`), or None."""
        return self.file.reload()

    def groups(self, key: ItemKey, user: str, now_mono: float) -> frozenset[str] | None:
        """The user's directory groups, asked only when a group rule covers `key`
        (blocking on a cache miss: see `groups_async`)."""
        if self.directory is None or not self.acl.needs_groups(key):
            return frozenset()
        return self.directory.groups(user, now_mono)

    async def groups_async(self, key: ItemKey, user: str, now_mono: float) -> frozenset[str] | None:
        if self.directory is None or not self.acl.needs_groups(key):
            return frozenset()
        return await self.directory.groups_async(user, now_mono)

    def check(self, seats: SeatTable, *, key: ItemKey, quantity: int | None, mode: AccessMode, station: Station,
              holder: Holder, address: str, groups: frozenset[str] | None, now: float) -> Decision | None:
        """Before `seats.access(...)`: None when the access takes no new seat (nothing to
        decide); the decision when it does. A refusal raises `SeatRefused` with its denial
        event, as the seat table's own refusals do (the runtime logs `exc.event`)."""
        acl = self.file.acl
        if (not acl.rules and not acl.defaults) or not acl.enabled or not seats.takes_seat(key, mode, station):
            return None
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = Held()
        who = Identity(holder.user, holder.host, address, groups)
        d = decide(acl, key, who, None if quantity is not None and quantity < 1 else quantity, held, now)
        if d.granted:
            return d
        code = d.code if d.code is not None else ErrorCode.ACCESS_LIST_DENIED
        event = Event(EventKind.DENY, now, key, mode, station, holder, None, seats.used(key), None, code)
        raise SeatRefused(code, d.message, event)

    def granted(self, grant: Grant, decision: Decision | None) -> dict[str, Any] | None:
        """After `seats.access(...)` granted (with what `check` returned, None included):
        charge the seat. Returns the fields to add to
        the grant's usage-log line (`UsageLog.record(ev, extra)`) when the seat was charged
        to a rule, else None (log the event as before)."""
        s = grant.session
        if s.mode is _PER_STATION:
            seat: object = (s.key, s.station)
            entry = self._seats.get(seat)
            if entry is not None:
                entry[3] += 1
                return None
        else:
            seat = s.handle
        if not grant.new_seat:
            return None
        # every seat is counted, also those taken with no list in force: the next
        # decision needs all seats of the item
        charge, counted = (decision.charge, decision.counted) if decision is not None else (None, ())
        held = self._held.get(s.key)
        if held is None:
            held = self._held[s.key] = Held()
        held.take(charge, counted)
        self._seats[seat] = [s.key, charge, counted, 1]
        return {"charge": charge} if charge is not None else None

    def released(self, event: Event) -> None:
        """For every release event (program, reaped, timeout, admin)."""
        if event.kind is not _RELEASE:
            return
        seat: object = (event.key, event.station) if event.mode is _PER_STATION else event.handle
        entry = self._seats.get(seat)
        if entry is None:
            return
        entry[3] -= 1
        if entry[3] > 0:
            return
        del self._seats[seat]
        held = self._held.get(entry[0])
        if held is not None:
            held.give_back(entry[1], entry[2])

    def rebuild(self, sessions: list[Session], now: float,
                groups_of: Callable[[str], frozenset[str] | None] | None = None) -> None:
        """After a restart (`SeatTable.restore`): charge the restored seats again, in handle
        order, as the list decides now, with the groups `groups_of(user)` gives (None:
        unknown). The address of a restored network client is not known: subnet and
        address rules do not match it. Seats the list would refuse now stay held, charged
        to the free pool."""
        self._held.clear()
        self._seats.clear()
        for s in sorted(sessions, key=lambda x: x.handle):
            if s.mode is AccessMode.NONE:
                continue
            key = s.key
            held = self._held.setdefault(key, Held())
            if s.mode is AccessMode.PER_STATION and (key, s.station) in self._seats:
                self._seats[(key, s.station)][3] += 1
                continue
            groups = groups_of(s.holder.user) if groups_of is not None else None
            d = decide(self.acl, key, Identity(s.holder.user, s.holder.host, "", groups), None, held, now)
            charge, counted = (d.charge, d.counted) if d.granted else (None, ())
            held.take(charge, counted)
            seat: object = (key, s.station) if s.mode is AccessMode.PER_STATION else s.handle
            self._seats[seat] = [key, charge, counted, 1]

    def held(self, key: ItemKey) -> Held:
        """The seats of `key` held under the list (for status pages and `acl check`)."""
        return self._held.get(key) or Held()
