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

from licentia.core.acl import EMPTY, AccessList, from_document, to_toml
from licentia.fsutil import atomic_write
from licentia.model import ErrorCode, LicentiaError

FILE_NAME = "acl.toml"
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
