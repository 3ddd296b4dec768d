"""Environment detection: bare metal / VM / container, and the session kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from tests.machines import (
    Machine,
    docker_container,
    firecracker_guest,
    kvm_guest,
    no_dmi_machine,
    workstation,
)

from licentia.binding import (
    detect_container,
    detect_environment,
    detect_hypervisor,
    detect_session,
)
from licentia.model import ErrorCode, LicentiaError, MachineKind, SessionKind

MakeTree = Callable[[Machine], Path]


def _cpu_with_flag(machine: Machine, flag: bool = True) -> Machine:
    return replace(machine, cpu=replace(machine.cpu, hypervisor_flag=flag))


# -- hypervisor ---------------------------------------------------------------------------


def test_workstation_is_bare_metal(make_tree: MakeTree) -> None:
    env = detect_environment(make_tree(workstation()), {})
    assert env.kind is MachineKind.BARE_METAL
    assert env.hypervisor is None and env.container is None
    assert not env.in_vm


def test_kvm_guest_from_dmi(make_tree: MakeTree) -> None:
    env = detect_environment(make_tree(kvm_guest()), {})
    assert env.kind is MachineKind.VM
    assert env.hypervisor == "kvm"
    assert env.in_vm


def test_firecracker_from_acpi_and_dockerenv_is_not_a_container(make_tree: MakeTree) -> None:
    """The leftover /.dockerenv of an image build must not make a microVM a container."""
    env = detect_environment(make_tree(firecracker_guest()), {})
    assert env.kind is MachineKind.VM
    assert env.hypervisor == "firecracker"
    assert env.container is None


def test_virtio_names_kvm_when_acpi_is_unreadable(make_tree: MakeTree) -> None:
    machine = replace(firecracker_guest(), acpi_oem=None)
    assert detect_hypervisor(make_tree(machine)) == "kvm"


def test_hypervisor_flag_alone_is_an_unknown_vm(make_tree: MakeTree) -> None:
    machine = replace(
        _cpu_with_flag(no_dmi_machine()), pci_vendors=("0x8086",), acpi_oem=None
    )
    assert detect_hypervisor(make_tree(machine)) == "unknown"


def test_virtio_without_hypervisor_flag_on_x86_is_not_a_vm(make_tree: MakeTree) -> None:
    """Some bare-metal hosts carry virtio PCI functions (DPUs, SmartNICs)."""
    machine = replace(workstation(), pci_vendors=("0x8086", "0x1af4"))
    assert detect_hypervisor(make_tree(machine)) is None


def test_qemu_without_kvm_is_emulation(make_tree: MakeTree) -> None:
    machine = _cpu_with_flag(kvm_guest(), False)
    assert detect_hypervisor(make_tree(machine)) == "qemu"


def test_arm_guest_named_by_virtio(make_tree: MakeTree) -> None:
    cpuinfo = b"processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n\n"
    machine = replace(
        firecracker_guest(), acpi_oem=None, files={"/proc/cpuinfo": cpuinfo}
    )
    assert detect_hypervisor(make_tree(machine)) == "kvm"


@pytest.mark.parametrize(
    ("dmi", "expected"),
    [
        ({"sys_vendor": "VMware, Inc.", "product_name": "VMware7,1"}, "vmware"),
        ({"sys_vendor": "innotek GmbH", "product_name": "VirtualBox"}, "virtualbox"),
        ({"sys_vendor": "Oracle Corporation", "product_name": "VirtualBox"}, "virtualbox"),
        ({"sys_vendor": "Microsoft Corporation", "product_name": "Virtual Machine"}, "hyperv"),
        ({"sys_vendor": "Xen", "product_name": "HVM domU"}, "xen"),
        ({"sys_vendor": "Amazon EC2", "product_name": "m5.large"}, "amazon"),
        ({"sys_vendor": "Google", "product_name": "Google Compute Engine"}, "google"),
        ({"sys_vendor": "OpenStack Foundation", "product_name": "OpenStack Nova"}, "kvm"),
        ({"sys_vendor": "Red Hat", "product_name": "KVM"}, "kvm"),
        ({"sys_vendor": "Parallels Software International Inc."}, "parallels"),
        # not VMs
        ({"sys_vendor": "Microsoft Corporation", "product_name": "Surface Pro 9"}, None),
        ({"sys_vendor": "Amazon EC2", "product_name": "m5.metal"}, None),
        ({"sys_vendor": "LENOVO", "product_name": "20XW0026GE"}, None),
    ],
)
def test_dmi_names_the_hypervisor(
    make_tree: MakeTree, dmi: dict[str, str], expected: str | None
) -> None:
    machine = replace(workstation(), dmi=dmi, acpi_oem=None)
    machine = _cpu_with_flag(machine, expected is not None)
    assert detect_hypervisor(make_tree(machine)) == expected


def test_xen_guest_from_sys_hypervisor_but_not_dom0(make_tree: MakeTree) -> None:
    guest = replace(no_dmi_machine(), hypervisor_type="xen", acpi_oem=None)
    assert detect_hypervisor(make_tree(guest)) == "xen"
    dom0 = replace(guest, files={"/proc/xen/capabilities": b"control_d\n"})
    assert detect_hypervisor(make_tree(dom0)) is None


# -- container ----------------------------------------------------------------------------


def test_docker_container(make_tree: MakeTree) -> None:
    env = detect_environment(make_tree(docker_container()), {})
    assert env.kind is MachineKind.CONTAINER
    assert env.container == "docker"
    assert env.hypervisor is None


def test_docker_by_mount_roots_even_with_kthreadd(make_tree: MakeTree) -> None:
    machine = replace(docker_container(), dockerenv=False, kthreadd=True)
    assert detect_container(make_tree(machine)) == "docker"


def test_dockerenv_alone_in_a_pid_namespace_is_docker(make_tree: MakeTree) -> None:
    machine = replace(docker_container(), mount_roots=())
    assert detect_container(make_tree(machine)) == "docker"


def test_dockerenv_in_the_initial_pid_namespace_is_ignored(make_tree: MakeTree) -> None:
    machine = replace(workstation(), dockerenv=True)
    assert detect_container(make_tree(machine)) is None


def test_podman_containerenv(make_tree: MakeTree) -> None:
    machine = replace(
        docker_container(),
        dockerenv=False,
        mount_roots=(),
        containerenv='engine="podman-4.9.3"\nname="web"\n',
    )
    assert detect_container(make_tree(machine)) == "podman"


def test_container_variable_of_pid1(make_tree: MakeTree) -> None:
    machine = replace(
        workstation(), kthreadd=False, pid1_environ={"container": "lxc", "PATH": "/bin"}
    )
    assert detect_container(make_tree(machine)) == "lxc"


@pytest.mark.parametrize(
    ("cgroup", "expected"),
    [
        ("12:memory:/docker/3f4e5d6c7b8a9d0e1f\n", "docker"),
        ("0::/system.slice/docker-3f4e5d6c7b8a9d0e1f2a.scope\n", "docker"),
        ("11:cpu:/kubepods/besteffort/pod1234/abcdef\n", "kubernetes"),
        ("0::/machine.slice/libpod-3f4e5d6c7b8a.scope/container\n", "podman"),
        ("0::/lxc.payload.web01\n", "lxc"),
        ("0::/init.scope\n", None),
        ("0::/system.slice/docker.service\n", None),  # the daemon, not a container
    ],
)
def test_container_from_cgroup(make_tree: MakeTree, cgroup: str, expected: str | None) -> None:
    machine = replace(workstation(), pid1_cgroup=cgroup)
    assert detect_container(make_tree(machine)) == expected


def test_container_in_a_vm_is_a_container_and_names_the_hypervisor(make_tree: MakeTree) -> None:
    machine = replace(
        docker_container(),
        dmi={"sys_vendor": "QEMU", "product_name": "Standard PC (Q35 + ICH9, 2009)"},
        cpu=kvm_guest().cpu,
    )
    env = detect_environment(make_tree(machine), {})
    assert env.kind is MachineKind.CONTAINER
    assert env.container == "docker"
    assert env.hypervisor == "kvm"
    assert env.in_vm


# -- session ------------------------------------------------------------------------------

TS = SessionKind.TERMINAL_SERVER
RD = SessionKind.REMOTE_DESKTOP
LOCAL = SessionKind.LOCAL


@pytest.mark.parametrize(
    ("environ", "kind", "session_id"),
    [
        ({}, LOCAL, ""),
        ({"DISPLAY": ":0", "XDG_SESSION_ID": "2"}, LOCAL, ""),
        ({"SSH_CONNECTION": "10.0.0.5 50522 10.0.0.9 22"}, RD, ""),
        ({"SSH_TTY": "/dev/pts/3"}, RD, ""),
        ({"DISPLAY": "localhost:10.0", "SSH_CLIENT": "10.0.0.5 50522 22"}, RD, ""),
        ({"SESSIONNAME": "RDP-Tcp#3"}, RD, ""),
        ({"XRDP_SESSION": "1", "DISPLAY": ":10.0"}, TS, "display:10"),
        ({"XRDP_SESSION": "1", "XDG_SESSION_ID": "c7"}, TS, "logind:c7"),
        ({"X2GO_SESSION": "alice-50-17_dp24"}, TS, "x2go_session:alice-50-17_dp24"),
        ({"DISPLAY": ":12"}, TS, "display:12"),
        ({"DISPLAY": "unix:11.0", "SSH_CONNECTION": "x"}, TS, "display:11"),
        ({"LICENTIA_SESSION": "local", "SSH_CONNECTION": "x"}, LOCAL, ""),
        ({"LICENTIA_SESSION": "Remote-Desktop"}, RD, ""),
        ({"LICENTIA_SESSION": "terminal-server", "LICENTIA_SESSION_ID": "ws-17"}, TS, "ws-17"),
        ({"LICENTIA_SESSION": "terminal-server", "XRDP_SESSION": "1"}, TS, "xrdp_session:1"),
    ],
)
def test_session_rules(
    make_tree: MakeTree, environ: dict[str, str], kind: SessionKind, session_id: str
) -> None:
    root = make_tree(workstation())
    assert detect_session(root, environ) == (kind, session_id)


def test_session_from_logind_records(make_tree: MakeTree) -> None:
    sessions = {
        "3": {"TYPE": "x11", "REMOTE": "1", "SERVICE": "gdm-password", "DISPLAY": ":1"},
        "4": {"TYPE": "tty", "REMOTE": "1", "SERVICE": "sshd", "REMOTE_HOST": "10.0.0.5"},
        "5": {"TYPE": "x11", "REMOTE": "0", "SERVICE": "xrdp-sesman", "DISPLAY": ":10"},
        "6": {"TYPE": "wayland", "REMOTE": "0", "SEAT": "seat0", "SERVICE": "gdm-password"},
    }
    root = make_tree(replace(workstation(), logind_sessions=sessions))
    assert detect_session(root, {"XDG_SESSION_ID": "3"}) == (TS, "logind:3")
    assert detect_session(root, {"XDG_SESSION_ID": "4"}) == (RD, "")
    assert detect_session(root, {"XDG_SESSION_ID": "5"}) == (TS, "logind:5")
    # a local seat session whose display happens to be high is still local
    assert detect_session(root, {"XDG_SESSION_ID": "6", "DISPLAY": ":10"}) == (LOCAL, "")
    # an id that does not name a file stays harmless
    assert detect_session(root, {"XDG_SESSION_ID": "../../etc/passwd"}) == (LOCAL, "")


def test_unknown_override_is_refused(make_tree: MakeTree) -> None:
    root = make_tree(workstation())
    with pytest.raises(LicentiaError) as err:
        detect_session(root, {"LICENTIA_SESSION": "citrix"})
    assert err.value.code is ErrorCode.INVALID_PARAMETER
    assert "local, remote-desktop or terminal-server" in str(err.value)


def test_environment_carries_the_session(make_tree: MakeTree) -> None:
    env = detect_environment(make_tree(workstation()), {"XRDP_SESSION": "1", "DISPLAY": ":10"})
    assert env.session is TS and env.session_id == "display:10"
