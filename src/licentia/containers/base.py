"""What every container kind shares once it can `transact`: its clock and its status."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from licentia.core.content import ContainerContent
from licentia.model import ContainerStatus

T = TypeVar("T")


class ContainerBase:
    def transact(self, change: Callable[[ContainerContent], tuple[ContainerContent, T]]) -> T:
        raise NotImplementedError

    def observe_clock(self, now: int) -> ContainerContent:
        """Show the system time to the virtual clock, persisting the mark when it moves."""

        def change(c: ContainerContent) -> tuple[ContainerContent, ContainerContent]:
            updated = c.with_clock(c.clock.observe(now))
            return updated, updated

        return self.transact(change)

    def status(self, content: ContainerContent) -> ContainerStatus:
        return ContainerStatus.CLOCK_MANIPULATED if content.clock.manipulated else ContainerStatus.OK
