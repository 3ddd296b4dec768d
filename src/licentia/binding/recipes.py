"""Weighting recipes: how much each kind of property counts, on bare metal, in a VM, in a container.

A recipe maps a reading's kind to a weight (the number of key shares it carries; 0 =
shown, not bound). The weights and the reasons for them are tabled in docs/binding.md.
Pure: no I/O.

* bare metal: the mainboard (DMI UUID and serials), the root disk and the network
  adapters carry the machine's identity; CPU, OS install and sizes add to it.
* virtual machine: what the guest sees of its physical host (the CPU's model, signature,
  feature flags and microcode) and the identity the hypervisor gave this VM instance
  weigh most; what lives inside the guest image (machine-id, root filesystem, host name)
  keeps enough weight that the guest still opens at `loose` on another host; the guest's
  virtual NIC and disk weigh least, so moving the guest within its host (new disk path,
  new MAC) keeps the binding even at `strict`.
* container: DMI and CPU are the host's; the container's own hostname is its (changing)
  container id and weighs nothing; machine-id comes from the image and weighs little.

Whatever the recipe, what is unique to one machine (machine-id, DMI UUID and serials,
MAC addresses, the root disk's id, the root filesystem's UUID, a TPM's endorsement key)
must carry part of every threshold: `apply_recipe` lowers the weight of what a machine
shares with every other of its type (CPU, memory, host name, board and firmware models)
until it cannot reach the lowest tolerance's threshold alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from licentia.binding.collect import Reading
from licentia.binding.match import required_weight
from licentia.model import Environment, MachineKind, MachineProperty, Tolerance

__all__ = [
    "BARE_METAL_RECIPE",
    "CONTAINER_RECIPE",
    "GUESS_BITS",
    "RECIPES",
    "UNIQUE_KINDS",
    "VM_RECIPE",
    "Recipe",
    "apply_recipe",
    "assess_strength",
    "cap_shared",
    "is_unique",
    "recipe_for",
    "strength_bits",
]

# What one machine has and another of the same type does not.
UNIQUE_KINDS = frozenset({
    "machine-id", "dmi.product_uuid", "dmi.board_serial", "dmi.product_serial", "dmi.chassis_serial",
    "net.mac", "disk.root", "fs.root_uuid", "tpm.ek",
})

# How many bits an attacker who holds a copied container must guess for each unique
# property (a conservative estimate, docs/binding.md); what is shared by a machine type
# counts 0: the attacker is assumed to know the type.
GUESS_BITS = MappingProxyType({
    "machine-id": 128,
    "fs.root_uuid": 122,
    "tpm.ek": 128,
    "dmi.product_uuid": 32,
    "dmi.board_serial": 20,
    "dmi.product_serial": 20,
    "dmi.chassis_serial": 20,
    "net.mac": 24,
    "disk.root": 24,
})


def _kind_of(name: str) -> str:
    return "net.mac" if name.startswith("net.mac.") else name


def is_unique(name: str) -> bool:
    """True for a property that is unique to one machine (its name or its kind)."""
    return _kind_of(name) in UNIQUE_KINDS


@dataclass(frozen=True)
class Recipe:
    name: str
    weights: Mapping[str, int] = field(default_factory=dict)
    summary: str = ""

    def weight_of(self, reading: Reading) -> int:
        weight = self.weights.get(reading.kind, 0)
        if reading.demoted and weight > 1:
            weight //= 2
        return weight


def _frozen(weights: dict[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(weights))


BARE_METAL_RECIPE = Recipe(
    "bare-metal",
    _frozen(
        {
            "dmi.product_uuid": 3,
            "dmi.board_serial": 2,
            "dmi.product_serial": 1,
            "dmi.chassis_serial": 1,
            "dmi.board": 1,
            "dmi.system": 1,
            "dmi.bios": 1,
            "machine-id": 2,
            "cpu.model": 3,
            "cpu.signature": 2,
            "cpu.flags": 2,
            "cpu.microcode": 0,
            "cpu.count": 1,
            "memory": 1,
            "net.mac": 2,
            "disk.root": 4,
            "fs.root_uuid": 2,
            "hostname": 1,
            "tpm.ek": 4,
        }
    ),
    "mainboard, root disk and network adapters carry the identity",
)

VM_RECIPE = Recipe(
    "virtual-machine",
    _frozen(
        {
            # the physical host, as the guest sees it
            "cpu.model": 4,
            "cpu.signature": 2,
            "cpu.flags": 3,
            "cpu.microcode": 1,
            # this VM instance, as the hypervisor defines it
            "dmi.product_uuid": 4,
            "dmi.product_serial": 1,
            "dmi.board_serial": 1,
            "dmi.chassis_serial": 0,
            "dmi.board": 0,
            "dmi.system": 1,
            "dmi.bios": 1,
            # the guest image
            "machine-id": 4,
            "fs.root_uuid": 3,
            "hostname": 2,
            "memory": 1,
            "cpu.count": 1,
            # the guest's virtual devices
            "net.mac": 2,
            "disk.root": 2,
            # a virtual TPM belongs to this VM instance
            "tpm.ek": 4,
        }
    ),
    "the VM instance and guest identities carry the binding; the host CPU adds to it",
)

CONTAINER_RECIPE = Recipe(
    "container",
    _frozen(
        {
            "dmi.product_uuid": 3,
            "dmi.board_serial": 2,
            "dmi.product_serial": 1,
            "dmi.chassis_serial": 1,
            "dmi.board": 1,
            "dmi.system": 1,
            "dmi.bios": 1,
            "cpu.model": 3,
            "cpu.signature": 2,
            "cpu.flags": 2,
            "cpu.microcode": 0,
            "cpu.count": 1,
            "memory": 1,
            "machine-id": 1,
            "hostname": 0,
            "net.mac": 1,
            "disk.root": 2,
            "fs.root_uuid": 1,
            "tpm.ek": 3,
        }
    ),
    "the host's hardware as seen from inside; the container's own name weighs nothing",
)

RECIPES: Mapping[MachineKind, Recipe] = MappingProxyType(
    {
        MachineKind.BARE_METAL: BARE_METAL_RECIPE,
        MachineKind.VM: VM_RECIPE,
        MachineKind.CONTAINER: CONTAINER_RECIPE,
    }
)


def recipe_for(environment: Environment) -> Recipe:
    """The recipe for an environment: by its kind (a container in a VM is a container)."""
    return RECIPES[environment.kind]


def apply_recipe(readings: Iterable[Reading], recipe: Recipe) -> tuple[MachineProperty, ...]:
    """Weighted properties, in reading order; kinds the recipe does not know weigh 0.

    What a machine shares with its type can never reach a threshold alone (`cap_shared`).
    """
    return cap_shared(
        [MachineProperty(r.name, r.value, recipe.weight_of(r), r.stability) for r in readings]
    )


def cap_shared(properties: Sequence[MachineProperty]) -> tuple[MachineProperty, ...]:
    """The same properties, with what a machine shares with its type kept under every threshold.

    While the weight of the shared (not `is_unique`) properties reaches the lowest
    tolerance's threshold, the lightest shared property still bound (the last of equals:
    sizes and names before the CPU) loses one share. With nothing unique, nothing stays
    bound.
    """
    weights = [max(p.weight, 0) for p in properties]
    shared = [i for i, p in enumerate(properties) if not is_unique(p.name)]
    lowest = min(Tolerance, key=lambda t: t.fraction)
    while True:
        shared_weight = sum(weights[i] for i in shared)
        if shared_weight == 0 or shared_weight < required_weight(sum(weights), lowest):
            break
        lightest = min((i for i in shared if weights[i] > 0), key=lambda i: (weights[i], -i))
        weights[lightest] -= 1
    return tuple(
        p if p.weight == w else MachineProperty(p.name, p.value, w, p.stability)
        for p, w in zip(properties, weights, strict=True)
    )


def strength_bits(properties: Sequence[MachineProperty], tolerance: Tolerance) -> int:
    """Bits an attacker must guess to open a copy of a binding of `properties` elsewhere.

    The attacker knows everything a machine shares with its type (it weighs toward the
    threshold for free) and must guess the cheapest set of unique properties that makes
    up the rest: the least sum of GUESS_BITS over such sets. 0 when shared properties
    alone would do (never, for a fingerprint `apply_recipe` weighed).
    """
    bound = [p for p in properties if p.weight > 0]
    total = sum(p.weight for p in bound)
    if total == 0:
        return 0
    needed = required_weight(total, tolerance) - sum(p.weight for p in bound if not is_unique(p.name))
    if needed <= 0:
        return 0
    # least bits to collect at least `needed` weight: a 0/1 knapsack over the unique ones
    best = [0] + [-1] * needed
    for p in bound:
        if not is_unique(p.name):
            continue
        bits = GUESS_BITS.get(_kind_of(p.name), 0)
        for have in range(needed, -1, -1):
            if best[have] < 0:
                continue
            to = min(needed, have + p.weight)
            if best[to] < 0 or best[have] + bits < best[to]:
                best[to] = best[have] + bits
    return max(best[needed], 0)


# -- strength -----------------------------------------------------------------------------

_FIRMWARE = {
    "dmi.product_uuid": "system UUID",
    "dmi.board_serial": "board serial",
    "dmi.product_serial": "system serial",
    "dmi.chassis_serial": "chassis serial",
}
_INSTALL = {"machine-id": "machine-id", "fs.root_uuid": "root filesystem UUID"}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def assess_strength(
    properties: Sequence[MachineProperty],
    environment: Environment,
    *,
    unreadable: Sequence[str] = (),
) -> str:
    """Say "strong", "fair" or "weak", a colon, and why; see docs/binding.md for the rules.

    `unreadable` lists machine paths that exist but could not be read (permission).
    """
    bound = {p.name for p in properties if p.weight > 0}
    firmware = [label for name, label in _FIRMWARE.items() if name in bound]
    nics = sorted(n for n in bound if n.startswith("net.mac."))
    disk = "disk.root" in bound
    install = [label for name, label in _INSTALL.items() if name in bound]
    total = sum(p.weight for p in properties if p.weight > 0)

    held: list[str] = []
    if firmware:
        held.append("firmware identity (" + ", ".join(firmware) + ")")
    if nics:
        held.append(_plural(len(nics), "network adapter"))
    if disk:
        held.append("root disk id")
    held.extend(install)
    if "cpu.model" in bound:
        held.append("CPU model")
    rests_on = ", ".join(held) if held else "nothing but sizes and names"

    if total == 0:
        return "weak: no property could be read; nothing to bind to"

    if environment.kind is MachineKind.CONTAINER:
        engine = environment.container or "container"
        return (
            f"weak: inside a container ({engine}), bound to what it sees of its host "
            f"({rests_on}); every container on that host matches"
        )

    notes: list[str] = []
    if not firmware:
        if any(path.startswith("/sys/class/dmi/") for path in unreadable):
            notes.append("DMI serials not readable by this user (the runtime reads them as root)")
        else:
            notes.append("no DMI identity on this machine")
    if environment.kind is MachineKind.VM:
        hv = environment.hypervisor or "unknown hypervisor"
        notes.append(f"virtual machine ({hv}): host ties come from the CPU it presents")

    devices = len(nics) + int(disk)
    if firmware and devices:
        level = "strong"
    elif devices + len(install) >= 2 or (firmware and install):
        level = "fair"
    else:
        level = "weak"
        notes.append("copying the OS image copies most of what the binding rests on")
    why = f"rests on {rests_on}"
    if notes:
        why += "; " + "; ".join(notes)
    return f"{level}: {why}"
