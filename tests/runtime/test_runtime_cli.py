"""The runtime's commands as a user runs them: demo set-up, server list, configuration."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.machine_cli import command
from tests.runtime.harness import base_env


def run(root: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command(root), "--home", str(home), *args],
                          env=base_env(), capture_output=True, text=True, timeout=120)


def test_demo_sets_up_once_and_is_idempotent(tmp_path: Path, root: Path) -> None:
    home = tmp_path / "demo"
    first = run(root, home, "demo", "--no-serve")
    assert first.returncode == 0, first.stderr
    assert "license: firm 10001, product 7, quantity 1" in first.stdout
    assert (home / "demo-firm.pub").exists() and len(list((home / "containers").glob("*.lcsc"))) == 1
    again = run(root, home, "demo", "--no-serve")
    assert again.returncode == 0 and "already set up" in again.stdout
    assert len(list((home / "containers").glob("*.lcsc"))) == 1


def test_server_search_list_commands(tmp_path: Path, root: Path) -> None:
    home = tmp_path / "home"
    assert "empty" in run(root, home, "server", "list").stdout
    run(root, home, "server", "add", "lic1.example.org")
    run(root, home, "server", "add", "10.0.0.5:23000")
    run(root, home, "server", "add", "lic0.example.org", "--position", "1")
    assert run(root, home, "server", "list").stdout.split() == [
        "1.", "lic0.example.org:22350", "2.", "lic1.example.org:22350", "3.", "10.0.0.5:23000"]
    run(root, home, "server", "remove", "lic1.example.org")
    missing = run(root, home, "server", "remove", "lic1.example.org")
    assert missing.returncode == 2 and "error 101" in missing.stderr
    assert "lic1" not in run(root, home, "server", "list").stdout


def test_runtime_config_prints_defaults_and_refuses_bad_settings(tmp_path: Path, root: Path) -> None:
    home = tmp_path / "home"
    defaults = run(root, home, "runtime", "config", "--defaults").stdout
    assert "[network]" in defaults and "# client_timeout = 120.0" in defaults
    home.mkdir()
    (home / "runtime.toml").write_text("[network]\nclient_timeout = 1\n")
    bad = run(root, home, "runtime", "serve")
    assert bad.returncode == 2 and "at least 5" in bad.stderr
    nothing = run(root, home, "sessions")
    assert nothing.returncode == 2 and "error 110" in nothing.stderr
