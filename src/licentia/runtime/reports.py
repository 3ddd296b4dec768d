"""Reading the usage log for reports: every file of the chain, streamed in large blocks.

The seat events (grant, deny, release) are picked out of each block by one regular
expression over the whole block (the log's writer puts their fields in a fixed order,
`licentia.runtime.usagelog`), and handed in batches to `licentia.core.usage.Usage`, which
adds them up. Memory is one block plus what the report keeps, whatever the log's length.
Other entries (start, stop, checkpoints, borrowing) are skipped, or picked out the same way
when a report asks for them.

The report does not check the log's chain and signatures unless asked (`verify=True`,
`licentia report … --verify`): `verify_log` reads every line again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from licentia.core.usage import Usage
from licentia.model import ErrorCode, LicentiaError

BLOCK = 4 << 20

# a JSON string's body (unrolled: runs of plain characters between escapes)
_STR = rb'"([^"\\\n]*(?:\\.[^"\\\n]*)*)"'
_SKIP_STR = rb'"[^"\\\n]*(?:\\.[^"\\\n]*)*"'


def seat_pattern(firm: int | None = None, product: int | None = None) -> re.Pattern[bytes]:
    """The seat events of the log, optionally of one product only (the filter then runs in
    the regular expression engine). Fields come in the writer's order: program, then pid
    (local) and client (network), handle (not on a denial), used, reason, code, charge."""
    f = str(firm).encode() if firm is not None else rb"\d+"
    p = str(product).encode() if product is not None else rb"\d+"
    return re.compile(
        rb'\{"seq":\d+,"event":"(grant|deny|release)","at":([0-9.]+),("container":' + _SKIP_STR
        + rb',"firm":' + f + rb',"product":' + p + rb',"item":\d+),"mode":' + _SKIP_STR
        + rb',"station":' + _SKIP_STR + rb',"user":' + _STR + rb',"host":' + _STR
        + rb',"program":' + _SKIP_STR + rb'(?:,"pid":(?:\d+|null))?(?:,"client":' + _SKIP_STR + rb')?'
        + rb'(?:,"handle":(\d+))?,"used":(\d+)(?:,"reason":"[a-z]+")?(?:,"code":(\d+))?'
        + rb'(?:,"charge":("[^"\\\n]*(?:\\.[^"\\\n]*)*"|null))?'
    )


_OTHER = re.compile(rb'^\{"seq":\d+,"event":"(borrow[a-z-]*|acl-changed)"[^\n]*$', re.MULTILINE)


def log_files(logs: Path) -> list[Path]:
    """The usage log's files in chain order: rotated files (their names sort in order),
    then the current one."""
    rotated = sorted(p for p in logs.glob("usage-*.jsonl") if p.is_file())
    current = logs / "usage.jsonl"
    files = rotated + ([current] if current.is_file() else [])
    if not files:
        raise LicentiaError(ErrorCode.ENTRY_NOT_FOUND, f"no usage log in {logs}",
                            "the runtime writes logs/usage.jsonl in its home; give --home or --log FILE")
    return files


def blocks(paths: list[Path], size: int = BLOCK) -> Iterator[bytes]:
    """The files' bytes in blocks that end at a line end."""
    for path in paths:
        try:
            f = path.open("rb")
        except OSError as exc:
            raise LicentiaError(ErrorCode.ENTRY_NOT_FOUND, f"cannot read {path}: {exc.strerror}") from None
        yield from _file_blocks(f, size)


def _file_blocks(f: BinaryIO, size: int) -> Iterator[bytes]:
    with f:
        rest = b""
        while True:
            data = f.read(size)
            if not data:
                break
            data = rest + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                rest = data
                continue
            rest = data[cut:]
            yield data[:cut]
        if rest:
            yield rest + b"\n"


def read_usage(paths: list[Path], usage: Usage, *, firm: int | None = None, product: int | None = None,
               others: list[dict[str, Any]] | None = None) -> Usage:
    """Feed every seat event of `paths` to `usage` (and, with `others`, collect the
    borrowing and access-list entries there)."""
    pattern = seat_pattern(firm, product)
    findall = pattern.findall
    feed = usage.feed
    for block in blocks(paths):
        feed(findall(block))
        if others is not None and (b'"event":"borrow' in block or b'"event":"acl-changed"' in block):
            for m in _OTHER.finditer(block):
                try:
                    doc = json.loads(m.group(0))
                except ValueError:
                    continue
                if isinstance(doc, dict) and (product is None or doc.get("product") == product) \
                        and (firm is None or doc.get("firm") == firm):
                    others.append(doc)
    usage.finish()
    return usage
