"""The vault's three provisioning options, its modes and its refusals, on real SoftHSM2 tokens."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from licentia.containers.pkcs11 import KeyKind, open_session
from licentia.crypto.x509 import certificate_signed_by, verify_signature
from licentia.model import ErrorCode, LicentiaError
from licentia.vault.package import decode_package
from licentia.vault.vault import (
    TRANSPORT_LABEL,
    USER_SLOTS,
    TokenSigner,
    Vault,
    initialize,
    open_vault,
)
from licentia.vault.x509build import build_certificate, parse_subject, read_certificate, to_pem
from tokens import TokenStore

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
PIN = "1234"


@dataclass
class Pki:
    store: TokenStore
    ca_cert: bytes  # DER


@pytest.fixture
def pki(token_store: TokenStore) -> Pki:
    """Tokens 'ca' (holding CA 'root'), 'dev' and 'other', all vaults in vendor mode."""
    for label in ("ca", "dev", "other"):
        token_store.add_token(label)
        with open_session(label=label, pin=PIN) as s:
            initialize(s)
    with open_vault(token="ca", pin=PIN) as v:
        ca = v.ca_init("root", "CN=Test Root,O=Example", days=3650, now=NOW)
    return Pki(token_store, ca)


def refused(code: ErrorCode) -> pytest.RaisesExc[LicentiaError]:
    return pytest.raises(LicentiaError, check=lambda e: e.code is code)


def openssl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, timeout=30)


# -- CA -----------------------------------------------------------------------------------


def test_ca_certificate(pki: Pki, tmp_path: Path) -> None:
    cert = x509.load_der_x509_certificate(pki.ca_cert)
    assert cert.subject.rfc4514_string() == "CN=Test Root,O=Example"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert cert.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert certificate_signed_by(pki.ca_cert, pki.ca_cert)
    with open_vault(token="ca", pin=PIN) as v:
        [entry] = v.entries()
        assert entry.role == "CA" and entry.key is not None and entry.key.local
        assert v.ca_certificate("root") == pki.ca_cert
        with refused(ErrorCode.TOKEN_OBJECT_EXISTS):
            v.ca_init("root", "CN=again", days=1, now=NOW)
    (tmp_path / "ca.pem").write_bytes(to_pem(pki.ca_cert))
    out = openssl("x509", "-in", str(tmp_path / "ca.pem"), "-noout", "-text")
    assert b"CA:TRUE" in out.stdout and b"Certificate Sign" in out.stdout


# -- option 1 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    [KeyKind.EC_P256, KeyKind.RSA_2048, pytest.param(KeyKind.RSA_3072, marks=pytest.mark.slow)],
)
def test_option1_key_in_device_csr_certificate_back(
    pki: Pki, tmp_path: Path, kind: KeyKind
) -> None:
    with open_vault(token="dev", pin=PIN) as dev:
        pair = dev.keygen("web", kind)
        csr = dev.csr("web", "CN=node1,O=Example", dns=["localhost"], ips=["127.0.0.1"])
        assert dev.entry("web").role == "key"
    (tmp_path / "web.csr").write_bytes(to_pem(csr, "CERTIFICATE REQUEST"))
    check = openssl("req", "-in", str(tmp_path / "web.csr"), "-noout", "-verify")
    assert b"verify OK" in check.stdout + check.stderr

    with open_vault(token="ca", pin=PIN) as ca:
        leaf = ca.sign_csr("root", to_pem(csr, "CERTIFICATE REQUEST"), days=30, now=NOW)
    info = read_certificate(leaf)
    assert info.subject == "CN=node1,O=Example" and info.issuer == "CN=Test Root,O=Example"
    assert info.dns == ("localhost",) and info.ips == ("127.0.0.1",)
    assert info.public_key == pair.public_key and not info.is_ca
    assert info.not_after == NOW + timedelta(days=30)

    with open_vault(token="dev", pin=PIN) as dev:
        entry = dev.import_certificate(leaf)
        assert entry.label == "web" and entry.role == "key+certificate"
        assert entry.key is not None and entry.key.local and not entry.key.extractable
        assert dev.certificate("web") == leaf
        with refused(ErrorCode.TOKEN_OBJECT_EXISTS):
            dev.import_certificate(leaf)

    (tmp_path / "ca.pem").write_bytes(to_pem(pki.ca_cert))
    (tmp_path / "leaf.pem").write_bytes(to_pem(leaf))
    at = str(int((NOW + timedelta(hours=1)).timestamp()))
    verify = openssl(
        "verify", "-attime", at, "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")
    )
    assert verify.returncode == 0, verify.stderr


def test_altered_csr_refused(pki: Pki) -> None:
    with open_vault(token="dev", pin=PIN) as dev:
        dev.keygen("web")
        csr = bytearray(dev.csr("web", "CN=node1"))
    at = bytes(csr).find(b"node1")
    csr[at] ^= 0x01  # CN=oode1: the self-signature no longer covers it
    with open_vault(token="ca", pin=PIN) as ca, refused(ErrorCode.CSR_INVALID):
        ca.sign_csr("root", bytes(csr), days=1, now=NOW)
    with open_vault(token="ca", pin=PIN) as ca, refused(ErrorCode.CSR_INVALID):
        ca.sign_csr("root", b"garbage", days=1, now=NOW)


def test_certificate_without_key_needs_a_label(pki: Pki) -> None:
    with open_vault(token="dev", pin=PIN) as dev:
        with refused(ErrorCode.INVALID_PARAMETER):
            dev.import_certificate(pki.ca_cert)
        entry = dev.import_certificate(to_pem(pki.ca_cert), label="root", authority=True)
        assert entry.role == "trusted CA" and entry.key is None
        with refused(ErrorCode.TOKEN_OBJECT_EXISTS):
            dev.import_certificate(pki.ca_cert, label="root2")
        with refused(ErrorCode.CERTIFICATE_INVALID):
            dev.import_certificate(
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            )
        assert dev.delete("root") == 1
        with refused(ErrorCode.TOKEN_OBJECT_NOT_FOUND):
            dev.delete("root")


# -- option 2 -----------------------------------------------------------------------------


def test_option2_pkcs12(pki: Pki, tmp_path: Path) -> None:
    with open_vault(token="ca", pin=PIN) as ca:
        p12 = ca.export_pkcs12(
            "root", "CN=engineer", "s3cret", name="engineer", days=30, now=NOW, dns=["svc.local"]
        )
        with refused(ErrorCode.INVALID_PARAMETER):
            ca.export_pkcs12("root", "CN=x", "", name="x", days=1, now=NOW)
    (tmp_path / "e.p12").write_bytes(p12)
    dump = openssl("pkcs12", "-in", str(tmp_path / "e.p12"), "-nokeys", "-passin", "pass:s3cret")
    assert dump.returncode == 0 and b"CN=engineer" in dump.stdout.replace(b" = ", b"=")

    with open_vault(token="dev", pin=PIN) as dev:
        with refused(ErrorCode.WRONG_PASSPHRASE):
            dev.import_pkcs12(p12, "wrong")
        entry = dev.import_pkcs12(p12, "s3cret")
        assert entry.label == "engineer" and entry.role == "key+certificate"
        assert entry.key is not None and not entry.key.local and not entry.key.extractable
        assert entry.certificate is not None and entry.certificate.dns == ("svc.local",)
        signature = dev.session.sign("engineer", b"hello")
        assert verify_signature(entry.certificate.public_key, b"hello", signature)
        with refused(ErrorCode.TOKEN_OBJECT_EXISTS):
            dev.import_pkcs12(p12, "s3cret")
        assert certificate_signed_by(entry.certificate.der, pki.ca_cert)


# -- option 3 -----------------------------------------------------------------------------


def _package_for(
    token: str, pki: Pki, *, label: str = "plc", kind: KeyKind = KeyKind.EC_P256
) -> bytes:
    with open_vault(token=token, pin=PIN) as target:
        request = target.request()
    with open_vault(token="ca", pin=PIN) as ca:
        return ca.package(
            "root",
            request,
            "CN=plc-7,O=Example",
            label=label,
            kind=kind,
            ips=["10.0.0.7"],
            days=30,
            now=NOW,
        )


@pytest.mark.parametrize("kind", [KeyKind.EC_P256, KeyKind.RSA_2048])
def test_option3_encrypted_package(pki: Pki, kind: KeyKind) -> None:
    package = _package_for("dev", pki, kind=kind)
    assert package[:4] == b"LVPK" and package[4] == 1
    assert b"BEGIN" not in package and b"PRIVATE" not in package
    with open_vault(token="dev", pin=PIN) as dev:
        first_request = dev.request()
        assert dev.request() == first_request  # the transport key is made once and kept
        entry = dev.unpackage(package, trusted_ca=pki.ca_cert)
        assert entry.label == "plc" and entry.role == "key+certificate" and entry.kind is kind
        assert entry.key is not None and not entry.key.extractable and not entry.key.local
        assert entry.certificate is not None and entry.certificate.ips == ("10.0.0.7",)
        signature = dev.session.sign("plc", b"challenge")
        assert verify_signature(entry.certificate.public_key, b"challenge", signature)
        assert [e.label for e in dev.entries()] == ["plc"]  # the transport key is no entry
        with refused(ErrorCode.TOKEN_OBJECT_EXISTS):
            dev.unpackage(package, trusted_ca=pki.ca_cert)  # replay


def test_option3_trusts_an_imported_ca(pki: Pki) -> None:
    package = _package_for("dev", pki)
    with open_vault(token="dev", pin=PIN) as dev:
        with refused(ErrorCode.CA_NOT_TRUSTED):
            dev.unpackage(package)
        dev.import_certificate(pki.ca_cert, label="root", authority=True)
        assert dev.unpackage(package).label == "plc"


def test_option3_package_for_another_token_refused(pki: Pki) -> None:
    package = _package_for("dev", pki)
    with open_vault(token="other", pin=PIN) as other:
        with refused(ErrorCode.VAULT_PACKAGE_WRONG_TOKEN) as err:
            other.unpackage(package, trusted_ca=pki.ca_cert)
        assert "which has made no request" in err.value.message
        other.request()
        with refused(ErrorCode.VAULT_PACKAGE_WRONG_TOKEN) as err:
            other.unpackage(package, trusted_ca=pki.ca_cert)
        assert "made for token serial" in err.value.message
        assert other.entries() == []


def test_option3_foreign_ca_refused(pki: Pki) -> None:
    pki.store.add_token("evil")
    with open_session(label="evil", pin=PIN) as s:
        initialize(s)
    with open_vault(token="evil", pin=PIN) as evil:
        evil_ca = evil.ca_init("root", "CN=Test Root,O=Example", days=10, now=NOW)  # same name
    with open_vault(token="dev", pin=PIN) as dev:
        request = dev.request()
    with open_vault(token="evil", pin=PIN) as evil:
        package = evil.package("root", request, "CN=x", label="x", days=1, now=NOW)
    with open_vault(token="dev", pin=PIN) as dev:
        with refused(ErrorCode.CA_NOT_TRUSTED):
            dev.unpackage(package, trusted_ca=pki.ca_cert)
        # trusting the foreign CA explicitly is the user's choice, and then it opens
        assert dev.unpackage(package, trusted_ca=evil_ca).label == "x"


def test_option3_tampered_package_refused(pki: Pki) -> None:
    package = _package_for("dev", pki)
    step = max(1, len(package) // 80)
    positions = sorted({*range(0, len(package), step), len(package) - 1})
    with open_vault(token="dev", pin=PIN) as dev:
        for at in positions:
            altered = bytearray(package)
            altered[at] ^= 0x40
            with pytest.raises(LicentiaError) as err:
                dev.unpackage(bytes(altered), trusted_ca=pki.ca_cert)
            assert err.value.code in (ErrorCode.VAULT_PACKAGE_INVALID, ErrorCode.CA_NOT_TRUSTED), at
        for altered_bytes in (package[:-1], package + b"\0", package[:40], b""):
            with refused(ErrorCode.VAULT_PACKAGE_INVALID):
                dev.unpackage(altered_bytes, trusted_ca=pki.ca_cert)
        assert dev.entries() == []
        assert dev.unpackage(package, trusted_ca=pki.ca_cert).label == "plc"


def test_option3_swapped_wrapped_key_refused(pki: Pki) -> None:
    """A package re-signed by the right CA but carrying another package's wrapped key
    (so the signature holds) still fails: the key is bound to its certificate."""
    first = _package_for("dev", pki, label="a")
    second = _package_for("dev", pki, label="b")
    p1, _, _ = decode_package(first)
    p2, _, _ = decode_package(second)
    from dataclasses import replace

    forged = replace(p1, wrapped_key=p2.wrapped_key, ephemeral_point=p2.ephemeral_point)
    with open_vault(token="ca", pin=PIN) as ca:
        signer, _ = ca._ca("root")
        data = forged.encode(signer.sign(forged.signed_part()))
    with open_vault(token="dev", pin=PIN) as dev:
        with refused(ErrorCode.VAULT_PACKAGE_INVALID):
            dev.unpackage(data, trusted_ca=pki.ca_cert)
        assert dev.entries() == []


# -- modes and refusals -----------------------------------------------------------------


def test_user_mode_pin_change_and_eight_slots(token_store: TokenStore) -> None:
    token_store.add_token("user", pin="initial")
    with open_session(pin="initial") as s:
        state = initialize(s, "user")
        assert state.slots == USER_SLOTS and state.pin_change_required
    with refused(ErrorCode.PIN_CHANGE_REQUIRED), open_vault(pin="initial"):
        pass
    with open_vault(pin="initial", for_pin_change=True) as v:
        with refused(ErrorCode.PIN_INVALID):
            v.change_pin("initial", "initial")
        with refused(ErrorCode.PIN_INVALID):
            v.change_pin("initial", "12")
        with refused(ErrorCode.PIN_INCORRECT):
            v.change_pin("not-the-pin", "4711-new")
        assert not v.change_pin("initial", "4711-new").pin_change_required
    with refused(ErrorCode.PIN_INCORRECT), open_vault(pin="initial"):
        pass
    with open_vault(pin="4711-new") as v:
        assert v.state.mode == "user"
        v.request()  # the transport key takes no slot
        for n in range(USER_SLOTS):
            v.keygen(f"k{n}")
        with refused(ErrorCode.VAULT_SLOTS_FULL):
            v.keygen("one-too-many")
        other_cert = _self_signed(v)
        with refused(ErrorCode.VAULT_SLOTS_FULL):
            v.import_certificate(other_cert, label="ca-cert")
        v.delete("k0")
        v.keygen("k8")
        assert v.slots_used == USER_SLOTS


def _self_signed(v: Vault) -> bytes:
    """A certificate for a key that is not on the token (the key is deleted afterwards)."""
    pair = v.session.generate_keypair(KeyKind.EC_P256, "licentia-scratch")
    try:
        return build_certificate(
            subject=parse_subject("CN=x"),
            public_key=pair.public_key,
            issuer=None,
            issuer_public_key=pair.public_key,
            signer=TokenSigner(v.session, pair),
            serial=1,
            now=NOW,
            days=1,
            ca=True,
        )
    finally:
        v.session.delete_objects("licentia-scratch")


def test_vault_must_be_initialized(soft_token: object) -> None:
    with refused(ErrorCode.VAULT_NOT_INITIALIZED), open_vault(pin=PIN):
        pass
    with open_session(pin=PIN) as s:
        initialize(s)
        with refused(ErrorCode.TOKEN_OBJECT_EXISTS):
            initialize(s, "user")
        assert initialize(s, "user", slots=3, force=True).slots == 3


def test_labels_and_kinds(pki: Pki) -> None:
    with open_vault(token="dev", pin=PIN) as dev:
        for bad in ("", "licentia-vault", TRANSPORT_LABEL, "has space", "x" * 65):
            with refused(ErrorCode.INVALID_PARAMETER):
                dev.keygen(bad)
        with refused(ErrorCode.MECHANISM_NOT_SUPPORTED):
            dev.keygen("ed", KeyKind.ED25519)
        dev.keygen("web")
        with refused(ErrorCode.TOKEN_OBJECT_EXISTS):
            dev.keygen("web")
        with refused(ErrorCode.TOKEN_OBJECT_NOT_FOUND):
            dev.csr("nope", "CN=x")
        with refused(ErrorCode.INVALID_PARAMETER):
            dev.csr("web", "not a name")
        with refused(ErrorCode.INVALID_PARAMETER):
            dev.csr("web", "CN=x", ips=["300.1.1.1"])
        with refused(ErrorCode.INVALID_PARAMETER):
            dev.issue("web", b"", b"", days=1, now=NOW)  # not a CA
        assert dev.openssl_compatible
        dev.session.generate_keypair(KeyKind.ED25519, "licensing")
        assert not dev.openssl_compatible


def test_openssl_subject_notation(pki: Pki) -> None:
    with open_vault(token="dev", pin=PIN) as dev:
        dev.keygen("web")
        csr = dev.csr("web", "/O=Example/OU=Plant 7/CN=node1")
    with open_vault(token="ca", pin=PIN) as ca:
        leaf = ca.sign_csr("root", csr, days=1, now=NOW)
    assert read_certificate(leaf).subject == "CN=node1,OU=Plant 7,O=Example"


def test_renewal_keeps_the_key_and_replaces_the_certificate(pki: Pki) -> None:
    with open_vault(token="dev", pin=PIN) as dev:
        pair = dev.keygen("web")
        csr = dev.csr("web", "CN=node1")
    with open_vault(token="ca", pin=PIN) as ca:
        first = ca.sign_csr("root", csr, days=30, now=NOW)
        second = ca.sign_csr("root", csr, days=30, now=NOW + timedelta(days=25))
    with open_vault(token="dev", pin=PIN) as dev:
        dev.import_certificate(first)
        with refused(ErrorCode.TOKEN_OBJECT_EXISTS):
            dev.import_certificate(second)
        entry = dev.import_certificate(second, replace=True)
        assert entry.key == pair and entry.certificate is not None
        assert entry.certificate.der == second
        assert [c.der for c in dev.session.certificates()] == [second]
