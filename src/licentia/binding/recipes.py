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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from licentia.binding.collect import Reading
from licentia.model import Environment, MachineKind, MachineProperty

__all__ = [
    "BARE_METAL_RECIPE",
    "CONTAINER_RECIPE",
    "RECIPES",
    "VM_RECIPE",
    "Recipe",
    "apply_recipe",
    "assess_strength",
    "recipe_for",
]


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
            "dmi.product_uuid": 3,
            "dmi.product_serial": 1,
            "dmi.board_serial": 1,
            "dmi.chassis_serial": 0,
            "dmi.board": 0,
            "dmi.system": 1,
            "dmi.bios": 1,
            # the guest image
            "machine-id": 3,
            "fs.root_uuid": 3,
            "hostname": 2,
            "memory": 1,
            "cpu.count": 1,
            # the guest's virtual devices
            "net.mac": 1,
            "disk.root": 1,
        }
    ),
    "host CPU and the VM instance identity weigh most; the guest's virtual NIC and disk least",
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
    """Weighted properties, in reading order; kinds the recipe does not know weigh 0."""
    return tuple(
        MachineProperty(r.name, r.value, recipe.weight_of(r), r.stability) for r in readings
    )


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
