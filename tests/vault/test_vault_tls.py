"""Vault keys used from standard tools: a real TLS handshake through `openssl s_server -engine
pkcs11`, a CSR made by `openssl req` on a vault key, and `pkcs11-tool` listing the objects."""

from __future__ import annotations

import queue
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from licentia.containers.pkcs11 import KeyKind, open_session
from licentia.model import ErrorCode, LicentiaError
from licentia.vault.openssl import engine_config, find_engine, pkcs11_uri
from licentia.vault.vault import initialize, open_vault
from licentia.vault.x509build import read_certificate, to_pem
from tokens import TokenStore

PIN = "1234"
TIMEOUT = 20  # seconds: every subprocess is bounded by this


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if find_engine() is None:
        pytest.skip("the OpenSSL pkcs11 engine is not installed (libengine-pkcs11-openssl)")


@pytest.fixture
def pki(token_store: TokenStore, tmp_path: Path) -> Path:
    """Tokens 'ca' (CA 'root') and 'tls', an engine config; returns the work directory."""
    _need("openssl")
    for label in ("ca", "tls"):
        token_store.add_token(label)
        with open_session(label=label, pin=PIN) as s:
            initialize(s)
    now = datetime.now(UTC)
    with open_vault(token="ca", pin=PIN) as ca:
        (tmp_path / "ca.pem").write_bytes(
            to_pem(ca.ca_init("root", "CN=Test Root", days=30, now=now))
        )
    (tmp_path / "engine.cnf").write_text(engine_config(token_store.module))
    (tmp_path / "pin").write_text(PIN)
    return tmp_path


def _issue(label: str, kind: KeyKind, option: int, work: Path) -> None:
    """Put key `label` and its certificate on token 'tls' by one of the three options."""
    now = datetime.now(UTC)
    subject = "CN=localhost,O=Example"
    names = {"dns": ["localhost"], "ips": ["127.0.0.1"]}
    if option == 1:
        with open_vault(token="tls", pin=PIN) as tls:
            tls.keygen(label, kind)
            csr = tls.csr(label, subject, **names)
        with open_vault(token="ca", pin=PIN) as ca:
            cert = ca.sign_csr("root", csr, days=2, now=now)
        with open_vault(token="tls", pin=PIN) as tls:
            tls.import_certificate(cert)
    elif option == 2:
        with open_vault(token="ca", pin=PIN) as ca:
            p12 = ca.export_pkcs12(
                "root", subject, "pw", name=label, kind=kind, days=2, now=now, **names
            )
        with open_vault(token="tls", pin=PIN) as tls:
            tls.import_pkcs12(p12, "pw")
    else:
        with open_vault(token="tls", pin=PIN) as tls:
            request = tls.request()
        with open_vault(token="ca", pin=PIN) as ca:
            package = ca.package(
                "root", request, subject, label=label, kind=kind, days=2, now=now, **names
            )
        with open_vault(token="tls", pin=PIN) as tls:
            tls.unpackage(package, trusted_ca=(work / "ca.pem").read_bytes())
    with open_vault(token="tls", pin=PIN) as tls:
        (work / f"{label}.pem").write_bytes(to_pem(tls.certificate(label)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def s_server(store: TokenStore, work: Path, key_uri: str, cert: Path) -> Iterator[int]:
    """`openssl s_server` with its key in the token, serving one connection; yields its port.

    Bounded: readiness is awaited at most TIMEOUT seconds, and the process is always
    killed and reaped.
    """
    env = {**store.env, "OPENSSL_CONF": str(work / "engine.cnf")}
    port = _free_port()
    proc = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-engine", "pkcs11",
         "-keyform", "engine", "-key", key_uri, "-cert", str(cert), "-www", "-naccept", "1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode(errors="replace"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    try:
        while True:
            try:
                line = lines.get(timeout=TIMEOUT)
            except queue.Empty:
                pytest.fail(f"s_server not ready after {TIMEOUT}s: {''.join(seen)}")
            if line is None:
                pytest.fail(f"s_server exited: {''.join(seen)}")
            seen.append(line)
            if line.strip() == "ACCEPT":
                break
        yield port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()


def _fetch(port: int, cafile: Path, server_name: str) -> tuple[str, dict[str, object], bytes]:
    context = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
        body = b""
        while chunk := tls.recv(65536):
            body += chunk
        return str(tls.version()), dict(tls.getpeercert() or {}), body


@pytest.mark.parametrize(
    ("option", "kind", "server_name"),
    [(1, KeyKind.EC_P256, "localhost"), (2, KeyKind.RSA_2048, "127.0.0.1"),
     (3, KeyKind.EC_P256, "localhost")],
    ids=["option1-ec", "option2-rsa", "option3-ec"],
)  # fmt: skip
def test_tls_handshake_with_the_key_in_the_token(
    pki: Path, token_store: TokenStore, option: int, kind: KeyKind, server_name: str
) -> None:
    _issue("web", kind, option, pki)
    uri = pkcs11_uri("tls", "web", pin_source=f"file:{pki / 'pin'}")
    with s_server(token_store, pki, uri, pki / "web.pem") as port:
        version, peer, body = _fetch(port, pki / "ca.pem", server_name)
    assert version == "TLSv1.3"
    assert (("commonName", "localhost"),) in peer["subject"]  # type: ignore[operator]
    assert body.startswith(b"HTTP/1.0 200 ok")


def test_client_refuses_a_server_outside_the_vault_ca(
    pki: Path, token_store: TokenStore, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _issue("web", KeyKind.EC_P256, 1, pki)
    other = tmp_path_factory.mktemp("other-ca")
    # a CA the client trusts that did not issue the server's certificate
    with open_vault(token="ca", pin=PIN) as ca:
        cert = ca.ca_init("root2", "CN=Other Root", days=1, now=datetime.now(UTC))
    (other / "ca.pem").write_bytes(to_pem(cert))
    uri = pkcs11_uri("tls", "web", pin_source=f"file:{pki / 'pin'}")
    with (
        s_server(token_store, pki, uri, pki / "web.pem") as port,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        _fetch(port, other / "ca.pem", "localhost")


def test_openssl_req_on_a_vault_key_and_pkcs11_tool_listing(
    pki: Path, token_store: TokenStore
) -> None:
    _need("pkcs11-tool")
    with open_vault(token="tls", pin=PIN) as tls:
        pair = tls.keygen("svc")
    env = {**token_store.env, "OPENSSL_CONF": str(pki / "engine.cnf")}
    uri = pkcs11_uri("tls", "svc") + f"?pin-value={PIN}"
    req = subprocess.run(
        ["openssl", "req", "-new", "-engine", "pkcs11", "-keyform", "engine", "-key", uri,
         "-subj", "/CN=svc.example", "-sha256", "-out", str(pki / "svc.csr")],
        env=env, capture_output=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert req.returncode == 0, req.stderr
    with open_vault(token="ca", pin=PIN) as ca:
        cert = ca.sign_csr("root", (pki / "svc.csr").read_bytes(), days=1, now=datetime.now(UTC))
    assert read_certificate(cert).public_key == pair.public_key
    with open_vault(token="tls", pin=PIN) as tls:
        assert tls.import_certificate(cert).role == "key+certificate"

    tool = ["pkcs11-tool", "--module", token_store.module, "--token-label", "tls"]
    listing = subprocess.run(
        [*tool, "--login", "--pin", PIN, "-O"],
        env=token_store.env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert listing.returncode == 0, listing.stderr
    out = listing.stdout
    assert "Private Key Object; EC" in out and "never extractable" in out
    assert "Certificate Object; type = X.509 cert" in out and "label:      svc" in out
    assert "label:          'licentia-vault'" in out
    assert pair.id.hex() in out
    read = subprocess.run(
        [*tool, "--read-object", "--type", "cert", "--label", "svc"],
        env=token_store.env,
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert read.returncode == 0 and read.stdout == cert


def test_an_expired_ca_issues_nothing(pki: Path) -> None:
    later = datetime.now(UTC) + timedelta(days=31)  # the CA is valid for 30 days
    with open_vault(token="ca", pin=PIN) as ca, pytest.raises(LicentiaError) as err:
        ca.issue("root", b"", b"", days=1, now=later)
    assert err.value.code is ErrorCode.EXPIRED and "expired" in err.value.message
