"""The firm keystore: the firm code, its name, and the firm's signing key wrapped by a passphrase.

File format (JSON, so an administrator can see what it is without the passphrase):
    {"format": "licentia-firm-keystore", "version": 1, "firm_code": N, "name": "...",
     "public_key": hex, "wrapped_private_key": hex}
The private key is never written in the clear: it is wrapped with a key stretched from the
passphrase (scrypt), and a wrong passphrase is refused with WRONG_PASSPHRASE.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from licentia.crypto import (
    InvalidArtifact,
    key_id,
    new_signing_key,
    signing_public_key,
    unwrap_with_passphrase,
    wrap_with_passphrase,
)
from licentia.fsutil import write_new
from licentia.model import ErrorCode, LicentiaError, firm_code as check_firm_code

FORMAT = "licentia-firm-keystore"
VERSION = 1


@dataclass(frozen=True)
class FirmInfo:
    firm_code: int
    name: str
    public_key: bytes

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)


@dataclass(frozen=True)
class FirmKeys:
    firm_code: int
    name: str
    private_key: bytes
    public_key: bytes


def create_keystore(path: Path, firm_code: int, name: str, passphrase: str) -> FirmInfo:
    check_firm_code(firm_code)
    if not name.strip():
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "the firm needs a name")
    if len(passphrase) < 8:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "the passphrase must have at least 8 characters")
    private = new_signing_key()
    public = signing_public_key(private)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "firm_code": firm_code,
        "name": name,
        "public_key": public.hex(),
        "wrapped_private_key": wrap_with_passphrase(private, passphrase).hex(),
    }
    try:
        write_new(path, json.dumps(doc, indent=2).encode() + b"\n")
    except FileExistsError:
        raise LicentiaError(
            ErrorCode.ALREADY_EXISTS,
            f"a keystore already exists at {path}; it is never overwritten (move it away first)",
        ) from None
    return FirmInfo(firm_code, name, public)


def read_keystore_info(path: Path) -> FirmInfo:
    doc = _read(path)
    return FirmInfo(int(doc["firm_code"]), str(doc["name"]), bytes.fromhex(doc["public_key"]))


def load_keystore(path: Path, passphrase: str) -> FirmKeys:
    doc = _read(path)
    try:
        private = unwrap_with_passphrase(bytes.fromhex(doc["wrapped_private_key"]), passphrase)
    except InvalidArtifact:
        raise LicentiaError(ErrorCode.WRONG_PASSPHRASE, f"wrong passphrase for keystore {path}") from None
    public = bytes.fromhex(doc["public_key"])
    if signing_public_key(private) != public:
        raise LicentiaError(ErrorCode.LICENSE_INVALID, f"keystore {path} is inconsistent (altered)")
    return FirmKeys(int(doc["firm_code"]), str(doc["name"]), private, public)


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise LicentiaError(ErrorCode.KEYSTORE_NOT_FOUND, f"no firm keystore at {path}") from None
    except (ValueError, UnicodeDecodeError):
        raise LicentiaError(ErrorCode.LICENSE_INVALID, f"{path} is not a licentia keystore") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise LicentiaError(ErrorCode.LICENSE_INVALID, f"{path} is not a licentia keystore")
    if doc.get("version") != VERSION:
        raise LicentiaError(ErrorCode.LICENSE_INVALID, f"keystore {path} has unsupported version {doc.get('version')}")
    return doc


PUBLIC_FORMAT = "licentia-firm-public-key"


def export_public(info: FirmInfo) -> str:
    """The firm public key a protected program embeds, as a small JSON document."""
    return json.dumps(
        {"format": PUBLIC_FORMAT, "version": 1, "firm_code": info.firm_code, "name": info.name,
         "public_key": info.public_key.hex()},
        indent=2,
    ) + "\n"


def read_public(text: str) -> FirmInfo:
    try:
        doc = json.loads(text)
        if doc.get("format") != PUBLIC_FORMAT or doc.get("version") != 1:
            raise ValueError
        return FirmInfo(int(doc["firm_code"]), str(doc["name"]), bytes.fromhex(doc["public_key"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise LicentiaError(ErrorCode.LICENSE_INVALID, "not a licentia firm public key file") from None
