"""The files of a runtime in its home directory.

    HOME/
      runtime.toml          configuration (optional; docs/runtime.md)
      containers/           soft containers (`licentia container create`)
      servers.json          the server search list (`licentia server add`)
      runtime.sock          Unix socket for local programs (while running)
      runtime.json          pid and the ports actually bound (while running)
      admin.token           bearer token for write calls of the JSON API
      state/seats.snapshot  the seat table, written atomically after changes
      state/handles         high-water marks of handles (licentia.runtime.handles)
      state/runtime.key     the runtime's Ed25519 key (signs the usage log)
      state/client.id       this runtime's id as a network client of servers
      logs/usage.jsonl      the usage log (rotated files: usage-YYYYmmddTHHMMSS-SEQ.jsonl)
      tls/server.crt|key    the network server's certificate, created at first start
      tls/known_servers.json  pinned certificates of servers (trust on first use)
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from licentia.fsutil import atomic_write


@dataclass(frozen=True)
class RuntimeHome:
    path: Path

    @property
    def containers(self) -> Path:
        return self.path / "containers"

    @property
    def config(self) -> Path:
        return self.path / "runtime.toml"

    @property
    def servers(self) -> Path:
        return self.path / "servers.json"

    @property
    def status_file(self) -> Path:
        return self.path / "runtime.json"

    @property
    def admin_token_file(self) -> Path:
        return self.path / "admin.token"

    @property
    def state(self) -> Path:
        return self.path / "state"

    @property
    def snapshot(self) -> Path:
        return self.state / "seats.snapshot"

    @property
    def runtime_key(self) -> Path:
        return self.state / "runtime.key"

    @property
    def client_id_file(self) -> Path:
        return self.state / "client.id"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def usage_log(self) -> Path:
        return self.logs / "usage.jsonl"

    @property
    def tls(self) -> Path:
        return self.path / "tls"

    @property
    def known_servers(self) -> Path:
        return self.tls / "known_servers.json"

    def ensure(self) -> None:
        for d in (self.path, self.containers, self.state, self.logs, self.tls):
            d.mkdir(parents=True, exist_ok=True, mode=0o755)  # never group-writable, whatever the umask
        os.chmod(self.state, 0o700)

    def client_id(self) -> str:
        """This runtime's stable id as a network client (kept across restarts)."""
        try:
            value = self.client_id_file.read_text().strip()
            if value:
                return value
        except FileNotFoundError:
            pass
        value = "rt-" + secrets.token_hex(16)
        atomic_write(self.client_id_file, value.encode() + b"\n")
        return value

    def admin_token(self) -> str:
        try:
            value = self.admin_token_file.read_text().strip()
            if value:
                return value
        except FileNotFoundError:
            pass
        value = secrets.token_urlsafe(24)
        atomic_write(self.admin_token_file, value.encode() + b"\n", mode=0o600)
        return value

    def read_status(self) -> dict[str, Any] | None:
        """What a running runtime wrote about itself (pid, ports), or None."""
        try:
            doc = json.loads(self.status_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def write_status(self, doc: dict[str, Any]) -> None:
        atomic_write(self.status_file, json.dumps(doc, indent=2).encode() + b"\n", mode=0o644)
