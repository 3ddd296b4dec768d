"""`licentia.tmr.virtual.decide`: a TMR license is in the virtual container exactly when at
least two upstreams report it identically (pure; hypothesis)."""

from __future__ import annotations

import dataclasses
from collections import Counter

from hypothesis import given, strategies as st

from licentia.crypto import new_signing_key, signing_public_key
from licentia.model import ErrorCode, ProductItem
from licentia.tmr.virtual import Constituent, decide

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


def test_one_upstream_reporting_a_license_twice_counts_once() -> None:
    one = constituent("up1", 0)
    items = decide({"up1": [one, dataclasses.replace(one, container="130-9")], "up2": [], "up3": None})
    assert not items[0].available
