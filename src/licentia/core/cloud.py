"""Cloud containers (mask 140): the credential file, the seat grant and the item wire form.

A cloud container's licenses stay in central; a runtime holding the container's credential
file takes seats there. This module holds the pure parts both sides share: what a
credential file is and how it is read, the grant central signs for every seat (magic LCCG)
and how a runtime verifies it, and how a product item travels in JSON. Central
(`licentia.central.cloud`) issues; the runtime (`licentia.runtime.cloud`) reads and checks.

Credential file (JSON, so an administrator can tell what it is)::

    {"format": "licentia-cloud-credential", "version": 1, "central": URL,
     "firm_code": N, "serial": "140-…", "secret": "…", "issued_at": T,
     "firm_public_key": HEX}

`firm_public_key` lets the runtime verify grants and licenses without trusting the
network it reaches central through; files written before it existed lack it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

from licentia.crypto import InvalidArtifact
from licentia.crypto.artifacts import open_signed_artifact, sign_artifact
from licentia.model import (
    ContainerKind,
    ContainerSerial,
    ErrorCode,
    LicentiaError,
    ProductItem,
    envelope as env,
)

CREDENTIAL_FORMAT: Final = "licentia-cloud-credential"
CREDENTIAL_VERSION: Final = 1
CLOUD_MASK: Final = 140
GRANT_MAGIC: Final = b"LCCG"
GRANT_VERSION: Final = 1
DEFAULT_LEASE: Final = 300
MIN_LEASE: Final = 30
MAX_LEASE: Final = 3600
_BYTES_OPTIONS: Final = frozenset({"user_data", "protected_data", "hidden_data"})
_SECRET_MAX: Final = 512


def secret_digest(secret: str) -> str:
    """What central stores of a credential's secret (the secret itself is never kept)."""
    return hashlib.sha256(secret.encode()).hexdigest()


# -- the credential file ------------------------------------------------------------------


@dataclass(frozen=True)
class Credential:
    """A parsed credential file."""

    central: str  # central's base URL
    serial: ContainerSerial
    secret: str
    firm_code: int | None = None
    issued_at: int | None = None
    firm_public_key: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        return make_credential(
            self.central, self.firm_code, str(self.serial), self.secret, self.issued_at, self.firm_public_key
        )


def make_credential(
    central: str,
    firm_code: int | None,
    serial: str,
    secret: str,
    issued_at: int | None,
    firm_public_key: bytes | None = None,
) -> dict[str, Any]:
    """The JSON document of a credential file."""
    doc: dict[str, Any] = {
        "format": CREDENTIAL_FORMAT,
        "version": CREDENTIAL_VERSION,
        "central": central,
        "firm_code": firm_code,
        "serial": serial,
        "secret": secret,
        "issued_at": issued_at,
    }
    if firm_public_key is not None:
        doc["firm_public_key"] = firm_public_key.hex()
    return doc


def _not_a_credential(why: str = "") -> LicentiaError:
    return LicentiaError(
        ErrorCode.CREDENTIAL_INVALID,
        "this is not a licentia cloud credential file" + (f" ({why})" if why else ""),
        "download the container's credential file again from the portal",
    )


def read_credential(text: str | bytes) -> dict[str, Any]:
    """Parse a credential file into its JSON document; refuse anything else (1210)."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise _not_a_credential("not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != CREDENTIAL_FORMAT:
        raise _not_a_credential()
    if doc.get("version") != CREDENTIAL_VERSION:
        raise _not_a_credential(f"version {doc.get('version')!r}; this licentia reads version {CREDENTIAL_VERSION}")
    for key in ("central", "serial", "secret"):
        if not isinstance(doc.get(key), str):
            raise _not_a_credential(f"{key} is missing")
    return dict(doc)


def parse_credential(text: str | bytes) -> Credential:
    """A credential file, checked: a cloud serial, an http(s) URL, a secret, a 32-byte key."""
    doc = read_credential(text)
    try:
        serial = ContainerSerial.parse(doc["serial"])
    except LicentiaError:
        raise _not_a_credential(f"serial {doc['serial']!r} is malformed") from None
    if serial.kind is not ContainerKind.CLOUD:
        raise _not_a_credential(f"{serial} is not a cloud container (mask {CLOUD_MASK})")
    central = str(doc["central"]).rstrip("/")
    if not central.startswith(("http://", "https://")) or len(central) > 2000:
        raise _not_a_credential("central's address is not an http(s) URL")
    secret = str(doc["secret"])
    if not secret or len(secret) > _SECRET_MAX:
        raise _not_a_credential("the secret is empty or too long")
    firm_code = doc.get("firm_code")
    if firm_code is not None and (isinstance(firm_code, bool) or not isinstance(firm_code, int)):
        raise _not_a_credential("firm_code is not a number")
    issued_at = doc.get("issued_at")
    if issued_at is not None and (isinstance(issued_at, bool) or not isinstance(issued_at, int)):
        raise _not_a_credential("issued_at is not a time")
    key: bytes | None = None
    raw_key = doc.get("firm_public_key")
    if raw_key is not None:
        try:
            key = bytes.fromhex(raw_key) if isinstance(raw_key, str) else None
        except ValueError:
            key = None
        if key is None or len(key) != 32:
            raise _not_a_credential("firm_public_key is not 32 bytes of hex")
    return Credential(central, serial, secret, firm_code, issued_at, key)


# -- grants: central's signed word that a seat is held ---------------------------------------


@dataclass(frozen=True)
class Grant:
    serial: str
    firm_code: int
    item_id: int
    product_code: int
    handle: str
    expires_at: int
    issued_at: int


def issue_grant(grant: Grant, firm_private_key: bytes) -> bytes:
    body = env.encode(
        {
            "serial": grant.serial,
            "firm_code": grant.firm_code,
            "item_id": grant.item_id,
            "product_code": grant.product_code,
            "handle": grant.handle,
            "expires_at": grant.expires_at,
            "issued_at": grant.issued_at,
        }
    )
    return sign_artifact(GRANT_MAGIC, GRANT_VERSION, body, firm_private_key)


def read_grant(data: bytes, firm_public_key: bytes) -> Grant:
    """Verify a grant against the firm's key, then decode it; anything else is 109."""
    try:
        _, body = open_signed_artifact(data, GRANT_MAGIC, {GRANT_VERSION}, firm_public_key, what="cloud grant")
        fields = env.decode_map(body, what="cloud grant")
        return Grant(
            serial=str(fields["serial"]),
            firm_code=int(fields["firm_code"]),
            item_id=int(fields["item_id"]),
            product_code=int(fields["product_code"]),
            handle=str(fields["handle"]),
            expires_at=int(fields["expires_at"]),
            issued_at=int(fields["issued_at"]),
        )
    except (InvalidArtifact, LicentiaError, KeyError, TypeError, ValueError):
        raise LicentiaError(
            ErrorCode.SECURITY_PROBLEM,
            "central's seat grant is not signed by the firm's key",
            "check the central address in the credential file; the answer may not come from the vendor",
        ) from None


def check_grant(grant: Grant, *, serial: str, firm_code: int | None, product_code: int, handle: str) -> None:
    """A verified grant must name this container, firm, product and seat."""
    if (
        grant.serial != serial
        or (firm_code is not None and grant.firm_code != firm_code)
        or grant.product_code != product_code
        or grant.handle != handle
        or grant.expires_at < grant.issued_at
    ):
        raise LicentiaError(
            ErrorCode.SECURITY_PROBLEM,
            f"central's seat grant names another container, product or seat than cloud container {serial} asked for",
        )


def lease(value: int) -> int:
    """A seat lease in seconds, checked."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_LEASE <= value <= MAX_LEASE:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"a lease lasts {MIN_LEASE} to {MAX_LEASE} seconds")
    return value


# -- product items in JSON --------------------------------------------------------------------


def item_to_wire(item: ProductItem) -> dict[str, Any]:
    """A product item as JSON: its options, bytes as hex."""
    return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in item.to_dict().items()}


def item_from_wire(data: Any) -> ProductItem:
    """The product item `item_to_wire` wrote (refused as 264 when malformed)."""
    if not isinstance(data, dict):
        raise LicentiaError(ErrorCode.LICENSE_INVALID, "a cloud item is not an object")
    options: dict[str, Any] = {}
    for key, value in data.items():
        if key in _BYTES_OPTIONS:
            try:
                value = bytes.fromhex(value) if isinstance(value, str) else None
            except ValueError:
                value = None
            if value is None:
                raise LicentiaError(ErrorCode.LICENSE_INVALID, f"cloud item option {key!r} is not hex")
        options[key] = value
    try:
        return ProductItem.from_dict(options)
    except LicentiaError as exc:
        raise LicentiaError(ErrorCode.LICENSE_INVALID, f"a cloud item is malformed: {exc.message}") from None


__all__ = [
    "CLOUD_MASK", "CREDENTIAL_FORMAT", "CREDENTIAL_VERSION", "DEFAULT_LEASE", "GRANT_MAGIC", "GRANT_VERSION",
    "MAX_LEASE", "MIN_LEASE", "Credential", "Grant", "check_grant", "issue_grant", "item_from_wire",
    "item_to_wire", "lease", "make_credential", "parse_credential", "read_credential", "read_grant",
    "secret_digest",
]
