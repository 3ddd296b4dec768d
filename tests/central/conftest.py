"""Fixtures of the back-office tests: databases (SQLite and a throw-away PostgreSQL cluster)
and central over them."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from central_helpers import make_firm

from licentia.central.db import Database, sqlite_url
from licentia.central.service import Central, FirmKey
from pg import PgCluster, pg_binaries


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster | None]:
    if pg_binaries() is None:
        yield None
        return
    with PgCluster() as cluster:
        yield cluster


_dbs = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "central.db")
    cluster = request.getfixturevalue("pg_cluster")
    if cluster is None:
        pytest.skip("PostgreSQL binaries (initdb, postgres) are not installed")
    return str(cluster.create_database(f"central{next(_dbs)}"))


@pytest.fixture
def firm() -> FirmKey:
    return make_firm()


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    db.migrate()
    yield db
    db.dispose()


@pytest.fixture
def central(database: Database, firm: FirmKey) -> Central:
    return Central(database, firm)
