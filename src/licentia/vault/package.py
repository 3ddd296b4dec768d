"""File formats of provisioning option 3: the request a token makes and the package a CA returns.

Both have the shape every licentia artifact has::

    magic (4) | version (1) | body length (4, big-endian) | body | trailer

The body is a fixed sequence of fields, each a 4-byte big-endian length and its bytes.

Request (`LVRQ`, version 1), made on the target token; public material only::

    token label | token serial | transport public key (SPKI DER, EC P-256, made in the token)

Package (`LVPK`, version 1), made by the CA; the trailer is a 2-byte signature length and
the CA key's signature over everything before it (magic to end of body)::

    target serial | transport key id (20) | ephemeral point (65) | key kind | label |
    certificate (DER) | CA certificate (DER) | wrapped private key (RFC 5649)

The private key is wrapped under a key only the target token can derive (ECDH with its
transport key; `licentia.crypto.x509.seal_private_key`), bound to `kek_context()`.
Decoding is strict: wrong magic, version, length, field count or trailing bytes are
refused as VAULT_PACKAGE_INVALID before anything in the file is believed.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from licentia.containers.pkcs11 import KeyKind
from licentia.model import ErrorCode, LicentiaError

REQUEST_MAGIC: Final = b"LVRQ"
PACKAGE_MAGIC: Final = b"LVPK"
VERSION: Final = 1
MAX_SIZE: Final = 1 << 20

_HEADER = struct.Struct(">4sBI")
_FIELD = struct.Struct(">I")
_SIG_LEN = struct.Struct(">H")


def _fields(values: Sequence[bytes]) -> bytes:
    return b"".join(_FIELD.pack(len(v)) + v for v in values)


def _split(body: bytes, count: int, what: str) -> list[bytes]:
    out: list[bytes] = []
    offset = 0
    while offset < len(body):
        if offset + _FIELD.size > len(body):
            raise _invalid(what, "a field is cut short")
        (length,) = _FIELD.unpack_from(body, offset)
        offset += _FIELD.size
        if offset + length > len(body):
            raise _invalid(what, "a field is cut short")
        out.append(body[offset : offset + length])
        offset += length
    if len(out) != count:
        raise _invalid(what, f"it has {len(out)} fields, not {count}")
    return out


def _invalid(what: str, why: str) -> LicentiaError:
    return LicentiaError(ErrorCode.VAULT_PACKAGE_INVALID, f"the {what} is not valid: {why}")


def _frame(magic: bytes, body: bytes) -> bytes:
    return _HEADER.pack(magic, VERSION, len(body)) + body


def _unframe(data: bytes, magic: bytes, what: str) -> tuple[bytes, bytes]:
    """(signed part, trailer) of a framed file, after checking magic, version and length."""
    if len(data) > MAX_SIZE:
        raise _invalid(what, "it is too large")
    if len(data) < _HEADER.size:
        raise _invalid(what, "it is too short")
    got, version, length = _HEADER.unpack_from(data)
    if got != magic:
        raise _invalid(what, f"it is not a vault {what} (magic {got!r})")
    if version != VERSION:
        raise _invalid(
            what, f"format version {version} is not supported (this licentia reads {VERSION})"
        )
    end = _HEADER.size + length
    if end > len(data):
        raise _invalid(what, "it is truncated")
    return data[:end], data[end:]


# -- request ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    token_label: str
    token_serial: str
    transport_key: bytes  # SPKI DER

    def encode(self) -> bytes:
        return _frame(
            REQUEST_MAGIC,
            _fields([self.token_label.encode(), self.token_serial.encode(), self.transport_key]),
        )

    @classmethod
    def decode(cls, data: bytes) -> Request:
        signed, trailer = _unframe(data, REQUEST_MAGIC, "request")
        if trailer:
            raise _invalid("request", "bytes follow its end")
        label, serial, key = _split(signed[_HEADER.size :], 3, "request")
        try:
            return cls(label.decode(), serial.decode(), key)
        except UnicodeDecodeError:
            raise _invalid("request", "a name is not UTF-8") from None


# -- package ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Package:
    target_serial: str
    transport_key_id: bytes
    ephemeral_point: bytes
    kind: KeyKind
    label: str
    certificate: bytes
    ca_certificate: bytes
    wrapped_key: bytes

    def signed_part(self) -> bytes:
        """The bytes the CA signs: header and body."""
        return _frame(
            PACKAGE_MAGIC,
            _fields(
                [
                    self.target_serial.encode(),
                    self.transport_key_id,
                    self.ephemeral_point,
                    str(self.kind).encode(),
                    self.label.encode(),
                    self.certificate,
                    self.ca_certificate,
                    self.wrapped_key,
                ]
            ),
        )

    def encode(self, signature: bytes) -> bytes:
        return self.signed_part() + _SIG_LEN.pack(len(signature)) + signature


def kek_context(
    target_serial: str, transport_key_id: bytes, kind: KeyKind, label: str, certificate: bytes
) -> bytes:
    """What the package key is bound to: format, target, the key's kind, label and certificate."""
    return (
        PACKAGE_MAGIC
        + bytes([VERSION])
        + _fields(
            [
                target_serial.encode(),
                transport_key_id,
                str(kind).encode(),
                label.encode(),
                certificate,
            ]
        )
    )


def decode_package(data: bytes) -> tuple[Package, bytes, bytes]:
    """(package, signed bytes, signature) from a package file; its signature still unchecked."""
    signed, trailer = _unframe(data, PACKAGE_MAGIC, "package")
    if len(trailer) < _SIG_LEN.size:
        raise _invalid("package", "its signature is missing")
    (sig_len,) = _SIG_LEN.unpack_from(trailer)
    signature = trailer[_SIG_LEN.size :]
    if len(signature) != sig_len or sig_len == 0:
        raise _invalid("package", "its signature has the wrong length")
    serial, key_id, point, kind, label, cert, ca_cert, wrapped = _split(
        signed[_HEADER.size :], 8, "package"
    )
    try:
        package = Package(
            serial.decode(),
            key_id,
            point,
            KeyKind(kind.decode()),
            label.decode(),
            cert,
            ca_cert,
            wrapped,
        )
    except (UnicodeDecodeError, ValueError):
        raise _invalid("package", "a name or key kind is not readable") from None
    return package, signed, signature
