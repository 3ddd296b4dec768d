"""The firm's shipped blacklist, checked by the program itself at access.

The vendor exports the list from central (`licentia central blacklist export -o FILE`,
signed with the firm key), ships the file with the program and passes it to
`licentia.access(..., blacklist=FILE, blacklist_delay_days=N)` or `@licentia.require`.
After the license is granted (and its signatures verified), the container that holds it
is looked up in the list: a listed container is refused with 1213
`CONTAINER_BLACKLISTED` and its seat is given back, at once or, with a delay, once N
days have passed since the list's signed issue time (the delayed lock: whoever holds a
stolen container cannot tell which program release locked it). The start of the delay
is the signed issue time, never something of this machine or its environment, so
nothing a user sets can postpone the lock.

Loaded only by a program that passes a blacklist.
"""

from __future__ import annotations

import os
import time

from licentia.core.blacklist import check_blacklist, read_blacklist
from licentia.model import ContainerSerial, ErrorCode, LicentiaError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from licentia.core.blacklist import Blacklist

    ShippedBlacklist = bytes | str | os.PathLike[str]

_MAGIC = b"LCBL"
_read: dict[tuple[bytes, bytes, int], Blacklist] = {}


def load(shipped: ShippedBlacklist, firm_key: bytes, firm_code: int) -> Blacklist:
    """The list verified with the firm key: from its bytes, or from the file at a path."""
    if isinstance(shipped, bytes) and shipped.startswith(_MAGIC):
        data = shipped
    else:
        path = os.fsdecode(shipped)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise LicentiaError(ErrorCode.BLACKLIST_INVALID, f"cannot read the blacklist {path}: {exc.strerror}") from None
    key = (data, firm_key, firm_code)
    found = _read.get(key)
    if found is None:
        found = read_blacklist(data, firm_key, firm_code)
        if len(_read) > 8:
            _read.clear()
        _read[key] = found
    return found


def refuse_if_listed(
    shipped: ShippedBlacklist, firm_key: bytes, firm_code: int, serial: str, delay_days: int = 0,
    now: int | None = None,
) -> None:
    """Raise 1213 when the container `serial` is listed and its lock is due."""
    blacklist = load(shipped, firm_key, firm_code)
    try:
        container = ContainerSerial.parse(serial)
    except (LicentiaError, ValueError):
        return  # no container serial (a cloud or virtual answer without one): nothing listed
    when = int(time.time()) if now is None else now
    verdict = check_blacklist(blacklist, container, when, delay_days=delay_days)
    if verdict.lock and verdict.entry is not None:
        raise LicentiaError(
            ErrorCode.CONTAINER_BLACKLISTED,
            f"container {serial} is on firm {firm_code}'s blacklist ({verdict.entry.reason}); "
            "this program does not run with it",
        )
