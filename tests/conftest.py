"""Shared test settings: hypothesis profiles sized for a 2-core machine."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_sessionstart(session: object) -> None:
    # compiled modules older than their sources would test old code (see licentia.native)
    from licentia import native

    native.check()


@pytest.fixture(scope="session", autouse=True)
def cheap_soft_binding() -> Iterator[None]:
    """Soft containers made in the test process bind at a low scrypt cost
    (tests/binding_cost.py); the shipped `licentia` command, run in a subprocess, keeps
    the shipped cost."""
    from tests.binding_cost import CheapFuzzy

    from licentia.containers import soft

    shipped = soft.fuzzy
    soft.fuzzy = CheapFuzzy()  # type: ignore[assignment]
    try:
        yield
    finally:
        soft.fuzzy = shipped
