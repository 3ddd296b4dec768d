"""Homes another user could change are refused, with what to fix: the check itself (every
mode, owners), and the attack on the runtime and central as a user starts them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from licentia.homes import check_private
from licentia.model import ErrorCode, LicentiaError

EXE = [sys.executable, "-m", "licentia.cli.main"]
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("LICENTIA_")}, "LICENTIA_BINDING_COST": "4"}
NOBODY = 65534


@settings(max_examples=120, deadline=None)
@given(mode=st.integers(0, 0o777), secret=st.booleans(), directory=st.booleans())
def test_refused_exactly_when_others_can_write_or_read_a_secret(tmp_path_factory: pytest.TempPathFactory,
                                                                mode: int, secret: bool, directory: bool) -> None:
    base = tmp_path_factory.mktemp("modes")
    path = base / "x"
    if directory:
        path.mkdir()
    else:
        path.write_text("x")
    os.chmod(path, mode)
    refused = bool(mode & 0o022) or (secret and bool(mode & 0o077))
    try:
        check_private(path, "thing", secret=secret)
    except LicentiaError as exc:
        assert refused, oct(mode)
        assert exc.code == ErrorCode.SECURITY_PROBLEM and str(path) in exc.message and exc.hint
        assert "chmod" in exc.hint
    else:
        assert not refused, oct(mode)


def test_missing_paths_pass(tmp_path: Path) -> None:
    check_private(tmp_path / "not-yet", "runtime home")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_a_file_owned_by_another_user_is_refused_even_if_private(tmp_path: Path) -> None:
    path = tmp_path / "runtime.toml"
    path.write_text("")
    os.chmod(path, 0o600)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(LicentiaError, match=r"is owned by .*uid 65534"):
        check_private(path, "runtime configuration")
    link = tmp_path / "link"  # a link another user owns, to a file of ours
    mine = tmp_path / "mine"
    mine.write_text("")
    link.symlink_to(mine)
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(LicentiaError, match="owned by"):
        check_private(link, "runtime configuration")


def _serve(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # before the check, these started serving: the timeout is what a missing refusal looks like
    return subprocess.run([*EXE, "--home", str(home), *args], capture_output=True, text=True, env=ENV, timeout=60)


def _runtime_home(tmp_path: Path) -> Path:
    home = tmp_path / "rt"
    home.mkdir(mode=0o755)
    return home


def test_runtime_refuses_a_home_others_can_write_with_a_planted_configuration(tmp_path: Path) -> None:
    home = _runtime_home(tmp_path)
    (home / "runtime.toml").write_text('[http]\naddress = "0.0.0.0"\n')
    os.chmod(home, 0o777)
    r = _serve(home, "runtime", "serve", "--no-network", "--http-port", "0")
    assert r.returncode != 0
    assert "runtime home" in r.stderr and "writable by group and others" in r.stderr and "chmod go-w" in r.stderr
    assert not (home / "runtime.json").exists()


def test_runtime_refuses_a_configuration_file_others_can_write(tmp_path: Path) -> None:
    home = _runtime_home(tmp_path)
    cfg = home / "runtime.toml"
    cfg.write_text('[http]\naddress = "0.0.0.0"\n')
    os.chmod(cfg, 0o666)
    r = _serve(home, "runtime", "serve", "--no-network", "--http-port", "0")
    assert r.returncode != 0 and "runtime configuration" in r.stderr and "mode 0666" in r.stderr


def test_runtime_refuses_a_signing_key_others_can_read(tmp_path: Path) -> None:
    home = _runtime_home(tmp_path)
    (home / "state").mkdir(mode=0o700)
    key = home / "state" / "runtime.key"
    key.write_bytes(b"\0" * 32)
    os.chmod(key, 0o644)
    r = _serve(home, "runtime", "serve", "--no-network", "--http-port", "0")
    assert r.returncode != 0 and "runtime signing key" in r.stderr and "chmod 600" in r.stderr


def test_central_refuses_a_home_others_can_write(tmp_path: Path) -> None:
    home = tmp_path / "vendor-home"
    passfile = tmp_path / "pass"
    passfile.write_text("correct horse battery\n")
    subprocess.run([*EXE, "--home", str(home), "vendor", "init", "--firm-code", "6000010", "--name", "Example Firm",
                    "--passphrase-file", str(passfile)], check=True, capture_output=True, env=ENV, timeout=120)
    (home / "central").mkdir(mode=0o700)
    os.chmod(home / "central", 0o770)
    r = _serve(home, "central", "serve", "--port", "1", "--passphrase-file", str(passfile))
    assert r.returncode != 0 and "central home" in r.stderr and "writable by its group" in r.stderr
    os.chmod(home / "central", 0o700)
    os.chmod(passfile, 0o622)
    r = _serve(home, "central", "serve", "--port", "1", "--passphrase-file", str(passfile))
    assert r.returncode != 0 and "passphrase file" in r.stderr
    assert stat.S_IMODE((home / "central").stat().st_mode) == 0o700
