"""The figures WebAdmin's report page draws, read from the usage log in one streamed pass
(`licentia.runtime.reports`): concurrent seats over time per product, denials per day,
and the reservations of the access list, used and unused."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from licentia.core.acl import AccessList
from licentia.core.usage import ReservationLine, Usage, reservations
from licentia.runtime.reports import blocks, log_files, seat_pattern

DAY = 86400.0


@dataclass
class ReportData:
    start: float
    end: float
    interval: float
    timelines: dict[tuple[int, int], list[tuple[float, int]]] = field(default_factory=dict)
    peaks: dict[tuple[int, int], int] = field(default_factory=dict)
    denials_per_day: dict[float, dict[int, int]] = field(default_factory=dict)  # day -> code -> denials
    reservations: list[ReservationLine] = field(default_factory=list)
    lines: int = 0


def read_report(logs: Path, acl: AccessList, start: float, end: float,
                product: tuple[int, int] | None = None) -> ReportData:
    """The report of `start`..`end` (Unix times) from the log files in `logs`."""
    span = max(end - start, 60.0)
    interval = next((s for s in (60, 300, 900, 3600, 4 * 3600, DAY, 7 * DAY) if span / s <= 120), 7 * DAY)
    usage = Usage(start=start, end=end, interval=float(interval))
    out = ReportData(start, end, float(interval))
    findall = seat_pattern(product[0] if product else None, product[1] if product else None).findall
    for block in blocks(log_files(logs)):
        records = findall(block)
        usage.feed(records)
        for r in records:
            if r[0] == b"deny":
                at = float(r[1])
                if start <= at < end:
                    day = at - at % DAY
                    per = out.denials_per_day.setdefault(day, {})
                    code = int(r[7] or 0)
                    per[code] = per.get(code, 0) + 1
    usage.finish()
    out.lines = usage.lines
    for key, use in sorted(usage.products.items()):
        out.timelines[key] = usage.timeline(key)
        out.peaks[key] = use.peak
    reserving = [(r.name, str(r.scope), r.reserve) for r in acl.rules if r.reserve]
    out.reservations = reservations(usage, reserving)
    return out
