"""Finding token containers for the runtime: the PKCS#11 module's tokens opened with their
PIN and claimed with this runtime's id, in a worker thread (`licentia.runtime.tokens` serves
what this finds and watches it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from licentia.core.content import ContainerContent
from licentia.fsutil import atomic_write
from licentia.model import ContainerSerial, ErrorCode, LicentiaError
from licentia.runtime.commit import ContainerWriter

if TYPE_CHECKING:
    from licentia.containers.token import TokenContainer, TokenWatch
    from licentia.runtime.host import Runtime

RUNTIME_ID_FILE = "runtime.id"
# Errors of opening a token that must not be retried with the same PIN.
_PIN_REFUSED = frozenset({ErrorCode.PIN_INCORRECT, ErrorCode.PIN_LOCKED})


# ====================================================================== the runtime's id


def runtime_id(state_dir: Path) -> str:
    """This runtime installation's stable id (claims name it): kept in state/runtime.id."""
    path = state_dir / RUNTIME_ID_FILE
    try:
        value = path.read_text().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    value = "rt-" + secrets.token_hex(12)
    atomic_write(path, value.encode() + b"\n", mode=0o600)
    return value


# ====================================================================== tokens


@dataclass
class Held:
    serial: str
    container: TokenContainer
    label: str
    slot: int
    since: float
    outcome: str
    watch: TokenWatch | None = None


@dataclass
class Lost:
    kind: str  # gone, taken away, locked out, failed, or a refusal at open
    code: int | None
    detail: str
    at: float
    label: str = ""
    retry: bool = True  # look at it again at the next scan
    pin_mark: str = ""  # the PIN source a refused PIN came from
    content: ContainerContent | None = None  # what the token held, if known
    error: LicentiaError | None = None
    prefix: str = ""  # what `detail` says before the error's message

    def error_at(self, now: int) -> LicentiaError:
        """The error as of `now`: a lockout counts the seconds left when asked."""
        from licentia.containers.token import TokenLockedOut

        error = self.error or LicentiaError(ErrorCode(self.code or ErrorCode.TOKEN_FAILURE), self.detail)
        return error.at(now) if isinstance(error, TokenLockedOut) else error

    def detail_at(self, now: int) -> str:
        if self.error is None:
            return self.detail
        return self.prefix + self.error_at(now).message


@dataclass
class ScanResult:
    opened: list[tuple[str, TokenContainer, ContainerContent, str]] = field(default_factory=list)
    refused: dict[str, Lost] = field(default_factory=dict)
    error: str = ""


def scan_tokens(module: str, skip: set[str], pins: dict[str, str], held_elsewhere: set[str], now: int,
            refresh: bool, *, runtime_id: str, home: Path, pin_for: Callable[[str], tuple[str, str]]) -> ScanResult:
    """In a worker thread: the token containers of `module` not in `skip`, opened and claimed."""
    from licentia.containers.pkcs11 import count_low_note, unattended_refusal
    from licentia.containers.token import TokenContainer, default_lock_dir, find_containers

    out = ScanResult()
    try:
        found_all = find_containers(module, refresh=refresh)
    except LicentiaError as exc:
        out.error = exc.message
        return out
    for found in found_all:
        if found.description is None:
            continue
        serial = str(found.description.serial)
        if serial in skip:
            continue
        info = found.token
        where = f"token '{info.label}' slot {info.slot_id}"
        refusal = unattended_refusal(info)  # COUNT_LOW alone is tried: it is a warning, not a lock
        if refusal is not None:
            kind = "PIN locked" if refusal.code is ErrorCode.PIN_LOCKED else "PIN not tried"
            out.refused[serial] = Lost(kind, int(refusal.code), f"{where}: {refusal.message}", time.time(),
                                       info.label)
            continue
        try:
            pin, mark = pin_for(serial)
        except LicentiaError as exc:
            out.refused[serial] = Lost("PIN needed", int(exc.code), f"{where}: {exc.message}", time.time(),
                                       info.label)
            continue
        if serial in pins and pins[serial] == mark:
            continue  # refused with this PIN already: never spend another try on it
        container: TokenContainer | None = None
        known: ContainerContent | None = None
        try:
            container = TokenContainer.open(module, slot=info.slot_id, pin=pin,
                                            serial=ContainerSerial.parse(serial),
                                            lock_dir=default_lock_dir(home))
            known = container.read()  # reading needs no claim, even in a lockout
            if serial in held_elsewhere:
                state = container.claim_state(now)
                if state.locked(now) or (state.holder is not None and state.holder.runtime_id != runtime_id):
                    container.close()
                    continue  # another runtime holds it, or the lockout lasts: leave it be
            result = container.claim(runtime_id, now)
            content = container.read()
        except LicentiaError as exc:
            if container is not None:
                with contextlib.suppress(Exception):
                    container.close()
            kind = {ErrorCode.PIN_INCORRECT: "PIN refused", ErrorCode.PIN_LOCKED: "PIN locked",
                    ErrorCode.TOKEN_LOCKED_OUT: "locked out", ErrorCode.TOKEN_REMOVED: "gone"}.get(exc.code, "refused")
            out.refused[serial] = Lost(kind, int(exc.code), f"{where}: {exc.message}", time.time(), info.label,
                                       retry=exc.code not in _PIN_REFUSED, pin_mark=mark, content=known,
                                       error=exc, prefix=f"{where}: ")
            continue
        outcome = result.outcome.value
        if result.previous:
            outcome += f" from {result.previous}"
        note = count_low_note(info)
        if note:
            outcome += f"; warning: {note}"
        out.opened.append((serial, container, content, outcome))
    return out

def token_pin(rt: Runtime, serial: str) -> tuple[str, str]:
    """The PIN for a token container and a mark of where it came from (a digest).

    `[tokens] pin_file` (or --token-pin-file) wins, then $LICENTIA_PIN_FILE, then
    $LICENTIA_PIN, then the PIN file recorded when the container was created."""
    cfg = rt.config
    source = ""
    text: str | None = None
    if cfg.token_pin_file:
        path = cfg.path(rt.home.path, cfg.token_pin_file)
        source = str(path)
        text = _read_pin(path, serial)
    elif os.environ.get("LICENTIA_PIN_FILE"):
        source = os.environ["LICENTIA_PIN_FILE"]
        text = _read_pin(Path(source), serial)
    elif os.environ.get("LICENTIA_PIN"):
        source, text = "$LICENTIA_PIN", os.environ["LICENTIA_PIN"]
    else:
        from licentia.containers.store import ContainerStore

        store = ContainerStore(rt.home.containers, rt.fingerprint)
        entry = store.token_registry()["containers"].get(serial) or {}
        if entry.get("pin_file"):
            source = str(entry["pin_file"])
            text = _read_pin(Path(source), serial)
    if text is None:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"no PIN for token container {serial}",
                            "set [tokens] pin_file in runtime.toml (or --token-pin-file)")
    mark = hashlib.sha256(f"{source}\0{text}".encode()).hexdigest()[:16]
    return text, mark


def _read_pin(path: Path, serial: str) -> str:
    try:
        return path.read_text().rstrip("\r\n")
    except OSError as exc:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER,
                            f"cannot read the PIN file {path} of token container {serial}: {exc.strerror}") from None


def close_all(held: list[Held], release: bool, writers: list[ContainerWriter] | None = None) -> None:
    """In a worker thread: stop watching, write what is pending, give the claim up (at stop), close."""
    now = int(time.time())
    for h in held:
        if h.watch is not None:
            with contextlib.suppress(Exception):
                h.watch.stop()
    for writer in writers or ():
        with contextlib.suppress(Exception):
            writer.close()
    for h in held:
        if release:
            with contextlib.suppress(Exception):
                h.container.release(now)
        with contextlib.suppress(Exception):
            h.container.close()
