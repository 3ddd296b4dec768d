"""Administration over the runtime's Unix socket (for `licentia sessions`, `release`, `status`).

The runtime accepts admin requests only from its own user or root, as the kernel
reports the peer of its Unix socket.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from licentia.model import ErrorCode, LicentiaError
from licentia.protocol.client import Client
from licentia.sdk.connect import (
    Target as _Target,
    hello_client,
    process_start,
    program_name,
    user_name,
)


def socket_of(home: Path) -> Path:
    try:
        doc = json.loads((home / "runtime.json").read_text())
        if isinstance(doc.get("socket"), str):
            return Path(doc["socket"])
    except (OSError, ValueError):
        pass
    return home / "runtime.sock"


def admin_client(home: Path) -> Client:
    path = socket_of(home)
    if not path.exists():
        raise LicentiaError(ErrorCode.NO_LOCAL_RUNTIME, f"no runtime is serving {home} (no socket {path})")
    client = Client(str(path))
    try:
        client.hello({"kind": "admin", "pid": os.getpid(), "pid_start": process_start(),
                      "program": program_name(), "user": user_name()})
    except BaseException:
        client.close()
        raise
    return client


def program_client(home: Path) -> Client:
    """A connection as an ordinary program (for `licentia access`)."""
    path = socket_of(home)
    target = _Target(str(path), False)
    client = Client(str(path))
    try:
        client.hello(hello_client(target, program="licentia access"))
    except BaseException:
        client.close()
        raise
    return client
