"""TLS for network mode against a real TLS server on 127.0.0.1, certificates made here."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from proto_echo import EchoServer, running

from licentia.model import ErrorCode, LicentiaError
from licentia.protocol.client import AsyncClient, Client
from licentia.protocol.tls import client_context, fingerprint, parse_pin


def make_cert(
    name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None, *, ca: bool = False
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    return cert, key


def server_context(tmp: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey,
                   *, tls12_only: bool = False) -> ssl.SSLContext:
    cert_file, key_file = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    if tls12_only:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Pki:
    def __init__(self, tmp: Path, server: EchoServer) -> None:
        self.tmp = tmp
        self.ca = make_cert("licentia test CA", ca=True)
        self.cert = make_cert("license server", self.ca)
        self.impostor = make_cert("someone else")  # self-signed, same names
        self.ca_file = tmp / "ca.pem"
        self.ca_file.write_bytes(self.ca[0].public_bytes(serialization.Encoding.PEM))
        self.real = server.listen_tcp(server_context(tmp, "real", *self.cert))
        self.fake = server.listen_tcp(server_context(tmp, "fake", *self.impostor))
        self.old = server.listen_tcp(server_context(tmp, "old", *self.cert, tls12_only=True))
        self.pin = fingerprint(self.cert[0].public_bytes(serialization.Encoding.DER))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    with running() as server:
        yield Pki(tmp_path_factory.mktemp("pki"), server)


def refused(address: tuple[str, int], ctx: ssl.SSLContext) -> LicentiaError:
    with pytest.raises(LicentiaError) as info:
        Client(address, ssl_context=ctx, timeout=5)
    assert info.value.code is ErrorCode.SECURITY_PROBLEM, info.value
    return info.value


def async_refused(address: tuple[str, int], ctx: ssl.SSLContext) -> None:
    async def main() -> None:
        with pytest.raises(LicentiaError) as info:
            await AsyncClient.connect(address, ssl_context=ctx, timeout=5)
        assert info.value.code is ErrorCode.SECURITY_PROBLEM, info.value

    asyncio.run(main())


def test_trust_on_first_use_then_refuse_a_substitute(pki: Pki, tmp_path: Path) -> None:
    pin_file = tmp_path / "servers" / "lic1.pin"
    ctx = client_context(pin_file=pin_file)
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_3
    with Client(pki.real, ssl_context=ctx) as c:
        assert c.request("echo", over="tls")["over"] == "tls"
    assert pin_file.read_text().strip() == pki.pin
    with Client(pki.real, ssl_context=client_context(pin_file=pin_file)) as c:
        assert c.request("echo")["ok"]
    err = refused(pki.fake, client_context(pin_file=pin_file))
    assert "not the pinned one" in err.message
    async_refused(pki.fake, client_context(pin_file=pin_file))
    assert pin_file.read_text().strip() == pki.pin  # the substitute did not replace the pin


def test_async_client_over_pinned_tls(pki: Pki) -> None:
    async def main() -> None:
        ctx = client_context(fingerprint=pki.pin)
        async with await AsyncClient.connect(pki.real, ssl_context=ctx) as c:
            replies = await asyncio.gather(*(c.request("echo", i=i) for i in range(20)))
            assert [r["i"] for r in replies] == list(range(20))

    asyncio.run(main())


def test_fingerprint_given_up_front(pki: Pki) -> None:
    other = fingerprint(pki.impostor[0].public_bytes(serialization.Encoding.DER))
    with Client(pki.real, ssl_context=client_context(fingerprint=[other, pki.pin.upper()])) as c:
        assert c.request("echo")["ok"]
    refused(pki.real, client_context(fingerprint=other))


def test_a_pin_file_may_list_several_certificates(pki: Pki, tmp_path: Path) -> None:
    other = fingerprint(pki.impostor[0].public_bytes(serialization.Encoding.DER))
    pin_file = tmp_path / "rollover.pin"
    pin_file.write_text(f"# old and new certificate\n{other}\n{pki.pin}  # new\n")
    with Client(pki.real, ssl_context=client_context(pin_file=pin_file)) as c:
        assert c.request("echo")["ok"]


def test_ca_trust(pki: Pki) -> None:
    ctx = client_context(ca_file=pki.ca_file)
    with Client(pki.real, ssl_context=ctx) as c:
        assert c.request("echo")["ok"]
    with Client(pki.real, ssl_context=ctx, server_hostname="localhost") as c:
        assert c.request("echo")["ok"]
    refused(pki.fake, ctx)
    async_refused(pki.fake, ctx)
    # a CA and a pin together: both must hold
    both = client_context(ca_file=pki.ca_file, fingerprint=fingerprint(b"not this certificate"))
    refused(pki.real, both)


def test_tls_below_1_3_is_refused(pki: Pki) -> None:
    refused(pki.old, client_context(ca_file=pki.ca_file))
    async_refused(pki.old, client_context(ca_file=pki.ca_file))


def test_bad_trust_settings(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(LicentiaError) as info:
        client_context()
    assert info.value.code is ErrorCode.INVALID_PARAMETER
    with pytest.raises(LicentiaError) as info:
        client_context(ca_file=tmp_path / "missing.pem")
    assert info.value.code is ErrorCode.INVALID_PARAMETER
    damaged = tmp_path / "damaged.pin"
    damaged.write_text("sha256:1234\n")
    with pytest.raises(LicentiaError) as info:
        client_context(pin_file=damaged)
    assert info.value.code is ErrorCode.SECURITY_PROBLEM


def test_pin_formats() -> None:
    hexpin = "ab" * 32
    assert parse_pin(hexpin) == parse_pin("SHA256:" + hexpin.upper()) == "sha256:" + hexpin
    assert parse_pin(":".join(["AB"] * 32)) == "sha256:" + hexpin
    for bad in ("", "sha256:", "ab" * 31, "zz" * 32):
        with pytest.raises(LicentiaError):
            parse_pin(bad)
