"""Which TMR licenses a TMR front end serves: the 2-of-3 decision (pure).

A TMR license (firm, TMR id) exists three times, one constituent in each upstream's
container. It is served in the virtual container 131-… while at least two (`QUORUM`) of the
upstreams report it identically: the same firm key and the same vendor-signed item (every
option the vendor signed, the item id aside: each container numbers its own). With fewer it
is missing, and an access gets 130 (`REDUNDANCY_SERVER_MISSING`).

`decide` is the whole decision: reports in, virtual items out, no I/O. Reading an upstream's
`tmr.items` answer into `Constituent`s (verifying the licenses) is the shell's, in
`licentia.tmr.virtual.parse_report`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from licentia.model import ErrorCode, ProductItem

__all__ = ["QUORUM", "Constituent", "VirtualItem", "decide"]

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
    agreeing: tuple[str, ...]  # the upstreams whose constituents agree, in the upstreams' order
    error: int | None  # the agreeing upstreams' verdict (their first refusal), or None
    reason: str

    @property
    def available(self) -> bool:
        return self.item is not None


def decide(reports: Mapping[str, Sequence[Constituent] | None]) -> list[VirtualItem]:
    """The virtual container's items from each upstream's constituents (None: the upstream
    did not answer), one per TMR license any upstream reported, ordered by firm and TMR id.

    An upstream counts once per license: of two constituents it reports for one license,
    the one whose signed form sorts first, and of two with the same signed form (the same
    license in two of its containers) the one it does not refuse. The answer does not
    depend on the order of the reports nor of the constituents in them."""
    by_license: dict[tuple[int, int], list[Constituent]] = {}
    for _name, cons in sorted(reports.items()):
        mine: dict[tuple[int, int], Constituent] = {}
        for c in cons or ():
            lic = (c.firm, c.tmr_id)
            if lic not in mine or _preferred(c) < _preferred(mine[lic]):
                mine[lic] = c
        for lic, c in mine.items():
            by_license.setdefault(lic, []).append(c)
    out = []
    for (firm, tmr_id), cons in sorted(by_license.items()):
        groups: dict[tuple[bytes, bytes], list[Constituent]] = {}
        for c in cons:
            groups.setdefault((c.firm_key, c.signed), []).append(c)
        # the largest group of identical constituents; of equal ones, the first in signed order
        best = max(sorted(groups.items()), key=lambda g: len(g[1]))[1]
        if len(best) >= QUORUM:
            errors = [c for c in best if c.error is not None]
            # the verdict that holds: refused when a majority of all three refuse
            refused = errors[0] if len(errors) >= QUORUM or (errors and len(best) - len(errors) < QUORUM) else None
            out.append(VirtualItem(firm, tmr_id, best[0].item.product_code, best[0].item,
                                   tuple(c.upstream for c in best),
                                   None if refused is None else refused.error,
                                   "" if refused is None else refused.reason))
        else:
            first = min(cons, key=lambda c: (c.firm_key, c.signed))
            out.append(VirtualItem(firm, tmr_id, first.item.product_code, None, (), int(
                ErrorCode.REDUNDANCY_SERVER_MISSING), f"{len(best)} of 3 constituents reachable and identical"))
    return out


def _preferred(c: Constituent) -> tuple[bytes, bytes, bool, int, str, str]:
    """The order in which one upstream's constituents of a license stand for it: by signed
    form, then not refused before refused, then by verdict and container (a total order:
    the choice never depends on which came first)."""
    return c.firm_key, c.signed, c.error is not None, c.error or 0, c.reason, c.container
