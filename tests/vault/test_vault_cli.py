"""`licentia vault …` end to end: the commands a user types, on throw-away SoftHSM2 tokens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from licentia.cli.main import main
from tokens import TokenStore

TIMEOUT = 60


@pytest.fixture
def cli(token_store: TokenStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TokenStore:
    for label in ("ca", "dev"):
        token_store.add_token(label)
    monkeypatch.setenv("LICENTIA_PIN", "1234")
    monkeypatch.setenv("LICENTIA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LICENTIA_PKCS11_MODULE", raising=False)
    monkeypatch.chdir(tmp_path)
    return token_store


def run(capsys: pytest.CaptureFixture[str], *argv: str, status: int = 0) -> tuple[str, str]:
    got = main(["vault", *argv])
    out, err = capsys.readouterr()
    assert got == status, f"exit {got}: {out}{err}"
    return out, err


def test_walk_through(cli: TokenStore, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out, _ = run(capsys, "tokens")
    assert "label 'ca'" in out and "label 'dev'" in out
    _, err = run(capsys, "list", "--token", "dev", status=2)
    assert "error 1107" in err and "licentia vault init" in err
    run(capsys, "init", "--token", "ca")
    out, _ = run(capsys, "init", "--token", "dev")
    assert "mode vendor" in out

    # option 1
    run(
        capsys,
        "ca-init",
        "root",
        "--token",
        "ca",
        "--subject",
        "CN=Root,O=Example",
        "--out",
        "ca.pem",
    )
    assert (tmp_path / "ca.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    out, _ = run(capsys, "keygen", "web", "--token", "dev")
    assert "made in token 'dev'" in out
    run(capsys, "csr", "web", "--token", "dev", "--subject", "CN=localhost",
        "--dns", "localhost", "--ip", "127.0.0.1", "-o", "web.csr")  # fmt: skip
    _, err = run(
        capsys, "sign", "web.csr", "--token", "ca", "--ca", "root", "--days", "7", "-o", "web.pem"
    )
    assert "issued CN=localhost" in err
    out, _ = run(capsys, "import", "web.pem", "--token", "dev")
    assert "key+certificate" in out
    run(capsys, "import", "ca.pem", "--token", "dev", "--label", "root", "--ca")
    out, _ = run(capsys, "export", "web", "--token", "dev")
    assert out.encode() == (tmp_path / "web.pem").read_bytes()
    out, _ = run(capsys, "uri", "web", "--token", "dev")
    assert out.strip() == "pkcs11:token=dev;object=web;type=private"
    out, _ = run(capsys, "openssl-conf")
    assert "engine_id = pkcs11" in out and f"MODULE_PATH = {cli.module}" in out

    # option 2
    (tmp_path / "pw").write_text("p12-secret\n")
    _, err = run(capsys, "export-pkcs12", "--token", "ca", "--ca", "root", "--subject", "CN=field-engineer",
                 "--password-file", "pw", "-o", "fe.p12")  # fmt: skip
    assert "WARNING" in err and "travels" in err
    assert (tmp_path / "fe.p12").stat().st_mode & 0o077 == 0
    _, err = run(capsys, "import-pkcs12", "fe.p12", "--token", "dev", "--password-file", "pw")
    assert "WARNING" in err

    # option 3
    out, _ = run(capsys, "request", "--token", "dev", "-o", "dev.lvr")
    assert "transport key SHA-256" in out
    out, _ = run(capsys, "package", "dev.lvr", "--token", "ca", "--ca", "root", "--subject", "CN=plc",
                 "--label", "plc", "-o", "plc.lvp")  # fmt: skip
    assert "for token 'dev'" in out
    out, _ = run(capsys, "unpackage", "plc.lvp", "--token", "dev")  # trusts the imported root
    assert "plc" in out

    out, _ = run(capsys, "list", "--token", "dev", "--json")
    listing = json.loads(out)
    roles = {e["label"]: e["role"] for e in listing["entries"]}
    assert roles == {
        "web": "key+certificate",
        "field-engineer": "key+certificate",
        "plc": "key+certificate",
        "root": "trusted CA",
    }
    made_inside = {e["label"]: e["key_made_in_token"] for e in listing["entries"]}
    assert made_inside["web"] is True and made_inside["plc"] is False

    out, _ = run(capsys, "delete", "web", "--token", "dev")
    assert "deleted 'web'" in out
    _, err = run(capsys, "delete", "web", "--token", "dev", status=2)
    assert "error 1106" in err


def test_user_mode_pin_change(
    cli: TokenStore, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out, _ = run(capsys, "init", "--token", "dev", "--mode", "user")
    assert "8 certificate slots" in out and "change-pin" in out
    _, err = run(capsys, "keygen", "k", "--token", "dev", status=2)
    assert "error 1102" in err and "licentia vault change-pin" in err
    (tmp_path / "new").write_text("9876\n")
    out, _ = run(capsys, "change-pin", "--token", "dev", "--new-pin-file", "new")
    assert "changed" in out
    _, err = run(capsys, "list", "--token", "dev", status=2)  # $LICENTIA_PIN is the old PIN
    assert "error 1100" in err
    (tmp_path / "pin").write_text("9876")
    out, _ = run(capsys, "list", "--token", "dev", "--pin-file", "pin")
    assert "mode user, 0 of 8 slots used" in out


def test_refusals_exit_2_with_code_and_hint(cli: TokenStore, tmp_path: Path) -> None:
    """As a user meets them: a separate process, the real entry point, no prompt."""
    env = {**cli.env, "LICENTIA_PIN": "0000", "LICENTIA_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "licentia.cli.main", "vault", "list", "--token", "dev"],
        env=env, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 2
    assert "error 1100 (pin incorrect): wrong PIN for token 'dev'" in done.stderr
    del env["LICENTIA_PIN"]
    done = subprocess.run(
        [sys.executable, "-m", "licentia.cli.main", "vault", "list", "--token", "dev"],
        env=env, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 2 and "no token user PIN given" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "licentia.cli.main", "vault", "tokens", "--module", "/nonexistent.so"],
        env=env, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 2 and "error 1105" in done.stderr


def test_uri_needs_no_login_package_names_the_transport_key_and_user_mode_must_fit(
    cli: TokenStore, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run(capsys, "init", "--token", "ca")
    run(capsys, "init", "--token", "dev")
    run(capsys, "keygen", "web", "--token", "dev")
    run(capsys, "ca-init", "root", "--token", "ca", "--subject", "CN=Root", "--out", "ca.pem")

    # `uri`: anyone, without a PIN (a separate process, no PIN anywhere, no terminal)
    env = {k: v for k, v in cli.env.items() if k not in ("LICENTIA_PIN", "LICENTIA_PIN_FILE")}
    def uri(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "licentia.cli.main", "vault", "uri", *argv],
                              env=env, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    done = uri("web", "--token", "dev")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pkcs11:token=dev;object=web;type=private"
    assert uri("web", "--token", "dev", "--type", "public").returncode == 0
    missing = uri("nothing", "--token", "dev")
    assert missing.returncode == 2 and "error 1106" in missing.stderr
    no_cert = uri("web", "--token", "dev", "--type", "cert")
    assert no_cert.returncode == 2 and "no certificate labelled 'web'" in no_cert.stderr

    # `package` prints the hash of the transport key it encrypted to: the CA compares it with the request's
    out, _ = run(capsys, "request", "--token", "dev", "-o", "dev.lvr")
    (requested,) = [line.split()[3] for line in out.splitlines() if line.startswith("transport key SHA-256")]
    out, _ = run(capsys, "package", "dev.lvr", "--token", "ca", "--ca", "root", "--subject", "CN=plc",
                 "--label", "plc", "-o", "plc.lvp")  # fmt: skip
    (packaged,) = [line.split()[3] for line in out.splitlines() if line.startswith("transport key SHA-256")]
    assert packaged == requested and len(packaged) == 64

    # user mode cannot be set on a vault holding more entries than its slots
    for n in range(9):
        run(capsys, "keygen", f"k{n}", "--token", "dev")
    _, err = run(capsys, "init", "--token", "dev", "--force", "--mode", "user", status=2)
    assert "error 1103" in err and "holds 10 entries, more than the 8 certificate slots" in err
    assert "--slots 10" in err
    out, _ = run(capsys, "list", "--token", "dev")
    assert "mode vendor" in out and "of 8" not in out  # nothing changed
    out, _ = run(capsys, "init", "--token", "dev", "--force", "--mode", "user", "--slots", "10")
    assert "10 certificate slots" in out
