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
        OK, BROKEN, BROKEN,
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
        OK, BROKEN, BROKEN,
    ),
    Scenario(
        "container: another container on the same host (limit)",
        docker_container,
        _other_container,
        OK, OK, OK,
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
