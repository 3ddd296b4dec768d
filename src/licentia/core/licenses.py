"""Vendor-signed licenses: one product item bound to one container by the firm's signature.

A license names the container serial and the container's public key, so a license copied
into another container does not verify there, and a program can check that the container
answering its challenge is the one the vendor licensed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from licentia.crypto import InvalidArtifact
from licentia.crypto.artifacts import open_signed_artifact, sign_artifact
from licentia.model import (
    ContainerSerial,
    ErrorCode,
    LicentiaError,
    ProductItem,
    envelope as env,
)

LICENSE_MAGIC = b"LCLI"
LICENSE_VERSION = 1


@dataclass(frozen=True)
class License:
    serial: ContainerSerial
    container_public_key: bytes
    firm_code: int
    item_id: int
    item: ProductItem
    issued_at: int


def issue_license(lic: License, firm_private_key: bytes) -> bytes:
    body = env.encode(
        {
            "serial": str(lic.serial),
            "container_public_key": lic.container_public_key,
            "firm_code": lic.firm_code,
            "item_id": lic.item_id,
            "item": lic.item.to_dict(),
            "issued_at": lic.issued_at,
        }
    )
    return sign_artifact(LICENSE_MAGIC, LICENSE_VERSION, body, firm_private_key)


def read_license(data: bytes, firm_public_key: bytes) -> License:
    """Verify a license against the firm's key, then decode it; refuse anything else as 264."""
    try:
        _, body = open_signed_artifact(
            data, LICENSE_MAGIC, {LICENSE_VERSION}, firm_public_key, what="license"
        )
    except InvalidArtifact:
        raise LicentiaError(
            ErrorCode.LICENSE_INVALID, "a license is not signed by its firm's key"
        ) from None
    fields = env.decode_map(body, what="license")
    try:
        return License(
            serial=ContainerSerial.parse(fields["serial"]),
            container_public_key=_bytes(fields["container_public_key"]),
            firm_code=int(fields["firm_code"]),
            item_id=int(fields["item_id"]),
            item=ProductItem.from_dict(fields["item"]),
            issued_at=int(fields["issued_at"]),
        )
    except (KeyError, TypeError, ValueError):
        raise LicentiaError(ErrorCode.LICENSE_INVALID, "a license has missing or malformed fields") from None


def check_license_for(lic: License, serial: ContainerSerial, container_public_key: bytes, firm_code: int) -> None:
    if lic.serial != serial or lic.container_public_key != container_public_key:
        raise LicentiaError(
            ErrorCode.LICENSE_INVALID,
            f"a license was made for container {lic.serial}, not {serial}; licenses cannot be copied between containers",
        )
    if lic.firm_code != firm_code:
        raise LicentiaError(ErrorCode.LICENSE_INVALID, "a license names another firm")


def _bytes(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError("expected bytes")
    return value
