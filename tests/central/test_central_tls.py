"""Central over TLS, as a vendor starts it and as users and operators reach it: HTTPS by
default with a certificate made at the first start, the commands pin it on first use and
refuse another one, the vendor's own certificate, and plain HTTP only when asked."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from licentia.crypto.tls import self_signed_server_certificate
from licentia.model import ErrorCode, LicentiaError
from licentia.protocol.rest import central_pin_file
from licentia.protocol.tls import fingerprint
from licentia.runtime.sync import CentralHTTP

EXE = [sys.executable, "-m", "licentia.cli.main"]
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("LICENTIA_")}, "LICENTIA_BINDING_COST": "4"}
PASSPHRASE = "correct horse battery\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*EXE, "--home", str(home), *args], capture_output=True, text=True, env=ENV, timeout=120)
    if check:
        assert r.returncode == 0, r.stderr + r.stdout
    return r


@pytest.fixture(scope="module")
def vendor(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tls")
    passfile = root / "pass"
    passfile.write_text(PASSPHRASE)
    home = root / "vendor-home"
    run(home, "vendor", "init", "--firm-code", "6000010", "--name", "Example Firm", "--passphrase-file", str(passfile))
    return home, passfile


class Served:
    def __init__(self, home: Path, passfile: Path, *extra: str) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [*EXE, "--home", str(home), "central", "serve", "--port", str(self.port), "--passphrase-file", str(passfile),
             *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
        assert self.proc.stdout is not None
        self.banner = ""
        while True:  # the banner ends with the certificate line (or the plain HTTP warning)
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(self.banner)
            self.banner += line
            if line.startswith(("certificate ", "plain HTTP")):
                break
        self._wait()

    def _wait(self) -> None:
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(self.banner)
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture
def served(vendor: tuple[Path, Path]) -> Iterator[Served]:
    s = Served(*vendor)
    yield s
    s.stop()


def test_central_serves_https_by_default_and_commands_pin_it_on_first_use(
        vendor: tuple[Path, Path], served: Served, tmp_path: Path) -> None:
    home, _ = vendor
    url = f"https://127.0.0.1:{served.port}"
    assert f"on {url}/" in served.banner
    cert = home / "central" / "tls" / "central.crt"
    key = home / "central" / "tls" / "central.key"
    assert key.stat().st_mode & 0o077 == 0
    pin = fingerprint(ssl.PEM_cert_to_DER_cert(cert.read_text()))
    assert f"pin {pin}" in served.banner

    # plain HTTP gets nothing from the TLS port
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b'"firm_code"' not in sock.recv(4096)

    ops = ("--central", url)
    out = run(home, "central", "product", "list", *ops)  # first use: pins
    assert out.stdout.strip() == "[]"
    pin_file = central_pin_file(home / "tls" / "pins", url)
    assert pin_file.read_text().strip() == pin
    run(home, "central", "product", "list", *ops)
    run(home, "central", "product", "list", "--central-pin", pin, *ops)
    wrong = "sha256:" + "0" * 64
    r = run(home, "central", "product", "list", "--central-pin", wrong, *ops, check=False)
    assert r.returncode != 0 and "not trusted" in r.stderr

    # the runtime's sync client reaches it the same way (its own pin store)
    http = CentralHTTP(url, 10, tmp_path / "pins")
    try:
        assert http.call("GET", "/api/health")["firm_code"] == 6000010
    finally:
        http.close()
    assert central_pin_file(tmp_path / "pins", url).read_text().strip() == pin


def test_another_certificate_on_the_same_address_is_refused(vendor: tuple[Path, Path], tmp_path: Path) -> None:
    home, passfile = vendor
    first = Served(home, passfile)
    url = f"https://127.0.0.1:{first.port}"
    try:
        run(tmp_path / "op", "central", "product", "list", "--central", url,
            "--token-file", str(home / "central" / "admin.token"))
    finally:
        first.stop()
    # an impostor on the same address: its own certificate (the vendor's --cert path)
    cert_pem, key_pem = self_signed_server_certificate("impostor", ["127.0.0.1"], int(time.time()))
    (tmp_path / "i.crt").write_bytes(cert_pem)
    (tmp_path / "i.key").write_bytes(key_pem)
    (tmp_path / "i.key").chmod(0o600)
    port = first.port
    impostor = subprocess.Popen(
        [*EXE, "--home", str(home), "central", "serve", "--port", str(port), "--passphrase-file", str(passfile),
         "--cert", str(tmp_path / "i.crt"), "--key", str(tmp_path / "i.key")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert impostor.poll() is None
            r = run(tmp_path / "op", "central", "product", "list", "--central", url,
                    "--token-file", str(home / "central" / "admin.token"), check=False)
            if "cannot be reached" not in r.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.returncode != 0
        assert "not trusted" in r.stderr and "pinned" in r.stderr, r.stderr
    finally:
        impostor.terminate()
        impostor.wait(30)


def _get(port: int, head: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n" + head + b"Connection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def test_plain_http_only_when_asked_and_the_limits_hold(vendor: tuple[Path, Path]) -> None:
    home, passfile = vendor
    s = Served(home, passfile, "--insecure-http", "--limit-concurrency", "4", "--max-header-bytes", "4096")
    try:
        assert "plain HTTP" in s.banner
        url = f"http://127.0.0.1:{s.port}"
        assert run(home, "central", "product", "list", "--central", url).stdout.strip() == "[]"
        r = run(home, "central", "product", "list", "--central", url, "--central-pin", "sha256:" + "0" * 64, check=False)
        assert r.returncode != 0 and "https://" in r.stderr

        assert _get(s.port).startswith(b"HTTP/1.1 200")
        # a request head still incomplete after --max-header-bytes is refused (h11's limit), not waited for
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
            sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192)
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 4") or answer == b"", answer
        # four idle connections hold --limit-concurrency: the next request is answered 503 at once
        idle = [socket.create_connection(("127.0.0.1", s.port), timeout=30) for _ in range(4)]
        try:
            while not _get(s.port).startswith(b"HTTP/1.1 503"):  # until uvicorn has accepted all four
                time.sleep(0.05)
        finally:
            for sock in idle:
                sock.close()
        while not _get(s.port).startswith(b"HTTP/1.1 200"):  # until it has seen them close
            time.sleep(0.05)
    finally:
        s.stop()
    r = run(home, "central", "serve", "--insecure-http", "--cert", "x.crt", "--key", "x.key",
            "--passphrase-file", str(passfile), check=False)
    assert r.returncode != 0 and "--insecure-http" in r.stderr


def test_unreachable_is_a_network_fault_and_a_foreign_certificate_a_security_problem(tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{_free_port()}"
    http = CentralHTTP(url, 2, tmp_path)
    try:
        with pytest.raises(LicentiaError) as exc:
            http.call("GET", "/api/health")
        assert exc.value.code == ErrorCode.NETWORK_FAULT
    finally:
        http.close()
