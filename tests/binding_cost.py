"""A lower scrypt cost for the soft containers tests make, reached through a parameter.

The shipped container-creation path (`SoftContainer.create`, `licentia container create`)
binds at `fuzzy.DEFAULT_COST` and has no way to go lower. Tests that make many containers
give `licentia.containers.soft` a view of `licentia.crypto.fuzzy` whose `bind` passes
the crypto recipe's test-only `test_cost`; everything else is the module itself.
Opening reads the cost a blob records, so runtimes started on such containers open
them at that cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from licentia.crypto import fuzzy
from licentia.model import MachineProperty

TEST_COST = 4


class CheapFuzzy:
    """`licentia.crypto.fuzzy` with `bind` at `cost` (TEST_COST by default)."""

    def __init__(self, cost: int = TEST_COST) -> None:
        self.cost = cost

    def __getattr__(self, name: str) -> Any:
        return getattr(fuzzy, name)

    def bind(self, secret: bytes, properties: Sequence[MachineProperty], fraction: float, **_: Any) -> bytes:
        return fuzzy.bind(secret, properties, fraction, test_cost=self.cost)


def install(cost: int = TEST_COST) -> None:
    """Make this process's soft containers at `cost` (test and benchmark processes only)."""
    from licentia.containers import soft

    soft.fuzzy = CheapFuzzy(cost)  # type: ignore[assignment]


def uninstall() -> None:
    from licentia.containers import soft

    soft.fuzzy = fuzzy
