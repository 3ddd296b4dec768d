"""Replacements say which operator decided; a multi-user customer registers its license
server's container, linked at the server's first contact.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("replacements") as batch:
        batch.add_column(sa.Column("decided_actor", sa.String(100), nullable=True))
    with op.batch_alter_table("customers") as batch:
        batch.add_column(sa.Column("server_container", sa.String(24), nullable=True))
    # operators' decisions were recorded by token name: say "operator", keep the name
    op.execute(
        "UPDATE replacements SET decided_actor = decided_by, decided_by = 'operator' "
        "WHERE decided_by IS NOT NULL AND decided_by NOT IN ('policy', 'hook')"
    )


def downgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("server_container")
    with op.batch_alter_table("replacements") as batch:
        batch.drop_column("decided_actor")
