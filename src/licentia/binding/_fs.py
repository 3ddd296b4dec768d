"""Reading files of a machine tree that may be the real machine (`/`) or a copy of its shape.

Every path is given as the machine sees it ("/sys/class/dmi/id/product_uuid") and read
under `root`. Symbolic links are followed inside the tree, so a synthetic tree with
absolute or relative links behaves like the real one. Nothing here raises for a file
that is absent or unreadable: the value is simply missing, and an unreadable file
(EACCES, EPERM) is noted so a caller can say why a property is not there.
"""

from __future__ import annotations

import errno
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

_MAX_READ = 8 * 1024 * 1024  # /proc/cpuinfo on a 512-CPU machine is well under this
_MAX_LINKS = 16


@dataclass(frozen=True)
class Skipped:
    """A file that exists but could not be read, and why."""

    path: str
    reason: str


@dataclass
class Tree:
    """A machine's file tree under `root`, with a record of what could not be read."""

    root: Path = Path("/")
    skipped: list[Skipped] = field(default_factory=list)

    def host_path(self, path: str) -> Path:
        """The real path of machine path `path` (no link resolution)."""
        return self.root / path.lstrip("/")

    def resolve(self, path: str) -> str:
        """Follow symbolic links of `path` (a machine path) inside the tree; best effort.

        Returns the machine path the links lead to. Only the last component is
        followed repeatedly; that is how /dev and /sys links are laid out.
        """
        current = posixpath.normpath(path)
        for _ in range(_MAX_LINKS):
            host = self.host_path(current)
            try:
                target = os.readlink(host)
            except OSError:
                return current
            if target.startswith("/"):
                current = posixpath.normpath(target)
            else:
                current = posixpath.normpath(posixpath.join(posixpath.dirname(current), target))
        return current

    def read_bytes(self, path: str) -> bytes | None:
        host = self.host_path(path)
        try:
            with open(host, "rb") as handle:
                return handle.read(_MAX_READ)
        except PermissionError:
            self.skipped.append(Skipped(path, "permission denied"))
            return None
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                self.skipped.append(Skipped(path, "permission denied"))
            return None

    def read_text(self, path: str) -> str | None:
        data = self.read_bytes(path)
        if data is None:
            return None
        return data.decode("utf-8", errors="replace")

    def exists(self, path: str) -> bool:
        """True if `path` exists as a file, directory or link (even a dangling one)."""
        return os.path.lexists(self.host_path(path))

    def is_dir(self, path: str) -> bool:
        return self.host_path(path).is_dir()

    def list_dir(self, path: str) -> list[str]:
        """Sorted names in directory `path`; empty when absent or unreadable."""
        host = self.host_path(path)
        try:
            names = os.listdir(host)
        except PermissionError:
            self.skipped.append(Skipped(path, "permission denied"))
            return []
        except OSError:
            return []
        return sorted(names)

    def link_text(self, path: str) -> str | None:
        try:
            return os.readlink(self.host_path(path))
        except OSError:
            return None
