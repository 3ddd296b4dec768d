"""Alembic migrations of the back office's database (applied at every start)."""
