"""Recipes and strength: the VM recipe ties a guest to its host; weights stay in range."""

from __future__ import annotations

import pytest

from licentia.binding import (
    BARE_METAL_RECIPE,
    CONTAINER_RECIPE,
    RECIPES,
    VM_RECIPE,
    Reading,
    apply_recipe,
    assess_strength,
    recipe_for,
)
from licentia.binding.collect import MAX_NICS
from licentia.model import Environment, MachineKind, MachineProperty

HOST_TIED = ("cpu.model", "cpu.flags", "dmi.product_uuid")
GUEST_SPECIFIC = ("machine-id", "net.mac", "disk.root")


def test_recipe_by_environment() -> None:
    assert recipe_for(Environment()) is BARE_METAL_RECIPE
    assert recipe_for(Environment(MachineKind.VM, hypervisor="kvm")) is VM_RECIPE
    container_in_vm = Environment(MachineKind.CONTAINER, hypervisor="kvm", container="docker")
    assert recipe_for(container_in_vm) is CONTAINER_RECIPE


def test_vm_recipe_weighs_the_host_above_the_guest() -> None:
    for host in HOST_TIED:
        for guest in GUEST_SPECIFIC:
            assert VM_RECIPE.weights[host] >= VM_RECIPE.weights[guest], (host, guest)
    assert VM_RECIPE.weights["cpu.model"] > VM_RECIPE.weights["machine-id"]
    # the guest's virtual devices weigh less in a VM than the physical ones on bare metal
    for kind in ("net.mac", "disk.root"):
        assert VM_RECIPE.weights[kind] < BARE_METAL_RECIPE.weights[kind]
    # what ties a VM to its host weighs more than on bare metal
    assert VM_RECIPE.weights["cpu.model"] > BARE_METAL_RECIPE.weights["cpu.model"]


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
