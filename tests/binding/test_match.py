"""match_weight and the tolerance arithmetic: exact, pure, order-free."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from licentia.binding import binding_holds, match_weight, required_weight
from licentia.model import MachineProperty, Tolerance


def prop(name: str, value: bytes, weight: int = 1) -> MachineProperty:
    return MachineProperty(name, value, weight)


BOUND = (
    prop("machine-id", b"a" * 32, 2),
    prop("disk.root", b"S4EW", 4),
    prop("net.mac.eno1", b"d0:94:66:a1:b2:c3", 2),
    prop("cpu.microcode", b"0xfc", 0),
)


def test_identical_machine_matches_everything() -> None:
    assert match_weight(BOUND, BOUND) == (8, 8)


def test_changed_and_missing_properties_do_not_match() -> None:
    current = (
        prop("machine-id", b"a" * 32, 2),
        prop("disk.root", b"OTHER", 4),
        # net.mac.eno1 gone
    )
    assert match_weight(BOUND, current) == (2, 8)


def test_weight_zero_counts_for_nothing() -> None:
    current = (prop("cpu.microcode", b"0x100", 0), *BOUND[:3])
    assert match_weight(BOUND, current) == (8, 8)
    assert match_weight([prop("cpu.microcode", b"0xfc", 0)], BOUND) == (0, 0)


def test_the_bound_weight_decides_not_the_current_one() -> None:
    current = tuple(MachineProperty(p.name, p.value, 0) for p in BOUND)
    assert match_weight(BOUND, current) == (8, 8)


def test_values_match_by_name_only() -> None:
    """The same value under another name (a renamed interface) is another property."""
    current = (prop("net.mac.enp0s31f6", b"d0:94:66:a1:b2:c3"), *BOUND[:2])
    assert match_weight(BOUND, current) == (6, 8)


@pytest.mark.parametrize(
    ("total", "tolerance", "needed"),
    [
        (20, Tolerance.MEDIUM, 13),  # 0.65 x 20 is exactly 13, not 13.000000000000002
        (20, Tolerance.STRICT, 17),
        (20, Tolerance.LOOSE, 8),
        (32, Tolerance.LOOSE, 13),  # 12.8 rounds up
        (32, Tolerance.MEDIUM, 21),  # 20.8
        (32, Tolerance.STRICT, 28),  # 27.2
        (27, Tolerance.MEDIUM, 18),  # 17.55
        (1, Tolerance.LOOSE, 1),
        (0, Tolerance.STRICT, 0),
    ],
)
def test_required_weight(total: int, tolerance: Tolerance, needed: int) -> None:
    assert required_weight(total, tolerance) == needed


def test_required_weight_at_least_one() -> None:
    assert required_weight(5, 0.0) == 1


def test_required_weight_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        required_weight(-1, Tolerance.LOOSE)
    with pytest.raises(ValueError):
        required_weight(10, 1.5)


def test_nothing_bound_never_holds() -> None:
    assert not binding_holds([], BOUND, Tolerance.LOOSE)


# -- properties ---------------------------------------------------------------------------

names = st.sampled_from(["machine-id", "disk.root", "net.mac.eth0", "net.mac.eth1", "cpu.model",
                         "dmi.product_uuid", "hostname", "memory"])
values = st.binary(min_size=1, max_size=4)
properties = st.lists(
    st.builds(MachineProperty, names, values, st.integers(min_value=0, max_value=5)),
    max_size=8,
    unique_by=lambda p: p.name,
)


@given(properties, properties)
def test_matched_never_exceeds_total(bound: list[MachineProperty], current: list[MachineProperty]) -> None:
    matched, total = match_weight(bound, current)
    assert 0 <= matched <= total == sum(p.weight for p in bound if p.weight > 0)


@given(properties, properties, st.randoms())
def test_order_does_not_matter(
    bound: list[MachineProperty], current: list[MachineProperty], rnd: object
) -> None:
    import random

    assert isinstance(rnd, random.Random)
    shuffled_b, shuffled_c = list(bound), list(current)
    rnd.shuffle(shuffled_b)
    rnd.shuffle(shuffled_c)
    assert match_weight(bound, current) == match_weight(shuffled_b, shuffled_c)


@given(properties, properties, st.data())
def test_losing_a_current_property_never_helps(
    bound: list[MachineProperty], current: list[MachineProperty], data: st.DataObject
) -> None:
    if not current:
        return
    drop = data.draw(st.integers(min_value=0, max_value=len(current) - 1))
    fewer = current[:drop] + current[drop + 1 :]
    assert match_weight(bound, fewer)[0] <= match_weight(bound, current)[0]


@given(properties)
def test_a_machine_always_matches_itself(bound: list[MachineProperty]) -> None:
    matched, total = match_weight(bound, bound)
    assert matched == total
    for tolerance in Tolerance:
        assert binding_holds(bound, bound, tolerance) is (total > 0)


@given(st.integers(min_value=1, max_value=255))
def test_tolerances_are_ordered(total: int) -> None:
    loose, medium, strict = (required_weight(total, t) for t in Tolerance)
    assert 1 <= loose <= medium <= strict <= total
