"""Handles are never given twice, across crashes too.

The seat snapshot is written shortly after a change, so after a crash it may name a next
handle lower than one already given. Before a handle is given, a high-water mark above
it is on disk (`state/handles`, written atomically and synced): handles are reserved in
blocks of `BLOCK`, so the disk is written once per block, and a restart begins at the
mark, above every handle the runtime before it could have given. The same holds for the
handles of seats held on network servers (from `network.REMOTE_BASE` on).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from licentia.fsutil import atomic_write
from licentia.model import ErrorCode, LicentiaError

BLOCK = 1 << 16  # handles reserved per write
FORMAT = "licentia-handles"


class HandleMarks:
    """The high-water marks of local and remote handles in one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.local = 0
        self.remote = 0

    def load(self) -> None:
        """The marks on disk (none: 0). A damaged file is refused: handles could repeat."""
        try:
            doc: Any = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return
        except ValueError:
            doc = None
        if not (isinstance(doc, dict) and doc.get("format") == FORMAT and type(doc.get("local")) is int
                and type(doc.get("remote")) is int):
            raise LicentiaError(ErrorCode.WRONG_CONTENT, f"{self.path} is damaged; the handles given before "
                                "could be given again",
                                "remove it only after every program of the runtime before has ended")
        self.local, self.remote = doc["local"], doc["remote"]

    def _write(self) -> None:
        atomic_write(self.path, json.dumps({"format": FORMAT, "version": 1, "local": self.local,
                                            "remote": self.remote}).encode())

    def start(self, local_next: int, remote_next: int) -> tuple[int, int]:
        """The first handles after a start (above the marks and what the snapshot says);
        a block of each is reserved on disk before this returns."""
        local = max(local_next, self.local)
        remote = max(remote_next, self.remote)
        self.local, self.remote = local + BLOCK, remote + BLOCK
        self._write()
        return local, remote

    def reserve_local(self, handle: int) -> int:
        """Reserve the block from `handle` on; return its end (the next ceiling)."""
        self.local = max(self.local, handle + BLOCK)
        self._write()
        return self.local

    def reserve_remote(self, handle: int) -> int:
        self.remote = max(self.remote, handle + BLOCK)
        self._write()
        return self.remote


def install(rt: Any) -> HandleMarks:
    """At start, after the seat snapshot is restored: the runtime's seat table and network
    client give handles only below a mark on disk (`rt`: the runtime, its `home`, `seats`
    and `network`)."""
    marks = HandleMarks(rt.home.state / "handles")
    marks.load()
    local, remote = marks.start(rt.seats.next_handle, rt.network.next_remote)
    rt.seats.reserve_handles(local, marks.local, marks.reserve_local)
    rt.network.next_remote = remote
    rt.network.remote_ceiling = marks.remote
    rt.network.reserve_remote = marks.reserve_remote
    return marks
