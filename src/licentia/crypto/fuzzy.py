"""Fuzzy machine binding: the fingerprint is the key.

`bind` splits a secret (a soft container's key) into Shamir shares, one share per unit of
weight, and seals each property's shares under a key derived (scrypt) from that
property's value. `unbind` opens what the current machine's values still open and
rebuilds the secret when the matching properties carry at least the threshold weight.
With fewer shares the secret cannot be computed at all: there is no check to patch.

Format (version 1, integers big-endian) and the reasoning behind it: docs/binding-crypto.md.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from licentia.crypto import shamir
from licentia.model import ErrorCode, LicentiaError, MachineProperty

__all__ = [
    "DEFAULT_COST",
    "MAX_COST",
    "MIN_COST",
    "VERSION",
    "BindingBroken",
    "BindingInfo",
    "BindingOutcome",
    "MalformedBinding",
    "bind",
    "describe",
    "threshold_for",
    "unbind",
]

MAGIC = b"LCFB"
VERSION = 1

# scrypt cost: n = 2**cost, r = 8, p = 1, so one property needs 2**cost KiB of memory.
# 13 measured about 29 ms per property (8 MiB) on the reference machine; see the docs.
DEFAULT_COST = 13
MIN_COST = 4
MAX_COST = 18  # 256 MiB per derivation; a blob asking for more is refused as malformed

_SALT_SIZE = 16
_NONCE_SIZE = 12
_TAG_SIZE = 16
_COMMITMENT_SIZE = 16
_CHECKSUM_SIZE = 16
_MAX_SECRET = 0xFFFF
_MAX_NAME = 255

# magic, version, cost, threshold, property count, secret length, salt, commitment
_HEADER = struct.Struct(f">4sBBBBH{_SALT_SIZE}s{_COMMITMENT_SIZE}s")

_COMMITMENT_LABEL = b"licentia fuzzy binding v1 commitment\x00"
_CHECKSUM_LABEL = b"licentia fuzzy binding v1 checksum\x00"


class MalformedBinding(LicentiaError, ValueError):
    """The binding blob is not one this version can read: damaged, cut short or foreign.

    Deliberately without detail about what was wrong.
    """

    def __init__(self) -> None:
        super().__init__(
            ErrorCode.LICENSE_INVALID, "the machine binding data is damaged or not a binding"
        )


class BindingBroken(LicentiaError):
    """Too few bound properties still match this machine to rebuild the secret.

    Carries the counts and names (never the secret, which was not rebuilt).
    """

    def __init__(
        self,
        *,
        matched_weight: int,
        total_weight: int,
        needed_weight: int,
        matched: tuple[str, ...],
        missing: tuple[str, ...],
        changed: tuple[str, ...],
    ) -> None:
        self.matched_weight = matched_weight
        self.total_weight = total_weight
        self.needed_weight = needed_weight
        self.matched = matched
        self.missing = missing
        self.changed = changed
        parts = [
            f"properties carrying {matched_weight} of {total_weight} shares still match "
            f"this machine, {needed_weight} are needed"
        ]
        if changed:
            parts.append("changed: " + ", ".join(changed))
        if missing:
            parts.append("missing: " + ", ".join(missing))
        super().__init__(ErrorCode.REACTIVATION_REQUIRED, "; ".join(parts))


@dataclass(frozen=True)
class BindingOutcome:
    """A successful unbind: the secret and how close the machine came to breaking it."""

    secret: bytes = field(repr=False)
    matched_weight: int
    total_weight: int
    needed_weight: int
    matched: tuple[str, ...]
    missing: tuple[str, ...]
    changed: tuple[str, ...]

    @property
    def spare_weight(self) -> int:
        """How many more shares may be lost before the binding breaks."""
        return self.matched_weight - self.needed_weight


@dataclass(frozen=True)
class BindingInfo:
    """What a binding blob says about itself, readable without any property value."""

    version: int
    cost: int
    threshold: int
    total_weight: int
    secret_length: int
    names: tuple[str, ...]
    weights: tuple[int, ...]


@dataclass(frozen=True)
class _Record:
    name: str
    weight: int
    first_x: int
    nonce: bytes
    ciphertext: bytes
    aad: bytes


@dataclass(frozen=True)
class _Parsed:
    info: BindingInfo
    salt: bytes
    commitment: bytes
    records: tuple[_Record, ...]


def threshold_for(total_weight: int, fraction: float) -> int:
    """Shares needed out of `total_weight` for a tolerance fraction: ceil(fraction x W), at least 1.

    The fraction is taken as the decimal it is written as (0.65 is 65/100, not the
    nearest binary float), so 0.65 of 20 is exactly 13.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, float | int):
        raise TypeError("fraction must be a float")
    if not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction!r}")
    if isinstance(total_weight, bool) or not isinstance(total_weight, int) or total_weight < 1:
        raise ValueError("total weight must be a positive int")
    exact = Fraction(repr(float(fraction)))
    return max(1, math.ceil(exact * total_weight))


def bind(
    secret: bytes,
    properties: Sequence[MachineProperty],
    fraction: float,
    *,
    cost: int = DEFAULT_COST,
) -> bytes:
    """Bind `secret` to the machine described by `properties`; returns the binding blob.

    Each property with weight w > 0 carries w shares; the secret comes back when the
    matching properties carry at least `threshold_for(W, fraction)` shares (W = total
    weight). Raises ValueError on bad input: empty or oversized secret, no weight,
    total weight over 255, duplicate or empty names, cost outside MIN_COST..MAX_COST.
    """
    if not isinstance(secret, bytes | bytearray) or not 1 <= len(secret) <= _MAX_SECRET:
        raise ValueError(f"secret must be 1 to {_MAX_SECRET} bytes")
    secret = bytes(secret)
    if isinstance(cost, bool) or not isinstance(cost, int) or not MIN_COST <= cost <= MAX_COST:
        raise ValueError(f"cost must be an int between {MIN_COST} and {MAX_COST}")
    bound = _checked_properties(properties, for_binding=True)
    if not bound:
        raise ValueError("no property carries weight; nothing to bind the secret to")
    total = sum(p.weight for p in bound)
    if total > shamir.MAX_SHARES:
        raise ValueError(f"total weight {total} exceeds {shamir.MAX_SHARES} shares")
    threshold = threshold_for(total, fraction)

    salt = os.urandom(_SALT_SIZE)
    header = _HEADER.pack(
        MAGIC, VERSION, cost, threshold, len(bound), len(secret), salt, _commit(secret, salt)
    )
    shares = shamir.split(secret, threshold, total)
    out = bytearray(header)
    first_x = 1
    for prop in bound:
        name = prop.name.encode("utf-8")
        prefix = bytes([len(name)]) + name + bytes([prop.weight])
        plaintext = b"".join(y for _, y in shares[first_x - 1 : first_x - 1 + prop.weight])
        nonce = os.urandom(_NONCE_SIZE)
        key = _derive(prop.value, salt, name, cost)
        aad = _aad(header, prefix, first_x)
        out += prefix + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)
        first_x += prop.weight
    out += _checksum(bytes(out))
    return bytes(out)


def unbind(blob: bytes, properties: Sequence[MachineProperty]) -> BindingOutcome:
    """Rebuild the secret from `blob` with this machine's current `properties`.

    Every bound property is tried with the current value of the same name (its current
    weight does not matter; the blob's does). Properties absent here cost no key
    derivation. Raises MalformedBinding for a blob that does not parse, BindingBroken
    when the matching properties carry fewer shares than the threshold, ValueError for
    duplicate names in `properties`.
    """
    parsed = _parse(blob)
    current = {p.name: p for p in _checked_properties(properties, for_binding=False)}
    info = parsed.info
    shares: list[tuple[int, bytes]] = []
    matched: list[str] = []
    missing: list[str] = []
    changed: list[str] = []
    matched_weight = 0
    for record in parsed.records:
        prop = current.get(record.name)
        if prop is None:
            missing.append(record.name)
            continue
        key = _derive(prop.value, parsed.salt, record.name.encode("utf-8"), info.cost)
        try:
            plaintext = AESGCM(key).decrypt(record.nonce, record.ciphertext, record.aad)
        except InvalidTag:
            changed.append(record.name)
            continue
        matched.append(record.name)
        matched_weight += record.weight
        size = info.secret_length
        shares.extend(
            (record.first_x + k, plaintext[k * size : (k + 1) * size]) for k in range(record.weight)
        )
    if matched_weight < info.threshold:
        raise BindingBroken(
            matched_weight=matched_weight,
            total_weight=info.total_weight,
            needed_weight=info.threshold,
            matched=tuple(matched),
            missing=tuple(missing),
            changed=tuple(changed),
        )
    secret = shamir.combine(shares[: info.threshold])
    if not hmac.compare_digest(_commit(secret, parsed.salt), parsed.commitment):
        # Authentic shares that do not rebuild the committed secret: the blob was not
        # made by bind(). Never hand out a wrong secret.
        raise MalformedBinding()
    return BindingOutcome(
        secret=secret,
        matched_weight=matched_weight,
        total_weight=info.total_weight,
        needed_weight=info.threshold,
        matched=tuple(matched),
        missing=tuple(missing),
        changed=tuple(changed),
    )


def describe(blob: bytes) -> BindingInfo:
    """Read the names, weights, threshold and cost recorded in `blob` (no values needed)."""
    return _parse(blob).info


# -- internals ----------------------------------------------------------------------------


def _checked_properties(
    properties: Sequence[MachineProperty], *, for_binding: bool
) -> list[MachineProperty]:
    """Validate properties; for binding, return those with weight > 0, in order."""
    if isinstance(properties, str | bytes):
        raise TypeError("properties must be a sequence of MachineProperty")
    seen: set[str] = set()
    kept: list[MachineProperty] = []
    for prop in properties:
        if not isinstance(prop, MachineProperty):
            raise TypeError("properties must be MachineProperty instances")
        if not isinstance(prop.name, str) or not prop.name:
            raise ValueError("a property name must be a non-empty string")
        if prop.name in seen:
            raise ValueError(f"property name {prop.name!r} appears more than once")
        seen.add(prop.name)
        if not isinstance(prop.value, bytes | bytearray):
            raise ValueError(f"property {prop.name!r}: value must be bytes")
        if not for_binding:
            kept.append(prop)
            continue
        if len(prop.name.encode("utf-8")) > _MAX_NAME:
            raise ValueError(f"property name {prop.name!r} is longer than {_MAX_NAME} bytes")
        weight = prop.weight
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 255:
            raise ValueError(f"property {prop.name!r}: weight must be an int from 0 to 255")
        if weight > 0:
            kept.append(prop)
    return kept


def _derive(value: bytes, salt: bytes, name: bytes, cost: int) -> bytes:
    kdf = Scrypt(salt=salt + name, length=32, n=2**cost, r=8, p=1)
    return kdf.derive(bytes(value))


def _aad(header: bytes, prefix: bytes, first_x: int) -> bytes:
    # The whole header (cost, threshold, salt, commitment, ...), this record's name and
    # weight, and its place in the share numbering: any change makes the seal fail.
    return header + prefix + bytes([first_x])


def _commit(secret: bytes, salt: bytes) -> bytes:
    return hmac.new(secret, _COMMITMENT_LABEL + salt, hashlib.sha256).digest()[:_COMMITMENT_SIZE]


def _checksum(data: bytes) -> bytes:
    return hashlib.sha256(_CHECKSUM_LABEL + data).digest()[:_CHECKSUM_SIZE]


def _parse(blob: bytes) -> _Parsed:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise MalformedBinding()
    data = bytes(blob)
    if len(data) < _HEADER.size + _CHECKSUM_SIZE:
        raise MalformedBinding()
    magic, version, cost, threshold, count, length, salt, commitment = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise MalformedBinding()
    body, checksum = data[:-_CHECKSUM_SIZE], data[-_CHECKSUM_SIZE:]
    if not hmac.compare_digest(_checksum(body), checksum):
        raise MalformedBinding()
    if not MIN_COST <= cost <= MAX_COST or count == 0 or length == 0 or threshold == 0:
        raise MalformedBinding()
    header = body[: _HEADER.size]
    offset = _HEADER.size
    records: list[_Record] = []
    first_x = 1
    for _ in range(count):
        if offset >= len(body):
            raise MalformedBinding()
        name_len = body[offset]
        name_end = offset + 1 + name_len
        if name_len == 0 or name_end + 1 + _NONCE_SIZE > len(body):
            raise MalformedBinding()
        try:
            name = body[offset + 1 : name_end].decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedBinding() from None
        weight = body[name_end]
        if weight == 0 or first_x + weight - 1 > shamir.MAX_SHARES:
            raise MalformedBinding()
        prefix = body[offset : name_end + 1]
        nonce_end = name_end + 1 + _NONCE_SIZE
        ct_end = nonce_end + weight * length + _TAG_SIZE
        if ct_end > len(body):
            raise MalformedBinding()
        records.append(
            _Record(
                name=name,
                weight=weight,
                first_x=first_x,
                nonce=body[name_end + 1 : nonce_end],
                ciphertext=body[nonce_end:ct_end],
                aad=_aad(header, prefix, first_x),
            )
        )
        first_x += weight
        offset = ct_end
    if offset != len(body):
        raise MalformedBinding()  # trailing bytes
    names = tuple(r.name for r in records)
    total = first_x - 1
    if len(set(names)) != len(names) or threshold > total:
        raise MalformedBinding()
    info = BindingInfo(
        version=version,
        cost=cost,
        threshold=threshold,
        total_weight=total,
        secret_length=length,
        names=names,
        weights=tuple(r.weight for r in records),
    )
    return _Parsed(info=info, salt=salt, commitment=commitment, records=tuple(records))
