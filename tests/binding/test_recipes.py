"""Recipes and strength: the VM recipe ties a guest to its host; weights stay in range."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from licentia.binding import (
    BARE_METAL_RECIPE,
    CONTAINER_RECIPE,
    RECIPES,
    VM_RECIPE,
    Reading,
    Recipe,
    apply_recipe,
    assess_strength,
    recipe_for,
    required_weight,
)
from licentia.binding.collect import MAX_NICS
from licentia.binding.recipes import is_unique, strength_bits
from licentia.model import Environment, MachineKind, MachineProperty, Tolerance


def test_recipe_by_environment() -> None:
    assert recipe_for(Environment()) is BARE_METAL_RECIPE
    assert recipe_for(Environment(MachineKind.VM, hypervisor="kvm")) is VM_RECIPE
    container_in_vm = Environment(MachineKind.CONTAINER, hypervisor="kvm", container="docker")
    assert recipe_for(container_in_vm) is CONTAINER_RECIPE


def test_vm_recipe_rests_on_the_instance_and_the_guest() -> None:
    # the VM instance and guest identities outweigh any one tie to the host's CPU
    for unique in ("dmi.product_uuid", "machine-id"):
        assert VM_RECIPE.weights[unique] >= VM_RECIPE.weights["cpu.model"]
    # the guest's virtual devices weigh less in a VM than the physical ones on bare metal
    assert VM_RECIPE.weights["disk.root"] < BARE_METAL_RECIPE.weights["disk.root"]


KINDS = sorted(BARE_METAL_RECIPE.weights)
readings = st.lists(
    st.tuples(st.sampled_from(KINDS), st.booleans()), min_size=1, max_size=24
).map(
    lambda picks: [
        Reading(f"{kind}.{i}" if kind == "net.mac" else kind, kind, b"v%d" % i, "x", demoted)
        for i, (kind, demoted) in enumerate(dict.fromkeys(picks, None) and picks)
        if kind == "net.mac" or kind not in [k for k, _ in picks[:i]]
    ]
)


@given(readings, st.sampled_from(list(RECIPES.values())))
def test_what_a_machine_type_shares_never_reaches_a_threshold(readings: list[Reading], recipe: Recipe) -> None:
    """CPU, memory, host name, board and firmware models alone: never enough, at any tolerance."""
    props = apply_recipe(readings, recipe)
    total = sum(q.weight for q in props)
    shared = sum(q.weight for q in props if not is_unique(q.name))
    unique = total - shared
    for tolerance in Tolerance:
        if total:
            assert shared < required_weight(total, tolerance), (tolerance, props)
    if unique == 0:
        assert total == 0  # nothing unique to the machine: nothing is bound
    # weights only ever go down from the recipe's
    for reading, q in zip(readings, props, strict=True):
        assert 0 <= q.weight <= recipe.weight_of(reading)
        if is_unique(q.name):
            assert q.weight == recipe.weight_of(reading)


def test_the_first_report_machine_no_longer_reaches_the_threshold_with_its_cpu() -> None:
    """A Firecracker guest without DMI: CPU model, signature, flags, microcode and count,
    memory and host name reached 14 of a medium threshold of 13 with the VM recipe."""
    kinds = ["machine-id", "cpu.model", "cpu.signature", "cpu.flags", "cpu.microcode", "cpu.count",
             "net.mac", "disk.root", "hostname", "memory"]
    rs = [Reading("net.mac.eth0" if k == "net.mac" else k, k, b"v", "x", k == "net.mac") for k in kinds]
    props = apply_recipe(rs, VM_RECIPE)
    total = sum(q.weight for q in props)
    shared = sum(q.weight for q in props if not is_unique(q.name))
    assert shared < required_weight(total, Tolerance.LOOSE)
    assert strength_bits(props, Tolerance.LOOSE) >= 24
    assert strength_bits(props, Tolerance.MEDIUM) >= 128


def test_strength_bits_is_the_cheapest_unique_set() -> None:
    props = [p("machine-id", 4), p("net.mac.eth0", 2), p("net.mac.eth1", 2), p("cpu.model", 3)]
    # W = 11 and the CPU (3) is free: loose needs 5 (one NIC), medium 8 (machine-id and a
    # NIC), strict 10 (machine-id and both NICs)
    assert strength_bits(props, Tolerance.LOOSE) == 24
    assert strength_bits(props, Tolerance.MEDIUM) == 128 + 24
    assert strength_bits(props, Tolerance.STRICT) == 128 + 48
    assert strength_bits([p("cpu.model", 3)], Tolerance.LOOSE) == 0  # not a recipe's output


def test_every_recipe_knows_the_same_kinds() -> None:
    kinds = set(BARE_METAL_RECIPE.weights)
    for recipe in RECIPES.values():
        assert set(recipe.weights) == kinds
        assert all(0 <= w <= 8 for w in recipe.weights.values())


@pytest.mark.parametrize("recipe", list(RECIPES.values()), ids=lambda r: r.name)
def test_largest_machine_stays_within_the_share_limit(recipe: object) -> None:
    from licentia.binding import Recipe

    assert isinstance(recipe, Recipe)
    biggest = sum(w for k, w in recipe.weights.items() if k != "net.mac")
    biggest += MAX_NICS * recipe.weights["net.mac"]
    assert biggest <= 255  # the fuzzy binding has at most 255 shares


def test_demoted_readings_weigh_half() -> None:
    readings = [
        Reading("net.mac.eth0", "net.mac", b"d0:94:66:00:00:01", "x"),
        Reading("net.mac.eth1", "net.mac", b"02:00:00:00:00:01", "x", demoted=True),
        Reading("unknown.kind", "unknown.kind", b"1", "x"),
    ]
    props = apply_recipe(readings, BARE_METAL_RECIPE)
    assert [p.weight for p in props] == [2, 1, 0]
    # never below 1 for a kind that counts
    assert apply_recipe(readings[1:2], VM_RECIPE)[0].weight == 1


def p(name: str, weight: int = 1) -> MachineProperty:
    return MachineProperty(name, b"v", weight)


def test_strength_levels() -> None:
    bare = Environment()
    strong = [p("dmi.product_uuid", 3), p("disk.root", 4), p("machine-id", 2)]
    assert assess_strength(strong, bare).startswith("strong: rests on firmware identity")
    fair = [p("machine-id", 2), p("net.mac.eth0", 2), p("cpu.model", 3)]
    text = assess_strength(fair, bare)
    assert text.startswith("fair:") and "no DMI identity on this machine" in text
    weak = [p("machine-id", 2), p("cpu.model", 3), p("memory")]
    assert assess_strength(weak, bare).startswith("weak:")
    assert assess_strength([], bare).startswith("weak: no property")
    unreadable = assess_strength(fair, bare, unreadable=["/sys/class/dmi/id/product_uuid"])
    assert "not readable by this user" in unreadable


def test_strength_in_a_vm_and_a_container() -> None:
    vm = Environment(MachineKind.VM, hypervisor="vmware")
    props = [p("dmi.product_uuid", 3), p("net.mac.ens192"), p("cpu.model", 4)]
    text = assess_strength(props, vm)
    assert text.startswith("strong:") and "virtual machine (vmware)" in text
    container = Environment(MachineKind.CONTAINER, container="podman")
    text = assess_strength(props, container)
    assert text.startswith("weak: inside a container (podman)")
    assert "every container on that host matches" in text
