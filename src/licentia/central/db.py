"""Storage of the back office: the tables, the engine, and migrations at start.

SQLite (a file in the central home) by default, PostgreSQL by URL. The schema is owned by
Alembic (`licentia/central/migrations`); `open_database` brings any database to the head
revision before central answers. Every API call is one transaction: it changes everything
it should, or nothing.

On SQLite every transaction starts with BEGIN IMMEDIATE, so two writers never deadlock on
a lock upgrade; on PostgreSQL rows that a decision depends on are read FOR UPDATE.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from licentia.model import ErrorCode, LicentiaError

MIGRATIONS = Path(__file__).parent / "migrations"


class Base(DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (UniqueConstraint("firm_code", "product_code", name="uq_products_code"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    firm_code: Mapped[int] = mapped_column(BigInteger)
    product_code: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(200))
    template: Mapped[dict[str, Any]] = mapped_column(JSON)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger)
    # a TMR product: each license is one TMR license, activated into three constituent
    # containers by a group request (docs/central.md, "TMR products")
    tmr: Mapped[bool] = mapped_column(Boolean, default=False)


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[str] = mapped_column(String(20), primary_key=True)
    company: Mapped[str] = mapped_column(String(200))
    site: Mapped[str] = mapped_column(String(200))
    license_type: Mapped[str] = mapped_column(String(20))  # single-user | multi-user
    server_host: Mapped[str | None] = mapped_column(String(253), nullable=True)
    server_ip: Mapped[str | None] = mapped_column(String(45), nullable=True)
    server_serial: Mapped[str | None] = mapped_column(String(24), nullable=True)
    # multi-user: the container registered as the license server, linked (server_serial)
    # at its first contact from the registered host name
    server_container: Mapped[str | None] = mapped_column(String(24), nullable=True)
    auto_activate_after: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    state: Mapped[str] = mapped_column(String(20), default="active")  # active | retired
    successor_id: Mapped[str | None] = mapped_column(String(20), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str | None] = mapped_column(ForeignKey("customers.id"), nullable=True)
    reference: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str] = mapped_column(String(100))


class Ticket(Base):
    __tablename__ = "tickets"

    id: Mapped[str] = mapped_column(String(29), primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    customer_id: Mapped[str | None] = mapped_column(ForeignKey("customers.id"), nullable=True)
    state: Mapped[str] = mapped_column(String(20), default="open")  # open | void
    created_at: Mapped[int] = mapped_column(BigInteger)


class License(Base):
    """One license of a ticket; activated, it is item `id` of the firm in one container."""

    __tablename__ = "licenses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ticket_id: Mapped[str] = mapped_column(ForeignKey("tickets.id"), index=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    quantity: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(20), default="open")  # open | void
    created_at: Mapped[int] = mapped_column(BigInteger)


class Container(Base):
    __tablename__ = "containers"

    serial: Mapped[str] = mapped_column(String(24), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    sign_public: Mapped[bytes] = mapped_column(LargeBinary)
    box_public: Mapped[bytes] = mapped_column(LargeBinary)
    environment: Mapped[dict[str, Any]] = mapped_column(JSON)
    counter: Mapped[int] = mapped_column(BigInteger, default=0)  # confirmed firm update counter
    state: Mapped[str] = mapped_column(String(20), default="ok")  # ok | manipulated
    state_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    blacklisted: Mapped[str | None] = mapped_column(String(20), nullable=True)  # lost|stolen|replaced
    blacklisted_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # none | pending (a lock goes out at the next contact) | locked | unlocking (taken off
    # the blacklist: an unlock goes out at the next contact)
    lock: Mapped[str] = mapped_column(String(20), default="none")
    customer_id: Mapped[str | None] = mapped_column(ForeignKey("customers.id"), nullable=True)
    first_seen: Mapped[int] = mapped_column(BigInteger)
    last_contact: Mapped[int] = mapped_column(BigInteger)


class Update(Base):
    """An update file central issued; at most one per (serial, counter_to) gets confirmed."""

    __tablename__ = "updates"
    __table_args__ = (Index("ix_updates_serial_counter", "serial", "counter_to"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    serial: Mapped[str] = mapped_column(ForeignKey("containers.serial"))
    counter_from: Mapped[int] = mapped_column(BigInteger)
    counter_to: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    purpose: Mapped[str] = mapped_column(String(20))
    operations: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # pending | superseded (a later update carries its operations) | confirmed | void
    state: Mapped[str] = mapped_column(String(20), default="pending")
    signed_time: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    confirmed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Activation(Base):
    """A license in a container: pending → active → returning/revoking → returned/revoked."""

    __tablename__ = "activations"
    __table_args__ = (
        Index("ix_activations_license", "license_id", "state"),
        Index("ix_activations_serial", "serial", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    license_id: Mapped[int] = mapped_column(ForeignKey("licenses.id"))
    serial: Mapped[str] = mapped_column(ForeignKey("containers.serial"))
    state: Mapped[str] = mapped_column(String(20))
    how: Mapped[str] = mapped_column(String(20))  # online | offline | automatic | replacement
    created_at: Mapped[int] = mapped_column(BigInteger)
    confirmed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    ended_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Replacement(Base):
    __tablename__ = "replacements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    license_id: Mapped[int] = mapped_column(ForeignKey("licenses.id"), index=True)
    old_serial: Mapped[str] = mapped_column(String(24))
    same_device: Mapped[bool] = mapped_column(Boolean)
    # pending (waits for approval) | approved | refused
    state: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text)
    requested_at: Mapped[int] = mapped_column(BigInteger)
    decided_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(100), nullable=True)  # policy | hook | operator
    decided_actor: Mapped[str | None] = mapped_column(String(100), nullable=True)  # the operator's token


class TmrIds(Base):
    """The last TMR id central gave a license of the firm (read FOR UPDATE to take the next)."""

    __tablename__ = "tmr_ids"

    firm_code: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    last: Mapped[int] = mapped_column(BigInteger)


class TmrGroup(Base):
    """A group update central issued: one TMR license into three constituent containers."""

    __tablename__ = "tmr_groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    license_id: Mapped[int] = mapped_column(ForeignKey("licenses.id"), index=True)
    tmr_id: Mapped[int] = mapped_column(BigInteger)
    serials: Mapped[list[str]] = mapped_column(JSON)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(20))  # pending | confirmed | superseded
    created_at: Mapped[int] = mapped_column(BigInteger)
    confirmed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))  # admin | operator | read-only
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class CloudCredential(Base):
    __tablename__ = "cloud_credentials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    serial: Mapped[str] = mapped_column(ForeignKey("containers.serial"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class CloudSeat(Base):
    """One seat in use of a cloud license; the unique index makes counting race-free."""

    __tablename__ = "cloud_seats"
    __table_args__ = (UniqueConstraint("license_id", "slot", name="uq_cloud_seats_slot"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    license_id: Mapped[int] = mapped_column(ForeignKey("licenses.id"))
    slot: Mapped[int] = mapped_column(Integer)
    handle: Mapped[str] = mapped_column(String(64), unique=True)
    station: Mapped[str] = mapped_column(String(200))
    acquired_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)


class AuditEntry(Base):
    """Append-only: the migration installs triggers that refuse UPDATE and DELETE."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[int] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(50))
    subject: Mapped[str] = mapped_column(String(100))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


# -- engine ----------------------------------------------------------------------------------


def normalize_url(url: str) -> str:
    """Accept postgresql:// and postgres:// for the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_connection.cursor()
            _set_wal(cur)
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def _set_wal(cur: Any, patience: float = 30.0) -> None:
    """Switch the file to write-ahead logging (once per file: the mode persists). The
    switch does not wait for a busy file as statements do, so when another process or
    connection is setting up the same new file it is tried again until `patience` ends."""
    import sqlite3
    import time

    deadline = time.monotonic() + patience
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def migrate(engine: Engine) -> None:
    """Bring the database to the head revision (creating it on first start)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Several central processes may start at once on one database: one migrates.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(72350001)")
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


def _unusable(url: str, why: str) -> LicentiaError:
    shown = url.split("@")[-1] if "@" in url else url  # never print a password
    return LicentiaError(
        ErrorCode.CENTRAL_ERROR,
        f"cannot use the database {shown}: {why}; give --db sqlite:///FILE or postgresql://user:pw@host/db",
    )


class Database:
    """The engine over `url`. A URL that names no supported database (SQLite, PostgreSQL) or
    a database that cannot be reached is a LicentiaError (CENTRAL_ERROR) saying so."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        scheme = self.url.split(":", 1)[0].split("+", 1)[0]
        if "://" not in self.url or scheme not in ("sqlite", "postgresql"):
            raise _unusable(url, f"the scheme {scheme!r} is not supported (SQLite and PostgreSQL are)")
        try:
            self.engine = make_engine(self.url)
        except (ArgumentError, ImportError) as exc:
            raise _unusable(url, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> None:
        try:
            migrate(self.engine)
        except (OperationalError, InterfaceError) as exc:
            raise _unusable(self.url, " ".join(str(exc.orig or exc).split())[:300]) from None

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
