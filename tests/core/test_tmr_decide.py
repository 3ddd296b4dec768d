"""`licentia.core.tmr.decide`: a TMR license is in the virtual container exactly when at
least two upstreams report it identically (pure; hypothesis)."""

from __future__ import annotations

import dataclasses
from collections import Counter

from hypothesis import given, strategies as st

from licentia.core.tmr import QUORUM, Constituent, decide
from licentia.crypto import new_signing_key, signing_public_key
from licentia.model import ErrorCode, ProductItem

KEY = signing_public_key(new_signing_key())
OTHER_KEY = signing_public_key(new_signing_key())
UPSTREAMS = ("up1", "up2", "up3")


def constituent(upstream: str, variant: int, tmr_id: int = 1, error: int | None = None) -> Constituent:
    item = ProductItem(product_code=9, quantity=3 + (variant if variant < 2 else 0), tmr_id=tmr_id)
    key = OTHER_KEY if variant == 2 else KEY  # variant 2: same item, another firm key
    return Constituent(upstream, f"130-{hash(upstream) & 0xFFFF}", 10_001, key, tmr_id, item,
                       repr(sorted(item.to_dict().items())).encode(), None, error, "expired" if error else "")


# per upstream: None (unreachable), or the variant of the constituent it reports (-1: none)
report = st.one_of(st.none(), st.integers(min_value=-1, max_value=2))


@given(st.tuples(report, report, report), st.tuples(st.booleans(), st.booleans(), st.booleans()))
def test_served_exactly_when_two_upstreams_agree(variants: tuple[int | None, ...], refused: tuple[bool, ...]) -> None:
    reports = {
        up: None if v is None else ([] if v == -1 else [constituent(up, v, error=210 if r else None)])
        for up, v, r in zip(UPSTREAMS, variants, refused, strict=True)
    }
    items = decide(reports)
    present = [v for v in variants if v is not None and v >= 0]
    if not present:
        assert items == []
        return
    [item] = items
    top = Counter(present).most_common(1)[0][1]
    assert item.available == (top >= 2)
    if not item.available:
        assert item.error == ErrorCode.REDUNDANCY_SERVER_MISSING and item.item is None
        return
    assert len(item.agreeing) == top and len(set(item.agreeing)) == top
    agreeing_refusals = sum(refused[UPSTREAMS.index(u)] for u in item.agreeing)
    # refused when the agreeing upstreams' refusals leave fewer than two willing
    assert (item.error is not None) == (top - agreeing_refusals < 2)


def test_a_license_one_upstream_holds_twice_refused_once_counts_as_not_refused() -> None:
    """The same license in two of one upstream's containers, refused in one of them (expired
    there): that upstream stands for it with the one it does not refuse, whichever it lists
    first (the order decided the answer before)."""
    ok, expired = constituent("up2", 1, tmr_id=2), constituent("up2", 1, tmr_id=2, error=210)
    other = constituent("up3", 1, tmr_id=2)
    for both in ([ok, expired], [expired, ok]):
        [item] = decide({"up1": None, "up2": both, "up3": [other]})
        assert item.available and item.agreeing == ("up2", "up3")
        assert item.error is None and item.reason == ""


def test_one_upstream_reporting_a_license_twice_counts_once() -> None:
    one = constituent("up1", 0)
    items = decide({"up1": [one, dataclasses.replace(one, container="130-9")], "up2": [], "up3": None})
    assert not items[0].available


# any number of upstreams, each unreachable or reporting constituents of two licenses in
# three variants (two items, another firm key), refused or not, in any order, repeats allowed
many = st.dictionaries(
    st.sampled_from(["up1", "up2", "up3", "up4", "up5"]),
    st.one_of(st.none(), st.lists(st.tuples(st.integers(1, 2), st.integers(0, 2), st.booleans()), max_size=4)),
    max_size=5,
)


def _reports(raw: dict[str, list[tuple[int, int, bool]] | None]) -> dict[str, list[Constituent] | None]:
    return {up: None if cons is None else [constituent(up, v, tmr_id=t, error=210 if r else None)
                                           for t, v, r in cons]
            for up, cons in raw.items()}


@given(many)
def test_served_only_with_two_identical_the_largest_group(raw: dict[str, list[tuple[int, int, bool]] | None]) -> None:
    reports = _reports({up: None if cons is None else list({t: (t, v, r) for t, v, r in cons}.values())
                        for up, cons in raw.items()})  # one constituent per upstream and license
    items = decide(reports)
    licenses = {(c.firm, c.tmr_id) for cons in reports.values() for c in cons or ()}
    assert [(v.firm, v.tmr_id) for v in items] == sorted(licenses)  # one per license reported
    for v in items:
        mine = {up: c for up, cons in reports.items() for c in cons or () if c.tmr_id == v.tmr_id}
        groups = Counter((c.firm_key, c.signed) for c in mine.values())
        if v.available:
            assert len(v.agreeing) >= QUORUM and len(set(v.agreeing)) == len(v.agreeing)
            agreed = {(mine[up].firm_key, mine[up].signed) for up in v.agreeing}
            assert len(agreed) == 1  # all agreeing constituents identical ...
            assert groups[agreed.pop()] == len(v.agreeing) == max(groups.values())  # ... and the largest group
            assert v.item == mine[v.agreeing[0]].item
        else:
            assert max(groups.values()) < QUORUM and v.agreeing == () and v.item is None
            assert v.error == ErrorCode.REDUNDANCY_SERVER_MISSING


@given(many, st.randoms(use_true_random=False))
def test_the_order_of_the_reports_does_not_matter(raw: dict[str, list[tuple[int, int, bool]] | None],
                                                  rnd: object) -> None:
    import random

    assert isinstance(rnd, random.Random)
    reports = _reports(raw)
    ups = list(reports)
    rnd.shuffle(ups)
    shuffled = {}
    for up in ups:
        cons = reports[up]
        if cons is not None:
            cons = list(cons)
            rnd.shuffle(cons)
        shuffled[up] = cons
    assert decide(shuffled) == decide(reports)
