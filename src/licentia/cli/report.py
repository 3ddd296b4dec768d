"""`licentia report usage|denials|reservations|borrowed`: tables from the usage log."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from licentia.cli.common import parse_duration, parse_time, print_table
from licentia.cli.home import home_from
from licentia.core.usage import Usage, reservations, top
from licentia.model import ErrorCode, LicentiaError

INTERVALS = (("1h", 3600), ("6h", 6 * 3600), ("1d", 86400), ("1w", 7 * 86400), ("30d", 30 * 86400))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("report", help="usage reports from the usage log: use, denials, reservations, borrowing")
    ss = p.add_subparsers(dest="report_command", metavar="REPORT", required=True)
    helps = {
        "usage": "concurrent seats over time, the peak per product, use per user, host and rule",
        "denials": "denials per product and code, and true denials (no grant to the same user soon after)",
        "reservations": "seats reserved by the access list: used, peak, never used",
        "borrowed": "borrowed seats the log records",
    }
    for name, handler in (("usage", cmd_usage), ("denials", cmd_denials), ("reservations", cmd_reservations),
                          ("borrowed", cmd_borrowed)):
        r = ss.add_parser(name, help=helps[name])
        r.add_argument("--from", dest="start", help="from this date or time (UTC; default: the log's start)")
        r.add_argument("--to", dest="end", help="up to this date or time, excluded (UTC; default: the log's end)")
        r.add_argument("--product", help="only this product: FIRM:PRODUCT")
        r.add_argument("--csv", metavar="FILE", help="also write the main table as CSV to FILE")
        r.add_argument("--log", nargs="+", metavar="FILE",
                       help="read these log files (oldest first) instead of the home's logs/")
        r.add_argument("--verify", action="store_true",
                       help="check the log's chain and signatures first (reads the log twice)")
        if name == "usage":
            r.add_argument("--interval", help="interval of the time table: 1h, 6h, 1d, 1w, 30d "
                                              "(default: what gives at most 60 rows)")
            r.add_argument("--top", type=int, default=15, help="rows per user, host and rule table")
            r.add_argument("--by-group", action="store_true",
                           help="also use per directory group (asks the [directory] of runtime.toml for "
                                "each user's groups)")
        if name == "denials":
            r.add_argument("--window", default="5m",
                           help="a denial is true unless the same user got the product within this time "
                                "(default 5m)")
        r.set_defaults(handler=handler)


# -- shared ------------------------------------------------------------------------------


def _product(args: argparse.Namespace) -> tuple[int, int] | None:
    if not args.product:
        return None
    firm, _, product = args.product.partition(":")
    try:
        return int(firm), int(product)
    except ValueError:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"--product {args.product!r} is not FIRM:PRODUCT") from None


def _read(args: argparse.Namespace, *, interval: float = 3600.0, window: float = 300.0,
          others: list[dict[str, Any]] | None = None) -> Usage:
    from licentia.runtime.reports import log_files, read_usage

    paths = [Path(p) for p in args.log] if args.log else log_files(home_from(args) / "logs")
    if args.verify:
        _verify(args, paths)
    start = float(parse_time(args.start)) if args.start else None
    end = float(parse_time(args.end)) if args.end else None
    if start is not None and end is not None and end <= start:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "--to must be after --from")
    prod = _product(args)
    usage = Usage(start=start, end=end, interval=interval, window=window)
    return read_usage(paths, usage, firm=prod[0] if prod else None, product=prod[1] if prod else None,
                      others=others)


def _verify(args: argparse.Namespace, paths: list[Path]) -> None:
    from licentia.runtime.usagelog import verify_log

    public: bytes | None = None
    key_file = home_from(args) / "state" / "runtime.key"
    if not args.log and key_file.exists():
        from licentia.crypto import signing_public_key

        public = signing_public_key(key_file.read_bytes())
    report = verify_log(paths, public)
    if not report.ok:
        raise LicentiaError(ErrorCode.LICENSE_INVALID, f"the usage log does not verify: {report.problems[0]}",
                            "the log was edited or damaged; `licentia runtime verify-log` lists every problem")
    print(f"log verified: {report.entries} entries, {report.signatures} signatures, "
          f"{report.unsigned_tail} after the last signature")


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _period(args: argparse.Namespace, usage: Usage) -> str:
    start = parse_time(args.start) if args.start else usage.first
    end = parse_time(args.end) if args.end else usage.last
    return f"{_when(start)} – {_when(end)} UTC"


def _csv(path: str | None, rows: Sequence[Sequence[object]]) -> None:
    if not path:
        return
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    print(f"\nwrote {len(rows) - 1} rows to {path}")


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f}"


def _pick_interval(args: argparse.Namespace) -> float:
    if getattr(args, "interval", None):
        for name, seconds in INTERVALS:
            if args.interval == name:
                return float(seconds)
        return float(parse_duration(args.interval))
    if args.start and args.end:
        span = parse_time(args.end) - parse_time(args.start)
        for _name, seconds in INTERVALS:
            if span / seconds <= 60:
                return float(seconds)
        return float(INTERVALS[-1][1])
    return 0.0  # decided after reading (see cmd_usage)


# -- reports -----------------------------------------------------------------------------


def cmd_usage(args: argparse.Namespace) -> int:
    interval = _pick_interval(args)
    usage = _read(args, interval=interval or 3600.0)
    if not interval and usage.first is not None and usage.last is not None:
        span = usage.last - usage.first
        wanted = next((float(s) for _n, s in INTERVALS if span / s <= 60), float(INTERVALS[-1][1]))
        if wanted != usage.interval:  # coarser rows: merge the hourly peaks
            merged: dict[tuple[float, tuple[int, int]], list[int]] = {}
            for (bucket, prod), entry in sorted(usage.series.items()):
                key = (bucket // wanted * wanted, prod)
                have = merged.get(key)
                merged[key] = [entry[0], entry[1]] if have is None else [max(have[0], entry[0]), entry[1]]
            usage.series, usage.interval = merged, wanted
    grants = sum(p.grants for p in usage.products.values())
    print(f"usage {_period(args, usage)}: {usage.lines:,} seat events read, {grants:,} grants")
    if usage.first is None:
        print("no seat events in this period")
        return 0
    print()
    rows: list[list[object]] = [["PRODUCT", "GRANTS", "USERS", "PEAK SEATS", "PEAK AT (UTC)", "DENIALS"]]
    for (firm, product), p in sorted(usage.products.items()):
        rows.append([f"{firm}:{product}", p.grants, len(p.users), p.peak, _when(p.peak_at) if p.peak else "-",
                     p.denials])
    print_table(rows, right=(1, 2, 3, 5))
    label = next((n for n, s in INTERVALS if s == usage.interval), f"{usage.interval:g}s")
    series: list[list[object]] = [["INTERVAL START (UTC)", "PRODUCT", "PEAK SEATS"]]
    for prod in sorted(usage.products):
        line = usage.timeline(prod)
        if not line:
            continue
        peak = max(v for _t, v in line) or 1
        print(f"\nconcurrent seats of {prod[0]}:{prod[1]}, peak per {label}:")
        for t, v in line[-400:]:
            print(f"  {_when(t)}  {v:>5}  {'█' * round(40 * v / peak)}")
            series.append([_when(t), f"{prod[0]}:{prod[1]}", v])
    for title, table in (("user", usage.per_user), ("host", usage.per_host), ("rule", usage.per_rule)):
        if not table:
            continue
        print(f"\nuse per {title}" + (" (seats the access list charged to the rule)" if title == "rule" else "")
              + f", top {args.top} by seat time:")
        rows = [[title.upper(), "GRANTS", "PEAK", "SEAT-HOURS"]]
        rows += [[name, t.grants, t.peak, _hours(t.seconds)] for name, t in top(table, args.top)]
        print_table(rows, right=(1, 2, 3))
    if args.by_group:
        _by_group(args, usage)
    _csv(args.csv, series)
    return 0


def _by_group(args: argparse.Namespace, usage: Usage) -> None:
    import time

    from licentia.core.usage import text
    from licentia.runtime import config
    from licentia.runtime.directory import Directory, DirectoryConfig

    home = home_from(args)
    settings = DirectoryConfig.from_settings(config.build(home), home)
    if settings is None:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "--by-group needs a directory: runtime.toml sets no "
                            "[directory] url", "docs/admin.md shows how to name the LDAP or Active Directory server")
    directory = Directory(settings)
    groups: dict[str, list[float]] = {}  # group -> [users, grants, seconds]
    unknown = 0
    for raw, t in usage.per_user.items():
        found = directory.groups(text(raw), time.monotonic())
        if found is None:
            unknown += 1
            found = frozenset({"(directory did not answer)"})
        for g in found or {"(no group)"}:
            row = groups.setdefault(g, [0, 0, 0.0])
            row[0] += 1
            row[1] += t.grants
            row[2] += t.seconds
    print(f"\nuse per directory group (a user in several groups counts in each; {len(usage.per_user)} users):")
    rows: list[list[object]] = [["GROUP", "USERS", "GRANTS", "SEAT-HOURS"]]
    for g, (users, grants, seconds) in sorted(groups.items(), key=lambda kv: -kv[1][2])[: args.top]:
        rows.append([g, int(users), int(grants), _hours(seconds)])
    print_table(rows, right=(1, 2, 3))
    if unknown:
        print(f"the directory did not answer for {unknown} user{'s' if unknown != 1 else ''}: {directory.last_error}")


def cmd_denials(args: argparse.Namespace) -> int:
    window = float(parse_duration(args.window))
    usage = _read(args, window=window)
    denials = sum(p.denials for p in usage.products.values())
    print(f"denials {_period(args, usage)}: {denials:,} denials; a denial is true when the same user did not "
          f"get the product within {args.window} after it")
    if not denials:
        return 0
    print()
    rows: list[list[object]] = [["PRODUCT", "DENIALS", "TRUE DENIALS", "GRANTS", "BY CODE"]]
    for (firm, product), p in sorted(usage.products.items()):
        if not p.denials:
            continue
        codes = ", ".join(f"{c}: {n}" for c, n in sorted(p.by_code.items()))
        rows.append([f"{firm}:{product}", p.denials, p.true_denials, p.grants, codes])
    print_table(rows, right=(1, 2, 3))
    print("\ncodes: 212 all seats in use; 1300 refused by the access list (see `licentia report reservations`)")
    _csv(args.csv, rows)
    return 0


def cmd_reservations(args: argparse.Namespace) -> int:
    from licentia.runtime.acl import acl_path, load

    usage = _read(args)
    acl = load(acl_path(home_from(args)))
    prod = _product(args)
    reserving = [(r.name, str(r.scope), r.reserve) for r in acl.rules if r.reserve
                 and (prod is None or r.scope.level.value in ("server", "container")
                      or (r.scope.firm == prod[0] and (r.scope.level.value == "firm" or r.scope.product == prod[1])))]
    lines = reservations(usage, reserving)
    print(f"reservations {_period(args, usage)}: {len(reserving)} reserving rule{'s' if len(reserving) != 1 else ''}"
          " in the access list")
    if not lines:
        print("no rule reserves seats and the log charges no seat to a rule")
        return 0
    print()
    rows: list[list[object]] = [["RULE", "SCOPE", "RESERVED", "GRANTS", "PEAK", "UNUSED AT PEAK", "SEAT-HOURS"]]
    for line in lines:
        rows.append([line.rule, line.scope, line.reserved, line.grants, line.peak,
                     max(0, line.reserved - line.peak), f"{line.seat_hours:.1f}"])
    print_table(rows, right=(2, 3, 4, 5, 6))
    never = [line.rule for line in lines if line.never_used and line.reserved]
    if never:
        print(f"\nnever used in this period: {', '.join(never)} — their seats were held back for nothing")
    _csv(args.csv, rows)
    return 0


def cmd_borrowed(args: argparse.Namespace) -> int:
    others: list[dict[str, Any]] = []
    usage = _read(args, others=others)
    start = parse_time(args.start) if args.start else None
    end = parse_time(args.end) if args.end else None
    found = [d for d in others if str(d.get("event", "")).startswith("borrow")
             and (start is None or float(d.get("at", 0)) >= start) and (end is None or float(d.get("at", 0)) < end)]
    print(f"borrowed {_period(args, usage)}: {len(found)} borrowing entr{'ies' if len(found) != 1 else 'y'}")
    if not found:
        print("the log records no borrowed seat in this period")
        return 0
    rows: list[list[object]] = [["AT (UTC)", "EVENT", "PRODUCT", "USER", "HOST", "UNTIL (UTC)"]]
    for d in found:
        until = d.get("until") or d.get("expires")
        rows.append([_when(float(d.get("at", 0))), d.get("event", ""), f"{d.get('firm', '?')}:{d.get('product', '?')}",
                     d.get("user", ""), d.get("host", ""), _when(float(until)) if until else "-"])
    print()
    print_table(rows)
    _csv(args.csv, rows)
    return 0

