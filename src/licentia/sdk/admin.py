"""Administration over the runtime's Unix socket (for `licentia sessions`, `release`, `status`),
or over a network server's port with its token.

On the socket the runtime accepts admin requests only from its own user or root, as the
kernel reports the peer; on the network port, from a client whose hello carries the
server home's `admin.token` (or `reader.token`, to look only).
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
    targets,
    tls_context,
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


def network_admin_client(address: str, token: str) -> Client:
    """An administrator's connection to the network server at `address` (host:port),
    trusted as a program trusts it (LICENTIA_SERVER_PIN, LICENTIA_CA_FILE, or the pin
    kept from the first use), authenticated with the server's `token`."""
    target = targets({**os.environ, "LICENTIA_SERVER": address})[0]
    client = Client(address, ssl_context=tls_context(target))
    try:
        client.hello({"kind": "admin", "token": token, "program": program_name(), "user": user_name()})
    except BaseException:
        client.close()
        raise
    return client


def token_from(path: str) -> str:
    """A token kept in a file (never on a command line, where `ps` shows it)."""
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"cannot read the token file {path}: {exc.strerror}",
                            "copy the server home's admin.token (or reader.token) to this machine") from None
