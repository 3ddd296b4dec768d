"""`licentia acl …` as an administrator runs it, on a real home."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

OPTIONS = Path(__file__).parent / "vendor.opt"


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LICENTIA_")}


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "licentia.cli.main", "--home", str(home), *args],
                          env=env(), capture_output=True, text=True, timeout=120)


def ok(home: Path, *args: str) -> str:
    done = run(home, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def check(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(home, "acl", "check", "--firm", "10001", "--product", "7", "--quantity", "10", *args)


def seed(home: Path) -> None:
    ok(home, "acl", "add", "support", "--scope", "product 10001:7", "--group", "support", "--reserve", "3")
    ok(home, "acl", "add", "development", "--scope", "product 10001:7", "--group", "development", "--reserve", "4")


def test_the_seed_example_from_the_command_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert "the access list is empty" in ok(home, "acl", "list")
    seed(home)
    listed = ok(home, "acl", "list")
    assert "[product 10001:7]" in listed and "group support" in listed and "group development" in listed
    # a fourth support user takes a free seat
    fourth = check(home, "--user", "s4", "--group", "support", "--held", "support=3")
    assert fourth.returncode == 0 and 'charged to rule "support"' in fourth.stdout
    # the free seats gone (3 taken by others, 1 by a fourth support user): only reserved ones remain
    outsider = check(home, "--user", "carl", "--held", "free=2", "--held", "support=4")
    assert outsider.returncode == 2 and "error 1300" in outsider.stderr
    assert 'rule "development"' in outsider.stderr and "user carl matches none" in outsider.stderr
    dev = check(home, "--user", "dina", "--group", "development", "--held", "free=2", "--held", "support=4")
    assert dev.returncode == 0 and 'charged to rule "development"' in dev.stdout
    full = check(home, "--user", "dina", "--group", "development", "--held", "free=3", "--held", "support=3",
                 "--held", "development=4")
    assert full.returncode == 2 and "error 212" in full.stderr


def test_deny_rules_defaults_and_removal(tmp_path: Path) -> None:
    home = tmp_path / "home"
    seed(home)
    ok(home, "acl", "add", "no-guests", "--subnet", "192.168.50.0/24", "--deny", "--position", "1")
    refused = check(home, "--user", "gus", "--address", "192.168.50.7")
    assert refused.returncode == 2 and 'rule "no-guests" (deny subnet 192.168.50.0/24 at server)' in refused.stderr
    ok(home, "acl", "default", "product 10001:7", "deny")
    nobody = check(home, "--user", "carl")
    assert nobody.returncode == 2 and "default action at product 10001:7 is deny" in nobody.stderr
    assert check(home, "--user", "sam", "--group", "support").returncode == 0
    ok(home, "acl", "remove", "no-guests")
    ok(home, "acl", "default", "product 10001:7", "unset")
    assert check(home, "--user", "gus", "--address", "192.168.50.7").returncode == 0
    missing = run(home, "acl", "remove", "no-guests")
    assert missing.returncode == 2 and "error 200" in missing.stderr
    twice = run(home, "acl", "add", "support", "--user", "x")
    assert twice.returncode == 2 and "exists already" in twice.stderr
    doc = tomllib.loads((home / "acl.toml").read_text())
    assert [r["name"] for r in doc["rule"]] == ["support", "development"]


def test_a_broken_file_is_refused_with_the_mistake_named(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "acl.toml").write_text('[[rule]]\nname = "a"\ngroup = "x"\nreserve = "three"\n')
    bad = run(home, "acl", "list")
    assert bad.returncode == 2 and "error 215" in bad.stderr and "rule 1 (a)" in bad.stderr
    (home / "acl.toml").write_text("[[rule]\n")
    bad = run(home, "acl", "add", "b", "--user", "y")
    assert bad.returncode == 2 and "is not valid TOML" in bad.stderr
    assert (home / "acl.toml").read_text() == "[[rule]\n"  # nothing written over it


def test_edits_at_the_same_time_lose_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    procs = [subprocess.Popen([sys.executable, "-m", "licentia.cli.main", "--home", str(home), "acl", "add",
                               f"r{i}", "--user", f"u{i}"], env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for i in range(6)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read() if p.stderr else ""
    names = {r["name"] for r in tomllib.loads((home / "acl.toml").read_text())["rule"]}
    assert names == {f"r{i}" for i in range(6)}


def test_import_flexnet_options(tmp_path: Path) -> None:
    home = tmp_path / "home"
    dry = run(home, "acl", "import-flexnet", str(OPTIONS), "--feature", "cad_pro=10001:7",
              "--feature", "viewer=10001:8", "--dry-run")
    assert dry.returncode == 0 and "opt7-reserve-support" in dry.stdout and not (home / "acl.toml").exists()
    out = ok(home, "acl", "import-flexnet", str(OPTIONS), "--feature", "cad_pro=10001:7",
             "--feature", "viewer=10001:8")
    assert "imported 8 rules and 1 default" in out
    assert "not translated (5)" in out and "vendor.opt:16: LINGER" in out
    assert check(home, "--user", "eve").returncode == 2
    support = check(home, "--user", "dave", "--held", "free=3")
    assert support.returncode == 0 and "opt7-reserve-support" in support.stdout
    again = run(home, "acl", "import-flexnet", str(OPTIONS), "--feature", "cad_pro=10001:7")
    assert again.returncode == 2 and "already has rules named" in again.stderr
    ok(home, "acl", "import-flexnet", str(OPTIONS), "--feature", "cad_pro=10001:7", "--replace")
