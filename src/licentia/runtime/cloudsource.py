"""What the runtime keeps of a cloud container (`licentia.runtime.cloud` serves them): the
items as it last heard them from central, one credential file and what came of it, and a
seat held in central for a program."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from licentia.core.cloud import Credential
from licentia.core.content import ContainerContent
from licentia.model import ContainerKind, ContainerStatus
from licentia.runtime.sync import CentralHTTP


class MemoryContainer:
    """The cloud container's items as the runtime last heard them (central keeps the truth)."""

    kind = ContainerKind.CLOUD

    def __init__(self, content: ContainerContent) -> None:
        self.content = content

    def transact(self, change: Any) -> Any:
        new, result = change(self.content)
        self.content = new
        return result

    def read(self) -> ContainerContent:
        return self.content

    def status(self, content: ContainerContent) -> ContainerStatus:
        return ContainerStatus.CLOCK_MANIPULATED if content.clock.manipulated else ContainerStatus.OK


@dataclass
class Source:
    """One credential file and what came of it."""

    path: Path
    stamp: tuple[int, int] | None = None
    credential: Credential | None = None
    state: str = "starting"  # ok, unreachable, credential refused, locked by the vendor, invalid
    detail: str = ""
    code: int | None = None
    key: bytes = b""
    firm_key: bytes | None = None
    firm_code: int | None = None
    http: CentralHTTP | None = None
    next_refresh: float = 0.0
    refreshing: bool = False
    served: bool = False
    items: int = 0
    licenses: dict[int, bytes] = field(default_factory=dict)  # item id -> license for this runtime's key
    products: set[tuple[int, int]] = field(default_factory=set)  # (firm, product) it served last

    @property
    def serial(self) -> str | None:
        return str(self.credential.serial) if self.credential is not None else None


@dataclass
class CloudHold:
    handle: int  # the program's handle here
    serial: str
    central_handle: str
    item_id: int
    expires_at: int
    next_beat: float = 0.0
    beating: bool = False
