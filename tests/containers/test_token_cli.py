"""The token container through the real `licentia` command, as docs/token.md tells it."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pkcs11 import TokenFlag
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


def _change_pin(store: TokenStore, label: str, old: str, new: str) -> None:
    from licentia.containers.pkcs11 import open_session, reinitialize

    reinitialize(store.module)
    with open_session(store.module, label=label, pin=old) as session:
        session.change_pin(old, new)


def _pin_state(store: TokenStore, label: str) -> str:
    from licentia.containers.pkcs11 import list_tokens, reinitialize

    reinitialize(store.module)  # see what other processes did to the token's flags
    (info,) = [t for t in list_tokens(store.module) if t.label == label]
    return info.pin_state


def test_the_pin_the_user_gives_wins_over_the_recorded_one(cli: Cli, token_store: TokenStore, tmp_path: Path) -> None:
    token_store.add_token("lic", pin="4321")
    old, new, wrong = tmp_path / "old", tmp_path / "new", tmp_path / "wrong"
    old.write_text("4321\n")
    new.write_text("8765\n")
    wrong.write_text("0000\n")
    serial = cli.run("container", "create", "--token", "--module", token_store.module, "--label", "lic",
                     "--pin-file", str(old)).stdout.strip()
    _change_pin(token_store, "lic", "4321", "8765")  # the recorded file now holds the old PIN

    # --pin-file wins over the recorded file: the old PIN is never sent (no try is used up)
    assert "status   ok" in cli.run("container", "show", serial, "--pin-file", str(new)).stdout
    assert _pin_state(token_store, "lic") == "ok"
    listing = cli.run("container", "list", "--pin-file", str(new)).stdout
    assert serial in listing and "not claimed" in listing
    cli.run("container", "set-user-data", serial, "--firm-code", FIRM, "--item-id", "1", "--text", "x",
            "--pin-file", str(new), ok=False)  # no item 1: refused by the content, not by the PIN
    assert _pin_state(token_store, "lic") == "ok"
    cli.run("update", "request", serial, "--firm-code", FIRM, "-o", str(tmp_path / "r.lcrq"), "--pin-file", str(new))
    assert _pin_state(token_store, "lic") == "ok"

    # $LICENTIA_PIN_FILE wins over the recorded file; --pin-file wins over $LICENTIA_PIN_FILE
    cli.env["LICENTIA_PIN_FILE"] = str(new)
    assert "status   ok" in cli.run("container", "show", serial).stdout
    cli.run("update", "request", serial, "--firm-code", FIRM, "-o", str(tmp_path / "r2.lcrq"))
    cli.env["LICENTIA_PIN_FILE"] = str(wrong)
    assert "status   ok" in cli.run("container", "show", serial, "--pin-file", str(new)).stdout
    assert _pin_state(token_store, "lic") == "ok"
    del cli.env["LICENTIA_PIN_FILE"]
    cli.env["LICENTIA_PIN"] = "8765"
    assert "status   ok" in cli.run("container", "show", serial).stdout
    del cli.env["LICENTIA_PIN"]

    # nothing given: the recorded file is used (and its stale PIN refused, once)
    shown = cli.run("container", "show", serial, ok=False)
    assert shown.returncode == 2 and "PIN refused" in shown.stdout


def test_token_lock_files_are_private_and_never_follow_links(cli: Cli, token_store: TokenStore, tmp_path: Path) -> None:
    from licentia.containers.token import default_lock_dir

    token_store.add_token("lic", pin="4321")
    pin = tmp_path / "pin"
    pin.write_text("4321\n")
    del cli.env[tk.LOCK_DIR_ENV]
    home = tmp_path / "home"
    serial = cli.run("container", "create", "--token", "--module", token_store.module, "--label", "lic",
                     "--pin-file", str(pin)).stdout.strip()
    lock_dir = default_lock_dir(home)  # /run/licentia for root, else the home's locks directory
    assert lock_dir in (tk.RUN_LOCK_DIR, home / "locks")
    assert os.stat(lock_dir).st_mode & 0o022 == 0
    from licentia.containers.pkcs11 import list_tokens, reinitialize

    reinitialize(token_store.module)
    (info,) = list_tokens(token_store.module)
    lock = tk._lock_path(lock_dir, info)
    assert (lock.lstat().st_mode & 0o777) == 0o600 and lock.is_file() and not lock.is_symlink()

    # An unprivileged user's runtime (no /run/licentia of its own) uses its home.
    other = tmp_path / "run-of-another"
    other.mkdir()
    os.chown(other, 65534, 65534)
    assert default_lock_dir(home, run_dir=other / "licentia") == home / "locks"

    # A lock directory other users can write is refused, and nothing is done on the token.
    shared = tmp_path / "shared-locks"
    shared.mkdir()
    shared.chmod(0o1777)
    cli.env[tk.LOCK_DIR_ENV] = str(shared)
    refused = cli.run("update", "request", serial, "--firm-code", FIRM, "-o", str(tmp_path / "r.lcrq"), ok=False)
    assert refused.returncode == 2 and "error 109" in refused.stderr
    assert "writable by other users" in refused.stderr and f"chmod go-w {shared}" in refused.stderr
    assert not (tmp_path / "r.lcrq").exists()

    # A link planted where a lock file goes is not followed: no file appears at its target.
    private = tmp_path / "private-locks"
    private.mkdir(mode=0o700)
    cli.env[tk.LOCK_DIR_ENV] = str(private)
    cli.run("container", "show", serial, "--pin-file", str(pin))
    (made,) = private.iterdir()
    made.unlink()
    victim = tmp_path / "victim"
    made.symlink_to(victim)
    refused = cli.run("container", "show", serial, "--pin-file", str(pin), ok=False)
    assert refused.returncode == 2 and "cannot be opened safely" in refused.stdout + refused.stderr
    assert not victim.exists()


def test_wrong_pins_entered_are_a_warning_and_only_a_locked_pin_is_not_tried(
    cli: Cli, token_store: TokenStore, tmp_path: Path
) -> None:
    from tests.containers.test_token import _report_flags

    token_store.add_token("lic", pin="4321")
    pin, wrong = tmp_path / "pin", tmp_path / "wrong"
    pin.write_text("4321\n")
    wrong.write_text("0000\n")
    serial = cli.run("container", "create", "--token", "--module", token_store.module, "--label", "lic",
                     "--pin-file", str(pin)).stdout.strip()
    refused = cli.run("container", "show", serial, "--pin-file", str(wrong), ok=False)
    assert refused.returncode == 2 and "PIN refused" in refused.stdout and "error 1100" in refused.stdout
    assert _pin_state(token_store, "lic") == "count low"  # SoftHSM2 after one wrong PIN

    # Someone entered a wrong PIN: the right one is still tried, once, and the listing says tries were used.
    listing = cli.run("container", "list").stdout
    (line,) = [x for x in listing.splitlines() if x.startswith(serial)]
    assert " ok " in line and "not claimed" in line and "tries were used" in line, listing
    assert _pin_state(token_store, "lic") == "ok"  # the good login reset it
    cli.run("container", "show", serial, "--pin-file", str(wrong), ok=False)
    shown = cli.run("container", "show", serial).stdout
    assert "status   ok" in shown and "CKF_USER_PIN_COUNT_LOW" in shown

    # One try left: a listing (and a show with the recorded PIN) does not risk it; a PIN given for this show is tried.
    _report_flags(token_store, TokenFlag.USER_PIN_FINAL_TRY)
    listing = cli.run("container", "list").stdout
    assert "PIN not tried" in listing and "ONE PIN try left" in listing
    assert "PIN not tried" in cli.run("container", "show", serial, ok=False).stdout
    assert "status   ok" in cli.run("container", "show", serial, "--pin-file", str(pin)).stdout

    # A locked PIN is never tried: 1101, in the listing and in show.
    _report_flags(token_store, TokenFlag.USER_PIN_LOCKED)
    listing = json.loads(cli.run("container", "list", "--json").stdout)
    (row,) = [r for r in listing if r["serial"] == serial]
    assert row["status"] == "PIN locked" and "no PIN was tried" in row["detail"]
    shown = cli.run("container", "show", serial, "--pin-file", str(pin), ok=False)
    assert shown.returncode == 2 and "PIN locked" in shown.stdout and "error 1101" in shown.stdout
