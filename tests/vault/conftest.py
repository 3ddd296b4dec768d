"""Fixtures for the vault tests: throw-away SoftHSM2 tokens (tests/tokens.py)."""

from tokens import soft_token, token_store  # noqa: F401  (pytest fixtures)
