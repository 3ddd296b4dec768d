"""Invariants of the vault's file formats and names (no token needed)."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given, strategies as st

from licentia.containers.pkcs11 import KeyKind
from licentia.model import ErrorCode, LicentiaError
from licentia.vault.openssl import pkcs11_uri
from licentia.vault.package import Package, Request, decode_package, kek_context
from licentia.vault.x509build import parse_subject, subject_text

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
blob = st.binary(max_size=300)
kinds = st.sampled_from([KeyKind.EC_P256, KeyKind.RSA_2048, KeyKind.RSA_3072])

packages = st.builds(
    Package,
    target_serial=text,
    transport_key_id=st.binary(min_size=20, max_size=20),
    ephemeral_point=st.binary(min_size=65, max_size=65),
    kind=kinds,
    label=text,
    certificate=blob,
    ca_certificate=blob,
    wrapped_key=blob,
)


@given(text, text, blob)
def test_request_round_trip(label: str, serial: str, key: bytes) -> None:
    request = Request(label, serial, key)
    assert Request.decode(request.encode()) == request


@given(packages, st.binary(min_size=1, max_size=600))
def test_package_round_trip(package: Package, signature: bytes) -> None:
    data = package.encode(signature)
    decoded, signed, got_signature = decode_package(data)
    assert decoded == package
    assert signed == package.signed_part() and got_signature == signature
    assert data.startswith(b"LVPK\x01")


@given(st.binary(max_size=400))
def test_arbitrary_bytes_are_refused_cleanly(data: bytes) -> None:
    for decode in (decode_package, Request.decode):
        try:
            decode(data)
        except LicentiaError as exc:
            assert exc.code is ErrorCode.VAULT_PACKAGE_INVALID


@given(packages, st.binary(min_size=1, max_size=80), st.data())
def test_altered_packages_never_crash_the_reader(
    package: Package, signature: bytes, data: st.DataObject
) -> None:
    encoded = bytearray(package.encode(signature))
    at = data.draw(st.integers(0, len(encoded) - 1))
    encoded[at] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    for candidate in (bytes(encoded), bytes(encoded[:cut])):
        try:
            decoded, signed, _ = decode_package(candidate)
        except LicentiaError as exc:
            assert exc.code is ErrorCode.VAULT_PACKAGE_INVALID
        else:
            # whatever decodes is what gets signature-checked: the bytes as they are
            assert signed == decoded.signed_part()


@given(packages, packages)
def test_kek_context_separates_targets_and_contents(a: Package, b: Package) -> None:
    def context(p: Package) -> bytes:
        return kek_context(p.target_serial, p.transport_key_id, p.kind, p.label, p.certificate)

    same = (a.target_serial, a.transport_key_id, a.kind, a.label, a.certificate) == (
        b.target_serial, b.transport_key_id, b.kind, b.label, b.certificate,
    )  # fmt: skip
    assert (context(a) == context(b)) == same


name_values = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp")),
    min_size=1,
    max_size=30,
).filter(lambda s: s.strip() == s and not s.startswith("#") and len(s.encode()) <= 64)  # a CN's limit, in UTF-8 bytes


@given(name_values, name_values)
def test_subject_text_round_trip(cn: str, org: str) -> None:
    def esc(value: str) -> str:
        return "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)

    typed = f"CN={esc(cn)},O={esc(org)}"
    der = parse_subject(typed)
    assert parse_subject(subject_text(der)) == der


def test_a_common_name_over_64_bytes_is_refused_with_the_limit() -> None:
    with pytest.raises(LicentiaError) as caught:
        parse_subject("CN=" + "\U00010000" * 17)  # 17 characters, 68 bytes
    assert caught.value.code is ErrorCode.INVALID_PARAMETER and "64" in caught.value.message


def test_openssl_and_rfc4514_notation_agree() -> None:
    assert parse_subject("/C=DE/O=Example/CN=node 1") == parse_subject("CN=node 1,O=Example,C=DE")
    with pytest.raises(LicentiaError):
        parse_subject("")
    with pytest.raises(LicentiaError):
        parse_subject("nonsense")


@given(text.filter(bool), text.filter(bool))
def test_pkcs11_uri_keeps_names(token: str, label: str) -> None:
    uri = pkcs11_uri(token, label)
    assert uri.startswith("pkcs11:") and " " not in uri
    fields = dict(part.split("=", 1) for part in uri[len("pkcs11:") :].split(";"))
    assert unquote(fields["token"]) == token and unquote(fields["object"]) == label
    assert fields["type"] == "private"
