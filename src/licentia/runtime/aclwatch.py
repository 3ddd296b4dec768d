"""The access list as the running runtime applies it: the home's `acl.toml` watched by
housekeeping, and the gate the access path consults (`licentia.runtime.acl.AccessGate`).

The access path asks `rt.gate`, which is None while no list is in force (no file, an
empty list, or `enabled = false`): a plain access then pays one attribute check. When a
list comes into force or changes, the gate charges the seats already held again
(`AccessGate.rebuild`), so reservations count every seat whenever the list appeared."""

from __future__ import annotations

import time
from typing import Any, Protocol

from licentia.core.seats import SeatTable
from licentia.runtime.acl import AccessGate, acl_path
from licentia.runtime.config import RuntimeConfig
from licentia.runtime.directory import Directory, DirectoryConfig
from licentia.runtime.events import Events
from licentia.runtime.home import RuntimeHome
from licentia.runtime.usagelog import UsageLog


class WatchHost(Protocol):
    home: RuntimeHome
    config: RuntimeConfig
    seats: SeatTable
    events: Events
    log: UsageLog | None
    gate: AccessGate | None


class AclWatch:
    def __init__(self, rt: WatchHost) -> None:
        self.rt = rt
        cfg = DirectoryConfig.from_settings(rt.config, rt.home.path)
        self.gate = AccessGate(acl_path(rt.home.path), Directory(cfg) if cfg is not None else None)
        self.changes = 0

    def in_force(self) -> AccessGate | None:
        acl = self.gate.acl
        return self.gate if acl.enabled and (acl.rules or acl.defaults) else None

    def start(self) -> None:
        """After the seat snapshot was restored: charge the restored seats, say what is wrong
        with the file if it does not parse. The restored holders' directory groups are not
        known yet: `regroup` asks the directory for them and charges the seats again."""
        if self.gate.file.problem is not None and self.rt.log is not None:
            self.rt.log.note({"event": "problem", "what": "acl", "message": self.gate.file.problem})
        self.apply()

    async def regroup(self) -> None:
        """Ask the directory (off the loop) for the groups of the users holding seats when a
        group rule may matter, then charge the held seats again with them."""
        gate = self.in_force()
        directory = self.gate.directory
        sessions = self.rt.seats.sessions()
        if gate is None or directory is None or not sessions:
            return
        users = sorted({s.holder.user for s in sessions if gate.acl.needs_groups(s.key)})
        if not users:
            return
        mono = time.monotonic()
        found: dict[str, frozenset[str] | None] = {}
        for user in users:
            found[user] = await directory.groups_async(user, mono)
        if self.in_force() is not gate:
            return
        gate.rebuild(self.rt.seats.sessions(), time.time(), found.get)
        if self.rt.log is not None:
            self.rt.log.note({"event": "acl-recharged", "sessions": len(sessions),
                              "users": len(users), "unknown": sum(1 for g in found.values() if g is None)})

    def apply(self) -> None:
        gate = self.in_force()
        if gate is not None:
            directory = gate.directory
            mono = time.monotonic()

            def groups_of(user: str) -> frozenset[str] | None:
                return directory.cached(user, mono) if directory is not None else None

            gate.rebuild(self.rt.seats.sessions(), time.time(), groups_of)
        self.rt.gate = self.rt.events.gate = gate

    def tick(self) -> None:
        """Housekeeping: reload the list when its file changed, log the change, apply it."""
        note = self.gate.reload()
        if note is None:
            return
        self.changes += 1
        if self.rt.log is not None:
            self.rt.log.note(note)
        self.apply()

    def status(self) -> dict[str, Any]:
        acl = self.gate.acl
        directory = self.gate.directory
        return {"file": str(self.gate.file.path), "rules": len(acl.rules), "enabled": acl.enabled,
                "in_force": self.in_force() is not None, "problem": self.gate.file.problem,
                "directory": directory is not None,
                "directory_error": getattr(directory, "last_error", None) if directory is not None else None}
