"""Usage reports: what the usage log's seat events add up to. Pure: records in, tables out.

The reader (`licentia.runtime.reports`) streams the log and hands `Usage.feed` batches of
seat events, oldest first, as `Record` tuples whose text fields are still the log's bytes
(decoded only for what is printed). One pass keeps, per product (firm:product):

- seats in use (the sum over its items and containers of the log's `used`), its peak and
  when it was reached, and the peak within each interval (hour, day, …) of the period;
- grants, and seat time per user, host and rule (a grant paired with its release by handle);
- denials by code, and *true* denials: a denial not followed by a grant of the same product
  to the same user within `window` seconds (the user did not get the license after all);
- per access-list rule the seats charged to it (grants carry `charge` when the list
  charged the seat to a rule): grants, peak concurrent, seat time.

Memory holds the open handles, one entry per user, host, rule and interval: it does not grow
with the length of the log.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

GRANT = b"grant"
DENY = b"deny"
RELEASE = b"release"


class Record(NamedTuple):
    """One seat event as the reader extracts it (text fields are raw JSON string bodies).

    `item` is the log's text naming the item, exactly
    `"container":"SERIAL","firm":F,"product":P,"item":I` (one bytes object: it keys the
    item's seat count without being taken apart)."""

    event: bytes
    at: bytes
    item: bytes
    user: bytes
    host: bytes
    handle: bytes  # b"" for a denial
    used: bytes
    code: bytes  # b"" unless a denial
    charge: bytes  # b"" when the grant names no rule; else a JSON string or null


def text(raw: bytes) -> str:
    """A JSON string body from the log as text."""
    if b"\\" in raw:
        return str(json.loads(b'"' + raw + b'"'))
    return raw.decode("utf-8", "replace")


@dataclass
class Tally:
    grants: int = 0
    seconds: float = 0.0  # seat time: sum of (release - grant) of handles
    peak: int = 0
    open: int = 0


@dataclass(slots=True)
class ProductUse:
    key: tuple[int, int] = (0, 0)
    seats: int = 0  # in use now
    peak: int = 0
    peak_at: float = 0.0
    grants: int = 0
    denials: int = 0
    true_denials: int = 0
    by_code: dict[int, int] = field(default_factory=dict)
    items: dict[bytes, int] = field(default_factory=dict)  # item (as `Record.item`) -> used
    users: set[bytes] = field(default_factory=set)
    # the interval the last event fell in, and its [peak, last level] in `Usage.series`
    bucket_start: float = float("inf")
    bucket_end: float = float("-inf")
    entry: list[int] = field(default_factory=list)


@dataclass
class Usage:
    """Aggregates seat events between `start` and `end` (Unix times; None: open)."""

    start: float | None = None
    end: float | None = None
    interval: float = 3600.0
    window: float = 300.0  # true denials: no grant to the same user within this many seconds
    products: dict[tuple[int, int], ProductUse] = field(default_factory=dict)
    # (interval start, product) -> [peak seats in that interval, seats at its last event]
    series: dict[tuple[float, tuple[int, int]], list[int]] = field(default_factory=dict)
    per_user: dict[bytes, Tally] = field(default_factory=dict)
    per_host: dict[bytes, Tally] = field(default_factory=dict)
    per_rule: dict[str, Tally] = field(default_factory=dict)
    lines: int = 0
    first: float | None = None
    last: float | None = None
    # handle -> (granted at, product, user, host, rule)
    _open: dict[bytes, tuple[float, tuple[int, int], bytes, bytes, str | None]] = field(default_factory=dict)
    # (user, product) -> times of denials not yet known to be true
    _pending: dict[tuple[bytes, tuple[int, int]], list[float]] = field(default_factory=dict)
    _raw: dict[bytes, ProductUse] = field(default_factory=dict)

    def _product_of(self, item: bytes) -> ProductUse:
        doc = json.loads(b"{" + item + b"}")
        key = (int(doc["firm"]), int(doc["product"]))
        use = self.products.get(key)
        if use is None:
            use = self.products[key] = ProductUse(key)
        return use

    def feed(self, records: Iterable[Record]) -> None:
        """Add a batch of seat events (oldest first)."""
        start = self.start if self.start is not None else float("-inf")
        end = self.end if self.end is not None else float("inf")
        interval = self.interval
        window = self.window
        raw = self._raw
        series = self.series
        opened = self._open
        pending = self._pending
        per_user = self.per_user
        per_host = self.per_host
        first = self.first
        last = self.last
        n = 0
        for event, at_text, item, user, host, handle, used_text, code, charge in records:
            n += 1
            at = float(at_text)
            use = raw.get(item)
            if use is None:
                use = raw[item] = self._product_of(item)
            prod = use.key
            used = int(used_text)
            level = use.seats
            before = use.items.get(item, 0)
            if used != before:
                use.items[item] = used
                use.seats = seats = level + used - before
            else:
                seats = level
            if event == GRANT:
                if not start <= at < end:
                    if at < start:  # held when the period starts: its time counts from the start
                        rule = _charge(charge) if charge else None
                        opened[handle] = (start, prod, user, host, rule)
                        _tally(per_user, user, 0)
                        _tally(per_host, host, 0)
                        if rule is not None:
                            _tally(self.per_rule, rule, 0)
                    continue
                use.grants += 1
                use.users.add(user)
                rule = _charge(charge) if charge else None
                opened[handle] = (at, prod, user, host, rule)
                t = per_user.get(user)
                if t is None:
                    t = per_user[user] = Tally()
                t.grants += 1
                t.open += 1
                if t.open > t.peak:
                    t.peak = t.open
                t = per_host.get(host)
                if t is None:
                    t = per_host[host] = Tally()
                t.grants += 1
                t.open += 1
                if t.open > t.peak:
                    t.peak = t.open
                if rule is not None:
                    _tally(self.per_rule, rule, 1)
                if pending:
                    waiting = pending.pop((user, prod), None)
                    if waiting:
                        # denials within the window before this grant were not true denials
                        use.true_denials += sum(1 for d in waiting if at - d > window)
            elif event == RELEASE:
                held = opened.pop(handle, None)
                if held is not None and at >= start:
                    seconds = min(at, end) - held[0]
                    self._credit(held, seconds if seconds > 0 else 0.0)
                if not start <= at < end:
                    continue
            elif event == DENY:
                if not start <= at < end:
                    continue
                use.denials += 1
                number = int(code) if code else 0
                use.by_code[number] = use.by_code.get(number, 0) + 1
                k = (user, prod)
                waiting = pending.get(k)
                if waiting is None:
                    pending[k] = [at]
                else:
                    old = [d for d in waiting if at - d > window]
                    if old:
                        use.true_denials += len(old)
                        waiting[:] = [d for d in waiting if at - d <= window]
                    waiting.append(at)
            else:
                continue
            if first is None:
                first = at
            last = at
            if seats > use.peak:
                use.peak = seats
                use.peak_at = at
            if use.bucket_start <= at < use.bucket_end:
                entry = use.entry
                if seats > entry[0]:
                    entry[0] = seats
                entry[1] = seats
            else:
                b = at // interval * interval
                found = series.get((b, prod))
                if found is None:
                    found = series[(b, prod)] = [max(level, seats), seats]
                else:
                    if seats > found[0]:
                        found[0] = seats
                    found[1] = seats
                use.bucket_start, use.bucket_end, use.entry = b, b + interval, found
        self.lines += n
        self.first = first
        self.last = last

    def finish(self) -> None:
        """End of the log: open handles count their time to the end of the period or the
        log, pending denials are true denials."""
        end = self.end if self.end is not None else (self.last or 0.0)
        for held in self._open.values():
            seconds = end - held[0]
            if seconds > 0:
                self._credit(held, seconds, still_open=True)
        self._open.clear()
        for (_user, prod), times in self._pending.items():
            self.products[prod].true_denials += len(times)
        self._pending.clear()

    def _credit(self, held: tuple[float, tuple[int, int], bytes, bytes, str | None], seconds: float,
                still_open: bool = False) -> None:
        _at, _prod, user, host, rule = held
        for table, k in ((self.per_user, user), (self.per_host, host)):
            t = table.get(k)
            if t is not None:
                t.seconds += seconds
                if not still_open:
                    t.open -= 1
        if rule is not None:
            t = self.per_rule.get(rule)
            if t is not None:
                t.seconds += seconds
                if not still_open:
                    t.open -= 1

    def timeline(self, prod: tuple[int, int]) -> list[tuple[float, int]]:
        """(interval start, peak seats) for every interval from the first event to the last
        (intervals without events carry the level of the one before)."""
        points = sorted((b, e) for (b, p), e in self.series.items() if p == prod)
        out: list[tuple[float, int]] = []
        last_level = 0
        for bucket, entry in points:
            if out:
                t = out[-1][0] + self.interval
                while t < bucket and len(out) < 100_000:
                    out.append((t, last_level))
                    t += self.interval
            out.append((bucket, entry[0]))
            last_level = entry[1]
        return out


def _tally(table: dict[bytes, Tally] | dict[str, Tally], key: bytes | str, grants: int) -> None:
    t = table.get(key)  # type: ignore[arg-type]
    if t is None:
        t = table[key] = Tally()  # type: ignore[index]
    t.grants += grants
    t.open += 1
    if t.open > t.peak:
        t.peak = t.open


def _charge(raw: bytes) -> str | None:
    if not raw or raw == b"null":
        return None
    return text(raw[1:-1])


@dataclass(frozen=True)
class ReservationLine:
    rule: str
    scope: str
    reserved: int
    grants: int
    peak: int
    seat_hours: float

    @property
    def never_used(self) -> bool:
        """No seat charged to the rule was taken or held in the period."""
        return self.grants == 0 and self.seat_hours == 0


def reservations(usage: Usage, reserving: Iterable[tuple[str, str, int]]) -> list[ReservationLine]:
    """For each reserving rule (name, scope text, seats reserved): how its seats were used
    in the period. Rules the log charged seats to but the list no longer has come last."""
    out = []
    known = set()
    for name, scope, reserved in reserving:
        known.add(name)
        t = usage.per_rule.get(name, Tally())
        out.append(ReservationLine(name, scope, reserved, t.grants, t.peak, t.seconds / 3600))
    for name, t in sorted(usage.per_rule.items()):
        if name not in known:
            out.append(ReservationLine(name, "(not in the list now)", 0, t.grants, t.peak, t.seconds / 3600))
    return out


def top(table: Mapping[bytes, Tally] | Mapping[str, Tally], limit: int) -> list[tuple[str, Tally]]:
    """The `limit` entries with the most seat time, as text."""
    rows: list[tuple[bytes | str, Tally]] = sorted(table.items(), key=lambda kv: (-kv[1].seconds, -kv[1].grants))
    return [(k if isinstance(k, str) else text(k), t) for k, t in rows[:limit]]
