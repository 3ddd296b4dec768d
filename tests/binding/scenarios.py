"""The binding scenarios: a machine before, the same machine after a change, and what each
tolerance should make of it. Shared by the match-arithmetic and the real-crypto tests, and
rendered as the table in docs/binding.md."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from tests.machines import (
    XEON,
    Machine,
    cloned_to_other_host,
    docker_container,
    kvm_guest,
    moved_within_host,
    no_dmi_machine,
    os_reinstalled,
    with_disk_nic_cpu_replaced,
    with_mainboard_replaced,
    with_new_disk,
    with_nic_swapped,
    workstation,
)

from licentia.model import Tolerance

OK, BROKEN = True, False


@dataclass(frozen=True)
class Scenario:
    name: str
    before: Callable[[], Machine]
    after: Callable[[], Machine]
    loose: bool
    medium: bool
    strict: bool

    def expected(self, tolerance: Tolerance) -> bool:
        return {
            Tolerance.LOOSE: self.loose,
            Tolerance.MEDIUM: self.medium,
            Tolerance.STRICT: self.strict,
        }[tolerance]


def _same_cpu_clone() -> Machine:
    guest = kvm_guest()
    return cloned_to_other_host(guest, other_cpu=guest.cpu)


def _same_type(machine: Machine) -> Machine:
    """Another machine of the same type and image: same CPU, memory, host name, firmware
    and board models, but its own machine-id, DMI UUID and serials, MACs and disk ids:
    what a copied container meets on a clone."""
    changed = replace(os_reinstalled(machine), machine_id="5e1f2a3b4c5d6e7f8091a2b3c4d5e6f7")
    if machine.dmi is not None:
        dmi = dict(machine.dmi)
        for key in ("product_uuid", "product_serial", "board_serial", "chassis_serial"):
            if dmi.get(key):
                dmi[key] = "c1" + dmi[key][2:]
        changed = replace(changed, dmi=dmi)
    changed = with_new_disk(changed, "CLONE0000000001")
    for i, nic in enumerate(n for n in machine.nics if n.physical):
        changed = with_nic_swapped(changed, nic.name, f"52:54:00:00:c1:{i:02x}")
    return changed


def _other_container() -> Machine:
    # another container on the same host, from another image
    return replace(
        docker_container(), machine_id="0badc0de0badc0de0badc0de0badc0de", hostname="9a8b7c6d5e4f"
    )


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("same machine", workstation, workstation, OK, OK, OK),
    Scenario(
        "one NIC swapped",
        workstation,
        lambda: with_nic_swapped(workstation(), "enp3s0"),
        OK, OK, OK,
    ),
    Scenario(
        "disk + NIC + CPU replaced",
        workstation,
        lambda: with_disk_nic_cpu_replaced(workstation()),
        OK, BROKEN, BROKEN,
    ),
    Scenario(
        "mainboard replaced (with its onboard NIC)",
        workstation,
        lambda: with_mainboard_replaced(workstation()),
        OK, OK, BROKEN,
    ),
    Scenario("OS reinstalled", workstation, lambda: os_reinstalled(workstation()), OK, OK, OK),
    Scenario("license of the host opened in its guest", workstation, kvm_guest,
             BROKEN, BROKEN, BROKEN),
    Scenario("guest: same VM", kvm_guest, kvm_guest, OK, OK, OK),
    Scenario(
        "guest cloned to another host",
        kvm_guest,
        lambda: cloned_to_other_host(kvm_guest(), XEON),
        BROKEN, BROKEN, BROKEN,
    ),
    Scenario(
        "guest moved within its host (new disk path, new MAC)",
        kvm_guest,
        lambda: moved_within_host(kvm_guest()),
        OK, OK, OK,
    ),
    Scenario(
        "guest cloned to a host with the same CPU model (limit)",
        kvm_guest,
        _same_cpu_clone,
        OK, OK, BROKEN,
    ),
    Scenario("no DMI: same machine", no_dmi_machine, no_dmi_machine, OK, OK, OK),
    Scenario(
        "no DMI: one NIC swapped",
        no_dmi_machine,
        lambda: with_nic_swapped(no_dmi_machine(), "enp3s0"),
        OK, OK, OK,
    ),
    Scenario(
        "no DMI: disk + NIC + CPU replaced",
        no_dmi_machine,
        lambda: with_disk_nic_cpu_replaced(no_dmi_machine()),
        BROKEN, BROKEN, BROKEN,
    ),
    Scenario(
        "another machine of the same type (machine-id, DMI ids, MACs, disk differ)",
        workstation,
        lambda: _same_type(workstation()),
        BROKEN, BROKEN, BROKEN,
    ),
    Scenario(
        "guest: a clone of the same type (machine-id, VM ids, MAC, disk differ)",
        kvm_guest,
        lambda: _same_type(kvm_guest()),
        BROKEN, BROKEN, BROKEN,
    ),
    Scenario(
        "no DMI: a clone of the same type (machine-id, MACs, disk differ)",
        no_dmi_machine,
        lambda: _same_type(no_dmi_machine()),
        BROKEN, BROKEN, BROKEN,
    ),
    Scenario(
        "container: another container on the same host (limit)",
        docker_container,
        _other_container,
        OK, OK, BROKEN,
    ),
)


@dataclass(frozen=True)
class Outcome:
    scenario: Scenario
    recipe: str
    matched: int
    total: int
    needed: dict[Tolerance, int]

    def holds(self, tolerance: Tolerance) -> bool:
        return self.matched >= self.needed[tolerance]


def render_table(outcomes: list[Outcome]) -> str:
    """The scenario table of docs/binding.md (Markdown), from measured outcomes."""
    lines = [
        "| scenario | recipe | matched / total | loose | medium | strict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        cells = [
            f"{'ok' if o.holds(t) else 'broken'} (needs {o.needed[t]})" for t in Tolerance
        ]
        lines.append(
            f"| {o.scenario.name} | {o.recipe} | {o.matched} / {o.total} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)
