"""Linux collectors: what this machine says about itself, read from files under a root.

Each collector reads a few files under `root` (default `/`) and returns `Reading`s:
a property name, its normalised value, the kind of property it is (the key a recipe
weighs it by) and a one-line note on how stable it is. Weights are not decided here
(see `licentia.binding.recipes`). A file that is absent or unreadable yields no
reading, never an error.

Values are normalised bytes: surrounding and repeated whitespace removed; hexadecimal
identifiers (UUIDs, MACs, machine-id, WWIDs, microcode) and vendor/model names in lower
case; serial numbers keep their case. Well-known placeholder values ("To be filled by
O.E.M.", all-zero UUIDs, "Default string", ...) are dropped: every machine of a kind
shares them, so they identify nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from licentia.binding._fs import Tree

__all__ = [
    "COLLECTORS",
    "CPU_FEATURES",
    "MAX_NICS",
    "Reading",
    "collect_readings",
    "is_placeholder",
    "read_cpu",
    "read_dmi",
    "read_hostname",
    "read_machine_id",
    "read_memory",
    "read_nics",
    "read_root_disk",
]


@dataclass(frozen=True)
class Reading:
    """One property as read off the machine, before a recipe gives it a weight.

    `kind` is what a recipe weighs: "net.mac" for every "net.mac.<interface>".
    `demoted` marks a value that is weaker than its kind usually is (a locally
    administered MAC, a USB network adapter); recipes halve its weight.
    """

    name: str
    kind: str
    value: bytes
    stability: str
    demoted: bool = False


# -- normalisation ------------------------------------------------------------------------

_PLACEHOLDERS = frozenset(
    {
        "", "none", "n/a", "na", "null", "unknown", "invalid", "not specified",
        "not applicable", "not available", "not present", "to be filled by o.e.m.",
        "to be filled by oem", "default string", "default", "oem", "o.e.m.",
        "system serial number", "system product name", "system manufacturer",
        "base board serial number", "chassis serial number", "serial number", "sn",
        "0123456789", "123456789", "1234567890", "12345678", "0000000000000000",
        "03000200-0400-0500-0006-000700080009", "uninitialized", "localhost",
        "localhost.localdomain", "(none)", "empty", "type1productconfigid",
    }
)


def _clean(text: str) -> str:
    return " ".join(text.split())


def is_placeholder(value: str) -> bool:
    """True for values that identify nothing: known filler text or one repeated character."""
    lowered = _clean(value).lower()
    if lowered in _PLACEHOLDERS:
        return True
    stripped = re.sub(r"[\s\-:._]", "", lowered)
    return len(set(stripped)) <= 1


def _first_line(tree: Tree, path: str) -> str | None:
    text = tree.read_text(path)
    if text is None:
        return None
    for line in text.splitlines():
        line = _clean(line)
        if line and not line.startswith("#"):
            return line
    return None


# -- machine-id ---------------------------------------------------------------------------


def read_machine_id(tree: Tree) -> list[Reading]:
    """systemd/D-Bus machine id: /etc/machine-id, else /var/lib/dbus/machine-id."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        line = _first_line(tree, path)
        if line is None:
            continue
        value = line.lower()
        if is_placeholder(value) or not re.fullmatch(r"[0-9a-f]{32}", value):
            continue
        return [
            Reading(
                "machine-id",
                "machine-id",
                value.encode(),
                "set when the OS is installed; changes on reinstall, copied with a cloned image",
            )
        ]
    return []


# -- DMI / SMBIOS -------------------------------------------------------------------------

_DMI = "/sys/class/dmi/id"

# name, kind, files, lower-case?, stability
_DMI_IDENTITIES: tuple[tuple[str, tuple[str, ...], bool, str], ...] = (
    ("dmi.product_uuid", ("product_uuid",), True,
     "system UUID from the firmware; changes with the mainboard (in a VM: with the VM instance)"),
    ("dmi.product_serial", ("product_serial",), False,
     "system serial number; changes with the mainboard or chassis"),
    ("dmi.board_serial", ("board_serial",), False,
     "mainboard serial number; changes with the mainboard"),
    ("dmi.chassis_serial", ("chassis_serial",), False,
     "chassis serial number; often left empty by vendors"),
    ("dmi.board", ("board_vendor", "board_name"), True,
     "mainboard make and model; changes with the mainboard"),
    ("dmi.system", ("sys_vendor", "product_name"), True,
     "system make and model (in a VM: the hypervisor's machine type)"),
    ("dmi.bios", ("bios_vendor", "bios_version", "bios_date"), True,
     "firmware vendor, version and date; changes with a firmware update"),
)


def read_dmi(tree: Tree) -> list[Reading]:
    """SMBIOS identity as the kernel exports it under /sys/class/dmi/id.

    The UUID and serials are readable by root only on most systems; without them the
    world-readable make/model/firmware strings remain.
    """
    readings: list[Reading] = []
    for name, files, lower, stability in _DMI_IDENTITIES:
        parts: list[str] = []
        for file in files:
            line = _first_line(tree, f"{_DMI}/{file}")
            if line is None or is_placeholder(line):
                continue
            parts.append(line.lower() if lower else line)
        if not parts:
            continue
        readings.append(Reading(name, name, " | ".join(parts).encode(), stability))
    return readings


# -- CPU ----------------------------------------------------------------------------------

# x86 feature flags that describe the silicon (or the CPU model a hypervisor presents).
# A fixed list, so a kernel that learns to print a new flag does not change the value;
# mitigation flags (ibrs, ssbd, md_clear, ...) are left out because microcode and kernel
# updates change them.
CPU_FEATURES = frozenset(
    {
        "fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", "sep", "mtrr", "pge",
        "mca", "cmov", "pat", "pse36", "clflush", "mmx", "fxsr", "sse", "sse2", "ss", "ht",
        "syscall", "nx", "mmxext", "fxsr_opt", "pdpe1gb", "rdtscp", "lm", "3dnowext", "3dnow",
        "pni", "pclmulqdq", "dtes64", "monitor", "ds_cpl", "vmx", "smx", "est", "tm2", "ssse3",
        "sdbg", "fma", "cx16", "xtpr", "pdcm", "pcid", "dca", "sse4_1", "sse4_2", "x2apic", "movbe",
        "popcnt", "tsc_deadline_timer", "aes", "xsave", "avx", "f16c", "rdrand", "lahf_lm",
        "cmp_legacy", "svm", "extapic", "cr8_legacy", "abm", "sse4a", "misalignsse",
        "3dnowprefetch", "osvw", "ibs", "xop", "skinit", "wdt", "lwp", "fma4", "tce", "nodeid_msr",
        "tbm", "topoext", "perfctr_core", "perfctr_nb", "bpext", "perfctr_llc", "mwaitx",
        "fsgsbase", "tsc_adjust", "sgx", "bmi1", "hle", "avx2", "fdp_excptn_only", "smep", "bmi2",
        "erms", "invpcid", "rtm", "cqm", "mpx", "rdt_a", "avx512f", "avx512dq", "rdseed", "adx",
        "smap", "avx512ifma", "clflushopt", "clwb", "intel_pt", "avx512pf", "avx512er", "avx512cd",
        "sha_ni", "avx512bw", "avx512vl", "xsaveopt", "xsavec", "xgetbv1", "xsaves", "avx_vnni",
        "avx512_bf16", "clzero", "irperf", "xsaveerptr", "rdpru", "wbnoinvd", "avx512vbmi", "umip",
        "pku", "waitpkg", "avx512_vbmi2", "shstk", "gfni", "vaes", "vpclmulqdq", "avx512_vnni",
        "avx512_bitalg", "tme", "avx512_vpopcntdq", "la57", "rdpid", "bus_lock_detect", "cldemote",
        "movdiri", "movdir64b", "enqcmd", "sgx_lc", "avx512_vp2intersect", "fsrm", "serialize",
        "tsxldtrk", "pconfig", "arch_lbr", "ibt", "amx_bf16", "avx512_fp16", "amx_tile", "amx_int8",
        "sev", "sev_es", "sev_snp", "sme", "avx_vnni_int8", "avx_ne_convert", "cmpccxadd",
        "amx_fp16", "prefetchi",
    }
)


def _cpu_blocks(text: str) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current.setdefault(_clean(key).lower(), _clean(value))
    if current:
        blocks.append(current)
    return blocks


def read_cpu(tree: Tree) -> list[Reading]:
    """CPU model, signature, feature flags, microcode level and count from /proc/cpuinfo."""
    text = tree.read_text("/proc/cpuinfo")
    if text is None:
        return []
    blocks = _cpu_blocks(text)
    processors = [b for b in blocks if "processor" in b]
    count = len(processors)
    first = processors[0] if processors else (blocks[0] if blocks else {})
    # ARM and others put machine-wide lines (Hardware, Serial) in their own block.
    shared: dict[str, str] = {}
    for block in blocks:
        for key, value in block.items():
            shared.setdefault(key, value)

    readings: list[Reading] = []
    model_parts = [
        part
        for part in (
            first.get("vendor_id") or shared.get("cpu implementer"),
            first.get("model name") or shared.get("hardware") or shared.get("cpu model"),
        )
        if part
    ]
    if model_parts:
        readings.append(
            Reading(
                "cpu.model",
                "cpu.model",
                " | ".join(model_parts).lower().encode(),
                "processor make and model; changes when the CPU (in a VM: the host) changes",
            )
        )

    if "cpu family" in first or "model" in first:
        signature = "/".join(
            first.get(key, "?") for key in ("cpu family", "model", "stepping")
        )
    else:
        arm = [shared.get(k) for k in ("cpu implementer", "cpu variant", "cpu part", "cpu revision")]
        signature = "/".join(v for v in arm if v)
    if signature:
        readings.append(
            Reading(
                "cpu.signature",
                "cpu.signature",
                signature.lower().encode(),
                "CPU family/model/stepping; changes with the CPU (in a VM: the host)",
            )
        )

    flags_text = first.get("flags")
    if flags_text is not None:
        flags = sorted(set(flags_text.lower().split()) & CPU_FEATURES)
    else:
        features = first.get("features") or shared.get("features") or ""
        flags = sorted(set(features.lower().split()))
    if flags:
        readings.append(
            Reading(
                "cpu.flags",
                "cpu.flags",
                " ".join(flags).encode(),
                "instruction-set features; changes with the CPU or the VM's CPU model",
            )
        )

    microcode = first.get("microcode")
    if microcode:
        readings.append(
            Reading(
                "cpu.microcode",
                "cpu.microcode",
                microcode.lower().encode(),
                "microcode level; changes with firmware or OS microcode updates",
            )
        )

    if count:
        readings.append(
            Reading(
                "cpu.count",
                "cpu.count",
                str(count).encode(),
                "logical CPUs online; changes with the CPU or the VM's size",
            )
        )
    return readings


# -- network adapters ---------------------------------------------------------------------

MAX_NICS = 4  # a 4-port card must not outweigh the rest of the machine
_ARPHRD_LOOPBACK = "772"
_ADDR_RANDOM = "1"
_ADDR_STOLEN = "2"
_ADDR_SET = "3"


def read_nics(tree: Tree) -> list[Reading]:
    """MAC addresses of physical network adapters under /sys/class/net.

    An interface is physical when it has a `device` link (a bus device behind it);
    bridges, bonds, veths, tunnels, loopback and other virtual interfaces have none.
    Addresses the kernel made up (addr_assign_type 1 random, 2 stolen) are skipped;
    locally administered addresses (bit 0x02 of the first octet) and addresses set by
    software (type 3) are kept but demoted, as are USB adapters.
    """
    readings: list[Reading] = []
    base = "/sys/class/net"
    for iface in tree.list_dir(base):
        if len(readings) >= MAX_NICS:
            break
        where = f"{base}/{iface}"
        if iface == "lo" or not tree.exists(f"{where}/device"):
            continue
        if _first_line(tree, f"{where}/type") == _ARPHRD_LOOPBACK:
            continue
        if tree.exists(f"{where}/bridge") or tree.exists(f"{where}/bonding"):
            continue
        assign = _first_line(tree, f"{where}/addr_assign_type")
        if assign in (_ADDR_RANDOM, _ADDR_STOLEN):
            continue
        address = (_first_line(tree, f"{where}/address") or "").lower()
        if not re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5,19}", address):
            continue
        if is_placeholder(address):
            continue
        first_octet = int(address[:2], 16)
        if first_octet & 0x01:  # multicast: not an adapter's own address
            continue
        notes = ["network adapter address; changes when the adapter is replaced"]
        demoted = False
        if first_octet & 0x02:
            notes.append("locally administered (set by software or a hypervisor)")
            demoted = True
        elif assign == _ADDR_SET:
            notes.append("set by software")
            demoted = True
        device_link = tree.link_text(f"{where}/device") or ""
        if "/usb" in device_link:
            notes.append("USB adapter, removable")
            demoted = True
        readings.append(
            Reading(f"net.mac.{iface}", "net.mac", address.encode(), "; ".join(notes), demoted)
        )
    return readings


# -- root disk ----------------------------------------------------------------------------

_NOT_DISKS = ("loop", "ram", "zram", "sr", "fd", "nbd")


def _mount_source(tree: Tree) -> str | None:
    text = tree.read_text("/proc/mounts")
    if text is None:
        return None
    source = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1] == "/":
            source = fields[0]  # the last mount on / is the one in effect
    return source


def _mountinfo_devnum(tree: Tree) -> str | None:
    for path in ("/proc/self/mountinfo", "/proc/1/mountinfo"):
        text = tree.read_text(path)
        if text is None:
            continue
        devnum = None
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[4] == "/":
                devnum = fields[2]
        if devnum:
            return devnum
    return None


def _root_block_name(tree: Tree) -> str | None:
    """The kernel name of the block device mounted on / (e.g. "nvme0n1p2", "dm-0")."""
    source = _mount_source(tree)
    if source and source.startswith("/dev/") and source != "/dev/root":
        name = _basename(tree.resolve(source))
        if tree.exists(f"/sys/class/block/{name}") or _parent_disk(tree, name):
            return name
    devnum = _mountinfo_devnum(tree)
    if devnum and re.fullmatch(r"\d+:\d+", devnum):
        target = tree.link_text(f"/sys/dev/block/{devnum}")
        if target:
            return _basename(target)
    return None


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _parent_disk(tree: Tree, name: str) -> str | None:
    """The whole disk a block device belongs to: itself, or the disk of a partition."""
    if tree.is_dir(f"/sys/block/{name}"):
        return name
    for disk in tree.list_dir("/sys/block"):
        if tree.is_dir(f"/sys/block/{disk}/{name}"):
            return disk
    return None


def _physical_disk(tree: Tree, name: str, depth: int = 0) -> str | None:
    """Follow device-mapper and md layers (their `slaves`) down to a real disk."""
    disk = _parent_disk(tree, name)
    if disk is None or depth > 4:
        return disk
    slaves = tree.list_dir(f"/sys/block/{disk}/slaves")
    if slaves:
        return _physical_disk(tree, slaves[0], depth + 1)
    return disk


def _disk_identity(tree: Tree, disk: str) -> tuple[str, str] | None:
    """(value, source) of a disk's best identifier: serial, WWID or a /dev/disk/by-id name."""
    for file, source in (
        ("serial", "serial"),
        ("device/serial", "serial"),
        ("wwid", "wwid"),
        ("device/wwid", "wwid"),
    ):
        line = _first_line(tree, f"/sys/block/{disk}/{file}")
        if line and not is_placeholder(line):
            return (line.lower() if source == "wwid" else line), source
    by_id = "/dev/disk/by-id"
    names = [
        n
        for n in tree.list_dir(by_id)
        if "-part" not in n and _basename(tree.resolve(f"{by_id}/{n}")) == disk
    ]
    names.sort(key=lambda n: (not n.startswith("wwn-"), n))
    if names:
        return names[0], "by-id"
    return None


def _fallback_disk(tree: Tree) -> str | None:
    for disk in tree.list_dir("/sys/block"):
        if disk.startswith(_NOT_DISKS) or disk.startswith(("dm-", "md")):
            continue
        if _disk_identity(tree, disk):
            return disk
    return None


def read_root_disk(tree: Tree) -> list[Reading]:
    """The disk holding / (serial, WWID or by-id name) and the root filesystem's UUID.

    The root device comes from /proc/mounts (or /proc/self/mountinfo's device number);
    partitions map to their disk, device-mapper and md devices to the first disk below.
    When / is not on a block device (overlay, tmpfs, network) the first real disk with
    an identifier stands in, and no filesystem UUID is read.
    """
    readings: list[Reading] = []
    root_dev = _root_block_name(tree)
    disk = _physical_disk(tree, root_dev) if root_dev else _fallback_disk(tree)
    if disk and not disk.startswith(_NOT_DISKS):
        identity = _disk_identity(tree, disk)
        if identity:
            value, source = identity
            where = "the disk holding /" if root_dev else "the first disk (/ is not on a disk)"
            readings.append(
                Reading(
                    "disk.root",
                    "disk.root",
                    _clean(value).encode(),
                    f"{source} of {where}; changes when the disk is replaced",
                )
            )
    if root_dev:
        by_uuid = "/dev/disk/by-uuid"
        for uuid in tree.list_dir(by_uuid):
            if _basename(tree.resolve(f"{by_uuid}/{uuid}")) == root_dev:
                if not is_placeholder(uuid):
                    readings.append(
                        Reading(
                            "fs.root_uuid",
                            "fs.root_uuid",
                            uuid.lower().encode(),
                            "root filesystem UUID; changes when / is reformatted or reinstalled",
                        )
                    )
                break
    return readings


# -- hostname, memory ---------------------------------------------------------------------


def read_hostname(tree: Tree) -> list[Reading]:
    """Host name from /etc/hostname, else /proc/sys/kernel/hostname."""
    for path in ("/etc/hostname", "/proc/sys/kernel/hostname"):
        line = _first_line(tree, path)
        if line and not is_placeholder(line):
            return [
                Reading(
                    "hostname",
                    "hostname",
                    line.lower().encode(),
                    "host name; an administrator may rename the machine",
                )
            ]
    return []


_KIB_PER_GIB = 1024 * 1024


def read_memory(tree: Tree) -> list[Reading]:
    """Installed memory from /proc/meminfo MemTotal, rounded to whole GiB (at least 1)."""
    text = tree.read_text("/proc/meminfo")
    if text is None:
        return []
    match = re.search(r"^MemTotal:\s*(\d+)\s*kB", text, re.MULTILINE)
    if not match:
        return []
    kib = int(match.group(1))
    gib = max(1, (kib + _KIB_PER_GIB // 2) // _KIB_PER_GIB)
    return [
        Reading(
            "memory",
            "memory",
            f"{gib} GiB".encode(),
            "memory size in whole GiB; changes when memory is added or removed",
        )
    ]


# -- TPM --------------------------------------------------------------------------------------

_PUBEK = ("/sys/class/tpm/tpm0/pubek", "/sys/class/tpm/tpm0/device/pubek", "/sys/class/misc/tpm0/device/pubek")


def read_tpm(tree: Tree) -> list[Reading]:
    """A TPM 1.2's endorsement key, as the kernel shows it (`pubek`: the modulus in hex).

    A TPM 2.0 does not show its endorsement key as a file (it takes a TPM command), so no
    reading comes from one yet.
    """
    for path in _PUBEK:
        text = tree.read_text(path)
        if text is None:
            continue
        _, found, modulus = text.partition("Modulus:")
        digits = "".join(re.findall(r"[0-9A-Fa-f]{2}", modulus.split("\n\n")[0])).lower() if found else ""
        if len(digits) >= 64 and not is_placeholder(digits):
            return [
                Reading(
                    "tpm.ek",
                    "tpm.ek",
                    digits.encode(),
                    "the TPM's endorsement key; changes only with the TPM (the mainboard)",
                )
            ]
    return []


# -- all ----------------------------------------------------------------------------------

COLLECTORS: tuple[Callable[[Tree], list[Reading]], ...] = (
    read_machine_id,
    read_dmi,
    read_cpu,
    read_nics,
    read_root_disk,
    read_hostname,
    read_memory,
    read_tpm,
)


def collect_readings(root: Path | Tree = Path("/")) -> list[Reading]:
    """Every reading the collectors find under `root`, in a stable order."""
    tree = root if isinstance(root, Tree) else Tree(Path(root))
    readings: list[Reading] = []
    for collector in COLLECTORS:
        readings.extend(collector(tree))
    return _unique(readings)


def _unique(readings: Iterable[Reading]) -> list[Reading]:
    seen: set[str] = set()
    out: list[Reading] = []
    for reading in readings:
        if reading.name not in seen:
            seen.add(reading.name)
            out.append(reading)
    return out
