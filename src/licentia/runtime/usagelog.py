"""The usage log: every grant, denial and release as JSON lines, chained by hashes, signed.

Each line is one JSON object. Its `prev` is the SHA-256 (hex) of the previous line's
bytes (without the newline), so the lines form a chain: changing, inserting or removing
a line breaks every link after it. The first line of the first file has `prev` of 64
zeros; the first line of a rotated-in file (`"event": "continue"`) links to the last
line of the file before it.

Checkpoints (`"event": "checkpoint"`, while the log grows and when the runtime stops) and
seals (`"event": "seal"`, the last line before rotation) carry the runtime's Ed25519
signature over the chain head (`prev`) and their own sequence number. Whoever edits a
signed stretch of the log must recompute every later hash and cannot recompute the
signatures without the runtime's key (`state/runtime.key`), so `verify_log` detects it.
Lines after the last signature are chained only; `verify_log` reports how many.

Entries are kept in memory for at most `flush_interval` seconds and written in one
`write` call, so the license path pays for a tuple append, not for a system call.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from licentia.core.seats import Event, EventKind, Holder, ItemKey, ReleaseReason, Station
from licentia.model import AccessMode, ErrorCode, LicentiaError

GENESIS = "0" * 64
SIGNED_KINDS = ("checkpoint", "seal")
_DOMAIN = b"licentia usage log v1\x00"
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=False).encode


def _hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def signed_message(prev: str, seq: int) -> bytes:
    return _DOMAIN + bytes.fromhex(prev) + seq.to_bytes(8, "big")


_json_str = json.JSONEncoder(ensure_ascii=False).encode
_KINDS = {k: k.value for k in EventKind}
_MODES = {m: m.value for m in AccessMode}
_REASONS = {r: f',"reason":"{r.value}"' for r in ReleaseReason}


class _Formatter:
    """Writes seat events as JSON text fast: the parts that repeat (an item, a holder on its
    station) are formatted once and kept. The output equals `json.dumps(event_fields(ev))`
    up to the number format of "at"."""

    def __init__(self) -> None:
        self._keys: dict[ItemKey, str] = {}
        self._holders: dict[int, tuple[Holder, Station, str]] = {}

    def body(self, ev: Event) -> str:
        key = ev.key
        kf = self._keys.get(key)
        if kf is None:
            if len(self._keys) > 10_000:
                self._keys.clear()
            kf = self._keys[key] = (f'"container":{_json_str(key.container)},"firm":{key.firm_code},'
                                    f'"product":{key.product_code},"item":{key.item_id}')
        holder = ev.holder
        cached = self._holders.get(id(holder))
        if cached is not None and cached[0] is holder and cached[1] is ev.station:
            hf = cached[2]
        else:
            hf = (f'"station":{_json_str(str(ev.station))},"user":{_json_str(holder.user)},'
                  f'"host":{_json_str(holder.host)},"program":{_json_str(holder.program)}')
            if holder.process is not None:
                hf += f',"pid":{holder.process.pid}'
            if holder.client_id is not None:
                hf += f',"client":{_json_str(holder.client_id)}'
            if len(self._holders) > 10_000:
                self._holders.clear()
            self._holders[id(holder)] = (holder, ev.station, hf)
        out = f'"event":"{_KINDS[ev.kind]}","at":{ev.at:.3f},{kf},"mode":"{_MODES[ev.mode]}",{hf}'
        if ev.handle is not None:
            out += f',"handle":{ev.handle}'
        out += f',"used":{ev.used}'
        if ev.reason is not None:
            out += _REASONS[ev.reason]
        if ev.code is not None:
            out += f',"code":{int(ev.code)}'
        return out


def event_fields(ev: Event, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON fields of a seat-table event."""
    h = ev.holder
    out: dict[str, Any] = {
        "event": ev.kind.value,
        "at": round(ev.at, 3),
        "container": ev.key.container,
        "firm": ev.key.firm_code,
        "product": ev.key.product_code,
        "item": ev.key.item_id,
        "mode": ev.mode.value,
        "station": str(ev.station),
        "user": h.user,
        "host": h.host,
        "program": h.program,
    }
    if h.process is not None:
        out["pid"] = h.process.pid
    if h.client_id is not None:
        out["client"] = h.client_id
    if ev.handle is not None:
        out["handle"] = ev.handle
    out["used"] = ev.used
    if ev.reason is not None:
        out["reason"] = ev.reason.value
    if ev.code is not None:
        out["code"] = int(ev.code)
    if extra:
        out.update(extra)
    return out


class UsageLog:
    """Appends to `path`; one writer per file (the runtime holds its home's lock)."""

    def __init__(self, path: Path, signing_key: bytes, *, rotate_bytes: int = 16 << 20) -> None:
        self.path = path
        self.rotate_bytes = rotate_bytes
        self._key = signing_key
        self._public: str | None = None
        self._pending: list[tuple[Event | None, dict[str, Any] | None]] = []
        self._seq = 0
        self._prev = GENESIS
        self._unsigned = 0
        self._format = _Formatter()
        # called when the first entry starts waiting, so the owner can schedule a flush
        # (no timer runs while nothing happens)
        self.on_pending: Callable[[], None] | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._recover()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._size = os.fstat(self._fd).st_size

    # -- recording (cheap) --

    def record(self, event: Event, extra: dict[str, Any] | None = None) -> None:
        if not self._pending and self.on_pending is not None:
            self.on_pending()
        self._pending.append((event, extra))

    def record_events(self, events: Iterable[Event]) -> None:
        for ev in events:
            self.record(ev)

    def note(self, fields: dict[str, Any]) -> None:
        """A runtime entry (start, stop, admin action): `fields` must hold "event"."""
        if not self._pending and self.on_pending is not None:
            self.on_pending()
        self._pending.append((None, fields))

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- writing --

    def flush(self, *, sync: bool = False) -> None:
        self._write_pending()
        if sync:
            os.fsync(self._fd)
        if self._size >= self.rotate_bytes:
            self.rotate()

    def _write_pending(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            lines = []
            body = self._format.body
            for ev, extra in pending:
                if ev is not None and not extra:
                    lines.append(self._event_line(body(ev)))
                    continue
                fields = event_fields(ev, extra) if ev is not None else dict(extra or {})
                fields.setdefault("at", round(time.time(), 3))
                lines.append(self._line(fields))
            self._write(b"".join(lines))

    def checkpoint(self, *, sync: bool = True) -> None:
        """Sign the chain head now (if anything was written since the last signature)."""
        self._write_pending()
        if self._unsigned:
            self._write(self._signed("checkpoint"))
        if sync:
            os.fsync(self._fd)

    def rotate(self) -> Path:
        """Seal this file, move it aside, and continue the chain in a fresh file."""
        self._write_pending()
        self._write(self._signed("seal"))
        os.fsync(self._fd)
        os.close(self._fd)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        # names sort in chain order: time of rotation, then the sequence number of the seal
        target = self.path.with_name(f"{self.path.stem}-{stamp}-{self._seq:012d}{self.path.suffix}")
        os.replace(self.path, target)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._size = 0
        self._write(self._line({"event": "continue", "at": round(time.time(), 3), "from": target.name}))
        os.fsync(self._fd)
        return target

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.checkpoint()
        with contextlib.suppress(OSError):
            os.close(self._fd)

    # -- internals --

    def _line(self, fields: dict[str, Any]) -> bytes:
        self._seq += 1
        body = {"seq": self._seq, **fields, "prev": self._prev}
        line = _encode(body).encode()
        self._prev = _hash(line)
        self._unsigned += 1
        return line + b"\n"

    def _event_line(self, body: str) -> bytes:
        self._seq += 1
        line = f'{{"seq":{self._seq},{body},"prev":"{self._prev}"}}'.encode()
        self._prev = _hash(line)
        self._unsigned += 1
        return line + b"\n"

    def _signed(self, kind: str) -> bytes:
        from licentia.crypto import sign, signing_public_key

        if self._public is None:
            self._public = signing_public_key(self._key).hex()
        seq = self._seq + 1
        signature = sign(self._key, signed_message(self._prev, seq)).hex()
        line = self._line({"event": kind, "at": round(time.time(), 3), "key": self._public, "sig": signature})
        self._unsigned = 0
        return line

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._size += len(data)

    def _recover(self) -> None:
        """Continue the chain of an existing file; drop a line a crash left unfinished."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size == 0:
            return
        with open(self.path, "rb+") as f:
            tail_start = max(0, size - 65536)
            f.seek(tail_start)
            tail = f.read()
            if not tail.endswith(b"\n"):
                cut = tail.rfind(b"\n")
                keep = tail_start + cut + 1 if cut >= 0 else 0
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
                tail = tail[: cut + 1] if cut >= 0 else b""
            lines = tail.rstrip(b"\n").split(b"\n")
            last = lines[-1] if lines and lines[-1] else b""
        if not last:
            return
        try:
            doc = json.loads(last)
            self._seq = int(doc["seq"])
        except (ValueError, KeyError, TypeError):
            raise LicentiaError(
                ErrorCode.WRONG_CONTENT,
                f"the usage log {self.path} ends in a line that is not a log entry; move it away to start a new log",
            ) from None
        self._prev = _hash(last)
        self._unsigned = 0 if doc.get("event") in SIGNED_KINDS else 1


# -- verification -------------------------------------------------------------------------


@dataclass
class LogReport:
    files: list[str] = field(default_factory=list)
    entries: int = 0
    signatures: int = 0
    unsigned_tail: int = 0
    keys: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "files": self.files, "entries": self.entries, "signatures": self.signatures,
                "unsigned_tail": self.unsigned_tail, "keys": sorted(self.keys), "problems": self.problems,
                "counts": self.counts}


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        yield from enumerate(f, 1)


def verify_log(paths: list[Path], public_key: bytes | None = None) -> LogReport:
    """Check the chain and every signature of one log file, or of consecutive files in order.

    With `public_key`, signatures must be that key's; without, the key the log names is
    taken (an edited log re-signed with another key is then caught only by comparing
    the reported key with the runtime's: `licentia runtime verify-log` does that)."""
    from licentia.crypto import InvalidArtifact, verify

    report = LogReport()
    prev: str | None = None
    expected_seq: int | None = None
    for path in paths:
        report.files.append(str(path))
        first_in_file = True
        for number, raw in _lines(path):
            where = f"{path.name}:{number}"
            if not raw.endswith(b"\n"):
                report.problems.append(f"{where}: unfinished last line")
                break
            line = raw[:-1]
            try:
                doc = json.loads(line)
                seq = int(doc["seq"])
                kind = str(doc["event"])
                link = str(doc["prev"])
            except (ValueError, KeyError, TypeError):
                report.problems.append(f"{where}: not a log entry")
                prev = None
                continue
            if first_in_file and prev is None:
                if link != GENESIS and kind != "continue":
                    report.problems.append(f"{where}: the first entry does not start a chain")
            elif prev is not None and link != prev:
                report.problems.append(f"{where}: entry {seq} does not follow the one before it (edited, inserted or removed lines)")
            if expected_seq is not None and seq != expected_seq:
                report.problems.append(f"{where}: sequence number {seq}, expected {expected_seq}")
            expected_seq = seq + 1
            first_in_file = False
            report.entries += 1
            report.counts[kind] = report.counts.get(kind, 0) + 1
            if kind in SIGNED_KINDS:
                try:
                    key = bytes.fromhex(str(doc["key"]))
                    sig = bytes.fromhex(str(doc["sig"]))
                except (KeyError, ValueError):
                    report.problems.append(f"{where}: {kind} without a readable signature")
                else:
                    report.keys.add(key.hex())
                    if public_key is not None and key != public_key:
                        report.problems.append(f"{where}: {kind} signed by another key ({key.hex()[:16]}…)")
                    try:
                        verify(key, signed_message(link, seq), sig)
                    except InvalidArtifact:
                        report.problems.append(f"{where}: the signature of {kind} {seq} does not verify")
                    else:
                        report.signatures += 1
                        report.unsigned_tail = -1
            report.unsigned_tail += 1
            prev = _hash(line)
    return report
