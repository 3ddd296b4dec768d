"""The containers of one licentia home, opened against this machine's fingerprint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from licentia.containers.soft import SoftContainer, container_path, list_paths, read_header
from licentia.core.content import ContainerContent
from licentia.core.evaluate import status_of
from licentia.crypto import key_id
from licentia.model import (
    ContainerSerial,
    ContainerStatus,
    ErrorCode,
    Fingerprint,
    LicentiaError,
    Tolerance,
)


@dataclass(frozen=True)
class Inspection:
    """A container as seen from here, whatever state it is in."""

    serial: str
    kind: str
    path: Path
    status: ContainerStatus
    detail: str  # binding health, or what is wrong
    container: SoftContainer | None = None
    content: ContainerContent | None = None
    error: LicentiaError | None = None


class ContainerStore:
    def __init__(self, directory: Path, fingerprint: Fingerprint) -> None:
        self.directory = directory
        self.fingerprint = fingerprint

    def create_soft(self, tolerance: Tolerance, now: int, *, cost: int | None = None) -> SoftContainer:
        if cost is None:
            return SoftContainer.create(self.directory, self.fingerprint, tolerance, now)
        return SoftContainer.create(self.directory, self.fingerprint, tolerance, now, cost=cost)

    def path_of(self, serial: ContainerSerial) -> Path:
        return container_path(self.directory, serial)

    def open(self, serial: ContainerSerial, now: int | None = None) -> SoftContainer:
        path = self.path_of(serial)
        if not path.exists():
            raise LicentiaError(ErrorCode.CONTAINER_NOT_FOUND, f"no container {serial} in {self.directory}")
        return SoftContainer.open(path, self.fingerprint, now)

    def inspect_all(self, now: int) -> list[Inspection]:
        return [self.inspect(p, now) for p in list_paths(self.directory)]

    def inspect(self, path: Path, now: int) -> Inspection:
        name = path.name.removesuffix(".lcsc")
        try:
            header = read_header(path)
        except LicentiaError as exc:
            return Inspection(name, "soft", path, ContainerStatus.INVALID, exc.message, error=exc)
        try:
            container = SoftContainer.open(path, self.fingerprint, now)
            content = container.observe_clock(now)
        except LicentiaError as exc:
            status = (
                ContainerStatus.BROKEN if exc.code is ErrorCode.REACTIVATION_REQUIRED else ContainerStatus.INVALID
            )
            return Inspection(str(header.serial), "soft", path, status, exc.message, error=exc)
        return Inspection(
            str(header.serial), "soft", path, container.status(content), container.health.describe(),
            container, content,
        )


def item_rows(content: ContainerContent, now: int) -> list[dict[str, Any]]:
    """Every item with its options and status, as plain data for display and the JSON API."""
    rows: list[dict[str, Any]] = []
    for firm_code, entry in content.entries():
        verdict = status_of(entry.item, entry.state, content.clock, now)
        item = entry.item
        rows.append(
            {
                "firm_code": firm_code,
                "firm_key": key_id(content.firms[firm_code].firm_public_key),
                "item_id": entry.item_id,
                "product_code": item.product_code,
                "status": verdict.status.value,
                "error": None if verdict.error is None else int(verdict.error),
                "reason": verdict.reason,
                "valid_until": verdict.valid_until,
                "quantity": "unlimited" if item.quantity is None else item.quantity,
                "feature_map": item.feature_map,
                "expires_at": item.expires_at,
                "activates_at": item.activates_at,
                "usage_period": item.usage_period,
                "usage_started_at": entry.state.usage_started_at,
                "units": item.units,
                "units_remaining": entry.state.units_remaining,
                "maintenance_from": item.maintenance_from,
                "maintenance_until": item.maintenance_until,
                "versions": None if item.versions is None else str(item.versions),
                "text": entry.state.text if entry.state.text is not None else item.text,
                "user_data": entry.state.user_data if entry.state.user_data is not None else item.user_data,
                "protected_data": item.protected_data,
                "hidden_data": "<sealed>" if item.hidden_data else "",
                "tmr_id": item.tmr_id,
                "borrow_max": item.borrow_max,
                "checkpoint_period": item.checkpoint_period,
                "vm_allowed": item.vm_allowed,
                "locked": entry.state.locked,
            }
        )
    return rows
