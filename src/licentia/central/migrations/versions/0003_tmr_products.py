"""TMR products: a product marked TMR, the firm's consecutive TMR ids, and the group
updates central issued (docs/central.md, "TMR products").

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("products") as batch:
        batch.add_column(sa.Column("tmr", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "tmr_ids",
        sa.Column("firm_code", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("last", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "tmr_groups",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("license_id", sa.Integer(), sa.ForeignKey("licenses.id"), nullable=False, index=True),
        sa.Column("tmr_id", sa.BigInteger(), nullable=False),
        sa.Column("serials", sa.JSON(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("confirmed_at", sa.BigInteger(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("tmr_groups")
    op.drop_table("tmr_ids")
    with op.batch_alter_table("products") as batch:
        batch.drop_column("tmr")
