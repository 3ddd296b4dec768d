"""The README's tour, run as a user would: the real `licentia` command in subprocesses.

The machine is a synthetic tree (tests/machines.py) so copying a container to "another
machine" is a second tree, read by the same collectors.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from tests.machine_cli import command
from tests.machines import build, with_disk_nic_cpu_replaced, workstation

from licentia.binding import collect_fingerprint
from licentia.containers.soft import SoftContainer

FIRM = "10001"


class Cli:
    def __init__(self, home: Path, machine_root: Path) -> None:
        self.home = home
        self.machine_root = machine_root
        self.env = dict(os.environ, LICENTIA_HOME=str(home))

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*command(self.machine_root), *args], env=self.env,
                              capture_output=True, text=True, timeout=120)
        if ok:
            assert proc.returncode == 0, proc.stderr
        return proc


@pytest.fixture
def tour(tmp_path: Path) -> tuple[Cli, str, Path]:
    cli = Cli(tmp_path / "home", build(workstation(), tmp_path / "machine"))
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse battery staple\n")
    cli.run("vendor", "init", "--firm-code", FIRM, "--name", "Acme", "--passphrase-file", str(passphrase))
    serial = cli.run("container", "create", "--binding", "medium").stdout.strip()
    cli.run("update", "request", serial, "--firm-code", FIRM, "-o", str(tmp_path / "req.lcrq"))
    cli.run("vendor", "issue", str(tmp_path / "req.lcrq"), "--product", "7", "--quantity", "3",
            "--expires", "2099-12-31", "--units", "100", "--features", "0x0f", "--text", "Acme Pro",
            "--versions", "2.0-3", "--passphrase-file", str(passphrase), "-o", str(tmp_path / "up.lcup"))
    applied = cli.run("update", "apply", str(tmp_path / "up.lcup"))
    assert "added item 1 (product 7)" in applied.stdout
    assert (tmp_path / "up.receipt").exists()
    return cli, serial, tmp_path


def test_tour_item_is_valid(tour: tuple[Cli, str, Path]) -> None:
    cli, serial, _ = tour
    out = cli.run("container", "show", serial).stdout
    assert "status   ok" in out
    assert "item 1: firm 10001 product 7  valid" in out
    assert "units 100/100" in out and "versions 2.0-3" in out
    listing = cli.run("container", "list").stdout
    assert serial in listing and " ok " in listing


def test_same_update_twice_is_refused_with_a_clear_message(tour: tuple[Cli, str, Path]) -> None:
    cli, _, tmp = tour
    again = cli.run("update", "apply", str(tmp / "up.lcup"), ok=False)
    assert again.returncode == 2
    assert "error 229" in again.stderr and "already applied" in again.stderr


def test_container_copied_to_another_machine_is_broken(tour: tuple[Cli, str, Path]) -> None:
    cli, serial, tmp = tour
    other = Cli(tmp / "other-home", build(with_disk_nic_cpu_replaced(workstation()), tmp / "other-machine"))
    (other.home / "containers").mkdir(parents=True)
    for f in (cli.home / "containers").glob("*.lcsc"):
        shutil.copy(f, other.home / "containers" / f.name)
    show = other.run("container", "show", serial, ok=False)
    assert show.returncode == 2
    assert "status   broken" in show.stdout
    assert "error 263" in show.stdout and "no longer matches this machine" in show.stdout


def test_flipped_byte_makes_the_container_invalid(tour: tuple[Cli, str, Path]) -> None:
    cli, serial, _ = tour
    path = next((cli.home / "containers").glob("*.lcsc"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    show = cli.run("container", "show", serial, ok=False)
    assert show.returncode == 2
    assert "status   invalid" in show.stdout and "error 264" in show.stdout


def test_clock_set_back_is_reported(tour: tuple[Cli, str, Path]) -> None:
    cli, serial, _ = tour
    # The container once saw a time two days ahead of the system clock: as if the clock
    # had been set back by two days since.
    fp = collect_fingerprint(cli.machine_root, environ={})
    path = next((cli.home / "containers").glob("*.lcsc"))
    SoftContainer.open(path, fp).observe_clock(int(time.time()) + 2 * 86400)
    out = cli.run("container", "show", serial).stdout
    assert "status   clock manipulated" in out
    assert "error 88" in out and "signed time" in out


def test_bad_input_gets_clear_errors(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home", build(workstation(), tmp_path / "machine"))
    r = cli.run("container", "show", "nonsense", ok=False)
    assert r.returncode == 2 and "error 105" in r.stderr and "MASK-NUMBER" in r.stderr
    r = cli.run("container", "create", "--binding", "wobbly", ok=False)
    assert r.returncode == 2 and "loose, medium or strict" in r.stderr
    (tmp_path / "junk").write_bytes(b"junk")
    r = cli.run("update", "apply", str(tmp_path / "junk"), ok=False)
    assert r.returncode == 2 and "error 264" in r.stderr
    r = cli.run("vendor", "show", ok=False)
    assert r.returncode == 2 and "vendor init" in r.stderr
