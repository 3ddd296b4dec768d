"""What support asks a customer for, in one archive (`licentia diag`): versions, the
configuration with secrets left out, container and binding health, the running runtime's
view, and the recent usage log.

Left out on purpose: keys (`state/runtime.key`, `tls/*.key`), the admin token, WebAdmin's
password hashes, the directory's password file, container files themselves, and any
configuration value whose key names a password, secret or token."""

from __future__ import annotations

import io
import json
import os
import platform
import ssl
import sys
import tarfile
import time
import tomllib
from pathlib import Path
from typing import Any

TAIL_BYTES = 4 << 20  # of the usage log
SECRET_WORDS = ("password", "secret", "token", "private_key", "key_file", "pin")


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"licentia": _version("licentia"), "python": sys.version.split()[0], "platform": platform.platform(),
           "openssl": ssl.OPENSSL_VERSION}
    for dist in ("cryptography", "msgpack", "starlette", "uvicorn", "h11", "ldap3", "uvloop"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def scrub(value: Any) -> Any:
    """`value` with every entry whose key names a secret replaced by "(left out)"."""
    if isinstance(value, dict):
        return {k: "(left out)" if any(w in str(k).lower() for w in SECRET_WORDS) and v not in ("", None)
                else scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def configuration(home: Path) -> dict[str, Any]:
    path = home / "runtime.toml"
    try:
        return {"runtime.toml": scrub(tomllib.loads(path.read_text()))}
    except FileNotFoundError:
        return {"runtime.toml": "(none: defaults)"}
    except (OSError, ValueError) as exc:
        return {"runtime.toml": f"(cannot read: {exc})"}


def log_tail(logs: Path, size: int = TAIL_BYTES) -> bytes:
    path = logs / "usage.jsonl"
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            f.seek(max(end - size, 0))
            data = f.read(size)
    except OSError:
        return b""
    if end > size:
        data = data[data.find(b"\n") + 1:]
    return data


def problems(logs: Path, size: int = 1 << 20) -> list[dict[str, Any]]:
    """The `problem` entries of the log's last `size` bytes, oldest first."""
    out = []
    for line in log_tail(logs, size).splitlines():
        if b'"event":"problem"' not in line:
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


def listing(home: Path) -> list[dict[str, Any]]:
    """The home's files with sizes and modes (names only: no content)."""
    out = []
    for p in sorted(home.rglob("*")):
        try:
            st = p.lstat()
        except OSError:
            continue
        if p.is_file():
            out.append({"path": str(p.relative_to(home)), "size": st.st_size, "mode": oct(st.st_mode & 0o7777),
                        "mtime": st.st_mtime})
    return out


def write_archive(out: Path, home: Path, sections: dict[str, Any]) -> list[str]:
    """Write the archive (tar.gz): `sections` as JSON files, plus the configuration and the
    log's tail read from `home`. Returns the names written."""
    docs: dict[str, bytes] = {
        "versions.json": _json(versions()),
        "configuration.json": _json(configuration(home)),
        "files.json": _json(listing(home)),
        "usage-tail.jsonl": log_tail(home / "logs"),
    }
    acl = home / "acl.toml"
    if acl.is_file():
        docs["acl.toml"] = acl.read_bytes()
    servers = home / "servers.json"
    if servers.is_file():
        docs["servers.json"] = servers.read_bytes()
    for name, value in sections.items():
        docs[f"{name}.json"] = _json(value)
    base = f"licentia-diag-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for name, data in docs.items():
            info = tarfile.TarInfo(f"{base}/{name}")
            info.size = len(data)
            info.mtime = int(time.time())
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    os.chmod(tmp, 0o600)
    os.replace(tmp, out)
    return list(docs)


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=1, default=str) + "\n").encode()
