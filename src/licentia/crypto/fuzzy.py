"""Fuzzy machine binding: the fingerprint is the key.

`bind` splits a secret (a soft container's key) into Shamir shares, one share per unit of
weight, and encrypts each property's shares under a key derived (scrypt) from that
property's value, without any tag: a wrong value decrypts to shares that look as good as
the right ones. `unbind` decrypts with the current machine's values and tries sets of
shares at the threshold against one commitment to the secret; only a whole set of right
shares rebuilds it, so a guess of one property cannot be checked on its own. With fewer
right shares the secret cannot be computed at all: there is no check to patch.

Version 2 is what `bind` writes; version 1 blobs (one AES-GCM seal per property, which
let a guess of each property be checked alone) are still read, so a container can be
opened once and rebound. Format and reasoning: docs/binding-crypto.md.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from licentia.crypto import shamir
from licentia.model import ErrorCode, LicentiaError, MachineProperty

__all__ = [
    "DEFAULT_COST",
    "FLOOR_COST",
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
VERSION = 2
READ_VERSIONS = (1, 2)

# scrypt cost: n = 2**cost, r = 8, p = 1, so one property needs 2**cost KiB of memory.
# 13 measured about 29 ms per property (8 MiB) on the reference machine; see the docs.
DEFAULT_COST = 13
FLOOR_COST = 13  # `bind` never goes under it unless a test asks with `test_cost`
MIN_COST = 4  # the lowest cost a blob may record (tests' blobs); a reader accepts it
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
# version 2: the same fields; the commitment follows them and covers them
_HEADER_V2 = struct.Struct(f">4sBBBBH{_SALT_SIZE}s")

_COMMITMENT_LABEL = b"licentia fuzzy binding v1 commitment\x00"
_CHECKSUM_LABEL = b"licentia fuzzy binding v1 checksum\x00"
_COMMITMENT_LABEL_V2 = b"licentia fuzzy binding v2 commitment\x00"
_CHECKSUM_LABEL_V2 = b"licentia fuzzy binding v2 checksum\x00"


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

    Carries the counts and names it can know (never the secret, which was not rebuilt).
    A version 2 binding cannot tell which present properties changed (that would be the
    per-property oracle it exists to remove): `matched_weight` is then None, `matched`
    empty and `changed` lists every present property; `present_weight` is what they
    carry together.
    """

    def __init__(
        self,
        *,
        matched_weight: int | None,
        total_weight: int,
        needed_weight: int,
        matched: tuple[str, ...],
        missing: tuple[str, ...],
        changed: tuple[str, ...],
        present_weight: int | None = None,
    ) -> None:
        self.matched_weight = matched_weight
        self.total_weight = total_weight
        self.needed_weight = needed_weight
        self.matched = matched
        self.missing = missing
        self.changed = changed
        self.present_weight = matched_weight if present_weight is None else present_weight
        if matched_weight is not None:
            parts = [
                f"properties carrying {matched_weight} of {total_weight} shares still match "
                f"this machine, {needed_weight} are needed"
            ]
            if changed:
                parts.append("changed: " + ", ".join(changed))
        else:
            parts = [
                f"the properties present on this machine carry {self.present_weight} of "
                f"{total_weight} shares and too few of them match to rebuild the key "
                f"({needed_weight} needed)"
            ]
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
    nonce: bytes  # version 1 only
    ciphertext: bytes
    aad: bytes  # version 1: the seal's associated data; version 2: the record's own bytes


@dataclass(frozen=True)
class _Parsed:
    info: BindingInfo
    salt: bytes
    commitment: bytes
    records: tuple[_Record, ...]
    header: bytes


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
    test_cost: int | None = None,
) -> bytes:
    """Bind `secret` to the machine described by `properties`; returns the binding blob (version 2).

    Each property with weight w > 0 carries w shares; the secret comes back when the
    matching properties carry at least `threshold_for(W, fraction)` shares (W = total
    weight). `cost` may not go under FLOOR_COST; `test_cost` (MIN_COST..MAX_COST) is for
    tests only and no shipped caller passes it. Raises ValueError on bad input: empty or
    oversized secret, no weight, total weight over 255, duplicate or empty names, a cost
    out of range.
    """
    if not isinstance(secret, bytes | bytearray) or not 1 <= len(secret) <= _MAX_SECRET:
        raise ValueError(f"secret must be 1 to {_MAX_SECRET} bytes")
    secret = bytes(secret)
    if test_cost is not None:
        cost, low = test_cost, MIN_COST
    else:
        low = FLOOR_COST
    if isinstance(cost, bool) or not isinstance(cost, int) or not low <= cost <= MAX_COST:
        raise ValueError(f"cost must be an int between {low} and {MAX_COST}")
    bound = _checked_properties(properties, for_binding=True)
    if not bound:
        raise ValueError("no property carries weight; nothing to bind the secret to")
    total = sum(p.weight for p in bound)
    if total > shamir.MAX_SHARES:
        raise ValueError(f"total weight {total} exceeds {shamir.MAX_SHARES} shares")
    threshold = threshold_for(total, fraction)

    salt = os.urandom(_SALT_SIZE)
    prefixes = [_prefix(p.name.encode("utf-8"), p.weight) for p in bound]
    fields = _HEADER_V2.pack(MAGIC, VERSION, cost, threshold, len(bound), len(secret), salt)
    commitment = _commitment(secret, _commitment_message(fields, prefixes))
    shares = shamir.split(secret, threshold, total)
    out = bytearray(fields + commitment)
    first_x = 1
    for prop, prefix in zip(bound, prefixes, strict=True):
        plaintext = b"".join(y for _, y in shares[first_x - 1 : first_x - 1 + prop.weight])
        key = _derive(prop.value, salt, prop.name.encode("utf-8"), cost)
        out += prefix + _xor(plaintext, _keystream(key, first_x, len(plaintext)))
        first_x += prop.weight
    out += _checksum_v2(bytes(out))
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
    if parsed.info.version == 1:
        return _unbind_v1(parsed, current)
    return _unbind_v2(parsed, current)


def _unbind_v2(parsed: _Parsed, current: dict[str, MachineProperty]) -> BindingOutcome:
    info = parsed.info
    size = info.secret_length
    present: list[tuple[_Record, list[tuple[int, bytes]]]] = []
    missing: list[str] = []
    for record in parsed.records:
        prop = current.get(record.name)
        if prop is None:
            missing.append(record.name)
            continue
        key = _derive(prop.value, parsed.salt, record.name.encode("utf-8"), info.cost)
        plain = _xor(record.ciphertext, _keystream(key, record.first_x, len(record.ciphertext)))
        present.append(
            (record, [(record.first_x + k, plain[k * size : (k + 1) * size]) for k in range(record.weight)])
        )
    message = _commitment_message(parsed.header, [r.aad for r in parsed.records])
    flat = [share for _, shares in present for share in shares]
    table = shamir.ShareTable(flat)
    found = None
    for indices in _candidate_sets([len(shares) for _, shares in present], info.threshold):
        secret = table.secret(indices)
        if hmac.compare_digest(_commitment(secret, message), parsed.commitment):
            found = secret, [flat[i] for i in indices]
            break
    if found is None:
        raise BindingBroken(
            matched_weight=None,
            total_weight=info.total_weight,
            needed_weight=info.threshold,
            matched=(),
            missing=tuple(missing),
            changed=tuple(r.name for r, _ in present),
            present_weight=sum(r.weight for r, _ in present),
        )
    secret, right = found
    # The secret is known, so is every share: a present property matches when each of its
    # decrypted shares is the one the polynomial gives.
    matched: list[str] = []
    changed: list[str] = []
    matched_weight = 0
    for record, shares in present:
        if all(shamir.interpolate(right, x) == y for x, y in shares):
            matched.append(record.name)
            matched_weight += record.weight
        else:
            changed.append(record.name)
    return BindingOutcome(
        secret=secret,
        matched_weight=matched_weight,
        total_weight=info.total_weight,
        needed_weight=info.threshold,
        matched=tuple(matched),
        missing=tuple(missing),
        changed=tuple(changed),
    )


def _candidate_sets(weights: list[int], threshold: int) -> Iterator[list[int]]:
    """Every set of `threshold` shares worth trying, those that skip fewest groups first.

    Group g is one property's `weights[g]` shares, numbered on from the groups before
    it: right or wrong together. A set takes whole groups in order and as much of its
    last group as it needs, so it is right exactly when every group it touches is; every
    subset of groups carrying `threshold` shares contains one such set, so trying them
    all decides the binding exactly. Yields the shares' numbers.
    """
    starts = [sum(weights[:g]) for g in range(len(weights))]
    after = [sum(weights[i:]) for i in range(len(weights) + 1)]
    if after[0] < threshold:
        return

    def walk(i: int, have: int, skips: int, taken: list[int]) -> Iterator[list[int]]:
        # sets that skip exactly `skips` more groups from group i on, holding `have` shares
        if have + after[i] < threshold:
            return
        if have + weights[i] >= threshold:
            if skips == 0:
                yield [*taken, *range(starts[i], starts[i] + threshold - have)]
        else:
            yield from walk(i + 1, have + weights[i], skips, [*taken, *range(starts[i], starts[i] + weights[i])])
        if skips > 0 and i + 1 < len(weights):
            yield from walk(i + 1, have, skips - 1, taken)

    for skips in range(len(weights)):
        yield from walk(0, 0, skips, [])


def _unbind_v1(parsed: _Parsed, current: dict[str, MachineProperty]) -> BindingOutcome:
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


def _keystream(key: bytes, first_x: int, length: int) -> bytes:
    # AES-256-CTR from a counter block naming the record's first share: the key is this
    # blob's and this property's alone (salt and name went into scrypt), so no two records
    # or blobs share a keystream. No tag: a wrong key gives bytes that look as right.
    counter = b"licentia fuzzy\x00" + bytes([first_x])
    encryptor = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
    return encryptor.update(bytes(length)) + encryptor.finalize()


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _prefix(name: bytes, weight: int) -> bytes:
    return bytes([len(name)]) + name + bytes([weight])


def _aad(header: bytes, prefix: bytes, first_x: int) -> bytes:
    # The whole header (cost, threshold, salt, commitment, ...), this record's name and
    # weight, and its place in the share numbering: any change makes the seal fail.
    return header + prefix + bytes([first_x])


def _commit(secret: bytes, salt: bytes) -> bytes:
    return hmac.new(secret, _COMMITMENT_LABEL + salt, hashlib.sha256).digest()[:_COMMITMENT_SIZE]


def _commitment_message(fields: bytes, prefixes: Sequence[bytes]) -> bytes:
    # every header field and every record's name and weight: a blob edited anywhere but
    # in the encrypted shares never confirms a secret
    return _COMMITMENT_LABEL_V2 + fields + b"".join(prefixes)


def _commitment(secret: bytes, message: bytes) -> bytes:
    return hmac.digest(secret, message, "sha256")[:_COMMITMENT_SIZE]


def _checksum(data: bytes) -> bytes:
    return hashlib.sha256(_CHECKSUM_LABEL + data).digest()[:_CHECKSUM_SIZE]


def _checksum_v2(data: bytes) -> bytes:
    return hashlib.sha256(_CHECKSUM_LABEL_V2 + data).digest()[:_CHECKSUM_SIZE]


def _parse(blob: bytes) -> _Parsed:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise MalformedBinding()
    data = bytes(blob)
    if len(data) < _HEADER.size + _CHECKSUM_SIZE:
        raise MalformedBinding()
    magic, version, cost, threshold, count, length, salt, commitment = _HEADER.unpack_from(data)
    if magic != MAGIC or version not in READ_VERSIONS:
        raise MalformedBinding()
    body, checksum = data[:-_CHECKSUM_SIZE], data[-_CHECKSUM_SIZE:]
    expected = _checksum(body) if version == 1 else _checksum_v2(body)
    if not hmac.compare_digest(expected, checksum):
        raise MalformedBinding()
    if not MIN_COST <= cost <= MAX_COST or count == 0 or length == 0 or threshold == 0:
        raise MalformedBinding()
    header = body[: _HEADER.size] if version == 1 else body[: _HEADER_V2.size]
    nonce_size, tag_size = (_NONCE_SIZE, _TAG_SIZE) if version == 1 else (0, 0)
    offset = _HEADER.size
    records: list[_Record] = []
    first_x = 1
    for _ in range(count):
        if offset >= len(body):
            raise MalformedBinding()
        name_len = body[offset]
        name_end = offset + 1 + name_len
        if name_len == 0 or name_end + 1 + nonce_size > len(body):
            raise MalformedBinding()
        try:
            name = body[offset + 1 : name_end].decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedBinding() from None
        weight = body[name_end]
        if weight == 0 or first_x + weight - 1 > shamir.MAX_SHARES:
            raise MalformedBinding()
        prefix = body[offset : name_end + 1]
        nonce_end = name_end + 1 + nonce_size
        ct_end = nonce_end + weight * length + tag_size
        if ct_end > len(body):
            raise MalformedBinding()
        records.append(
            _Record(
                name=name,
                weight=weight,
                first_x=first_x,
                nonce=body[name_end + 1 : nonce_end],
                ciphertext=body[nonce_end:ct_end],
                aad=_aad(header, prefix, first_x) if version == 1 else prefix,
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
    return _Parsed(info=info, salt=salt, commitment=commitment, records=tuple(records), header=header)
