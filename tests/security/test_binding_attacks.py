"""The binding attacks, tried with the shipped `licentia` command in real processes.

1. A copied container and LICENTIA_MACHINE_ROOT pointing at copied machine files: the
   shipped command no longer reads the variable, so the copy stays broken.
2. A clone of this very machine type: in a mount namespace, this machine with its own
   machine-id, MAC addresses and disk serial replaced (CPU, memory, host name kept).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.machine_cli import command
from tests.machines import build, workstation

SHIPPED = [sys.executable, "-m", "licentia.cli.main"]


def run(argv: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LICENTIA_")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=300,
                          env={**base, "LICENTIA_HOME": str(home), **env})


def test_a_copied_container_and_the_machine_root_variable_do_not_open(tmp_path: Path) -> None:
    machine = build(workstation(), tmp_path / "victim-machine")
    home = tmp_path / "victim"
    made = run([*command(machine), "container", "create", "--binding", "loose"], home)
    assert made.returncode == 0, made.stderr
    serial = made.stdout.strip()
    assert "status   ok" in run([*command(machine), "container", "show", serial], home).stdout
    # the attacker copies the container and the victim's machine files
    copy = tmp_path / "attacker"
    shutil.copytree(home / "containers", copy / "containers")
    stolen = shutil.copytree(machine, tmp_path / "copied-machine-files", symlinks=True)
    shown = run([*SHIPPED, "container", "show", serial], copy,
                LICENTIA_MACHINE_ROOT=str(stolen), LICENTIA_BINDING_COST="4")
    assert shown.returncode == 2, shown.stdout
    assert "status   broken" in shown.stdout and "error 263" in shown.stdout


def test_the_shipped_command_binds_at_the_floor_whatever_the_environment(tmp_path: Path) -> None:
    from licentia.containers.soft import read_header
    from licentia.crypto import fuzzy

    made = run([*SHIPPED, "container", "create", "--binding", "medium"], tmp_path / "home",
               LICENTIA_BINDING_COST="4")
    assert made.returncode == 0, made.stderr
    (path,) = (tmp_path / "home" / "containers").glob("*.lcsc")
    info = fuzzy.describe(read_header(path).binding)
    assert info.cost >= fuzzy.FLOOR_COST and info.version == fuzzy.VERSION


def _can_unshare() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "--mount", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root and mount namespaces")
def test_a_clone_of_this_machine_type_does_not_open(tmp_path: Path) -> None:
    from licentia.binding import collect_fingerprint

    unique = [p.name for p in collect_fingerprint(Path("/"), environ={}).properties if p.weight > 0]
    home = tmp_path / "home"
    made = run([*SHIPPED, "container", "create", "--binding", "loose"], home)
    assert made.returncode == 0, made.stderr
    serial = made.stdout.strip()
    # the same machine, with its own identities replaced by a clone's
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    mounts: list[tuple[str, str]] = []

    def fake(target: str, text: str) -> None:
        if os.path.exists(target):
            source = fakes / re.sub(r"\W", "_", target)
            source.write_text(text)
            mounts.append((str(source), target))

    fake("/etc/machine-id", "5e1f2a3b4c5d6e7f8091a2b3c4d5e6f7\n")
    fake("/var/lib/dbus/machine-id", "5e1f2a3b4c5d6e7f8091a2b3c4d5e6f7\n")
    for i, nic in enumerate(sorted(os.listdir("/sys/class/net"))):
        fake(f"/sys/class/net/{nic}/address", f"52:54:00:00:c1:{i:02x}\n")
    for disk in os.listdir("/sys/block"):
        for rel in ("serial", "device/serial", "wwid", "device/wwid"):
            fake(f"/sys/block/{disk}/{rel}", f"CLONE{disk}\n")
    script = "; ".join(f"mount --bind {s} {t}" for s, t in mounts)
    if os.path.isdir("/dev/disk/by-id"):
        script += "; mount -t tmpfs none /dev/disk/by-id"
    inner = " ".join([*SHIPPED, "container", "show", serial])
    shown = run(["unshare", "--mount", "sh", "-c", f"{script}; exec {inner}"], home)
    assert "status   broken" in shown.stdout, (unique, shown.stdout, shown.stderr)
    # and the original machine still opens it
    assert "status   ok" in run([*SHIPPED, "container", "show", serial], home).stdout
