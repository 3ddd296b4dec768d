"""Running central: its home directory, the database at start, the first admin token, TLS, uvicorn.

The central home holds `central.db` (the default SQLite database), `admin.token` (the
first API token, mode 0600, written once when the database has no token yet) and
`tls/central.crt|key` (the certificate central makes at its first start, unless the vendor
gives one). Central serves HTTPS; plain HTTP only when asked (a TLS proxy in front).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette

from licentia.central.api import create_app
from licentia.central.db import Database, sqlite_url
from licentia.central.guard import MAX_BODY
from licentia.central.service import Central, FirmKey
from licentia.fsutil import atomic_write
from licentia.model import ErrorCode, LicentiaError
from licentia.protocol.tls import fingerprint

log = logging.getLogger("licentia.central")

DEFAULT_PORT = 22360
TOKEN_FILE = "admin.token"
DB_FILE = "central.db"
CERT_FILE = "tls/central.crt"
KEY_FILE = "tls/central.key"


@dataclass(frozen=True)
class Limits:
    """What one client may take of central (docs/central.md lists them with these defaults).

    `limit_concurrency`: connections and tasks at once; more are answered 503 at once.
    `timeout_keep_alive`: seconds an idle keep-alive connection stays open.
    `max_header_bytes`: bytes of a request line and headers not yet complete (h11's
    `max_incomplete_event_size`); more close the connection.
    `max_body`: bytes of a request body; more are answered 413 unread.
    `backlog`: connections the kernel queues before central accepts them."""

    limit_concurrency: int = 256
    timeout_keep_alive: int = 5
    max_header_bytes: int = 16 * 1024
    max_body: int = MAX_BODY
    backlog: int = 1024


@dataclass(frozen=True)
class Tls:
    certificate: Path
    private_key: Path

    @property
    def pin(self) -> str:
        return fingerprint(ssl.PEM_cert_to_DER_cert(self.certificate.read_text()))


def tls_files(home: Path, host: str, certificate: Path | None = None, private_key: Path | None = None) -> Tls:
    """The vendor's certificate and key, or central's own, made at the first start (EC P-256,
    self-signed for this host's names; clients pin it)."""
    if certificate or private_key:
        if not (certificate and private_key):
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "give both --cert and --key, or neither")
        tls = Tls(certificate, private_key)
    else:
        tls = Tls(home / CERT_FILE, home / KEY_FILE)
        if not (tls.certificate.exists() and tls.private_key.exists()):
            from licentia.crypto.tls import self_signed_server_certificate

            name = socket.gethostname()
            names = [name, socket.getfqdn(), "localhost", "127.0.0.1", "::1"]
            if host not in ("0.0.0.0", "::", ""):
                names.append(host)
            cert_pem, key_pem = self_signed_server_certificate(f"licentia central {name}", names, int(time.time()))
            tls.private_key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(tls.private_key, key_pem, mode=0o600)
            atomic_write(tls.certificate, cert_pem, mode=0o644)
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls.certificate, tls.private_key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"cannot load the certificate {tls.certificate} "
                            f"with the key {tls.private_key}: {exc}") from None
    return tls


@dataclass
class Prepared:
    central: Central
    app: Starlette
    home: Path
    url: str
    admin_token_file: Path | None  # written by this start


def write_secret(path: Path, text: str) -> None:
    """Write a secret readable by its owner only (0600), replacing the file atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def prepare(home: Path, firm: FirmKey, db_url: str | None = None, *, max_body: int = MAX_BODY) -> Prepared:
    """Create the home, migrate the database, make the first admin token, build the app."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    url = db_url or sqlite_url(home / DB_FILE)
    db = Database(url)
    db.migrate()
    central = Central(db, firm)
    token = central.ensure_admin_token(int(time.time()))
    written = None
    if token is not None:
        written = home / TOKEN_FILE
        write_secret(written, token + "\n")
    return Prepared(central, create_app(central, max_body=max_body), home, url, written)


def serve(home: Path, firm: FirmKey, *, db_url: str | None = None, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          tls: Tls | None = None, limits: Limits | None = None) -> None:
    """Serve central; `tls` None is plain HTTP (for a TLS proxy in front)."""
    import uvicorn

    limits = limits or Limits()
    prepared = prepare(home, firm, db_url, max_body=limits.max_body)
    where = "SQLite " + str(home / DB_FILE) if db_url is None else prepared.central.db.dialect
    scheme = "https" if tls is not None else "http"
    print(f"central for firm {firm.firm_code} ({firm.name}) on {scheme}://{host}:{port}/ — database {where}", flush=True)
    if tls is not None:
        print(f"certificate {tls.certificate}, pin {tls.pin}", flush=True)
    else:
        print("plain HTTP: put a TLS proxy in front; tokens, tickets and credentials cross the network", flush=True)
    if prepared.admin_token_file is not None:
        print(f"first admin API token written to {prepared.admin_token_file}", flush=True)
    uvicorn.run(
        prepared.app, host=host, port=port, log_level="warning", access_log=False,
        ssl_certfile=str(tls.certificate) if tls else None, ssl_keyfile=str(tls.private_key) if tls else None,
        limit_concurrency=limits.limit_concurrency, timeout_keep_alive=limits.timeout_keep_alive,
        h11_max_incomplete_event_size=limits.max_header_bytes, backlog=limits.backlog,
        http="h11", server_header=False,
    )
