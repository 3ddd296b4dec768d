"""What several command groups share: the machine, the containers of a home, parsing of
dates and durations, passphrases, output."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from licentia.cli.home import home_from
from licentia.model import ContainerSerial, ErrorCode, Fingerprint, LicentiaError


def now() -> int:
    return int(time.time())


def machine_root(args: argparse.Namespace) -> Path:
    """The root the machine is read from: "/" for the `licentia` command.

    Only a caller of `licentia.cli.main.main(argv, machine_root=...)` (the tests, on
    synthetic machine trees) reads another; nothing in the environment changes it.
    """
    root = getattr(args, "machine_root", None)
    return root if isinstance(root, Path) else Path("/")


def fingerprint(args: argparse.Namespace) -> Fingerprint:
    from licentia.binding import collect_fingerprint

    return collect_fingerprint(machine_root(args), environ=os.environ)


def containers_dir(args: argparse.Namespace) -> Path:
    return home_from(args) / "containers"


def vendor_dir(args: argparse.Namespace) -> Path:
    return home_from(args) / "vendor"


def parse_serial(text: str) -> ContainerSerial:
    return ContainerSerial.parse(text)


def parse_time(text: str) -> int:
    """A date (YYYY-MM-DD, end of day excluded: midnight UTC) or an ISO date-time; UTC."""
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER, f"{text!r} is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp())


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text)
    if not m or int(m.group(1)) <= 0:
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER, f"{text!r} is not a duration; use e.g. 30d, 12h, 90m or 3600s"
        )
    return int(m.group(1)) * _UNITS[m.group(2) or "s"]


def fmt_time(t: int | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def read_passphrase(args: argparse.Namespace, *, confirm: bool = False) -> str:
    path = getattr(args, "passphrase_file", None) or os.environ.get("LICENTIA_PASSPHRASE_FILE")
    if path:
        try:
            return Path(path).read_text().rstrip("\r\n")
        except OSError as exc:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"cannot read passphrase file {path}: {exc.strerror}") from None
    if not sys.stdin.isatty():
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER,
            "no passphrase: give --passphrase-file FILE (or run in a terminal to be asked)",
        )
    first = getpass.getpass("firm keystore passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "the two passphrases differ")
    return first


def read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise LicentiaError(ErrorCode.UPDATE_READ_FAILED, f"{what} {path} does not exist") from None
    except OSError as exc:
        raise LicentiaError(ErrorCode.UPDATE_READ_FAILED, f"cannot read {what} {path}: {exc.strerror}") from None


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=_json_default)
    sys.stdout.write("\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(type(obj).__name__)


def print_table(rows: Sequence[Sequence[object]], right: Sequence[int] = ()) -> None:
    """Rows as aligned columns (the first row is the header); columns in `right` align right."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    for r in cells:
        out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        print("  ".join(out).rstrip())
