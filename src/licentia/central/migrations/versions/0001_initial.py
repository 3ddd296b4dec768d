"""The back office's first schema: products, customers, orders, tickets, licenses,
containers, updates, activations, replacements, API tokens, cloud credentials and seats,
and the append-only audit log.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BIG = sa.BigInteger()


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("firm_code", BIG, nullable=False),
        sa.Column("product_code", BIG, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("template", sa.JSON(), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("created_at", BIG, nullable=False),
        sa.UniqueConstraint("firm_code", "product_code", name="uq_products_code"),
    )
    op.create_table(
        "customers",
        sa.Column("id", sa.String(20), primary_key=True),
        sa.Column("company", sa.String(200), nullable=False),
        sa.Column("site", sa.String(200), nullable=False),
        sa.Column("license_type", sa.String(20), nullable=False),
        sa.Column("server_host", sa.String(253), nullable=True),
        sa.Column("server_ip", sa.String(45), nullable=True),
        sa.Column("server_serial", sa.String(24), nullable=True),
        sa.Column("auto_activate_after", BIG, nullable=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("successor_id", sa.String(20), nullable=True),
        sa.Column("created_at", BIG, nullable=False),
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(20), sa.ForeignKey("customers.id"), nullable=True),
        sa.Column("reference", sa.String(100), nullable=True),
        sa.Column("created_at", BIG, nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
    )
    op.create_table(
        "tickets",
        sa.Column("id", sa.String(29), primary_key=True),
        sa.Column("order_id", sa.Integer(), sa.ForeignKey("orders.id"), nullable=False),
        sa.Column("customer_id", sa.String(20), sa.ForeignKey("customers.id"), nullable=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("created_at", BIG, nullable=False),
    )
    op.create_table(
        "licenses",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("ticket_id", sa.String(29), sa.ForeignKey("tickets.id"), nullable=False),
        sa.Column("product_id", sa.Integer(), sa.ForeignKey("products.id"), nullable=False),
        sa.Column("quantity", BIG, nullable=True),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("created_at", BIG, nullable=False),
    )
    op.create_index("ix_licenses_ticket_id", "licenses", ["ticket_id"])
    op.create_table(
        "containers",
        sa.Column("serial", sa.String(24), primary_key=True),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("sign_public", sa.LargeBinary(), nullable=False),
        sa.Column("box_public", sa.LargeBinary(), nullable=False),
        sa.Column("environment", sa.JSON(), nullable=False),
        sa.Column("counter", BIG, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("state_reason", sa.Text(), nullable=True),
        sa.Column("blacklisted", sa.String(20), nullable=True),
        sa.Column("blacklisted_at", BIG, nullable=True),
        sa.Column("lock", sa.String(20), nullable=False),
        sa.Column("customer_id", sa.String(20), sa.ForeignKey("customers.id"), nullable=True),
        sa.Column("first_seen", BIG, nullable=False),
        sa.Column("last_contact", BIG, nullable=False),
    )
    op.create_table(
        "updates",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("serial", sa.String(24), sa.ForeignKey("containers.serial"), nullable=False),
        sa.Column("counter_from", BIG, nullable=False),
        sa.Column("counter_to", BIG, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("purpose", sa.String(20), nullable=False),
        sa.Column("operations", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("signed_time", BIG, nullable=False),
        sa.Column("created_at", BIG, nullable=False),
        sa.Column("confirmed_at", BIG, nullable=True),
    )
    op.create_index("ix_updates_serial_counter", "updates", ["serial", "counter_to"])
    op.create_table(
        "activations",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("license_id", sa.Integer(), sa.ForeignKey("licenses.id"), nullable=False),
        sa.Column("serial", sa.String(24), sa.ForeignKey("containers.serial"), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("how", sa.String(20), nullable=False),
        sa.Column("created_at", BIG, nullable=False),
        sa.Column("confirmed_at", BIG, nullable=True),
        sa.Column("ended_at", BIG, nullable=True),
    )
    op.create_index("ix_activations_license", "activations", ["license_id", "state"])
    op.create_index("ix_activations_serial", "activations", ["serial", "state"])
    op.create_table(
        "replacements",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("license_id", sa.Integer(), sa.ForeignKey("licenses.id"), nullable=False),
        sa.Column("old_serial", sa.String(24), nullable=False),
        sa.Column("same_device", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requested_at", BIG, nullable=False),
        sa.Column("decided_at", BIG, nullable=True),
        sa.Column("decided_by", sa.String(100), nullable=True),
    )
    op.create_index("ix_replacements_license_id", "replacements", ["license_id"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", BIG, nullable=False),
        sa.Column("revoked_at", BIG, nullable=True),
    )
    op.create_table(
        "cloud_credentials",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("serial", sa.String(24), sa.ForeignKey("containers.serial"), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", BIG, nullable=False),
        sa.Column("revoked_at", BIG, nullable=True),
    )
    op.create_index("ix_cloud_credentials_serial", "cloud_credentials", ["serial"])
    op.create_table(
        "cloud_seats",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("license_id", sa.Integer(), sa.ForeignKey("licenses.id"), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("handle", sa.String(64), nullable=False, unique=True),
        sa.Column("station", sa.String(200), nullable=False),
        sa.Column("acquired_at", BIG, nullable=False),
        sa.Column("expires_at", BIG, nullable=False),
        sa.UniqueConstraint("license_id", "slot", name="uq_cloud_seats_slot"),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", BIG, nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("action", sa.String(50), nullable=False),
        sa.Column("subject", sa.String(100), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
    )
    _append_only("audit")


def _append_only(table: str) -> None:
    """Refuse UPDATE and DELETE on `table` in the database itself."""
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            f"CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION '{table} is append-only'; END $$"
        )
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()"
        )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_append_only ON audit")
        op.execute("DROP FUNCTION IF EXISTS audit_append_only()")
    for table in (
        "audit", "cloud_seats", "cloud_credentials", "api_tokens", "replacements",
        "activations", "updates", "containers", "licenses", "tickets", "orders",
        "customers", "products",
    ):
        op.drop_table(table)
