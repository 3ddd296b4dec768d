"""The virtual container of a TMR front end, decided from what the upstreams report (pure).

Each upstream reports the TMR items of its constituent container as the vendor signed them
(`tmr.items`, licentia.runtime.tmrupstream). A TMR license is one (firm, TMR id); it is in
the virtual container while at least two of the three upstreams report it with the same
firm key and the same signed item (every option the vendor signed, the item id aside: each
container numbers its own). With fewer, it is missing, and an access to it gets 130.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from licentia.core.licenses import read_license
from licentia.model import ErrorCode, LicentiaError, ProductItem

__all__ = ["QUORUM", "Constituent", "VirtualItem", "decide", "parse_report"]

QUORUM = 2


@dataclass(frozen=True)
class Constituent:
    """One upstream's constituent of a TMR license."""

    upstream: str
    container: str
    firm: int
    firm_key: bytes
    tmr_id: int
    item: ProductItem  # decoded from the vendor-signed license, its signature verified
    signed: bytes  # the signed item's canonical form (what must be identical)
    units: int | None
    error: int | None  # the upstream's verdict (core.evaluate with tmr_upstream=True)
    reason: str


@dataclass(frozen=True)
class VirtualItem:
    firm: int
    tmr_id: int
    product: int
    item: ProductItem | None  # None: fewer than two identical constituents
    agreeing: tuple[str, ...]  # the upstreams whose constituents agree
    error: int | None  # the agreeing upstreams' verdict (their first refusal), or None
    reason: str

    @property
    def available(self) -> bool:
        return self.item is not None


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


def decide(reports: Mapping[str, Sequence[Constituent] | None]) -> list[VirtualItem]:
    """The virtual container's items from each upstream's constituents (None: the
    upstream did not answer), one per TMR license any upstream reported, ordered by firm
    and TMR id."""
    by_license: dict[tuple[int, int], list[Constituent]] = {}
    for _name, cons in sorted(reports.items()):
        seen: set[tuple[int, int]] = set()
        for c in cons or ():
            if (c.firm, c.tmr_id) in seen:  # one constituent per upstream and license
                continue
            seen.add((c.firm, c.tmr_id))
            by_license.setdefault((c.firm, c.tmr_id), []).append(c)
    out = []
    for (firm, tmr_id), cons in sorted(by_license.items()):
        groups: dict[tuple[bytes, bytes], list[Constituent]] = {}
        for c in cons:
            groups.setdefault((c.firm_key, c.signed), []).append(c)
        best = max(groups.values(), key=len)
        if len(best) >= QUORUM:
            errors = [c for c in best if c.error is not None]
            # the verdict that holds: refused when a majority of all three refuse
            refused = errors[0] if len(errors) >= QUORUM or (errors and len(best) - len(errors) < QUORUM) else None
            out.append(VirtualItem(firm, tmr_id, best[0].item.product_code, best[0].item,
                                   tuple(c.upstream for c in best),
                                   None if refused is None else refused.error,
                                   "" if refused is None else refused.reason))
        else:
            out.append(VirtualItem(firm, tmr_id, cons[0].item.product_code, None, (), int(
                ErrorCode.REDUNDANCY_SERVER_MISSING), f"{len(best)} of 3 constituents reachable and identical"))
    return out
