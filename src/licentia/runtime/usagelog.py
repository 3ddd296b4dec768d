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

Entries wait in memory and are written in one `write` call per stretch, so the license path
pays for a tuple append, not for formatting, hashing or a system call. The owner flushes
within `flush_interval` of the first waiting entry and soon after `batch` entries wait
(`on_pending`), so each flush is short and the wait for the disk is bounded. The batch
trades CPU for tail latency: each flush has a fixed cost, and requests that arrive during
one wait for it. Measured at 10 connections (bench/access_release.py's load): 16 lines
per write cost about 2 µs more server CPU per access+release pair than 48 or 128, and
128 gave a p99 about 12 % higher than 48 (a flush of 128 lines holds the loop ~0.15 ms).
A crash loses at most the entries still waiting; `close` (a clean stop) writes them all, signs the chain
head and syncs the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from licentia.core.seats import Event, Holder
from licentia.model import ErrorCode, LicentiaError

GENESIS = "0" * 64
SIGNED_KINDS = ("checkpoint", "seal")
_DOMAIN = b"licentia usage log v1\x00"
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=False).encode


def _hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def signed_message(prev: str, seq: int) -> bytes:
    return _DOMAIN + bytes.fromhex(prev) + seq.to_bytes(8, "big")


_json_str = json.JSONEncoder(ensure_ascii=False).encode


class LineTemplate:
    """The fixed text of one kind of line, in the pieces around what changes from line to
    line: `{"seq":` seq `before_at` at `before_handle` [handle `before_used`] used
    `before_prev` prev `"}` (the handle and `before_used` for an event with a handle only;
    its template is another). (Pieces joined by concatenation, not %-formatting: that is the
    cheaper of the two where this module is compiled.)"""

    __slots__ = ("before_at", "before_handle", "before_prev", "before_used")

    def __init__(self, before_at: str, before_handle: str, before_used: str, before_prev: str) -> None:
        self.before_at = before_at
        self.before_handle = before_handle
        self.before_used = before_used
        self.before_prev = before_prev


class _Formatter:
    """Writes seat events as JSON lines fast. For each holder, item, station, kind, mode,
    reason and code, the fixed text of the line is made once into a `LineTemplate`; a line
    then costs joining it with its sequence number, time, handle, seats in use and the
    previous hash. The output equals `json.dumps({"seq": ..., **event_fields(ev), "prev": ...})`
    but for "at", written with exactly three decimals (rounded to the millisecond)."""

    def __init__(self) -> None:
        self._holders: dict[Holder, dict[tuple[Any, ...], LineTemplate]] = {}
        self._ms = -1  # the last millisecond written, and its text (consecutive lines share it)
        self._at = ""

    def template(self, ev: Event, extra: Mapping[str, Any] | None = None) -> LineTemplate:
        holder = ev.holder
        known = self._holders.get(holder)
        if known is None:
            if len(self._holders) > 4096:
                self._holders.clear()
            known = self._holders[holder] = {}
        tk = (ev.key, ev.station, ev.kind, ev.mode, ev.reason, ev.code, ev.handle is None,
              tuple(extra.items()) if extra else None)
        t = known.get(tk)
        if t is None:
            if len(known) > 256:
                known.clear()
            t = known[tk] = _template(ev, extra)
        return t

    def at_text(self, at: float) -> str:
        ms = int(at * 1000.0 + 0.5)
        if ms != self._ms:
            self._ms = ms
            self._at = f"{ms // 1000}.{ms % 1000:03d}"
        return self._at

    def text(self, t: LineTemplate, ev: Event, seq: int, prev: str) -> str:
        """The line of `ev` made with its template `t` (without the newline)."""
        at = self.at_text(ev.at)
        handle = ev.handle  # None exactly when `t` has no place for one (`template` keys on it)
        if handle is not None:
            return f'{{"seq":{seq}{t.before_at}{at}{t.before_handle}{handle}{t.before_used}{ev.used}' \
                   f'{t.before_prev}{prev}"}}'
        return f'{{"seq":{seq}{t.before_at}{at}{t.before_handle}{ev.used}{t.before_prev}{prev}"}}'

    def line(self, ev: Event, seq: int, prev: str) -> bytes:
        """The line of `ev` (without the newline)."""
        return self.text(self.template(ev), ev, seq, prev).encode()


def _template(ev: Event, extra: Mapping[str, Any] | None = None) -> LineTemplate:
    key, h = ev.key, ev.holder
    fixed = (f',"container":{_json_str(key.container)},"firm":{int(key.firm_code)},'
             f'"product":{int(key.product_code)},"item":{int(key.item_id)},"mode":{_json_str(ev.mode.value)},'
             f'"station":{_json_str(str(ev.station))},"user":{_json_str(h.user)},"host":{_json_str(h.host)},'
             f'"program":{_json_str(h.program)}')
    if h.process is not None:
        fixed += f',"pid":{int(h.process.pid)}'
    if h.client_id is not None:
        fixed += f',"client":{_json_str(h.client_id)}'
    tail = ""
    if ev.reason is not None:
        tail += f',"reason":{_json_str(ev.reason.value)}'
    if ev.code is not None:
        tail += f',"code":{int(ev.code)}'
    for name, value in (extra or {}).items():  # what `event_fields` adds at the end
        tail += f',{_json_str(name)}:{_encode(value)}'
    before_at = ',"event":' + _json_str(ev.kind.value) + ',"at":'
    if ev.handle is not None:
        return LineTemplate(before_at, fixed + ',"handle":', ',"used":', tail + ',"prev":"')
    return LineTemplate(before_at, fixed + ',"used":', "", tail + ',"prev":"')


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

    def __init__(self, path: Path, signing_key: bytes, *, rotate_bytes: int = 16 << 20, batch: int = 48) -> None:
        self.path = path
        self.rotate_bytes = rotate_bytes
        self.batch = max(1, batch)
        self._key = signing_key
        self._public: str | None = None
        # a seat event alone, (its line's template, event), or (event or None, extra fields)
        # for entries with more to say
        self._pending: list[Event | tuple[LineTemplate, Event] | tuple[Event | None, dict[str, Any] | None]] = []
        self._seq = 0
        self._prev = GENESIS
        self._unsigned = 0
        self._format = _Formatter()
        # called with False when the first entry starts waiting, so the owner can schedule a
        # flush (no timer runs while nothing happens), and with True when `batch` entries
        # wait: then a flush should come soon, so that each writes a short stretch
        self.on_pending: Callable[[bool], None] | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._recover()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._size = os.fstat(self._fd).st_size

    # -- recording (cheap) --

    def record(self, event: Event, extra: dict[str, Any] | None = None) -> None:
        pending = self._pending
        pending.append(event if extra is None else (event, extra))
        n = len(pending)
        if (n == 1 or n == self.batch) and self.on_pending is not None:
            self.on_pending(n >= self.batch)

    def template(self, event: Event, extra: Mapping[str, Any] | None = None) -> LineTemplate:
        """The template of `event`'s line, for `record_in`: a caller that logs many
        events alike (one connection's grants and releases) keeps it and saves the lookup.
        `extra`: fields added at the end, as `record(event, extra)` adds them (values that
        repeat, such as the rule a seat is charged to: the template is kept per value)."""
        return self._format.template(event, extra)

    def record_in(self, template: LineTemplate, event: Event) -> None:
        """`record(event)` with its line's template (from `template` for an event that
        differs from this one at most in time, handle and seats in use)."""
        pending = self._pending
        pending.append((template, event))
        n = len(pending)
        if (n == 1 or n == self.batch) and self.on_pending is not None:
            self.on_pending(n >= self.batch)

    def record_events(self, events: Iterable[Event]) -> None:
        for ev in events:
            self.record(ev)

    def note(self, fields: dict[str, Any]) -> None:
        """A runtime entry (start, stop, admin action): `fields` must hold "event"."""
        pending = self._pending
        pending.append((None, fields))
        n = len(pending)
        if (n == 1 or n == self.batch) and self.on_pending is not None:
            self.on_pending(n >= self.batch)

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
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        out: list[bytes] = []
        append = out.append
        fmt = self._format
        sha256 = hashlib.sha256
        seq, prev = self._seq, self._prev
        for item in pending:
            ev: Event
            t: LineTemplate
            if isinstance(item, Event):
                ev = item
                t = fmt.template(ev)
            else:
                first = item[0]
                if isinstance(first, LineTemplate):  # (template, event): `record_in`
                    t = first
                    ev = cast(Event, item[1])
                else:
                    extra = cast("dict[str, Any] | None", item[1])
                    self._seq, self._prev = seq, prev
                    fields = event_fields(first, extra) if first is not None else dict(extra or {})
                    fields.setdefault("at", round(time.time(), 3))
                    append(self._line(fields))
                    self._unsigned -= 1  # counted with the others below
                    seq, prev = self._seq, self._prev
                    continue
            seq += 1
            line = fmt.text(t, ev, seq, prev).encode()
            prev = sha256(line).hexdigest()
            append(line)
            append(b"\n")
        self._seq, self._prev = seq, prev
        self._unsigned += len(pending)
        self._write(b"".join(out))

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
        # the sealed file is on disk and rarely read again: let the kernel drop it from the page
        # cache (a busy runtime writes tens of MB a second; kept cached, the log would claim
        # ever more memory, and allocating fresh pages makes the next writes slower)
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)
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
    last_signed_seq: int = 0
    keys: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "files": self.files, "entries": self.entries, "signatures": self.signatures,
                "unsigned_tail": self.unsigned_tail, "last_signed_seq": self.last_signed_seq,
                "keys": sorted(self.keys), "problems": self.problems, "counts": self.counts}


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        yield from enumerate(f, 1)


def verify_log(paths: list[Path], public_key: bytes | None = None) -> LogReport:
    """Check the chain and every signature of one log file, or of consecutive files in order.

    With `public_key`, signatures must be that key's; without, the key the log names is
    taken (an edited log re-signed with another key is then caught only by comparing
    the reported key with the runtime's: `licentia runtime verify-log` does that).

    Only signed entries are proved: whoever can write the file can rewrite the entries after
    the last signature and recompute their hashes, so those are counted in `unsigned_tail`
    and a log without any signature is a problem in itself."""
    from licentia.crypto import InvalidArtifact, verify

    report = LogReport()
    prev: str | None = None
    prev_where = ""
    prev_seq = 0
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
            in_order = expected_seq is None or seq == expected_seq
            if first_in_file and prev is None:
                if link != GENESIS and kind != "continue":
                    report.problems.append(f"{where}: the first entry does not start a chain")
            elif prev is not None and link != prev:
                if in_order:
                    # the numbers run on, so nothing was added or removed here: the entry before
                    # no longer hashes to what this one recorded, it was edited
                    report.problems.append(f"{prev_where}: entry {prev_seq} was edited (the next entry recorded another hash of it)")
                else:
                    report.problems.append(f"{where}: entry {seq} does not follow the one before it (inserted, removed or reordered lines)")
            if not in_order:
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
                        report.last_signed_seq = seq
                        report.unsigned_tail = -1
            report.unsigned_tail += 1
            prev = _hash(line)
            prev_where, prev_seq = where, seq
    if report.entries and not report.signatures:
        report.problems.append(
            "no entry is signed: nothing in this log can be proved (a log whose signatures were removed and"
            " whose chain was rebuilt looks like this; a running runtime signs within its checkpoint interval)")
    return report
