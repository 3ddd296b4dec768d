"""The token container: licenses kept in a PKCS#11 token whose key cannot be copied.

Any PKCS#11 device serves — a smart card, a USB token, an HSM, a TPM through
tpm2-pkcs11; SoftHSM2 in the tests. What makes it a dongle is its Ed25519 key pair,
generated inside the token as sensitive and non-extractable: the licenses name the
container's serial and that public key (`licentia.core.licenses`), so they work with
this token and no other, and every access can prove the token is present by having it
sign a fresh challenge.

Objects on the token (PKCS#11 application "licentia"):

    licentia-container            Ed25519 key pair (CKM_EDDSA); private half sensitive,
                                  non-extractable, never leaves the token
    licentia-container-info       public data: LCTI record (serial, creation time,
                                  public keys), signed inside the token
    licentia-box-key              private data: the X25519 key that opens updates
    licentia-content-GEN-TAG      private data: LCTC record, the container content
                                  (firm items, product items and their state, clock)
    licentia-claims-GEN-TAG       private data: LCTL record, who uses the token and
                                  any lockout (`licentia.core.claims`)

Records are signed inside the token and carry the serial and their generation. A
change writes the next generation under a new label and only then deletes the older
ones; reading takes the newest record that verifies. A crash (or a pulled token) at
any instant leaves the old or the new record readable, never a third state.

The X25519 box key is a private data object, readable after login, rather than a key
inside the token: it only keeps update files confidential on their way to this
container (hidden data, licenses in transit). The container's identity — what makes a
license unusable anywhere else — is the signing key, and that one never leaves.

Changes from several processes of one user are serialised with a lock file per token
(mode 0600, opened without following links) in a directory only that user can write:
$LICENTIA_TOKEN_LOCK_DIR, else /run/licentia when it is ours, else `locks` in the
licentia home (`default_lock_dir`); within a process, every container object on one token shares one
logged-in session (PKCS#11 logs in per process, not per session).

A runtime uses a token container like this::

    c = TokenContainer.open(module, label="lic", pin=pin)
    c.claim("runtime-7f3a", now)           # one runtime per token (claims, lockout)
    watch = c.watch(on_event)              # token pulled / taken away / locked out
    signature = c.prove(message, now)      # every access: the token signs a fresh challenge
    use_item(c, firm, product, request, now)
    ...
    watch.stop(); c.release(now); c.close()
"""

from __future__ import annotations

import fcntl
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeVar

from licentia.containers.base import ContainerBase
from licentia.containers.pkcs11 import (
    DEFAULT_APPLICATION,
    KeyKind,
    TokenInfo,
    TokenSession,
    find_module,
    find_token,
    list_tokens,
    load_module,
    open_public_session,
    open_session,
    reinitialize,
)
from licentia.core import claims as claim_rules
from licentia.core.claims import ClaimResult, ClaimState, Standing
from licentia.core.content import ContainerContent
from licentia.core.stored import load_content
from licentia.crypto import (
    InvalidArtifact,
    box_public_key,
    digest,
    equal,
    keyed_digest,
    new_box_key,
    open_sealed,
    random_bytes,
    verify,
)
from licentia.crypto.artifacts import open_signed_artifact, sign_artifact_with, split_signed
from licentia.model import (
    DEFAULT_MASK,
    ContainerKind,
    ContainerSerial,
    ErrorCode,
    LicentiaError,
    envelope as env,
)

T = TypeVar("T")

APPLICATION: Final = DEFAULT_APPLICATION
KEY_LABEL: Final = "licentia-container"
INFO_LABEL: Final = "licentia-container-info"
BOX_LABEL: Final = "licentia-box-key"
CONTENT_PREFIX: Final = "licentia-content-"
CLAIMS_PREFIX: Final = "licentia-claims-"
INFO_MAGIC: Final = b"LCTI"
CONTENT_MAGIC: Final = b"LCTC"
CLAIMS_MAGIC: Final = b"LCTL"
RECORD_VERSION: Final = 1
PRESENCE_DOMAIN: Final = b"licentia token presence v1\x00"
POLL_INTERVAL: Final = 0.5
"""Seconds between presence checks of `watch`: a pulled token is noticed well within 2 s."""
LOCK_DIR_ENV: Final = "LICENTIA_TOKEN_LOCK_DIR"

_ED25519_SPKI_PREFIX: Final = bytes.fromhex("302a300506032b6570032100")
_SERIAL_DOMAIN: Final = b"licentia token serial\x00"
# Errors of the token layer that may mean the token went away.
_TOKEN_TROUBLE: Final = frozenset(
    {ErrorCode.TOKEN_FAILURE, ErrorCode.TOKEN_OBJECT_NOT_FOUND, ErrorCode.TOKEN_NOT_FOUND}
)


def serial_for(sign_public: bytes) -> ContainerSerial:
    """The serial of a token container: token mask byte 3, number from its public key."""
    number = int.from_bytes(digest(_SERIAL_DOMAIN + sign_public)[:4], "big")
    return ContainerSerial(DEFAULT_MASK[ContainerKind.TOKEN], number)


def presence_challenge(nonce: bytes) -> bytes:
    """The message a token signs to show it is present, for a random `nonce`."""
    return PRESENCE_DOMAIN + nonce


def verify_proof(sign_public: bytes, challenge: bytes, signature: bytes) -> bool:
    """Whether `signature` is the container key's over exactly `challenge`."""
    try:
        verify(sign_public, challenge, signature)
    except InvalidArtifact:
        return False
    return True


# -- what the token says about itself (public) ---------------------------------------------


@dataclass(frozen=True)
class TokenDescription:
    """The public description of a token container (readable without a PIN)."""

    serial: ContainerSerial
    created_at: int
    sign_public: bytes
    box_public: bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "serial": str(self.serial),
            "created_at": self.created_at,
            "sign_public": self.sign_public,
            "box_public": self.box_public,
        }


def parse_description(data: bytes) -> TokenDescription:
    """Read and check an LCTI record (self-signed; the key proves itself at open)."""
    what = "token container description"
    _, body, signed, signature = split_signed(data, INFO_MAGIC, {RECORD_VERSION}, what=what)
    fields = env.decode_map(body, what=what)
    try:
        sign_public = fields["sign_public"]
        box_public = fields["box_public"]
        if not isinstance(sign_public, bytes) or not isinstance(box_public, bytes):
            raise TypeError
        description = TokenDescription(
            ContainerSerial.parse(str(fields["serial"])),
            int(fields["created_at"]),
            sign_public,
            box_public,
        )
    except (KeyError, TypeError, ValueError, LicentiaError):
        raise _invalid(f"the {what} is malformed") from None
    if not verify_proof(sign_public, signed, signature) or serial_for(sign_public) != description.serial:
        raise _invalid(f"the {what} does not verify (altered or foreign)")
    return description


def describe_token(
    module: str | os.PathLike[str] | None = None,
    *,
    label: str | None = None,
    slot: int | None = None,
) -> TokenDescription | None:
    """The container description on a token, read without login; None if it holds none."""
    with open_public_session(module, label=label, slot=slot) as session:
        raw = session.get_data(INFO_LABEL, application=APPLICATION)
    return None if raw is None else parse_description(raw)


@dataclass(frozen=True)
class FoundToken:
    token: TokenInfo
    description: TokenDescription | None  # None: not a licentia container
    problem: LicentiaError | None = None  # a description that does not verify


def find_containers(module: str | os.PathLike[str] | None = None, *, refresh: bool = False) -> list[FoundToken]:
    """Every initialised token of `module` and whether it is a licentia container.

    No PIN is tried: only the public description object is read. With `refresh`, or when
    the module fails to list its slots (SoftHSM2 does once a token's directory is gone),
    the module's slot list is read afresh first (`refresh_slots`), so a token plugged in
    again is found.
    """
    if refresh:
        refresh_slots(module)
    try:
        infos = list_tokens(module)
    except LicentiaError as exc:
        if exc.code is not ErrorCode.TOKEN_FAILURE:
            raise
        refresh_slots(module)
        infos = list_tokens(module)
    found: list[FoundToken] = []
    for info in infos:
        try:
            found.append(FoundToken(info, describe_token(module, slot=info.slot_id)))
        except LicentiaError as exc:
            found.append(FoundToken(info, None, exc))
    return found


# -- one logged-in session per token and process ----------------------------------------------

_PIN_SALT: Final = random_bytes(32)


@dataclass
class _Shared:
    key: tuple[str, str, int, str]
    session: TokenSession
    stack: ExitStack
    pin_digest: bytes
    pin: str = field(repr=False, default="")  # to log in again after `refresh_slots`
    lock: threading.RLock = field(default_factory=threading.RLock)
    refs: int = 1
    depth: int = 0  # file-lock nesting of the thread holding `lock`
    dead: bool = False


_sessions: dict[tuple[str, str, int, str], _Shared] = {}
_sessions_lock = threading.Lock()
# Held while sessions are opened (`_acquire`) or the module's slots are read afresh
# (`refresh_slots`), so no session is opened in between and left behind. Taken before any
# `_Shared.lock`, `_sessions_lock` or the module lock.
_open_lock = threading.RLock()


def _token_serial(token: Any) -> str:
    raw = token.serial
    return raw.decode("ascii", "replace").strip() if isinstance(raw, bytes) else str(raw).strip()


def _acquire(
    module: str | os.PathLike[str] | None, label: str | None, slot: int | None, pin: str
) -> _Shared:
    with _open_lock:
        lib = load_module(module)
        token = find_token(lib, label=label, slot=slot)
        slot_id = int(token.slot.slot_id)
        key = (
            str(find_module(module)),
            os.environ.get("SOFTHSM2_CONF", ""),
            slot_id,
            _token_serial(token),
        )
        pin_digest = keyed_digest(_PIN_SALT, pin.encode())
        with _sessions_lock:
            shared = _sessions.get(key)
            if shared is not None and not shared.dead and shared.session.stale:
                # the module was initialised again without `refresh_slots`: that session is over
                shared.dead = True
                del _sessions[key]
                shared = None
            if shared is not None and not shared.dead:
                if not equal(shared.pin_digest, pin_digest):
                    raise LicentiaError(
                        ErrorCode.PIN_INCORRECT,
                        f"wrong PIN for token '{token.label}' (checked against the session this "
                        "process already holds; the token's retry counter was not touched)",
                    )
                shared.refs += 1
                return shared
            stack = ExitStack()
            session = stack.enter_context(open_session(module, slot=slot_id, pin=pin))
            shared = _Shared(key, session, stack, pin_digest, pin)
            _sessions[key] = shared
            return shared


def _release(shared: _Shared) -> None:
    with _sessions_lock:
        shared.refs -= 1
        if shared.refs > 0:
            return
        if _sessions.get(shared.key) is shared:
            del _sessions[shared.key]
    with shared.lock, suppress(Exception):
        shared.stack.close()


def _forget(shared: _Shared) -> None:
    """The token is gone: the next open makes a fresh session."""
    with _sessions_lock:
        shared.dead = True
        if _sessions.get(shared.key) is shared:
            del _sessions[shared.key]


def refresh_slots(module: str | os.PathLike[str] | None = None) -> None:
    """Read the module's slots afresh (C_Finalize, C_Initialize), keeping this process's
    sessions on the tokens that are still there.

    A module may see a token plugged in again, or a new reader, only after this (SoftHSM2
    reads its token directory at C_Initialize). Finalising ends every session of the
    module, so each logged-in session this process shares (`_acquire`) is opened again on
    the same slot, checked to be the same token, and logged in with the PIN it was opened
    with; a token that is gone loses its session and its containers report 1117.
    """
    so = str(find_module(module))
    with ExitStack() as held:
        held.enter_context(_open_lock)
        with _sessions_lock:
            conf = os.environ.get("SOFTHSM2_CONF", "")
            live = [shared for shared in _sessions.values()
                    if shared.key[:2] == (so, conf) and not shared.dead]
        for shared in live:  # no access is half done while the sessions change
            held.enter_context(shared.lock)
        reinitialize(so)
        for shared in live:
            stack = ExitStack()
            try:
                session = stack.enter_context(open_session(so, slot=shared.key[2], pin=shared.pin))
                if session.info.serial != shared.key[3]:
                    raise LicentiaError(ErrorCode.TOKEN_NOT_FOUND, "another token is in the slot now")
            except LicentiaError:
                stack.close()
                _forget(shared)
                continue
            shared.session, shared.stack = session, stack  # the old session ended with C_Finalize


# -- locks between processes -----------------------------------------------------------------


RUN_LOCK_DIR: Final = Path("/run/licentia")


def default_lock_dir(home: Path | None = None, *, run_dir: Path = RUN_LOCK_DIR) -> Path:
    """Where the lock files of token containers live, for this user.

    $LICENTIA_TOKEN_LOCK_DIR if set; else `run_dir` (/run/licentia) when it is ours or
    we may make it (a runtime running as root or as a service user owning it); else
    `locks` in the licentia home (`home`, else $LICENTIA_HOME, else the per-user default).
    Never a directory other users can write: `_file_lock` refuses one.
    """
    explicit = os.environ.get(LOCK_DIR_ENV)
    if explicit:
        return Path(explicit)
    if _ours(run_dir) or (not run_dir.exists() and _ours(run_dir.parent) and os.access(run_dir.parent, os.W_OK)):
        return run_dir
    if home is None:
        named = os.environ.get("LICENTIA_HOME")
        if named:
            home = Path(named).expanduser()
        elif os.geteuid() == 0:
            home = Path("/var/lib/licentia")
        else:
            home = Path.home() / ".local" / "share" / "licentia"
    return home / "locks"


def _ours(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()


def _lock_path(lock_dir: Path, info: TokenInfo) -> Path:
    name = digest(f"{info.manufacturer}|{info.model}|{info.serial}".encode())[:8].hex()
    return lock_dir / f"token-{name}.lock"


def _check_lock_dir(directory: Path) -> None:
    """Make the lock directory (mode 0700) if needed; refuse one that is a link, that is not
    ours, or that other users can write (they could plant links or hold locks)."""
    if not directory.exists() and not directory.is_symlink():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        st = os.lstat(directory)
    except OSError as exc:
        raise _unsafe(directory, f"cannot be read ({exc.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise _unsafe(directory, "is not a directory (a link or a file)")
    if st.st_uid not in (os.geteuid(), 0):
        raise _unsafe(directory, f"belongs to user id {st.st_uid}, not to this user")
    if st.st_mode & 0o022:
        raise _unsafe(directory, f"is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})",
                      f"chmod go-w {directory}")


def _unsafe(directory: Path, why: str, fix: str | None = None) -> LicentiaError:
    return LicentiaError(
        ErrorCode.SECURITY_PROBLEM,
        f"the token lock directory {directory} {why}",
        hint=(fix + ", or " if fix else "")
        + f"remove it, or name a directory of this user's own in ${LOCK_DIR_ENV}",
    )


@contextmanager
def _file_lock(path: Path, *, exclusive: bool) -> Iterator[None]:
    _check_lock_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise _unsafe(path.parent, f"holds a lock file that cannot be opened safely: {path.name} ({exc.strerror})",
                      f"remove {path}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in (os.geteuid(), 0):
            raise _unsafe(path.parent, f"holds a lock file {path.name} that is not this user's", f"remove {path}")
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


# -- events ----------------------------------------------------------------------------------


class TokenLockedOut(LicentiaError):
    """1119: the token is locked out until `until` (a time of the clock that saw it).

    Its message counts the seconds left at `now`; `at(later)` says it again for a later
    moment, so a report made later never repeats a stale count."""

    def __init__(self, label: str, serial: ContainerSerial, until: int, cause: str, now: int) -> None:
        self.label, self.serial, self.until, self.cause = label, serial, until, cause
        remaining = max(0, until - now)
        if remaining:
            message = f"token '{label}' holding container {serial} is locked out for {remaining} s more: {cause}"
        else:
            message = (
                f"the lockout of token '{label}' holding container {serial} has ended ({cause}); "
                "it can be claimed again"
            )
        super().__init__(ErrorCode.TOKEN_LOCKED_OUT, message)

    def at(self, now: int) -> TokenLockedOut:
        return TokenLockedOut(self.label, self.serial, self.until, self.cause, now)


class TokenEventKind(StrEnum):
    GONE = "gone"  # pulled, or the module lost the slot
    TAKEN_AWAY = "taken away"  # another runtime claimed the token
    LOCKED_OUT = "locked out"  # the token changed hands too fast
    FAILED = "failed"  # the token answers, but its records cannot be trusted


@dataclass(frozen=True)
class TokenEvent:
    kind: TokenEventKind
    serial: ContainerSerial
    error: LicentiaError
    at: int


_EVENT_OF: Final = {
    ErrorCode.TOKEN_REMOVED: TokenEventKind.GONE,
    ErrorCode.TOKEN_TAKEN_AWAY: TokenEventKind.TAKEN_AWAY,
    ErrorCode.TOKEN_LOCKED_OUT: TokenEventKind.LOCKED_OUT,
}


class TokenWatch:
    """A thread that checks a token every `interval` seconds and reports the first event.

    The callback runs once, on the watch thread, with the `TokenEvent`; the watch then
    ends. The runtime releases the token's seats there.
    """

    def __init__(
        self,
        container: TokenContainer,
        callback: Callable[[TokenEvent], None],
        interval: float,
        clock: Callable[[], int],
    ) -> None:
        self._container = container
        self._callback = callback
        self._interval = interval
        self._clock = clock
        self._stop = threading.Event()
        self.event: TokenEvent | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"licentia-token-watch-{container.serial}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            event = self._container.poll(self._clock())
            if event is not None and not self._stop.is_set():
                self.event = event
                self._callback(event)
                return
            self._stop.wait(self._interval)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()


# -- the container ---------------------------------------------------------------------------


def _wall_clock() -> int:
    return int(time.time())


class TokenKeys:
    """The container's keys: Ed25519 signs inside the token; X25519 opens updates."""

    def __init__(self, container: TokenContainer) -> None:
        self._container = container

    @property
    def sign_public(self) -> bytes:
        return self._container.sign_public

    @property
    def box_public(self) -> bytes:
        return self._container.box_public

    def sign(self, data: bytes) -> bytes:
        return self._container._sign_inside(data)

    def open_sealed(self, sealed: bytes, aad: bytes) -> bytes:
        return open_sealed(self._container._box_key, sealed, aad)


class TokenContainer(ContainerBase):
    """An opened token container. Close it (or use it as a context manager) when done."""

    kind = ContainerKind.TOKEN

    def __init__(
        self,
        shared: _Shared,
        description: TokenDescription,
        box_key: bytes,
        *,
        module: str,
        lock_dir: Path | None,
        clock: Callable[[], int] | None,
    ) -> None:
        self._shared = shared
        self.description = description
        self._box_key = box_key
        self.module = module
        self.token = shared.session.info
        self._lock_path = _lock_path(lock_dir or default_lock_dir(), self.token)
        self._clock = clock or _wall_clock
        self._runtime: str | None = None
        self._gone = False
        self._closed = False
        self._watches: list[TokenWatch] = []
        self.skipped_records = 0  # records that did not verify at the last read
        self.lockout: TokenLockedOut | None = None  # the last lockout this object met
        self.keys = TokenKeys(self)

    # -- identity --

    @property
    def serial(self) -> ContainerSerial:
        return self.description.serial

    @property
    def sign_public(self) -> bytes:
        return self.description.sign_public

    @property
    def box_public(self) -> bytes:
        return self.description.box_public

    @property
    def runtime_id(self) -> str | None:
        """The runtime id this object claimed the token for, if any."""
        return self._runtime

    # -- creating and opening --

    @classmethod
    def create(
        cls,
        module: str | os.PathLike[str] | None = None,
        *,
        label: str | None = None,
        slot: int | None = None,
        pin: str,
        now: int,
        lock_dir: Path | None = None,
        clock: Callable[[], int] | None = None,
    ) -> TokenContainer:
        """Make an initialised token (named by label or slot) into an empty container."""
        shared = _acquire(module, label, slot, pin)
        try:
            lock_path = _lock_path(lock_dir or default_lock_dir(), shared.session.info)
            with shared.lock, _file_lock(lock_path, exclusive=True):
                container = cls._initialise(shared, module, now, lock_dir, clock)
        except BaseException:
            _release(shared)
            raise
        return container

    @classmethod
    def _initialise(
        cls,
        shared: _Shared,
        module: str | os.PathLike[str] | None,
        now: int,
        lock_dir: Path | None,
        clock: Callable[[], int] | None,
    ) -> TokenContainer:
        s = shared.session
        existing = s.get_data(INFO_LABEL, application=APPLICATION)
        if existing is not None:
            try:
                serial = str(parse_description(existing).serial)
            except LicentiaError:
                serial = "of unknown serial"
            raise LicentiaError(
                ErrorCode.ALREADY_EXISTS,
                f"token '{s.info.label}' (slot {s.info.slot_id}) already is licentia container {serial}",
                hint="open it instead, or use another token",
            )
        # Leftovers of a creation that was interrupted before its description was written.
        s.delete_objects(KEY_LABEL, ["private-key", "public-key"])
        s.delete_data(BOX_LABEL, application=APPLICATION)
        for prefix in (CONTENT_PREFIX, CLAIMS_PREFIX):
            for old in s.data_labels(application=APPLICATION, prefix=prefix):
                s.delete_data(old, application=APPLICATION)

        pair = s.generate_keypair(KeyKind.ED25519, KEY_LABEL)
        sign_public = _raw_ed25519(pair.public_key)
        box_key = new_box_key()
        s.put_data(BOX_LABEL, box_key, application=APPLICATION, private=True, replace=False)
        description = TokenDescription(serial_for(sign_public), now, sign_public, box_public_key(box_key))
        container = cls(
            shared, description, box_key, module=str(find_module(module)), lock_dir=lock_dir, clock=clock
        )
        container._check_key()
        content = ContainerContent(description.serial, now, b"", box_key)
        content = content.with_clock(content.clock.observe(now))
        container._write(CONTENT_PREFIX, CONTENT_MAGIC, {"content": _content_body(content)}, 1)
        # Written last: a token without its description is no container yet.
        s.put_data(
            INFO_LABEL,
            sign_artifact_with(INFO_MAGIC, RECORD_VERSION, env.encode(description.to_dict()), container._sign_inside),
            application=APPLICATION,
            private=False,
            replace=False,
        )
        return container

    @classmethod
    def open(
        cls,
        module: str | os.PathLike[str] | None = None,
        *,
        label: str | None = None,
        slot: int | None = None,
        pin: str,
        serial: ContainerSerial | None = None,
        lock_dir: Path | None = None,
        clock: Callable[[], int] | None = None,
    ) -> TokenContainer:
        """Open the container on a token: its description, key and contents are checked.

        A wrong PIN is tried once and reported with what the token says about the
        retries left (1100), a locked PIN is not tried (1101); a token that is no
        container is 201, one whose objects do not agree with each other is 264.
        """
        shared = _acquire(module, label, slot, pin)
        try:
            with shared.lock:
                s = shared.session
                raw = s.get_data(INFO_LABEL, application=APPLICATION)
                if raw is None:
                    raise LicentiaError(
                        ErrorCode.CONTAINER_NOT_FOUND,
                        f"token '{s.info.label}' (slot {s.info.slot_id}) is not a licentia container",
                        hint="make it one with `licentia container create --token`",
                    )
                description = parse_description(raw)
                if serial is not None and description.serial != serial:
                    raise LicentiaError(
                        ErrorCode.CONTAINER_NOT_FOUND,
                        f"token '{s.info.label}' holds container {description.serial}, not {serial}",
                    )
                box_key = s.get_data(BOX_LABEL, application=APPLICATION) or b""
                try:
                    box_ok = len(box_key) == 32 and box_public_key(box_key) == description.box_public
                except ValueError:
                    box_ok = False
                if not box_ok:
                    raise _invalid(
                        f"container {description.serial} on token '{s.info.label}' has lost or "
                        "altered its update key"
                    )
                container = cls(
                    shared, description, box_key, module=str(find_module(module)),
                    lock_dir=lock_dir, clock=clock,
                )
                container._check_key()
            container.read()
        except BaseException:
            _release(shared)
            raise
        return container

    def _check_key(self) -> None:
        """The token's key is the container's, cannot leave the token, and signs."""
        s = self._shared.session
        pair = s.key_pair(KEY_LABEL)
        if pair.kind is not KeyKind.ED25519 or _raw_ed25519(pair.public_key) != self.sign_public:
            raise _invalid(f"token '{s.info.label}' holds another key than container {self.serial}")
        if pair.extractable:
            raise _invalid(f"the key of container {self.serial} is extractable; it cannot be trusted")
        nonce = presence_challenge(random_bytes(32))
        if not verify_proof(self.sign_public, nonce, s.sign(KEY_LABEL, nonce)):
            raise _invalid(f"token '{s.info.label}' does not sign for container {self.serial}")

    def close(self) -> None:
        """Stop this object's watches and give up its share of the token session.

        The claim stays in the token: call `release` first when the runtime stops.
        """
        if self._closed:
            return
        for watch in list(self._watches):
            watch.stop()
        self._closed = True
        _release(self._shared)

    def __enter__(self) -> TokenContainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- access: locks, presence, token errors --

    @contextmanager
    def _access(self, *, exclusive: bool) -> Iterator[TokenSession]:
        if self._closed:
            raise LicentiaError(ErrorCode.INVALID_HANDLE, f"container {self.serial} was closed")
        if self._gone:
            raise self._removed()
        shared = self._shared
        with shared.lock:
            outer = shared.depth == 0
            with _file_lock(self._lock_path, exclusive=exclusive) if outer else _nothing():
                shared.depth += 1
                try:
                    yield shared.session
                except LicentiaError as exc:
                    if exc.code in _TOKEN_TROUBLE and not self._present_locked():
                        raise self._removed() from None
                    raise
                finally:
                    shared.depth -= 1

    def _present_locked(self) -> bool:
        """Presence, with the session lock held: the slot still shows this token and the
        token signs a fresh challenge with the container key."""
        if self._gone:
            return False
        s = self._shared.session
        ok = s.still_present()
        if ok:
            nonce = presence_challenge(random_bytes(32))
            try:
                ok = verify_proof(self.sign_public, nonce, s.sign(KEY_LABEL, nonce))
            except LicentiaError:
                ok = False
        if not ok:
            self._gone = True
            _forget(self._shared)
        return ok

    def _removed(self) -> LicentiaError:
        return LicentiaError(
            ErrorCode.TOKEN_REMOVED,
            f"token '{self.token.label}' holding container {self.serial} is no longer present",
        )

    def _sign_inside(self, data: bytes) -> bytes:
        """Sign with the container key inside the token (requests, receipts, records, proofs)."""
        if self._gone:
            raise self._removed()
        with self._shared.lock:
            try:
                return self._shared.session.sign(KEY_LABEL, data)
            except LicentiaError as exc:
                if exc.code in _TOKEN_TROUBLE and not self._present_locked():
                    raise self._removed() from None
                raise

    def is_present(self) -> bool:
        """Whether the token is still there: its slot answers and it signs a fresh challenge."""
        if self._gone or self._closed:
            return False
        with self._shared.lock:
            return self._present_locked()

    # -- records --

    def _records(self, prefix: str, magic: bytes) -> tuple[int, dict[str, Any] | None]:
        """(highest generation seen, body of the newest record that verifies)."""
        s = self._shared.session
        candidates: list[tuple[int, str]] = []
        for label in s.data_labels(application=APPLICATION, prefix=prefix):
            generation = _generation(label, prefix)
            if generation is not None:
                candidates.append((generation, label))
        candidates.sort(reverse=True)
        highest = candidates[0][0] if candidates else 0
        skipped = 0
        for generation, label in candidates:
            raw = s.get_data(label, application=APPLICATION)
            body = None if raw is None else self._open_record(raw, magic, generation)
            if body is not None:
                self.skipped_records = skipped
                return highest, body
            skipped += 1
        self.skipped_records = skipped
        return highest, None

    def _open_record(self, raw: bytes, magic: bytes, generation: int) -> dict[str, Any] | None:
        try:
            _, body = open_signed_artifact(raw, magic, {RECORD_VERSION}, self.sign_public, what="token record")
            fields = env.decode_map(body, what="token record")
        except (InvalidArtifact, LicentiaError):
            return None
        if fields.get("serial") != str(self.serial) or fields.get("generation") != generation:
            return None
        return fields

    def _write(self, prefix: str, magic: bytes, body: dict[str, Any], generation: int) -> None:
        """Write generation `generation` under a new label, then delete the older ones."""
        s = self._shared.session
        record = {**body, "serial": str(self.serial), "generation": generation}
        data = sign_artifact_with(magic, RECORD_VERSION, env.encode(record), self._sign_inside)
        label = f"{prefix}{generation:016x}-{random_bytes(4).hex()}"
        s.put_data(label, data, application=APPLICATION, private=True, replace=False)
        for old in s.data_labels(application=APPLICATION, prefix=prefix):
            old_generation = _generation(old, prefix)
            if old_generation is not None and old_generation < generation:
                s.delete_data(old, application=APPLICATION)

    def _load(self) -> tuple[int, ContainerContent]:
        highest, fields = self._records(CONTENT_PREFIX, CONTENT_MAGIC)
        if fields is None or not isinstance(fields.get("content"), dict):
            raise _invalid(
                f"container {self.serial} on token '{self.token.label}' has no readable "
                "contents (damaged or altered)"
            )
        data = dict(fields["content"])
        data["sign_key"] = b""
        data["box_key"] = self._box_key
        content = load_content(data, self.sign_public)
        if content.serial != self.serial:
            raise _invalid(f"the contents on token '{self.token.label}' name another container")
        return highest, content

    def _claims(self) -> tuple[int, ClaimState]:
        highest, fields = self._records(CLAIMS_PREFIX, CLAIMS_MAGIC)
        if fields is None:
            # Never claimed (or only records that do not verify): start afresh.
            return highest, ClaimState()
        return highest, ClaimState.from_dict(fields.get("claims"))

    # -- reading and changing --

    def read(self) -> ContainerContent:
        """The current content, read afresh from the token (every license verified again)."""
        with self._access(exclusive=False):
            return self._load()[1]

    def transact(self, change: Callable[[ContainerContent], tuple[ContainerContent, T]]) -> T:
        """Apply `change` to the current content and store the result in the token.

        Refused while the token is locked out, and — for an object that claimed the
        token — once another runtime has taken it over. Nothing changes on refusal.
        """
        with self._access(exclusive=True):
            self._check_claims(self._clock())
            highest, content = self._load()
            new_content, result = change(content)
            if new_content is not content:
                if new_content.serial != self.serial:
                    raise LicentiaError(ErrorCode.INTERNAL, "a change tried to alter the serial")
                self._write(CONTENT_PREFIX, CONTENT_MAGIC, {"content": _content_body(new_content)}, highest + 1)
            return result

    # -- claims: one runtime per token --

    def claim_state(self, now: int) -> ClaimState:
        """Who holds the token and any lockout, as seen at `now`."""
        with self._access(exclusive=False):
            return claim_rules.normalise(self._claims()[1], now)

    def claim(self, runtime_id: str, now: int) -> ClaimResult:
        """Claim the token for `runtime_id`; from now on this object acts for that runtime.

        Taking the token from another runtime makes that one lose it at its next
        access. Raises 1119 (locked out) when the token is locked out or this claim
        changes hands once too often; the lockout is stored in the token either way.
        """
        claim_rules.runtime_id(runtime_id)
        with self._access(exclusive=True):
            if not self._present_locked():
                raise self._removed()
            highest, state = self._claims()
            result = claim_rules.claim(state, runtime_id, now)
            if result.state != state or highest == 0:
                self._write(CLAIMS_PREFIX, CLAIMS_MAGIC, {"claims": result.state.to_dict()}, highest + 1)
        if not result.granted:
            if self._runtime is not None and self._runtime != runtime_id:
                self._runtime = None
            raise self._locked_out(result.state, now, triggered=result.triggered_lockout)
        self._runtime = runtime_id
        return result

    def release(self, now: int) -> None:
        """Give the claim up (the runtime stops using the token). Quiet if the token is gone."""
        runtime = self._runtime
        self._runtime = None
        if runtime is None or self._gone or self._closed:
            return
        with suppress(LicentiaError), self._access(exclusive=True):
            highest, state = self._claims()
            new = claim_rules.release(state, runtime, now)
            if new != state:
                self._write(CLAIMS_PREFIX, CLAIMS_MAGIC, {"claims": new.to_dict()}, highest + 1)

    def _check_claims(self, now: int) -> None:
        state = self._claims()[1]
        standing = claim_rules.standing(state, self._runtime or "-", now)
        if standing is Standing.LOCKED_OUT:
            raise self._locked_out(state, now)
        if self._runtime is None or standing is Standing.HOLDER:
            return
        normalised = claim_rules.normalise(state, now)
        if normalised.holder is not None:
            why = f"runtime {normalised.holder.runtime_id} claimed it"
        else:
            why = "its claim ended (released, or voided by a lockout); claim it again to use it"
        raise LicentiaError(
            ErrorCode.TOKEN_TAKEN_AWAY,
            f"token '{self.token.label}' holding container {self.serial} was taken away: {why}",
        )

    def _locked_out(self, state: ClaimState, now: int, *, triggered: bool = False) -> TokenLockedOut:
        cause = (
            f"it changed hands more than {claim_rules.MAX_CHANGES} times within "
            f"{claim_rules.WINDOW} s"
            if triggered
            else "it changed hands too often in a short time"
        )
        until = now + claim_rules.lockout_remaining(state, now)
        self.lockout = TokenLockedOut(self.token.label, self.serial, until, cause, now)
        return self.lockout

    def check(self, now: int) -> None:
        """Raise unless this object may use the token now: present (1117), not taken
        away by another runtime (1118), not locked out (1119)."""
        with self._access(exclusive=False):
            if not self._present_locked():
                raise self._removed()
            self._check_claims(now)

    def prove(self, challenge: bytes, now: int) -> bytes:
        """The token's signature over the runtime's fresh `challenge`, after checking that
        this object's claim still holds. Every access goes through here, so every access
        shows the token is present.

        `challenge` is signed as given (the runtime passes the program's proof message,
        which carries its own domain and nonce); it must not look like a licentia artifact.
        """
        if self._runtime is None:
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER,
                f"claim token container {self.serial} before using it (TokenContainer.claim)",
            )
        if challenge[:2] == b"LC" or not challenge:
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER, "a challenge must not be empty or look like a licentia artifact"
            )
        with self._access(exclusive=False):
            if not self._shared.session.still_present():
                self._present_locked()
                raise self._removed()
            self._check_claims(now)
            signature = self._sign_inside(challenge)
        if not verify_proof(self.sign_public, challenge, signature):
            raise LicentiaError(
                ErrorCode.SECURITY_PROBLEM,
                f"token '{self.token.label}' answered with a signature that does not verify",
            )
        return signature

    # -- watching --

    def poll(self, now: int) -> TokenEvent | None:
        """One check as `watch` makes it: None while all is well, else what happened."""
        try:
            if self._runtime is None:
                if not self.is_present():
                    raise self._removed()
            else:
                self.check(now)
        except LicentiaError as exc:
            return TokenEvent(_EVENT_OF.get(exc.code, TokenEventKind.FAILED), self.serial, exc, now)
        except Exception as exc:  # a module misbehaving must not end the watch silently
            error = LicentiaError(ErrorCode.TOKEN_FAILURE, f"checking token '{self.token.label}': {exc!r}")
            return TokenEvent(TokenEventKind.FAILED, self.serial, error, now)
        return None

    def watch(
        self,
        callback: Callable[[TokenEvent], None],
        *,
        interval: float = POLL_INTERVAL,
        clock: Callable[[], int] | None = None,
    ) -> TokenWatch:
        """Check the token every `interval` seconds on a thread; call `callback` once with
        the first event (pulled, taken away, locked out). Stop it with `.stop()`."""
        watch = TokenWatch(self, callback, interval, clock or self._clock)
        self._watches.append(watch)
        return watch

    def describe(self) -> dict[str, Any]:
        return {
            "serial": str(self.serial),
            "kind": self.kind.value,
            "token_label": self.token.label,
            "token_serial": self.token.serial,
            "slot": self.token.slot_id,
            "module": self.module,
            "manufacturer": self.token.manufacturer,
            "model": self.token.model,
        }


# -- helpers ---------------------------------------------------------------------------------


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _content_body(content: ContainerContent) -> dict[str, Any]:
    body = content.to_dict()
    # The keys live in the token, not in the record.
    del body["sign_key"], body["box_key"]
    return body


def _generation(label: str, prefix: str) -> int | None:
    rest = label[len(prefix) :]
    number, _, tag = rest.partition("-")
    if len(number) != 16 or not tag:
        return None
    try:
        return int(number, 16)
    except ValueError:
        return None


def _raw_ed25519(spki: bytes) -> bytes:
    if len(spki) != len(_ED25519_SPKI_PREFIX) + 32 or not spki.startswith(_ED25519_SPKI_PREFIX):
        raise _invalid("the token's container key is not an Ed25519 key")
    return spki[len(_ED25519_SPKI_PREFIX) :]


def _invalid(message: str) -> LicentiaError:
    return LicentiaError(ErrorCode.LICENSE_INVALID, message)


__all__ = [
    "APPLICATION", "BOX_LABEL", "CLAIMS_PREFIX", "CONTENT_PREFIX", "INFO_LABEL", "KEY_LABEL",
    "LOCK_DIR_ENV", "POLL_INTERVAL", "RUN_LOCK_DIR", "FoundToken", "TokenContainer", "TokenDescription",
    "TokenEvent", "TokenEventKind", "TokenKeys", "TokenLockedOut", "TokenWatch", "default_lock_dir",
    "describe_token", "find_containers", "parse_description", "presence_challenge", "refresh_slots",
    "serial_for", "verify_proof",
]
