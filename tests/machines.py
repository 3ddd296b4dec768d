"""Synthetic machine trees: the files a Linux machine shows licentia, laid out under a directory.

`build(machine, root)` writes the /etc, /proc, /sys, /dev and /run files that
licentia.binding reads, shaped like the real ones (sysfs links included), so tests run
the real collectors against them. A `Machine` is a plain dataclass; the factories give
typical machines and the `with_*`/`*_to_*` helpers give the same machine after a
change (a NIC swapped, a guest cloned to another host, ...).

    from tests.machines import build, workstation, with_nic_swapped
    root = build(workstation(), tmp_path / "before")
    after = build(with_nic_swapped(workstation(), "enp3s0"), tmp_path / "after")
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

__all__ = [
    "Cpu",
    "Disk",
    "Machine",
    "Nic",
    "Partition",
    "build",
    "cloned_to_other_host",
    "docker_container",
    "firecracker_guest",
    "kvm_guest",
    "moved_within_host",
    "no_dmi_machine",
    "os_reinstalled",
    "with_cpu",
    "with_disk_nic_cpu_replaced",
    "with_mainboard_replaced",
    "with_new_disk",
    "with_nic_swapped",
    "workstation",
]



def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


INTEL_FLAGS = _words(
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi "
    "mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc art arch_perfmon "
    "pebs bts rep_good nopl xtopology nonstop_tsc cpuid aperfmperf pni pclmulqdq dtes64 monitor "
    "ds_cpl vmx smx est tm2 ssse3 sdbg fma cx16 xtpr pdcm pcid sse4_1 sse4_2 x2apic movbe popcnt "
    "tsc_deadline_timer aes xsave avx f16c rdrand lahf_lm abm 3dnowprefetch cpuid_fault epb "
    "ssbd ibrs ibpb stibp ibrs_enhanced tpr_shadow flexpriority ept vpid ept_ad fsgsbase "
    "tsc_adjust bmi1 avx2 smep bmi2 erms invpcid mpx rdseed adx smap clflushopt intel_pt "
    "xsaveopt xsavec xgetbv1 xsaves dtherm ida arat pln pts hwp hwp_notify hwp_act_window "
    "hwp_epp pku ospke md_clear flush_l1d arch_capabilities"
)

XEON_FLAGS = _words(
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr "
    "sse sse2 ss syscall nx pdpe1gb rdtscp lm constant_tsc arch_perfmon rep_good nopl "
    "xtopology cpuid tsc_known_freq pni pclmulqdq vmx ssse3 fma cx16 pdcm pcid sse4_1 sse4_2 "
    "x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm abm "
    "3dnowprefetch cpuid_fault ssbd ibrs ibpb stibp ibrs_enhanced fsgsbase tsc_adjust bmi1 avx2 "
    "smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb "
    "avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves wbnoinvd arat avx512vbmi "
    "umip pku ospke avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg "
    "avx512_vpopcntdq la57 rdpid fsrm md_clear arch_capabilities"
)

EPYC_FLAGS = _words(
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr "
    "sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm rep_good nopl cpuid extd_apicid "
    "tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes "
    "xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy svm cr8_legacy abm sse4a misalignsse "
    "3dnowprefetch osvw topoext perfctr_core invpcid_single ssbd ibrs ibpb stibp vmmcall "
    "fsgsbase bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt "
    "xsavec xgetbv1 xsaves clzero xsaveerptr wbnoinvd arat npt nrip_save umip pku ospke vaes "
    "vpclmulqdq rdpid fsrm arch_capabilities"
)


@dataclass(frozen=True)
class Cpu:
    vendor: str = "GenuineIntel"
    model_name: str = "Intel(R) Core(TM) i7-10700 CPU @ 2.90GHz"
    family: int = 6
    model: int = 165
    stepping: int = 5
    microcode: str = "0xfc"
    flags: tuple[str, ...] = INTEL_FLAGS
    count: int = 16
    hypervisor_flag: bool = False


@dataclass(frozen=True)
class Nic:
    name: str
    mac: str
    physical: bool = True  # has a `device` link
    assign_type: int = 0  # 0 permanent, 1 random, 2 stolen, 3 set
    usb: bool = False
    bridge: bool = False
    pci_slot: str = ""


@dataclass(frozen=True)
class Partition:
    name: str
    uuid: str | None = None


@dataclass(frozen=True)
class Disk:
    name: str
    serial: str | None = None  # /sys/block/X/serial (virtio, some SCSI)
    device_serial: str | None = None  # /sys/block/X/device/serial (NVMe)
    wwid: str | None = None
    by_id: tuple[str, ...] = ()
    partitions: tuple[Partition, ...] = ()
    slaves: tuple[str, ...] = ()  # device-mapper / md members
    mapper_name: str | None = None  # /dev/mapper/<name> -> ../<disk>
    fs_uuid: str | None = None  # a filesystem on the whole device (no partition table)


@dataclass(frozen=True)
class Machine:
    machine_id: str | None = "5f1c2a9be04d4c33a6f1e0d9c8b7a611"
    dbus_machine_id: str | None = None
    dmi: dict[str, str] | None = None  # None: no /sys/class/dmi at all
    dmi_root_only: frozenset[str] = frozenset(
        {"product_uuid", "product_serial", "board_serial", "chassis_serial"}
    )
    cpu: Cpu = Cpu()
    nics: tuple[Nic, ...] = ()
    disks: tuple[Disk, ...] = ()
    root_source: str = "/dev/nvme0n1p2"
    root_fstype: str = "ext4"
    root_devnum: str = "259:2"
    hostname: str | None = "design-ws-07"
    kernel_hostname: str | None = None
    mem_kb: int = 32_567_892
    pci_vendors: tuple[str, ...] = ("0x8086",)
    acpi_oem: str | None = "DELL  "
    hypervisor_type: str | None = None
    dockerenv: bool = False
    containerenv: str | None = None
    pid1_cgroup: str = "0::/init.scope\n"
    pid1_environ: dict[str, str] = field(default_factory=dict)
    mount_roots: tuple[tuple[str, str], ...] = ()  # (root within source, mount point)
    kthreadd: bool = True
    logind_sessions: dict[str, dict[str, str]] = field(default_factory=dict)
    x11_displays: tuple[int, ...] = ()
    files: dict[str, bytes] = field(default_factory=dict)


# -- building -----------------------------------------------------------------------------


def _write(root: Path, path: str, data: str | bytes, mode: int = 0o644) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data.encode() if isinstance(data, str) else data)
    target.chmod(mode)
    return target


def _link(root: Path, path: str, target: str) -> None:
    where = root / path.lstrip("/")
    where.parent.mkdir(parents=True, exist_ok=True)
    if where.is_symlink() or where.exists():
        where.unlink()
    os.symlink(target, where)


def _cpuinfo(cpu: Cpu) -> str:
    flags = list(cpu.flags)
    if cpu.hypervisor_flag and "hypervisor" not in flags:
        flags.append("hypervisor")
    if not cpu.hypervisor_flag:
        flags = [f for f in flags if f != "hypervisor"]
    blocks = []
    for n in range(cpu.count):
        blocks.append(
            "\n".join(
                [
                    f"processor\t: {n}",
                    f"vendor_id\t: {cpu.vendor}",
                    f"cpu family\t: {cpu.family}",
                    f"model\t\t: {cpu.model}",
                    f"model name\t: {cpu.model_name}",
                    f"stepping\t: {cpu.stepping}",
                    f"microcode\t: {cpu.microcode}",
                    f"cpu MHz\t\t: {2900 + 37 * n}.{n:03d}",
                    "cache size\t: 16384 KB",
                    f"core id\t\t: {n // 2}",
                    f"flags\t\t: {' '.join(flags)}",
                    "bugs\t\t: spectre_v1 spectre_v2 spec_store_bypass swapgs",
                    f"bogomips\t: {5799.77 + n:.2f}",
                    "",
                ]
            )
        )
    return "\n".join(blocks)


def _acpi_table(oem: str) -> bytes:
    header = b"DSDT" + (36).to_bytes(4, "little") + b"\x02\x00"
    return header + oem.encode().ljust(6)[:6] + b"TABLE ID" + b"\x00" * 12


def build(machine: Machine, root: Path) -> Path:
    """Write `machine`'s files under `root` (created if needed); returns `root`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for directory in ("etc", "proc", "sys/class/net", "sys/block", "dev", "run", "tmp"):
        (root / directory).mkdir(parents=True, exist_ok=True)

    if machine.machine_id is not None:
        _write(root, "/etc/machine-id", machine.machine_id + "\n", 0o444)
    if machine.dbus_machine_id is not None:
        _write(root, "/var/lib/dbus/machine-id", machine.dbus_machine_id + "\n", 0o444)

    if machine.dmi is not None:
        (root / "sys/class/dmi/id").mkdir(parents=True, exist_ok=True)
        for name, value in machine.dmi.items():
            mode = 0o400 if name in machine.dmi_root_only else 0o444
            _write(root, f"/sys/class/dmi/id/{name}", value + "\n", mode)

    _write(root, "/proc/cpuinfo", _cpuinfo(machine.cpu), 0o444)
    _write(
        root,
        "/proc/meminfo",
        f"MemTotal:       {machine.mem_kb} kB\nMemFree:        {machine.mem_kb // 3} kB\n",
        0o444,
    )

    for nic in machine.nics:
        where = f"/sys/class/net/{nic.name}"
        _write(root, f"{where}/address", nic.mac + "\n")
        _write(root, f"{where}/addr_assign_type", f"{nic.assign_type}\n")
        _write(root, f"{where}/type", "772\n" if nic.name == "lo" else "1\n")
        if nic.bridge:
            (root / where.lstrip("/") / "bridge").mkdir(parents=True, exist_ok=True)
        if nic.physical:
            slot = nic.pci_slot or f"0000:00:{1 + machine.nics.index(nic):02x}.0"
            device = f"devices/pci0000:00/{slot}"
            if nic.usb:
                device += "/usb1/1-1/1-1:1.0"
            (root / "sys" / device).mkdir(parents=True, exist_ok=True)
            _link(root, f"{where}/device", f"../../../{device}")

    for disk in machine.disks:
        base = f"/sys/block/{disk.name}"
        (root / base.lstrip("/")).mkdir(parents=True, exist_ok=True)
        _write(root, f"/dev/{disk.name}", b"")
        if disk.serial is not None:
            _write(root, f"{base}/serial", disk.serial + "\n", 0o444)
        if disk.device_serial is not None:
            _write(root, f"{base}/device/serial", disk.device_serial + "\n", 0o444)
        if disk.wwid is not None:
            _write(root, f"{base}/wwid", disk.wwid + "\n", 0o444)
        for slave in disk.slaves:
            (root / base.lstrip("/") / "slaves" / slave).mkdir(parents=True, exist_ok=True)
        if disk.mapper_name:
            _link(root, f"/dev/mapper/{disk.mapper_name}", f"../{disk.name}")
        for link in disk.by_id:
            _link(root, f"/dev/disk/by-id/{link}", f"../../{disk.name}")
        if disk.fs_uuid:
            _link(root, f"/dev/disk/by-uuid/{disk.fs_uuid}", f"../../{disk.name}")
        for number, part in enumerate(disk.partitions, start=1):
            _write(root, f"{base}/{part.name}/partition", f"{number}\n")
            _write(root, f"/dev/{part.name}", b"")
            for link in disk.by_id:
                _link(root, f"/dev/disk/by-id/{link}-part{number}", f"../../{part.name}")
            if part.uuid:
                _link(root, f"/dev/disk/by-uuid/{part.uuid}", f"../../{part.name}")
        if disk.slaves or disk.mapper_name:
            _write(root, f"{base}/dm/name", (disk.mapper_name or disk.name) + "\n")

    mounts = [
        "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0",
        "sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0",
        f"{machine.root_source} / {machine.root_fstype} rw,relatime 0 0",
        "tmpfs /run tmpfs rw,nosuid,nodev,size=3256788k,mode=755 0 0",
    ]
    _write(root, "/proc/mounts", "\n".join(mounts) + "\n", 0o444)
    info = [
        f"26 1 {machine.root_devnum} / / rw,relatime shared:1 - {machine.root_fstype} "
        f"{machine.root_source} rw",
        "22 26 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw",
    ]
    for number, (source_root, point) in enumerate(machine.mount_roots, start=40):
        info.append(f"{number} 26 254:1 {source_root} {point} rw,relatime - ext4 /dev/vda1 rw")
    _write(root, "/proc/self/mountinfo", "\n".join(info) + "\n", 0o444)
    if machine.root_source.startswith("/dev/") and machine.root_source != "/dev/root":
        name = machine.root_source.rsplit("/", 1)[-1]
        _link(root, f"/sys/dev/block/{machine.root_devnum}", f"../../block/{name}")

    if machine.hostname is not None:
        _write(root, "/etc/hostname", machine.hostname + "\n")
    _write(
        root,
        "/proc/sys/kernel/hostname",
        (machine.kernel_hostname or machine.hostname or "localhost") + "\n",
        0o444,
    )

    for number, vendor in enumerate(machine.pci_vendors):
        _write(root, f"/sys/bus/pci/devices/0000:00:{number:02x}.0/vendor", vendor + "\n", 0o444)
    if machine.acpi_oem is not None:
        _write(root, "/sys/firmware/acpi/tables/DSDT", _acpi_table(machine.acpi_oem), 0o400)
    if machine.hypervisor_type is not None:
        _write(root, "/sys/hypervisor/type", machine.hypervisor_type + "\n", 0o444)

    if machine.dockerenv:
        _write(root, "/.dockerenv", b"", 0o755)
    if machine.containerenv is not None:
        _write(root, "/run/.containerenv", machine.containerenv, 0o444)
    _write(root, "/proc/1/cgroup", machine.pid1_cgroup, 0o444)
    environ = b"".join(f"{k}={v}".encode() + b"\x00" for k, v in machine.pid1_environ.items())
    _write(root, "/proc/1/environ", environ, 0o400)
    _write(root, "/proc/1/comm", "systemd\n" if machine.kthreadd else "bash\n", 0o444)
    if machine.kthreadd:
        _write(root, "/proc/2/comm", "kthreadd\n", 0o444)

    for session_id, record in machine.logind_sessions.items():
        text = "".join(f"{k}={v}\n" for k, v in record.items())
        _write(root, f"/run/systemd/sessions/{session_id}", text)
    for display in machine.x11_displays:
        _write(root, f"/tmp/.X11-unix/X{display}", b"")

    for path, data in machine.files.items():
        _write(root, path, data)
    return root


# -- machines -----------------------------------------------------------------------------

WORKSTATION_DMI = {
    "sys_vendor": "Dell Inc.",
    "product_name": "Precision 3640 Tower",
    "product_uuid": "4C4C4544-0042-3510-8052-B4C04F4E5632",
    "product_serial": "5BR2NV2",
    "board_vendor": "Dell Inc.",
    "board_name": "0D4MD1",
    "board_serial": "/5BR2NV2/CNCMK0012345/",
    "chassis_serial": "5BR2NV2",
    "chassis_vendor": "Dell Inc.",
    "bios_vendor": "Dell Inc.",
    "bios_version": "1.21.0",
    "bios_date": "07/12/2023",
}


def workstation() -> Machine:
    """A bare-metal desktop: full DMI, two physical NICs, an NVMe root disk, Docker installed."""
    return Machine(
        dmi=dict(WORKSTATION_DMI),
        cpu=Cpu(),
        nics=(
            Nic("docker0", "02:42:6b:1f:3a:9c", physical=False, bridge=True),
            Nic("eno1", "d0:94:66:a1:b2:c3", pci_slot="0000:00:1f.6"),
            Nic("enp3s0", "a0:36:9f:11:22:33", pci_slot="0000:03:00.0"),
            Nic("lo", "00:00:00:00:00:00", physical=False),
            Nic("veth1a2b3c", "6e:01:23:45:67:89", physical=False),
        ),
        disks=(
            Disk(
                "nvme0n1",
                device_serial="S4EWNX0R123456",
                wwid="eui.0025385b71b12345",
                by_id=(
                    "nvme-Samsung_SSD_970_EVO_Plus_1TB_S4EWNX0R123456",
                    "nvme-eui.0025385b71b12345",
                ),
                partitions=(
                    Partition("nvme0n1p1", "7A3B-1C2D"),
                    Partition("nvme0n1p2", "3f1e8c2a-9b0d-4e6f-a1b2-c3d4e5f60718"),
                ),
            ),
            Disk("loop0"),
            Disk("sda", serial=None, wwid="naa.5000c500a1b2c3d4",
                 by_id=("wwn-0x5000c500a1b2c3d4", "ata-ST4000DM004_ZFN0ABCD"),
                 partitions=(Partition("sda1", "9c0d2e4f-1111-4a2b-8c3d-000000000001"),)),
        ),
        root_source="/dev/nvme0n1p2",
        root_devnum="259:2",
        hostname="design-ws-07",
        mem_kb=32_567_892,
        pci_vendors=("0x8086", "0x8086", "0x10de", "0x144d"),
        acpi_oem="DELL  ",
    )


def no_dmi_machine() -> Machine:
    """The same workstation with no /sys/class/dmi at all (as on many ARM boards)."""
    return replace(workstation(), dmi=None)


QEMU_DMI = {
    "sys_vendor": "QEMU",
    "product_name": "Standard PC (Q35 + ICH9, 2009)",
    "product_version": "pc-q35-8.2",
    "product_uuid": "b9d3e6a2-5c41-4f0e-9a7b-2d6c8e1f3a45",
    "chassis_vendor": "QEMU",
    "bios_vendor": "SeaBIOS",
    "bios_version": "1.16.3-debian-1.16.3-2",
    "bios_date": "04/01/2014",
}

EPYC = Cpu(
    vendor="AuthenticAMD",
    model_name="AMD EPYC 7763 64-Core Processor",
    family=25,
    model=1,
    stepping=1,
    microcode="0xa0011d1",
    flags=EPYC_FLAGS,
    count=4,
    hypervisor_flag=True,
)

XEON = Cpu(
    vendor="GenuineIntel",
    model_name="Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz",
    family=6,
    model=106,
    stepping=6,
    microcode="0xd0003a5",
    flags=XEON_FLAGS,
    count=4,
    hypervisor_flag=True,
)


def kvm_guest() -> Machine:
    """A KVM/QEMU guest (host-passthrough CPU on an EPYC host), virtio NIC and disk."""
    return Machine(
        machine_id="a41d9e07c3b24f6e8d15f20c9b7e6a32",
        dmi=dict(QEMU_DMI),
        cpu=EPYC,
        nics=(
            Nic("enp1s0", "52:54:00:12:34:56", pci_slot="0000:01:00.0"),
            Nic("lo", "00:00:00:00:00:00", physical=False),
        ),
        disks=(
            Disk(
                "vda",
                serial="vol-guest01",
                by_id=("virtio-vol-guest01",),
                partitions=(
                    Partition("vda1", "5d2e9a10-7c3b-4e8f-9012-a3b4c5d6e7f8"),
                ),
            ),
        ),
        root_source="/dev/vda1",
        root_devnum="252:1",
        hostname="build-agent-3",
        mem_kb=8_148_044,
        pci_vendors=("0x8086", "0x1af4", "0x1af4", "0x1b36"),
        acpi_oem="BOCHS ",
    )


def firecracker_guest() -> Machine:
    """A Firecracker microVM: no DMI, virtio devices, ACPI OEM FIRECK, and a leftover
    /.dockerenv from the image build (not a container: PID 2 is kthreadd)."""
    return Machine(
        machine_id="3d1219c7c4c5404aaa1f6d2a48adfda4",
        dmi=None,
        cpu=replace(XEON, model_name="Intel(R) Xeon(R) Processor", microcode="0x1", count=2),
        nics=(Nic("eth0", "02:fc:00:00:00:01"), Nic("lo", "00:00:00:00:00:00", physical=False)),
        disks=(Disk("vda", serial="overlayblk"), Disk("zram0")),
        root_source="/dev/vda",
        root_devnum="254:0",
        hostname="vm",
        mem_kb=24_684_084,
        pci_vendors=("0x8086", "0x1af4", "0x1af4", "0x1af4"),
        acpi_oem="FIRECK",
        dockerenv=True,
        pid1_cgroup="0::/\n",
    )


def docker_container() -> Machine:
    """A Docker container on the workstation: host DMI and CPU, a veth NIC, overlay root."""
    host = workstation()
    return Machine(
        machine_id="e1f2a3b4c5d6e7f8091a2b3c4d5e6f70",  # baked into the image
        dmi={k: v for k, v in WORKSTATION_DMI.items() if k not in host.dmi_root_only},
        cpu=host.cpu,
        nics=(
            Nic("eth0", "02:42:ac:11:00:02", physical=False),
            Nic("lo", "00:00:00:00:00:00", physical=False),
        ),
        disks=host.disks,
        root_source="overlay",
        root_fstype="overlay",
        root_devnum="0:52",
        hostname="3f4e5d6c7b8a",
        mem_kb=host.mem_kb,
        pci_vendors=host.pci_vendors,
        acpi_oem=None,
        dockerenv=True,
        pid1_cgroup="0::/\n",
        mount_roots=(
            ("/var/lib/docker/containers/3f4e5d6c7b8a9d0e/resolv.conf", "/etc/resolv.conf"),
            ("/var/lib/docker/containers/3f4e5d6c7b8a9d0e/hostname", "/etc/hostname"),
        ),
        kthreadd=False,
    )


# -- changes ------------------------------------------------------------------------------


def with_nic_swapped(machine: Machine, name: str, mac: str = "3c:ec:ef:90:aa:01") -> Machine:
    """The adapter `name` replaced by another card (same slot, new address)."""
    nics = tuple(replace(n, mac=mac) if n.name == name else n for n in machine.nics)
    if nics == machine.nics:
        raise ValueError(f"no NIC named {name}")
    return replace(machine, nics=nics)


def with_new_disk(machine: Machine, serial: str = "S5GXNF0T654321") -> Machine:
    """The root disk replaced by another of the same kind; the system copied onto it
    (same partitions and filesystem UUIDs: a block-level copy)."""
    root_disk = machine.disks[0]
    new = replace(
        root_disk,
        serial=serial if root_disk.serial else None,
        device_serial=serial if root_disk.device_serial else None,
        wwid=f"eui.{serial.lower()}" if root_disk.wwid else None,
        by_id=tuple(f"nvme-NEW_DISK_{serial}" for _ in root_disk.by_id[:1]),
    )
    return replace(machine, disks=(new, *machine.disks[1:]))


def with_cpu(machine: Machine, cpu: Cpu) -> Machine:
    return replace(machine, cpu=cpu)


UPGRADE_CPU = Cpu(
    model_name="Intel(R) Core(TM) i9-11900K @ 3.50GHz",
    family=6,
    model=167,
    stepping=1,
    microcode="0x5d",
    flags=(*INTEL_FLAGS, "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "sha_ni",
           "vaes", "vpclmulqdq", "gfni", "avx512_vnni"),
    count=16,
)


def with_disk_nic_cpu_replaced(machine: Machine) -> Machine:
    """Root disk, one network adapter and the CPU replaced (the mainboard stays)."""
    physical = [n for n in machine.nics if n.physical]
    changed = with_nic_swapped(with_new_disk(machine), physical[-1].name)
    return with_cpu(changed, replace(UPGRADE_CPU, count=machine.cpu.count))


def with_mainboard_replaced(machine: Machine) -> Machine:
    """A new mainboard: new DMI identity and firmware, and its onboard NIC (the chassis,
    and so its serial, stays)."""
    assert machine.dmi is not None
    dmi = dict(machine.dmi)
    dmi.update(
        product_uuid="4C4C4544-0057-4810-8033-C7C04F4E5632",
        product_serial="7WH3CX3",
        board_name="0K3CM7",
        board_serial="/7WH3CX3/CNCMK0099999/",
        bios_version="1.4.2",
        bios_date="02/02/2024",
    )
    onboard = next(n for n in machine.nics if n.physical)
    return with_nic_swapped(replace(machine, dmi=dmi), onboard.name, "d0:94:66:ff:ee:dd")


def os_reinstalled(machine: Machine) -> Machine:
    """A fresh OS install on the same hardware: new machine-id, new root filesystem UUID."""
    disk = machine.disks[0]
    parts = tuple(
        replace(p, uuid=f"0e0e0e0e-{i:04d}-4000-8000-0000000000{i:02d}")
        for i, p in enumerate(disk.partitions, start=1)
    )
    return replace(
        machine,
        machine_id="77aa9c10d3e84b52a6c7d8e9f0a1b2c3",
        disks=(replace(disk, partitions=parts), *machine.disks[1:]),
    )


def cloned_to_other_host(guest: Machine, other_cpu: Cpu = XEON) -> Machine:
    """The guest's disk image copied and started on another physical host.

    The image brings machine-id, root filesystem, host name and size along; the other
    host presents its own CPU, and the hypervisor gives the copy a new VM UUID, a new
    MAC and a new volume (new disk serial).
    """
    assert guest.dmi is not None
    dmi = dict(guest.dmi)
    dmi["product_uuid"] = "0f8e2d4c-6b1a-4937-8e5d-c2b1a0f9e8d7"
    if "product_serial" in dmi:
        dmi["product_serial"] = dmi["product_serial"] + "-copy"
    nics = tuple(
        replace(n, mac="52:54:00:ab:cd:ef") if n.physical else n for n in guest.nics
    )
    disk = guest.disks[0]
    new_disk = replace(
        disk,
        serial="vol-7c1e02" if disk.serial else None,
        by_id=("virtio-vol-7c1e02",) if disk.by_id else (),
    )
    cpu = replace(other_cpu, count=guest.cpu.count, hypervisor_flag=True)
    return replace(guest, dmi=dmi, nics=nics, disks=(new_disk, *guest.disks[1:]), cpu=cpu)


def moved_within_host(guest: Machine) -> Machine:
    """The same VM on the same host with its disk image moved to other storage and
    re-attached as a SCSI disk (new path, new serial), and a new virtual NIC."""
    disk = guest.disks[0]
    parts = tuple(
        replace(p, name=f"sda{i}") for i, p in enumerate(disk.partitions, start=1)
    )
    new_disk = Disk(
        "sda",
        wwid="naa.6001405f3a2b1c0d9e8f7a6b5c4d3e2f",
        by_id=("scsi-36001405f3a2b1c0d9e8f7a6b5c4d3e2f", "wwn-0x6001405f3a2b1c0d9e8f7a6b5c4d3e2f"),
        partitions=parts,
    )
    nics = tuple(
        replace(n, mac="52:54:00:9a:8b:7c") if n.physical else n for n in guest.nics
    )
    root_source = "/dev/sda1" if parts else "/dev/sda"
    return replace(
        guest,
        nics=nics,
        disks=(new_disk, *guest.disks[1:]),
        root_source=root_source,
        root_devnum="8:1",
    )
