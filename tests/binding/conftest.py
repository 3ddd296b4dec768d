"""Shared fixtures for the binding tests: synthetic machine trees (tests/machines.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:  # so `tests.machines` imports however pytest was started
    sys.path.insert(0, str(_REPO))

from tests.machines import Machine, build  # noqa: E402


@pytest.fixture
def make_tree(tmp_path: Path) -> Callable[[Machine], Path]:
    """Build a machine's tree in a fresh directory under tmp_path; returns its root."""
    count = 0

    def make(machine: Machine) -> Path:
        nonlocal count
        count += 1
        return build(machine, tmp_path / f"machine{count}")

    return make
