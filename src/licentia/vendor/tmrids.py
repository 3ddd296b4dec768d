"""TMR ids: one per TMR license a firm issues, consecutive, never given twice.

A TMR license exists three times (one constituent per upstream server) with the same firm
code, product code and TMR id; the TMR id is what tells the three apart from any other
license of the product. The vendor keeps the firm's last TMR id in a small file beside its
keystore (`firm-N.tmr-ids`):

    {"format": "licentia-tmr-ids", "version": 1, "firm_code": N, "last": 17}

It is read and written under an exclusive lock and replaced atomically, so two issuers on
one machine never hand out one id twice, and a crash leaves the old or the new number.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

from licentia.fsutil import atomic_write
from licentia.model import ErrorCode, LicentiaError

FORMAT = "licentia-tmr-ids"
VERSION = 1


def tmr_ids_path(keystore: Path, firm_code: int) -> Path:
    return keystore.with_name(f"firm-{firm_code}.tmr-ids")


def _read(path: Path, firm_code: int) -> int:
    if not path.exists():
        return 0
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ValueError("not a version 1 TMR id file")
        if data.get("firm_code") != firm_code:
            raise ValueError(f"it belongs to firm {data.get('firm_code')}")
        last = data["last"]
        if isinstance(last, bool) or not isinstance(last, int) or last < 0:
            raise ValueError("its last id is not a count")
        return last
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise LicentiaError(
            ErrorCode.WRONG_CONTENT,
            f"the TMR id file {path} is damaged: {exc}",
            "restore it from a backup (its last id must not go back), or set it to the highest TMR id issued",
        ) from None


def last_tmr_id(path: Path, firm_code: int) -> int:
    """The last TMR id given out (0: none yet)."""
    return _read(path, firm_code)


def next_tmr_id(path: Path, firm_code: int) -> int:
    """Take the firm's next TMR id (1, 2, 3, …) and record it before returning it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        tmr_id = _read(path, firm_code) + 1
        record = {"format": FORMAT, "version": VERSION, "firm_code": firm_code, "last": tmr_id}
        atomic_write(path, (json.dumps(record) + "\n").encode(), mode=0o644)
        return tmr_id
