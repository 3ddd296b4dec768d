"""The firm's blacklist of lost and stolen containers, shipped inside the vendor's program.

Central exports the list signed with the firm key (magic LCBL, version 1); the vendor
ships it with the next version of the program; at access the SDK verifies it with the
firm's public key it embeds and asks `check_blacklist` whether the container answering it
is listed. The lock can wait N days, so whoever holds a stolen container cannot tell which
program update locked it: the delay counts from when the program first saw the list
(`known_since`, persisted by the caller), or from the list's signed issue time.

    body = msgpack {firm_code, issued_at, entries: [{serial, listed_at, reason}]}
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from licentia.crypto import InvalidArtifact
from licentia.crypto.artifacts import open_signed_artifact, sign_artifact
from licentia.model import ContainerSerial, ErrorCode, LicentiaError, envelope as env

MAGIC = b"LCBL"
VERSION = 1
DAY = 86_400
REASONS = ("lost", "stolen", "replaced")


@dataclass(frozen=True)
class BlacklistEntry:
    serial: ContainerSerial
    listed_at: int
    reason: str


@dataclass(frozen=True)
class Blacklist:
    firm_code: int
    issued_at: int
    entries: tuple[BlacklistEntry, ...]

    def find(self, serial: ContainerSerial) -> BlacklistEntry | None:
        for entry in self.entries:
            if entry.serial == serial:
                return entry
        return None


@dataclass(frozen=True)
class BlacklistVerdict:
    listed: bool
    lock: bool  # lock the firm's items of this container now
    lock_at: int | None  # when the lock takes effect (None if not listed)
    entry: BlacklistEntry | None


def make_blacklist(
    firm_code: int, entries: Iterable[BlacklistEntry], firm_private_key: bytes, now: int
) -> bytes:
    ordered = sorted(entries, key=lambda e: e.serial)
    for e in ordered:
        if e.reason not in REASONS:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"blacklist reason must be one of {REASONS}")
    body = env.encode(
        {
            "firm_code": firm_code,
            "issued_at": now,
            "entries": [
                {"serial": str(e.serial), "listed_at": e.listed_at, "reason": e.reason} for e in ordered
            ],
        }
    )
    return sign_artifact(MAGIC, VERSION, body, firm_private_key)


def read_blacklist(data: bytes, firm_public_key: bytes, firm_code: int | None = None) -> Blacklist:
    """Verify a blacklist against the firm's public key, then decode it."""
    try:
        _, body = open_signed_artifact(data, MAGIC, {VERSION}, firm_public_key, what="blacklist")
    except InvalidArtifact:
        raise LicentiaError(
            ErrorCode.BLACKLIST_INVALID, "the blacklist is not signed by this firm's key (altered or foreign)"
        ) from None
    except LicentiaError as exc:
        raise LicentiaError(ErrorCode.BLACKLIST_INVALID, exc.message) from None
    fields = env.decode_map(body, what="blacklist")
    try:
        result = Blacklist(
            firm_code=int(fields["firm_code"]),
            issued_at=int(fields["issued_at"]),
            entries=tuple(
                BlacklistEntry(ContainerSerial.parse(e["serial"]), int(e["listed_at"]), str(e["reason"]))
                for e in fields["entries"]
            ),
        )
    except (KeyError, TypeError, ValueError, LicentiaError):
        raise LicentiaError(ErrorCode.BLACKLIST_INVALID, "the blacklist's fields are malformed") from None
    if firm_code is not None and result.firm_code != firm_code:
        raise LicentiaError(
            ErrorCode.BLACKLIST_INVALID, f"the blacklist is for firm {result.firm_code}, not {firm_code}"
        )
    return result


def check_blacklist(
    blacklist: Blacklist,
    serial: ContainerSerial,
    now: int,
    *,
    delay_days: int = 0,
    known_since: int | None = None,
) -> BlacklistVerdict:
    """Is `serial` listed, and is it time to lock it?

    `delay_days` postpones the lock; the delay starts at `known_since` (when the program
    first saw this list) or, if not given, at the list's issue time.
    """
    if delay_days < 0:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "the blacklist delay must be zero or more days")
    entry = blacklist.find(serial)
    if entry is None:
        return BlacklistVerdict(False, False, None, None)
    start = blacklist.issued_at if known_since is None else known_since
    lock_at = start + delay_days * DAY
    return BlacklistVerdict(True, now >= lock_at, lock_at, entry)
