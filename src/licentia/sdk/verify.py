"""Checking an answer so that a faked runtime cannot fake a license.

The program holds the firm's public key. An access answer carries the vendor-signed
license (which names the container's serial and public key) and the container's
signature over the program's fresh challenge, the handle and the item's state. Both
are checked here; either failing is `SECURITY_PROBLEM` (109): whatever answered is not
the licensed container. `cryptography` is imported only when this runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from licentia.model import ErrorCode, LicentiaError
from licentia.sdk.proof import proof_message

FirmKey = bytes | str | os.PathLike[str]


@dataclass(frozen=True)
class Verified:
    """The parts of an answer the vendor's and the container's signatures vouch for."""

    serial: str
    firm_code: int
    item_id: int
    item: dict[str, Any]  # the product item's options, as the vendor signed them
    container_key: bytes
    units: int | None
    valid_until: int | None


def load_firm_key(key: FirmKey, firm_code: int | None = None) -> bytes:
    """The raw 32-byte firm public key from raw bytes, hex text, or a file that
    `licentia vendor export-public` wrote (its firm code must match)."""
    if isinstance(key, bytes) and len(key) == 32:
        return key
    if isinstance(key, str) and len(key) == 64 and all(c in "0123456789abcdefABCDEF" for c in key):
        return bytes.fromhex(key)
    import json

    if isinstance(key, bytes):
        text = key.decode("utf-8", "replace")
    else:
        try:
            with open(os.fspath(key), encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"cannot read the firm public key {key}: {exc}",
                                "export it with `licentia vendor export-public -o FILE`") from None
    try:
        doc = json.loads(text)
        if doc.get("format") != "licentia-firm-public-key":
            raise ValueError
        raw = bytes.fromhex(doc["public_key"])
        if len(raw) != 32:
            raise ValueError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "the firm public key is not 32 bytes, hex, or an exported key file",
                            "export it with `licentia vendor export-public -o FILE`") from None
    if firm_code is not None and int(doc.get("firm_code", firm_code)) != firm_code:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER,
                            f"the firm public key is firm {doc.get('firm_code')}'s, not firm {firm_code}'s")
    return raw


def _refuse(what: str) -> LicentiaError:
    return LicentiaError(ErrorCode.SECURITY_PROBLEM, f"the answer failed verification: {what}")


def verify_grant(firm_key: bytes, firm_code: int, product_code: int, nonce: bytes, reply: dict[str, Any]) -> Verified:
    """Check an access answer; return what it vouches for."""
    license_bytes = reply.get("license")
    proof = reply.get("proof")
    if not isinstance(license_bytes, bytes) or not isinstance(proof, bytes):
        raise _refuse("it carries no signed license or no proof of the container")
    verified = _verify_license(firm_key, firm_code, license_bytes)
    if verified.item.get("product_code") != product_code:
        raise _refuse(f"the license is for product {verified.item.get('product_code')}, not {product_code}")
    if reply.get("container") not in (None, verified.serial) or reply.get("item") not in (None, verified.item_id):
        raise _refuse("the answer names another container or item than its license")
    return verify_proof(verified, nonce, reply)


def verify_proof(verified: Verified, nonce: bytes, reply: dict[str, Any]) -> Verified:
    """Check the container's signature over the challenge, the handle and the state."""
    from licentia.crypto import InvalidArtifact, verify

    proof = reply.get("proof")
    handle = reply.get("proof_handle", reply.get("handle"))
    units = reply.get("units")
    until = reply.get("valid_until")
    if not isinstance(proof, bytes) or not isinstance(handle, int):
        raise _refuse("it carries no proof of the container")
    if units is not None and not isinstance(units, int):
        raise _refuse("the remaining units are not a number")
    if until is not None and not isinstance(until, int):
        raise _refuse("the validity end is not a time")
    message = proof_message(nonce, handle, verified.serial, verified.firm_code, verified.item_id, units, until)
    try:
        verify(verified.container_key, message, proof)
    except InvalidArtifact:
        raise _refuse("the container's signature over this program's challenge does not verify "
                      "(the runtime or server may have been replaced)") from None
    initial = verified.item.get("units")
    if units is not None and (initial is None or units > initial):
        raise _refuse("more units remain than the license ever had")
    expires = verified.item.get("expires_at")
    if expires is not None and until is not None and until > expires:
        raise _refuse("the validity end is later than the license's expiry")
    return Verified(verified.serial, verified.firm_code, verified.item_id, verified.item, verified.container_key,
                    units, until)


def _verify_license(firm_key: bytes, firm_code: int, data: bytes) -> Verified:
    from licentia.core.licenses import read_license

    try:
        lic = read_license(data, firm_key)
    except LicentiaError:
        raise _refuse(f"the license is not signed by firm {firm_code}'s key") from None
    if lic.firm_code != firm_code:
        raise _refuse(f"the license is firm {lic.firm_code}'s, not firm {firm_code}'s")
    return Verified(str(lic.serial), lic.firm_code, lic.item_id, lic.item.to_dict(), lic.container_public_key,
                    None, None)


def read_unverified(data: Any) -> dict[str, Any]:
    """The item options of a license without checking its signature (for display only)."""
    from licentia.model import envelope

    if not isinstance(data, bytes):
        return {}
    try:
        _, body, _ = envelope.unpack(data, b"LCLI", {1}, trailer=64, what="license")
        fields = envelope.decode_map(body, what="license")
        item = fields.get("item")
        return dict(item) if isinstance(item, dict) else {}
    except LicentiaError:
        return {}
