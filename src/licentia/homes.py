"""Refuse a home, configuration file or key file that another user could have changed.

The runtime and central trust what their home holds: the configuration (which addresses to
listen on), the keys (the runtime's signing key, the TLS keys), the tokens. A file another
user can write, or a directory in which another user can create or replace files, could
hold anything that user planted. As PostgreSQL refuses a data directory with group or world
access and OpenSSH refuses a configuration or key another user can write, both refuse to
start, and say what to fix:

    check_private(path, "runtime home")              owned by this user or root, no group/world write
    check_private(key, "TLS private key", secret=True)  and no group/world access at all

A path that does not exist passes (it will be created by this user, with safe modes).
Symbolic links are followed: the file they reach is checked, and so is the link's owner.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from licentia.model import ErrorCode, LicentiaError


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check_private(path: Path, what: str, *, secret: bool = False) -> None:
    """Raise `LicentiaError(SECURITY_PROBLEM)` if a user other than this one (or root) owns
    `path` or can write it; with `secret`, also if group or others can read it."""
    me = os.geteuid()
    try:
        link = os.lstat(path)
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise LicentiaError(ErrorCode.SECURITY_PROBLEM, f"cannot check the {what} {path}: {exc}") from None
    for info in (link, st):
        if info.st_uid not in (me, 0):
            raise LicentiaError(
                ErrorCode.SECURITY_PROBLEM,
                f"the {what} {path} is owned by {_user(info.st_uid)}, not by {_user(me)} or root; "
                "another user could have changed it, so it is not used",
                f"check what it holds, then `chown {_user(me).split(' ')[0]} {path}` (as root), "
                "or use a home of your own",
            )
    mode = stat.S_IMODE(st.st_mode)
    kind = "directory" if stat.S_ISDIR(st.st_mode) else "file"
    if mode & 0o022:
        raise LicentiaError(
            ErrorCode.SECURITY_PROBLEM,
            f"the {what} {path} ({kind}, mode {mode:04o}) is writable by "
            f"{'group and others' if mode & 0o022 == 0o022 else 'its group' if mode & 0o020 else 'other users'}; "
            "another user could have changed it, so it is not used",
            f"check what it holds, then `chmod go-w {path}`",
        )
    if secret and mode & 0o077:
        raise LicentiaError(
            ErrorCode.SECURITY_PROBLEM,
            f"the {what} {path} (mode {mode:04o}) can be read by other users; a key must be private",
            f"`chmod 600 {path}`, and consider the key disclosed if others could read it",
        )


def check_all(checks: list[tuple[Path, str, bool]]) -> None:
    """`check_private` for each (path, what, secret)."""
    for path, what, secret in checks:
        check_private(path, what, secret=secret)
