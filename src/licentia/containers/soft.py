"""The soft container: an encrypted file whose key is bound to this machine.

File layout (magic LCSC, version 1):

    envelope(LCSC, 1, body) | SHA-256 of everything before it

    body = msgpack {serial, created_at, tolerance, binding, sign_public, box_public, state}

`binding` is the fuzzy binding of the container secret to the machine's properties
(`licentia.crypto.fuzzy`); `state` is the container content (keys, clock, licenses) sealed
under a key derived from that secret. So:

- a flipped byte anywhere fails the checksum or the seal → **invalid** (264);
- too few matching machine properties leave the secret unrecoverable → **broken** (263),
  however the program is patched, because the key cannot be rebuilt;
- a clock set back is detected by the content's virtual clock → **clock manipulated** (88).

Every change is a transaction: an exclusive lock on a sidecar lock file, re-read the
file, change the content, write it back atomically (temp file, fsync, rename, fsync dir).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from licentia.containers.base import ContainerBase
from licentia.core.content import ContainerContent
from licentia.core.stored import load_content
from licentia.crypto import (
    InvalidArtifact,
    derive,
    digest,
    equal,
    fuzzy,
    new_box_key,
    new_key,
    new_signing_key,
    random_bytes,
    seal,
    signing_public_key,
    unseal,
)
from licentia.crypto.recipes import box_public_key
from licentia.fsutil import atomic_write
from licentia.model import (
    DEFAULT_MASK,
    ContainerKind,
    ContainerSerial,
    ErrorCode,
    Fingerprint,
    LicentiaError,
    Tolerance,
    envelope as env,
)

MAGIC = b"LCSC"
VERSION = 1
SUFFIX = ".lcsc"
_CHECKSUM = 32
T = TypeVar("T")


@dataclass(frozen=True)
class Header:
    """What a soft container file says about itself before it is opened."""

    serial: ContainerSerial
    created_at: int
    tolerance: Tolerance
    binding: bytes
    sign_public: bytes
    box_public: bytes
    sealed_state: bytes
    raw: bytes


@dataclass(frozen=True)
class BindingHealth:
    matched_weight: int
    total_weight: int
    needed_weight: int
    matched: tuple[str, ...]
    missing: tuple[str, ...]

    def describe(self) -> str:
        return (
            f"{len(self.matched)} of {len(self.matched) + len(self.missing)} properties match "
            f"(weight {self.matched_weight} of {self.total_weight}, {self.needed_weight} needed)"
        )


def container_path(directory: Path, serial: ContainerSerial) -> Path:
    return directory / f"{serial}{SUFFIX}"


def list_paths(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix == SUFFIX and not p.name.startswith("."))


def read_header(path: Path) -> Header:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LicentiaError(ErrorCode.CONTAINER_NOT_FOUND, f"no container file at {path}") from None
    return parse_header(data)


def parse_header(data: bytes) -> Header:
    _, body, checksum = env.unpack(data, MAGIC, {VERSION}, trailer=_CHECKSUM, what="container file")
    if not equal(digest(data[:-_CHECKSUM]), checksum):
        raise LicentiaError(
            ErrorCode.LICENSE_INVALID, "the container file is invalid: its checksum does not match (damaged or altered)"
        )
    fields = env.decode_map(body, what="container file")
    try:
        return Header(
            serial=ContainerSerial.parse(fields["serial"]),
            created_at=int(fields["created_at"]),
            tolerance=Tolerance(fields["tolerance"]),
            binding=_b(fields["binding"]),
            sign_public=_b(fields["sign_public"]),
            box_public=_b(fields["box_public"]),
            sealed_state=_b(fields["state"]),
            raw=data,
        )
    except (KeyError, TypeError, ValueError, LicentiaError):
        raise LicentiaError(ErrorCode.LICENSE_INVALID, "the container file is invalid: malformed header") from None


def _serialize(h: Header, content: ContainerContent, state_key: bytes) -> bytes:
    state = seal(state_key, env.encode(content.to_dict()), _state_aad(h))
    body = env.encode(
        {
            "serial": str(h.serial),
            "created_at": h.created_at,
            "tolerance": h.tolerance.value,
            "binding": h.binding,
            "sign_public": h.sign_public,
            "box_public": h.box_public,
            "state": state,
        }
    )
    framed = env.pack(MAGIC, VERSION, body)
    return framed + digest(framed)


def _state_key(secret: bytes) -> bytes:
    return derive(secret, b"licentia soft container state v1")


def _state_aad(h: Header) -> bytes:
    return MAGIC + str(h.serial).encode() + h.sign_public + h.box_public + digest(h.binding)


class SoftContainer(ContainerBase):
    """An opened soft container: the path and the rebuilt secret that unseals its state."""

    kind = ContainerKind.SOFT

    def __init__(
        self, path: Path, header: Header, secret: bytes, health: BindingHealth, rebind: Fingerprint | None = None
    ) -> None:
        self.path = path
        self.header = header
        # for a binding of an older format: the matching properties to bind anew at the next write
        self._rebind = rebind
        self._secret = secret
        self._key = _state_key(secret)
        self.health = health
        # the file's bytes as last read or written here, and the content they hold: bytes
        # equal to these need no unsealing and no signature checks (see `_current`)
        self._seen: tuple[bytes, ContainerContent] | None = None

    @property
    def serial(self) -> ContainerSerial:
        return self.header.serial

    @property
    def sign_public(self) -> bytes:
        return self.header.sign_public

    # -- creating and opening --

    @classmethod
    def create(
        cls,
        directory: Path,
        fingerprint: Fingerprint,
        tolerance: Tolerance,
        now: int,
        *,
        serial: ContainerSerial | None = None,
    ) -> SoftContainer:
        bound = [p for p in fingerprint.properties if p.weight > 0]
        if not bound:
            raise LicentiaError(
                ErrorCode.BINDING_NOT_POSSIBLE,
                "no machine property could be read to bind a container to this machine",
            )
        if serial is None:
            serial = ContainerSerial(DEFAULT_MASK[ContainerKind.SOFT], int.from_bytes(random_bytes(4), "big"))
        secret = new_key()
        binding = fuzzy.bind(secret, bound, tolerance.fraction)  # the shipped cost, never lower
        sign_key, box_key = new_signing_key(), new_box_key()
        content = ContainerContent(serial, now, sign_key, box_key)
        content = content.with_clock(content.clock.observe(now))
        header = Header(
            serial, now, tolerance, binding, signing_public_key(sign_key), box_public_key(box_key), b"", b""
        )
        path = container_path(directory, serial)
        if path.exists():
            raise LicentiaError(ErrorCode.ALREADY_EXISTS, f"container {serial} already exists at {path}")
        directory.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            atomic_write(path, _serialize(header, content, _state_key(secret)))
        health = BindingHealth(
            sum(p.weight for p in bound), sum(p.weight for p in bound), 0,
            tuple(p.name for p in bound), (),
        )
        opened = cls.open(path, fingerprint, now)
        return cls(path, opened.header, secret, health)

    @classmethod
    def open(cls, path: Path, fingerprint: Fingerprint, now: int | None = None) -> SoftContainer:
        """Rebuild the key from this machine's properties and check the whole file.

        Raises 264 (invalid) for a damaged or altered file, 263 (broken) when the machine no
        longer matches the binding.
        """
        header = read_header(path)
        try:
            outcome = fuzzy.unbind(header.binding, list(fingerprint.properties))
        except fuzzy.BindingBroken as exc:
            if exc.matched_weight is None:  # which properties changed cannot be known
                detail = (f"the {exc.present_weight} of {exc.total_weight} shares present here do not rebuild "
                          f"its key, {exc.needed_weight} matching are needed; "
                          f"missing: {', '.join(exc.missing) or 'none'}")
            else:
                detail = (f"matching weight {exc.matched_weight} of {exc.total_weight}, {exc.needed_weight} needed; "
                          f"changed or missing: {', '.join(exc.changed + exc.missing) or 'none'}")
            raise LicentiaError(
                ErrorCode.REACTIVATION_REQUIRED,
                f"container {header.serial} is broken: it no longer matches this machine ({detail})",
            ) from None
        except fuzzy.MalformedBinding:
            raise LicentiaError(ErrorCode.LICENSE_INVALID, f"container {header.serial} is invalid: its binding is damaged") from None
        health = BindingHealth(
            outcome.matched_weight, outcome.total_weight, outcome.needed_weight,
            tuple(outcome.matched), tuple(outcome.changed + outcome.missing),
        )
        rebind = None
        if fuzzy.describe(header.binding).version < fuzzy.VERSION:
            from licentia.binding import cap_shared

            still = [p for p in fingerprint.properties if p.name in outcome.matched and p.weight > 0]
            rebind = dataclasses.replace(fingerprint, properties=cap_shared(still))
        container = cls(path, header, outcome.secret, health, rebind)
        container.read()  # verifies the sealed state and every license in it
        return container

    # -- reading and changing --

    def read(self) -> ContainerContent:
        """The current content, read afresh from the file."""
        with _locked(self.path, shared=True):
            return self._current()

    def _current(self) -> ContainerContent:
        """The content of the file as it is now. The file is always read; it is unsealed and
        its licenses verified again only when its bytes differ from those this object last
        read or wrote, so a change by another process (`licentia update apply`) is seen,
        and a transaction of the runtime costs a read and a compare, not a full open."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise LicentiaError(ErrorCode.CONTAINER_NOT_FOUND, f"no container file at {self.path}") from None
        seen = self._seen
        if seen is not None and seen[0] == data:
            return seen[1]
        content = self._load(parse_header(data))
        self._seen = (data, content)
        return content

    def _load(self, header: Header) -> ContainerContent:
        # The binding may have been rewritten (a newer format) by another process: the
        # state still opens only under this container's secret, which its AAD names.
        if (header.serial, header.sign_public) != (self.header.serial, self.header.sign_public):
            raise LicentiaError(ErrorCode.LICENSE_INVALID, f"container file {self.path} was replaced by another container")
        try:
            raw = unseal(self._key, header.sealed_state, _state_aad(header))
        except InvalidArtifact:
            raise LicentiaError(
                ErrorCode.LICENSE_INVALID,
                f"container {header.serial} is invalid: its contents do not open (altered or foreign)",
            ) from None
        content = load_content(env.decode_map(raw, what="container file"), header.sign_public)
        if content.serial != header.serial or signing_public_key(content.sign_key) != header.sign_public:
            raise LicentiaError(ErrorCode.LICENSE_INVALID, f"container {header.serial} is invalid: inconsistent keys")
        self.header = header
        return content

    def transact(self, change: Callable[[ContainerContent], tuple[ContainerContent, T]]) -> T:
        """Apply `change` to the current content and persist the result atomically."""
        with _locked(self.path):
            content = self._current()
            new_content, result = change(content)
            if new_content is not content:
                data = _serialize(self._current_format(), new_content, self._key)
                self._seen = None  # should the write fail, the next read opens the file afresh
                atomic_write(self.path, data)
                self.header = parse_header(data)
                self._seen = (data, new_content)
            return result

    def _current_format(self) -> Header:
        """The header to write: a binding of an older format is made anew in the current one,
        to the properties that still matched it when the container was opened (the same
        values, so the binding does not move), with what the machine type shares kept
        under every threshold (`licentia.binding.cap_shared`)."""
        if self._rebind is None or fuzzy.describe(self.header.binding).version >= fuzzy.VERSION:
            return self.header
        bound = [p for p in self._rebind.properties if p.weight > 0]
        if not bound:
            return self.header  # nothing unique still matches: keep the old binding
        binding = fuzzy.bind(self._secret, bound, self.header.tolerance.fraction)
        return dataclasses.replace(self.header, binding=binding)

    def describe(self) -> dict[str, Any]:
        return {"serial": str(self.serial), "kind": self.kind.value, "path": str(self.path),
                "tolerance": self.header.tolerance.value, "binding": self.health.describe()}


@contextlib.contextmanager
def _locked(path: Path, *, shared: bool = False) -> Iterator[None]:
    lock_path = path.with_name(f".{path.name}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _b(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError("expected bytes")
    return value
