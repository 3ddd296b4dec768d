"""The virtual container of a TMR front end: the upstreams' reports read for the core's decision.

Each upstream reports the TMR items of its constituent container as the vendor signed them
(`tmr.items`, licentia.runtime.tmrupstream). `parse_report` reads one report into
`Constituent`s (each license's signature verified); which licenses are served is decided by
`licentia.core.tmr.decide` (a TMR license is in the virtual container while at least two of
the three upstreams report it identically; with fewer, an access to it gets 130).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from licentia.core.licenses import read_license
from licentia.core.tmr import QUORUM, Constituent, VirtualItem, decide
from licentia.model import LicentiaError

__all__ = ["QUORUM", "Constituent", "VirtualItem", "decide", "parse_report"]


def parse_report(upstream: str, items: Sequence[Mapping[str, Any]]) -> list[Constituent]:
    """The constituents in one upstream's `tmr.items` answer; an entry whose license does
    not verify against its firm key is left out."""
    out = []
    for raw in items:
        try:
            lic = read_license(bytes(raw["license"]), bytes(raw["firm_key"]))
            if lic.firm_code != int(raw["firm"]) or lic.item.tmr_id is None:
                continue
            d = lic.item.to_dict()
            signed = repr(sorted(d.items())).encode()
            out.append(Constituent(upstream, str(raw["container"]), lic.firm_code, bytes(raw["firm_key"]),
                                   lic.item.tmr_id, lic.item, signed,
                                   raw.get("units") if isinstance(raw.get("units"), int) else None,
                                   raw.get("error") if isinstance(raw.get("error"), int) else None,
                                   str(raw.get("reason") or "")))
        except (LicentiaError, KeyError, TypeError, ValueError):
            continue
    return out
