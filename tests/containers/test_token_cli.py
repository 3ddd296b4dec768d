"""The token container through the real `licentia` command, as docs/token.md tells it."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.machine_cli import command
from tests.machines import build, workstation

from licentia.containers import token as tk
from tokens import TokenStore, softhsm_store

FIRM = "10001"


@pytest.fixture
def token_store() -> Iterator[TokenStore]:
    """A SoftHSM2 token directory of this test's own, removed afterwards."""
    with softhsm_store() as store:
        yield store


class Cli:
    def __init__(self, store: TokenStore, home: Path, machine_root: Path) -> None:
        self.machine_root = machine_root
        self.env = {
            **store.env,
            "LICENTIA_HOME": str(home),
            tk.LOCK_DIR_ENV: str(store.directory / "locks"),
        }
        for name in ("LICENTIA_PKCS11_MODULE", "LICENTIA_PIN", "LICENTIA_PIN_FILE"):
            self.env.pop(name, None)

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*command(self.machine_root), *args],
            env=self.env, capture_output=True, text=True, timeout=120,
        )
        if ok:
            assert proc.returncode == 0, proc.stderr
        return proc


@pytest.fixture
def cli(token_store: TokenStore, tmp_path: Path) -> Cli:
    return Cli(token_store, tmp_path / "home", build(workstation(), tmp_path / "machine"))


@pytest.mark.slow
def test_token_container_tour(cli: Cli, token_store: TokenStore, tmp_path: Path) -> None:
    token_store.add_token("lic", pin="4321")
    pin = tmp_path / "pin"
    pin.write_text("4321\n")
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse battery staple\n")

    # Nothing configured yet: no module is loaded, no token listed.
    assert "no containers" in cli.run("container", "list").stdout

    cli.run("vendor", "init", "--firm-code", FIRM, "--name", "Acme", "--passphrase-file", str(passphrase))
    made = cli.run(
        "container", "create", "--token", "--module", token_store.module, "--label", "lic",
        "--pin-file", str(pin),
    )
    serial = made.stdout.strip()
    assert serial.startswith("3-") and "not extractable" in made.stderr

    listing = cli.run("container", "list").stdout  # the module was recorded at creation
    assert serial in listing and "token" in listing and "not claimed" in listing

    cli.run("update", "request", serial, "--firm-code", FIRM, "-o", str(tmp_path / "req.lcrq"))
    cli.run(
        "vendor", "issue", str(tmp_path / "req.lcrq"), "--product", "7", "--quantity", "3",
        "--units", "100", "--passphrase-file", str(passphrase), "-o", str(tmp_path / "up.lcup"),
    )
    applied = cli.run("update", "apply", str(tmp_path / "up.lcup"))
    assert "added item 1 (product 7)" in applied.stdout and (tmp_path / "up.receipt").exists()

    shown = cli.run("container", "show", serial).stdout
    assert "status   ok" in shown and "item 1: firm 10001 product 7  valid" in shown
    assert "units 100/100" in shown
    data = json.loads(cli.run("container", "show", serial, "--json").stdout)
    assert data["kind"] == "token" and data["token_label"] == "lic" and len(data["items"]) == 1

    cli.run("container", "set-user-data", serial, "--firm-code", FIRM, "--item-id", "1", "--text", "seat A")
    assert "text: seat A" in cli.run("container", "show", serial).stdout

    again = cli.run("update", "apply", str(tmp_path / "up.lcup"), ok=False)
    assert again.returncode == 2 and "error 229" in again.stderr


def test_create_refuses_a_wrong_pin_and_a_token_named_twice(cli: Cli, token_store: TokenStore, tmp_path: Path) -> None:
    token_store.add_token("lic", pin="4321")
    bad = tmp_path / "bad"
    bad.write_text("0000\n")
    refused = cli.run(
        "container", "create", "--token", "--module", token_store.module, "--label", "lic",
        "--pin-file", str(bad), ok=False,
    )
    assert refused.returncode == 2
    assert "error 1100" in refused.stderr and "wrong PIN for token 'lic'" in refused.stderr
    both = cli.run("container", "create", "--token", "--label", "lic", "--slot", "1", ok=False)
    assert both.returncode == 2 and "not allowed with" in both.stderr
    neither = cli.run("container", "create", "--token", "--pin-file", str(bad), ok=False)
    assert neither.returncode == 2 and "--slot N or --label L" in neither.stderr
    assert not os.path.exists(tmp_path / "home" / "containers" / "tokens.json")
