"""Running central: its home directory, the database at start, the first admin token, uvicorn.

The central home holds `central.db` (the default SQLite database) and `admin.token` (the
first API token, mode 0600, written once when the database has no token yet).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette

from licentia.central.api import create_app
from licentia.central.db import Database, sqlite_url
from licentia.central.service import Central, FirmKey

log = logging.getLogger("licentia.central")

DEFAULT_PORT = 22360
TOKEN_FILE = "admin.token"
DB_FILE = "central.db"


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


def prepare(home: Path, firm: FirmKey, db_url: str | None = None) -> Prepared:
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
    return Prepared(central, create_app(central), home, url, written)


def serve(home: Path, firm: FirmKey, *, db_url: str | None = None, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    import uvicorn

    prepared = prepare(home, firm, db_url)
    where = "SQLite " + str(home / DB_FILE) if db_url is None else prepared.central.db.dialect
    print(f"central for firm {firm.firm_code} ({firm.name}) on http://{host}:{port}/ — database {where}", flush=True)
    if prepared.admin_token_file is not None:
        print(f"first admin API token written to {prepared.admin_token_file}", flush=True)
    uvicorn.run(prepared.app, host=host, port=port, log_level="warning", access_log=False)
