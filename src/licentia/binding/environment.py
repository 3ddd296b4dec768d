"""Where licentia runs: bare metal, a virtual machine or a container; and which kind of session.

The rules, in the order they are applied, are listed in docs/binding.md. In short:

* hypervisor: DMI make/model strings, then /sys/hypervisor/type (a Xen guest, not dom0),
  then the OEM id of the ACPI tables, then the CPU's `hypervisor` flag, named by the PCI
  vendors present (0x1af4 virtio = KVM family, 0x15ad VMware, ...). A cloud's bare-metal
  instance type (".metal") is bare metal.
* container: /run/.containerenv, `container=` in PID 1's environment, container paths in
  /proc/1/cgroup or in the mount roots of /proc/self/mountinfo, OpenVZ's /proc/vz.
  /.dockerenv counts only inside a PID namespace (PID 2 is not the kernel's kthreadd):
  some VM images carry the file from their build although nothing is containerised.
* session: LICENTIA_SESSION wins; then terminal-server markers; then the logind record of
  XDG_SESSION_ID; then a local X display numbered 10 or above; then SSH; else local.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from licentia.binding._fs import Tree
from licentia.model import Environment, ErrorCode, LicentiaError, MachineKind, SessionKind

__all__ = [
    "SESSION_ID_VARIABLE",
    "SESSION_VARIABLE",
    "detect_container",
    "detect_environment",
    "detect_hypervisor",
    "detect_session",
]

SESSION_VARIABLE = "LICENTIA_SESSION"
SESSION_ID_VARIABLE = "LICENTIA_SESSION_ID"

_DMI = "/sys/class/dmi/id"

# -- hypervisor ---------------------------------------------------------------------------

# (field, regular expression on the lower-cased value, hypervisor name); first match wins.
_DMI_RULES: tuple[tuple[str, str, str], ...] = (
    ("sys_vendor", r"^amazon ec2$", "amazon"),
    ("sys_vendor", r"^google$", "google"),
    ("product_name", r"^google compute engine$", "google"),
    ("product_name", r"^virtual machine$", "hyperv"),  # with sys_vendor Microsoft, below
    ("sys_vendor", r"vmware", "vmware"),
    ("product_name", r"^vmware", "vmware"),
    ("product_name", r"^virtualbox$", "virtualbox"),
    ("sys_vendor", r"^innotek gmbh$", "virtualbox"),
    ("sys_vendor", r"^xen$", "xen"),
    ("product_name", r"^hvm domu$", "xen"),
    ("bios_vendor", r"^xen$", "xen"),
    ("sys_vendor", r"^qemu$", "kvm"),
    ("product_name", r"\bkvm\b", "kvm"),
    ("product_name", r"^openstack (nova|compute)$", "kvm"),
    ("sys_vendor", r"^(openstack foundation|digitalocean|nutanix|alibaba cloud)$", "kvm"),
    ("product_name", r"^(droplet|ahv|alibaba cloud ecs)$", "kvm"),
    ("sys_vendor", r"^parallels", "parallels"),
    ("sys_vendor", r"^bhyve$", "bhyve"),
    ("product_name", r"^bhyve$", "bhyve"),
)

# OEM id (bytes 10..16 of an ACPI table header), stripped -> hypervisor
_ACPI_OEMS = {
    "fireck": "firecracker",
    "bochs": "kvm",  # QEMU's ACPI tables
    "vbox": "virtualbox",
    "vrtual": "hyperv",
    "xen": "xen",
    "amazon": "amazon",
    "google": "google",
}

# PCI vendor id -> hypervisor whose virtual devices carry it
_PCI_VENDORS = {
    "0x1af4": "kvm",  # virtio (QEMU/KVM, Firecracker, crosvm, cloud-hypervisor)
    "0x15ad": "vmware",
    "0x80ee": "virtualbox",
    "0x1414": "hyperv",
    "0x5853": "xen",
    "0x1ab8": "parallels",
    "0x1d0f": "amazon",
}


def _dmi_strings(tree: Tree) -> dict[str, str]:
    out: dict[str, str] = {}
    for field in ("sys_vendor", "product_name", "bios_vendor", "board_vendor"):
        text = tree.read_text(f"{_DMI}/{field}")
        if text is not None:
            out[field] = " ".join(text.split()).lower()
    return out


def _dmi_hypervisor(dmi: Mapping[str, str]) -> str | None:
    for field, pattern, name in _DMI_RULES:
        value = dmi.get(field, "")
        if not value or not re.search(pattern, value):
            continue
        if name == "hyperv" and "microsoft" not in dmi.get("sys_vendor", ""):
            continue  # "Virtual Machine" from another vendor is not Hyper-V
        return name
    return None


def _is_bare_metal_cloud(dmi: Mapping[str, str]) -> bool:
    # AWS bare-metal instance types end in ".metal" (e.g. "m5.metal", "c7i.metal-24xl").
    return dmi.get("sys_vendor") == "amazon ec2" and ".metal" in dmi.get("product_name", "")


def _xen_guest(tree: Tree) -> bool:
    kind = (tree.read_text("/sys/hypervisor/type") or "").strip().lower()
    if kind != "xen":
        return False
    caps = tree.read_text("/proc/xen/capabilities") or ""
    return "control_d" not in caps  # dom0 runs the hypervisor's control domain


def _acpi_hypervisor(tree: Tree) -> str | None:
    for table in ("DSDT", "FACP", "APIC"):
        data = tree.read_bytes(f"/sys/firmware/acpi/tables/{table}")
        if data is None or len(data) < 16:
            continue
        oem = data[10:16].decode("ascii", errors="replace").strip(" \x00").lower()
        if oem in _ACPI_OEMS:
            return _ACPI_OEMS[oem]
        return None  # tables were readable and do not name a hypervisor
    return None


def _pci_hypervisor(tree: Tree) -> str | None:
    base = "/sys/bus/pci/devices"
    found: set[str] = set()
    for device in tree.list_dir(base):
        vendor = (tree.read_text(f"{base}/{device}/vendor") or "").strip().lower()
        if vendor in _PCI_VENDORS:
            found.add(_PCI_VENDORS[vendor])
    for name in ("vmware", "virtualbox", "hyperv", "xen", "parallels", "kvm", "amazon"):
        if name in found:
            return name
    return None


def _cpu_flags(tree: Tree) -> set[str] | None:
    """The first processor's x86 flags, or None where cpuinfo has no flags line."""
    text = tree.read_text("/proc/cpuinfo")
    if text is None:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "flags":
            return set(value.lower().split())
    return None


def detect_hypervisor(root: Path | Tree = Path("/")) -> str | None:
    """The hypervisor this machine runs under, or None on bare metal.

    "unknown" when the CPU says it runs under a hypervisor and nothing names it.
    """
    tree = root if isinstance(root, Tree) else Tree(Path(root))
    dmi = _dmi_strings(tree)
    if _is_bare_metal_cloud(dmi):
        return None
    flags = _cpu_flags(tree)
    flagged = flags is not None and "hypervisor" in flags
    named = _dmi_hypervisor(dmi)
    if named == "kvm" and flags is not None and not flagged and dmi.get("sys_vendor") == "qemu":
        return "qemu"  # QEMU without KVM acceleration (emulation)
    if named:
        return named
    if _xen_guest(tree):
        return "xen"
    named = _acpi_hypervisor(tree)
    if named:
        return named
    if flagged:
        return _pci_hypervisor(tree) or "unknown"
    if flags is None:
        # Architectures without a hypervisor flag (ARM, ...): virtual devices tell.
        return _pci_hypervisor(tree)
    return None


# -- container ----------------------------------------------------------------------------

_CGROUP_RULES: tuple[tuple[str, str], ...] = (
    (r"/libpod|libpod-", "podman"),
    (r"/kubepods", "kubernetes"),
    (r"/docker/|docker-[0-9a-f]{12,}\.scope", "docker"),
    (r"cri-containerd|/containerd/", "containerd"),
    (r"/lxc/|lxc\.payload", "lxc"),
    (r"/machine\.slice/machine-.*\.scope", "systemd-nspawn"),
)

_MOUNT_ROOT_RULES: tuple[tuple[str, str], ...] = (
    (r"/var/lib/kubelet/pods/", "kubernetes"),
    (r"/containers/storage/", "podman"),
    (r"/docker/containers/", "docker"),
    (r"/var/lib/lxc/", "lxc"),
)


def _pid1_environment(tree: Tree) -> dict[str, str]:
    data = tree.read_bytes("/proc/1/environ")
    out: dict[str, str] = {}
    if data:
        for item in data.split(b"\x00"):
            key, sep, value = item.decode("utf-8", errors="replace").partition("=")
            if sep:
                out[key] = value
    return out


def _in_initial_pid_namespace(tree: Tree) -> bool:
    """PID 2 is the kernel's kthreadd only where the process tree is the machine's own."""
    comm = tree.read_text("/proc/2/comm")
    return comm is not None and comm.strip() == "kthreadd"


def detect_container(root: Path | Tree = Path("/")) -> str | None:
    """The container engine this process runs under ("docker", "podman", "lxc", ...), or None."""
    tree = root if isinstance(root, Tree) else Tree(Path(root))
    if tree.exists("/run/.containerenv"):
        text = tree.read_text("/run/.containerenv") or ""
        match = re.search(r'^engine="([a-z]+)', text, re.MULTILINE)
        return match.group(1) if match else "podman"
    declared = _pid1_environment(tree).get("container", "").strip().lower()
    if declared:
        return declared
    for path in ("/proc/1/cgroup", "/proc/self/cgroup"):
        text = tree.read_text(path) or ""
        for pattern, name in _CGROUP_RULES:
            if re.search(pattern, text):
                return name
    for path in ("/proc/self/mountinfo", "/proc/1/mountinfo"):
        text = tree.read_text(path) or ""
        roots = [f[3] for f in (line.split() for line in text.splitlines()) if len(f) > 4]
        for pattern, name in _MOUNT_ROOT_RULES:
            if any(re.search(pattern, r) for r in roots):
                return name
    if tree.exists("/proc/vz") and not tree.exists("/proc/bc"):
        return "openvz"
    if tree.exists("/.dockerenv") and not _in_initial_pid_namespace(tree):
        return "docker"
    return None


# -- session ------------------------------------------------------------------------------

_SESSION_NAMES = {
    "local": SessionKind.LOCAL,
    "remote-desktop": SessionKind.REMOTE_DESKTOP,
    "terminal-server": SessionKind.TERMINAL_SERVER,
}

# Variables terminal-server products set in each user session they host.
_TERMINAL_SERVER_MARKERS = ("XRDP_SESSION", "X2GO_SESSION", "TLSESSIONDATA", "NXSESSIONID")
_TERMINAL_SERVER_SERVICES = frozenset({"xrdp-sesman", "xrdp", "x2go", "thinlinc", "nxserver"})
_GRAPHICAL = frozenset({"x11", "wayland", "mir"})
# xrdp, X2Go and VNC servers number the displays they serve from 10 up; ssh forwarding
# also starts at 10 but as a TCP display ("localhost:10.0"), which is not a local one.
_FIRST_SERVED_DISPLAY = 10


def _logind_session(tree: Tree, session_id: str) -> dict[str, str]:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", session_id):
        return {}
    text = tree.read_text(f"/run/systemd/sessions/{session_id}") or ""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _local_display_number(display: str) -> int | None:
    match = re.fullmatch(r"(?:unix)?:(\d+)(?:\.\d+)?", display.strip())
    return int(match.group(1)) if match else None


def _terminal_session_id(environ: Mapping[str, str]) -> str:
    explicit = environ.get(SESSION_ID_VARIABLE, "").strip()
    if explicit:
        return explicit
    xdg = environ.get("XDG_SESSION_ID", "").strip()
    if xdg:
        return f"logind:{xdg}"
    display = environ.get("DISPLAY", "").strip()
    number = _local_display_number(display) if display else None
    if number is not None:
        return f"display:{number}"
    if display:
        return f"display:{display}"
    for marker in _TERMINAL_SERVER_MARKERS:
        value = environ.get(marker, "").strip()
        if value:
            return f"{marker.lower()}:{value}"
    return ""


def detect_session(
    root: Path | Tree = Path("/"), environ: Mapping[str, str] | None = None
) -> tuple[SessionKind, str]:
    """The kind of session this process runs in and, on a terminal server, its id.

    Raises LicentiaError(INVALID_PARAMETER) when LICENTIA_SESSION holds an unknown value.
    """
    tree = root if isinstance(root, Tree) else Tree(Path(root))
    env = os.environ if environ is None else environ

    def kind_with_id(kind: SessionKind) -> tuple[SessionKind, str]:
        if kind is SessionKind.TERMINAL_SERVER:
            return kind, _terminal_session_id(env)
        return kind, ""

    override = env.get(SESSION_VARIABLE, "").strip().lower()
    if override:
        if override not in _SESSION_NAMES:
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER,
                f"{SESSION_VARIABLE}={override!r} is not a session kind; "
                "use local, remote-desktop or terminal-server (or unset it)",
            )
        return kind_with_id(_SESSION_NAMES[override])

    if any(env.get(marker) for marker in _TERMINAL_SERVER_MARKERS):
        return kind_with_id(SessionKind.TERMINAL_SERVER)

    xdg = env.get("XDG_SESSION_ID", "").strip()
    record = _logind_session(tree, xdg) if xdg else {}
    if record:
        service = record.get("SERVICE", "").lower()
        remote = record.get("REMOTE", "0") == "1"
        graphical = record.get("TYPE", "").lower() in _GRAPHICAL
        if service in _TERMINAL_SERVER_SERVICES or (remote and graphical):
            return kind_with_id(SessionKind.TERMINAL_SERVER)
        if remote:
            return kind_with_id(SessionKind.REMOTE_DESKTOP)

    display = _local_display_number(env.get("DISPLAY", ""))
    if display is not None and display >= _FIRST_SERVED_DISPLAY and not record:
        return kind_with_id(SessionKind.TERMINAL_SERVER)

    if env.get("SSH_CONNECTION") or env.get("SSH_CLIENT") or env.get("SSH_TTY"):
        return kind_with_id(SessionKind.REMOTE_DESKTOP)
    if env.get("SESSIONNAME", "").upper().startswith("RDP-"):
        return kind_with_id(SessionKind.REMOTE_DESKTOP)
    return kind_with_id(SessionKind.LOCAL)


# -- all ----------------------------------------------------------------------------------


def detect_environment(
    root: Path | Tree = Path("/"), environ: Mapping[str, str] | None = None
) -> Environment:
    """Bare metal, VM or container, which hypervisor/engine, and the session kind."""
    tree = root if isinstance(root, Tree) else Tree(Path(root))
    hypervisor = detect_hypervisor(tree)
    container = detect_container(tree)
    if container:
        kind = MachineKind.CONTAINER
    elif hypervisor:
        kind = MachineKind.VM
    else:
        kind = MachineKind.BARE_METAL
    session, session_id = detect_session(tree, environ)
    return Environment(
        kind=kind,
        hypervisor=hypervisor,
        container=container,
        session=session,
        session_id=session_id,
    )
