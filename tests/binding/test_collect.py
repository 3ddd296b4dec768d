"""The Linux collectors, run for real against synthetic machine trees."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, strategies as st
from tests.machines import (
    Cpu,
    Disk,
    Machine,
    Nic,
    Partition,
    build,
    docker_container,
    kvm_guest,
    no_dmi_machine,
    workstation,
)

from licentia.binding import collect_fingerprint, inspect_machine, is_placeholder
from licentia.binding._fs import Tree
from licentia.binding.collect import (
    MAX_NICS,
    Reading,
    collect_readings,
    read_cpu,
    read_dmi,
    read_hostname,
    read_machine_id,
    read_memory,
    read_nics,
    read_root_disk,
)

MakeTree = Callable[[Machine], Path]


def by_name(readings: list[Reading]) -> dict[str, Reading]:
    return {r.name: r for r in readings}


def values(readings: list[Reading]) -> dict[str, bytes]:
    return {r.name: r.value for r in readings}


# -- machine-id ---------------------------------------------------------------------------


def test_machine_id_prefers_etc(make_tree: MakeTree) -> None:
    root = make_tree(replace(workstation(), dbus_machine_id="0" * 31 + "1"))
    assert values(read_machine_id(Tree(root))) == {
        "machine-id": b"5f1c2a9be04d4c33a6f1e0d9c8b7a611"
    }


def test_machine_id_falls_back_to_dbus(make_tree: MakeTree) -> None:
    dbus = "ABCDEF0123456789ABCDEF0123456789"
    root = make_tree(replace(workstation(), machine_id=None, dbus_machine_id=dbus))
    assert values(read_machine_id(Tree(root))) == {"machine-id": dbus.lower().encode()}


@pytest.mark.parametrize("content", ["uninitialized", "", "not-a-machine-id", "0" * 32])
def test_machine_id_placeholder_is_skipped(make_tree: MakeTree, content: str) -> None:
    root = make_tree(replace(workstation(), machine_id=content, dbus_machine_id=None))
    assert read_machine_id(Tree(root)) == []


# -- DMI ----------------------------------------------------------------------------------


def test_dmi_values_are_normalised(make_tree: MakeTree) -> None:
    dmi = dict(workstation().dmi or {})
    dmi["product_name"] = "  Precision   3640  Tower "
    root = make_tree(replace(workstation(), dmi=dmi))
    got = values(read_dmi(Tree(root)))
    assert got["dmi.product_uuid"] == b"4c4c4544-0042-3510-8052-b4c04f4e5632"  # lower case
    assert got["dmi.product_serial"] == b"5BR2NV2"  # serials keep their case
    assert got["dmi.system"] == b"dell inc. | precision 3640 tower"
    assert got["dmi.bios"] == b"dell inc. | 1.21.0 | 07/12/2023"
    assert set(got) == {
        "dmi.product_uuid", "dmi.product_serial", "dmi.board_serial", "dmi.chassis_serial",
        "dmi.board", "dmi.system", "dmi.bios",
    }


def test_dmi_placeholders_are_dropped(make_tree: MakeTree) -> None:
    dmi = dict(workstation().dmi or {})
    dmi.update(
        product_uuid="03000200-0400-0500-0006-000700080009",
        product_serial="To Be Filled By O.E.M.",
        board_serial="Default string",
        chassis_serial="          ",
        board_name="Default string",
    )
    root = make_tree(replace(workstation(), dmi=dmi))
    got = values(read_dmi(Tree(root)))
    assert "dmi.product_uuid" not in got
    assert "dmi.product_serial" not in got
    assert "dmi.board_serial" not in got
    assert "dmi.chassis_serial" not in got
    assert got["dmi.board"] == b"dell inc."  # the vendor still says something


def test_no_dmi_directory_gives_no_dmi_readings(make_tree: MakeTree) -> None:
    root = make_tree(no_dmi_machine())
    assert read_dmi(Tree(root)) == []
    names = {r.name for r in collect_readings(root)}
    assert not any(n.startswith("dmi.") for n in names)
    assert {"machine-id", "cpu.model", "disk.root", "net.mac.eno1"} <= names


@given(st.sampled_from("0fFx -"), st.integers(min_value=1, max_value=40))
def test_one_repeated_character_is_a_placeholder(char: str, length: int) -> None:
    assert is_placeholder(char * length)


@given(st.uuids())
def test_random_uuids_are_not_placeholders(uuid: object) -> None:
    text = str(uuid)
    assert is_placeholder(text) == (len(set(text.replace("-", ""))) <= 1)


# -- unreadable files ---------------------------------------------------------------------


@pytest.fixture
def shared_tree() -> Iterator[Path]:
    """A tree any user can walk (tmp_path's parents are private to its owner)."""
    base = Path(tempfile.mkdtemp(prefix="licentia-binding-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _walkable(root: Path) -> None:
    for dirpath, _dirs, _files in os.walk(root):
        Path(dirpath).chmod(0o755)


def _collect_as_nobody(root: Path) -> dict[str, object]:
    """Fork, drop to nobody (65534), collect, and hand the result back through a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            report = inspect_machine(root, environ={})
            payload = {
                "names": [p.name for p in report.fingerprint.properties],
                "skipped": [[s.path, s.reason] for s in report.skipped],
                "strength": report.fingerprint.strength,
            }
            os.write(write_end, json.dumps(payload).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    result: dict[str, object] = json.loads(b"".join(chunks))
    return result


def test_unreadable_dmi_serials_are_skipped_not_errors(shared_tree: Path) -> None:
    """Root-only DMI files (mode 0400, as the kernel makes them) read as another user."""
    root = build(workstation(), shared_tree / "machine")
    _walkable(root)
    if os.geteuid() == 0:
        result = _collect_as_nobody(root)
        names = set(result["names"])  # type: ignore[call-overload]
        skipped = {tuple(s) for s in result["skipped"]}  # type: ignore[attr-defined]
        strength = str(result["strength"])
    else:
        for name in ("product_uuid", "product_serial", "board_serial", "chassis_serial"):
            (root / "sys/class/dmi/id" / name).chmod(0)
        report = inspect_machine(root, environ={})
        names = {p.name for p in report.fingerprint.properties}
        skipped = {(s.path, s.reason) for s in report.skipped}
        strength = report.fingerprint.strength
    assert "dmi.product_uuid" not in names
    assert "dmi.board_serial" not in names
    assert {"dmi.system", "dmi.board", "dmi.bios", "machine-id", "cpu.model"} <= names
    assert ("/sys/class/dmi/id/product_uuid", "permission denied") in skipped
    assert strength.startswith("fair:")
    assert "not readable by this user" in strength


# -- CPU ----------------------------------------------------------------------------------


def test_cpu_readings(make_tree: MakeTree) -> None:
    got = by_name(read_cpu(Tree(make_tree(workstation()))))
    assert got["cpu.model"].value == b"genuineintel | intel(r) core(tm) i7-10700 cpu @ 2.90ghz"
    assert got["cpu.signature"].value == b"6/165/5"
    assert got["cpu.microcode"].value == b"0xfc"
    assert got["cpu.count"].value == b"16"
    flags = got["cpu.flags"].value.split()
    assert b"avx2" in flags and b"aes" in flags
    # Linux's own flags and mitigations are not silicon features
    for absent in (b"constant_tsc", b"ibrs", b"md_clear", b"hypervisor", b"flush_l1d"):
        assert absent not in flags
    assert flags == sorted(flags)


def test_cpu_flags_ignore_flags_a_new_kernel_prints(make_tree: MakeTree) -> None:
    base = workstation()
    newer = replace(
        base, cpu=replace(base.cpu, flags=(*base.cpu.flags, "retbleed_fix", "split_lock_detect"))
    )
    before = values(read_cpu(Tree(make_tree(base))))
    after = values(read_cpu(Tree(make_tree(newer))))
    assert before["cpu.flags"] == after["cpu.flags"]


def test_cpu_on_arm(make_tree: MakeTree) -> None:
    cpuinfo = "".join(
        f"processor\t: {n}\nBogoMIPS\t: 108.00\n"
        "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics cpuid\n"
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\n"
        "CPU part\t: 0xd0c\nCPU revision\t: 1\n\n"
        for n in range(4)
    )
    root = make_tree(replace(no_dmi_machine(), files={"/proc/cpuinfo": cpuinfo.encode()}))
    got = values(read_cpu(Tree(root)))
    assert got["cpu.model"] == b"0x41"
    assert got["cpu.signature"] == b"0x41/0x3/0xd0c/1"
    assert got["cpu.flags"] == b"aes asimd atomics cpuid crc32 evtstrm fp pmull sha1 sha2"
    assert got["cpu.count"] == b"4"
    assert "cpu.microcode" not in got


# -- network adapters ---------------------------------------------------------------------


def test_only_physical_nics_count(make_tree: MakeTree) -> None:
    got = by_name(read_nics(Tree(make_tree(workstation()))))
    assert set(got) == {"net.mac.eno1", "net.mac.enp3s0"}  # not lo, docker0, veth
    assert got["net.mac.eno1"].value == b"d0:94:66:a1:b2:c3"
    assert not got["net.mac.eno1"].demoted


def test_locally_administered_mac_is_noted_and_demoted(make_tree: MakeTree) -> None:
    got = by_name(read_nics(Tree(make_tree(kvm_guest()))))
    nic = got["net.mac.enp1s0"]
    assert nic.value == b"52:54:00:12:34:56"
    assert nic.demoted
    assert "locally administered" in nic.stability


def test_random_and_usb_nics(make_tree: MakeTree) -> None:
    nics = (
        Nic("eth0", "D0:94:66:A1:B2:C3"),
        Nic("wlan0", "da:11:22:33:44:55", assign_type=1),  # randomised by the kernel
        Nic("enx001122", "00:11:22:aa:bb:cc", usb=True),
        Nic("eth9", "01:00:5e:00:00:01"),  # multicast: never an adapter's own
        Nic("eth8", "ff:ff:ff:ff:ff:ff"),
    )
    got = by_name(read_nics(Tree(make_tree(replace(workstation(), nics=nics)))))
    assert set(got) == {"net.mac.eth0", "net.mac.enx001122"}
    assert got["net.mac.eth0"].value == b"d0:94:66:a1:b2:c3"  # lower case
    assert got["net.mac.enx001122"].demoted
    assert "USB" in got["net.mac.enx001122"].stability


def test_nic_count_is_capped(make_tree: MakeTree) -> None:
    nics = tuple(Nic(f"ens{n}f0", f"a0:36:9f:00:00:{n:02x}") for n in range(8))
    got = read_nics(Tree(make_tree(replace(workstation(), nics=nics))))
    assert len(got) == MAX_NICS


# -- root disk ----------------------------------------------------------------------------


def test_nvme_root_disk_and_fs_uuid(make_tree: MakeTree) -> None:
    got = by_name(read_root_disk(Tree(make_tree(workstation()))))
    assert got["disk.root"].value == b"S4EWNX0R123456"  # from device/serial
    assert got["fs.root_uuid"].value == b"3f1e8c2a-9b0d-4e6f-a1b2-c3d4e5f60718"
    assert "the disk holding /" in got["disk.root"].stability


def test_root_disk_by_id_when_no_serial(make_tree: MakeTree) -> None:
    disk = Disk(
        "sdb",
        by_id=("ata-WDC_WD40EFRX_WD-WCC7K1234567", "wwn-0x50014ee2b1234567"),
        partitions=(Partition("sdb1"), Partition("sdb2", "11111111-2222-4333-8444-555555555555")),
    )
    machine = replace(workstation(), disks=(disk,), root_source="/dev/sdb2", root_devnum="8:18")
    got = values(read_root_disk(Tree(make_tree(machine))))
    assert got["disk.root"] == b"wwn-0x50014ee2b1234567"  # WWN preferred
    assert got["fs.root_uuid"] == b"11111111-2222-4333-8444-555555555555"


def test_root_on_lvm_goes_down_to_the_disk(make_tree: MakeTree) -> None:
    nvme = replace(
        workstation().disks[0],
        partitions=(Partition("nvme0n1p1"), Partition("nvme0n1p2"), Partition("nvme0n1p3")),
    )
    dm = Disk(
        "dm-0",
        slaves=("nvme0n1p3",),
        mapper_name="vg0-root",
        by_id=("dm-name-vg0-root",),
        fs_uuid="abcdef01-2345-4678-9abc-def012345678",
    )
    machine = replace(
        workstation(),
        disks=(nvme, dm),
        root_source="/dev/mapper/vg0-root",
        root_devnum="253:0",
        files={},
    )
    got = values(read_root_disk(Tree(make_tree(machine))))
    assert got["disk.root"] == b"S4EWNX0R123456"
    assert got["fs.root_uuid"] == b"abcdef01-2345-4678-9abc-def012345678"


def test_dev_root_resolved_through_mountinfo(make_tree: MakeTree) -> None:
    machine = replace(kvm_guest(), root_source="/dev/root", root_devnum="252:1")
    root = make_tree(machine)
    (root / "sys/dev/block").mkdir(parents=True, exist_ok=True)
    os.symlink("../../devices/virtio1/block/vda/vda1", root / "sys/dev/block/252:1")
    got = values(read_root_disk(Tree(root)))
    assert got["disk.root"] == b"vol-guest01"
    assert got["fs.root_uuid"] == b"5d2e9a10-7c3b-4e8f-9012-a3b4c5d6e7f8"


def test_overlay_root_uses_the_first_real_disk(make_tree: MakeTree) -> None:
    got = by_name(read_root_disk(Tree(make_tree(docker_container()))))
    assert got["disk.root"].value == b"S4EWNX0R123456"
    assert "/ is not on a disk" in got["disk.root"].stability
    assert "fs.root_uuid" not in got


def test_no_disks_at_all(make_tree: MakeTree) -> None:
    machine = replace(workstation(), disks=(), root_source="tmpfs", root_fstype="tmpfs")
    assert read_root_disk(Tree(make_tree(machine))) == []


# -- hostname, memory ---------------------------------------------------------------------


def test_hostname(make_tree: MakeTree) -> None:
    machine = replace(workstation(), files={"/etc/hostname": b"# set by installer\nDesign-WS-07\n"})
    assert values(read_hostname(Tree(make_tree(machine)))) == {"hostname": b"design-ws-07"}


def test_hostname_falls_back_to_kernel(make_tree: MakeTree) -> None:
    machine = replace(workstation(), hostname=None, kernel_hostname="render-node-12")
    assert values(read_hostname(Tree(make_tree(machine)))) == {"hostname": b"render-node-12"}


def test_localhost_is_no_hostname(make_tree: MakeTree) -> None:
    machine = replace(workstation(), hostname="localhost", kernel_hostname="localhost")
    assert read_hostname(Tree(make_tree(machine))) == []


@pytest.mark.parametrize(
    ("kib", "shown"),
    [
        (32_567_892, b"31 GiB"),  # 32 GiB installed, less what firmware and kernel keep
        (16_305_152, b"16 GiB"),
        (16_005_152, b"15 GiB"),
        (8_148_044, b"8 GiB"),
        (480_000, b"1 GiB"),  # never 0
    ],
)
def test_memory_rounded_to_gib(make_tree: MakeTree, kib: int, shown: bytes) -> None:
    root = make_tree(replace(workstation(), mem_kb=kib))
    assert values(read_memory(Tree(root))) == {"memory": shown}


def test_memory_small_changes_do_not_matter(make_tree: MakeTree) -> None:
    a = values(read_memory(Tree(make_tree(replace(workstation(), mem_kb=32_567_892)))))
    b = values(read_memory(Tree(make_tree(replace(workstation(), mem_kb=32_501_000)))))
    assert a == b


# -- the whole ----------------------------------------------------------------------------


def test_empty_tree_gives_no_properties_and_no_error(tmp_path: Path) -> None:
    fp = collect_fingerprint(tmp_path, environ={})
    assert fp.properties == ()
    assert fp.strength.startswith("weak:")


def test_collection_is_deterministic(make_tree: MakeTree) -> None:
    a = collect_fingerprint(make_tree(workstation()), environ={})
    b = collect_fingerprint(make_tree(workstation()), environ={})
    assert a == b


def test_property_names_are_unique_and_values_bytes(make_tree: MakeTree) -> None:
    for machine in (workstation(), kvm_guest(), docker_container(), no_dmi_machine()):
        props = collect_fingerprint(make_tree(machine), environ={}).properties
        names = [p.name for p in props]
        assert len(names) == len(set(names))
        for p in props:
            assert isinstance(p.value, bytes) and p.value == p.value.strip()
            assert p.stability and "\n" not in p.stability


def test_amd_signature(make_tree: MakeTree) -> None:
    cpu = Cpu(vendor="AuthenticAMD", model_name="AMD Ryzen 9 5950X 16-Core Processor",
              family=25, model=33, stepping=0, microcode="0xA201016", count=32)
    got = values(read_cpu(Tree(make_tree(replace(workstation(), cpu=cpu)))))
    assert got["cpu.signature"] == b"25/33/0"
    assert got["cpu.microcode"] == b"0xa201016"


PUBEK = """Algorithm: 00 0C 00 00
Encscheme: 00 03
Sigscheme: 00 01
Parameters: 00 00 08 00 00 00 00 02 00 00 00 00
Modulus length: 256
Modulus:
""" + "\n".join(" ".join(f"{(i * 16 + j) * 7 % 251:02X}" for j in range(16)) for i in range(16)) + "\n"


@pytest.mark.parametrize("where", ["sys/class/tpm/tpm0/device/pubek", "sys/class/tpm/tpm0/pubek"])
def test_a_tpm_1_2_endorsement_key_is_read_and_carries_weight(tmp_path: Path, where: str) -> None:
    from licentia.binding.collect import read_tpm
    from licentia.binding.recipes import BARE_METAL_RECIPE, apply_recipe, is_unique

    root = build(workstation(), tmp_path / "m")
    (root / where).parent.mkdir(parents=True, exist_ok=True)
    (root / where).write_text(PUBEK)
    (reading,) = read_tpm(Tree(root))
    assert reading.name == "tpm.ek" and len(reading.value) == 512 and reading.value == reading.value.lower()
    assert is_unique("tpm.ek")
    props = {p.name: p.weight for p in apply_recipe(collect_readings(root), BARE_METAL_RECIPE)}
    assert props["tpm.ek"] == BARE_METAL_RECIPE.weights["tpm.ek"] > 0
    # no key, a placeholder, or no TPM: no reading
    (root / where).write_text(PUBEK.split("Modulus:")[0] + "Modulus:\n" + "00 " * 256)
    assert read_tpm(Tree(root)) == []
    (root / where).unlink()
    assert read_tpm(Tree(root)) == []
