"""The PKCS#11 token layer against real SoftHSM2 tokens."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from asn1crypto import keys as asn1_keys
from pkcs11 import TokenFlag

from licentia.containers.pkcs11 import (
    KeyKind,
    KeyUse,
    find_module,
    list_tokens,
    open_session,
    pin_state,
    reinitialize,
    wrong_pin_message,
)
from licentia.crypto.x509 import verify_signature
from licentia.model import ErrorCode, LicentiaError
from tokens import SoftToken, TokenStore, softhsm_store

# SoftHSM2 keeps the token flags in its token file as attribute CKA_OS_TOKENFLAGS
# (0x8000534B), an unsigned long stored big-endian after this header.
_FLAGS_TAG = bytes.fromhex("8000534b0000000000000002")


def report_flags(token: SoftToken, bits: int) -> None:
    """Make a SoftHSM2 token report PIN-counter flags as a smart card does.

    SoftHSM2 itself never counts down or locks; this sets the flags in its token file
    and re-initialises the module, so the flags licentia sees come from C_GetTokenInfo.
    """
    for path in (token.store.directory / "tokens").rglob("token.object"):
        data = bytearray(path.read_bytes())
        at = data.find(_FLAGS_TAG)
        if at < 0:
            continue
        at += len(_FLAGS_TAG)
        if token.serial and token.serial.encode() not in data:
            continue
        value = int.from_bytes(data[at : at + 8], "big") | bits
        data[at : at + 8] = value.to_bytes(8, "big")
        path.write_bytes(bytes(data))
        reinitialize(token.store.module)
        return
    raise AssertionError("token file not found")


def test_module_found_and_explicit_path_checked(soft_token: SoftToken, tmp_path: Path) -> None:
    assert find_module() == Path(soft_token.store.module)
    with pytest.raises(LicentiaError) as err:
        find_module(tmp_path / "missing.so")
    assert err.value.code is ErrorCode.PKCS11_MODULE_NOT_FOUND


def test_module_from_environment(
    soft_token: SoftToken, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LICENTIA_PKCS11_MODULE", str(tmp_path / "nope.so"))
    with pytest.raises(LicentiaError) as err:
        list_tokens()
    assert err.value.code is ErrorCode.PKCS11_MODULE_NOT_FOUND
    monkeypatch.setenv("LICENTIA_PKCS11_MODULE", soft_token.store.module)
    assert [t.label for t in list_tokens()] == ["test"]


def test_tokens_listed_and_found_by_label_or_slot(token_store: TokenStore) -> None:
    a = token_store.add_token("alpha")
    b = token_store.add_token("beta")
    infos = {t.label: t for t in list_tokens()}
    assert set(infos) == {"alpha", "beta"}
    assert infos["alpha"].serial == a.serial and infos["alpha"].pin_state == "ok"
    with open_session(slot=b.slot, pin="1234") as s:
        assert s.info.label == "beta"
    with pytest.raises(LicentiaError) as err, open_session(pin="1234"):
        pass
    assert err.value.code is ErrorCode.TOKEN_NOT_FOUND and "2 tokens" in err.value.message
    with pytest.raises(LicentiaError) as err, open_session(label="gamma", pin="1234"):
        pass
    assert err.value.code is ErrorCode.TOKEN_NOT_FOUND


def test_wrong_pin_is_reported_once_and_softhsm_only_flags_count_low(soft_token: SoftToken) -> None:
    # What SoftHSM2 2.6.1 really does: a wrong PIN sets CKF_USER_PIN_COUNT_LOW, a good
    # login clears it, and it never reports FINAL_TRY or LOCKED (no retry counter).
    for _ in range(4):
        with pytest.raises(LicentiaError) as err, open_session(pin="0000"):
            pass
        assert err.value.code is ErrorCode.PIN_INCORRECT
        assert "wrong PIN for token 'test'" in err.value.message
        assert "CKF_USER_PIN_COUNT_LOW" in err.value.message
    assert list_tokens()[0].pin_state == "count low"
    with open_session(pin="1234"):
        pass
    assert list_tokens()[0].pin_state == "ok"


def test_final_try_is_named(soft_token: SoftToken) -> None:
    report_flags(soft_token, TokenFlag.USER_PIN_FINAL_TRY)
    with pytest.raises(LicentiaError) as err, open_session(pin="0000"):
        pass
    assert err.value.code is ErrorCode.PIN_INCORRECT
    assert "ONE try left" in err.value.message


def test_locked_token_is_not_asked_again(soft_token: SoftToken) -> None:
    report_flags(soft_token, TokenFlag.USER_PIN_LOCKED)
    with pytest.raises(LicentiaError) as err, open_session(pin="0000"):
        pass
    assert err.value.code is ErrorCode.PIN_LOCKED
    assert "no PIN was tried" in err.value.message
    # had the PIN been tried, SoftHSM2 would now report COUNT_LOW
    assert not list_tokens()[0].flags & TokenFlag.USER_PIN_COUNT_LOW


@pytest.mark.parametrize(
    ("flags", "state", "words"),
    [
        (0, "ok", "wrong PIN for token 't'"),
        (TokenFlag.USER_PIN_COUNT_LOW, "count low", "CKF_USER_PIN_COUNT_LOW"),
        (TokenFlag.USER_PIN_COUNT_LOW | TokenFlag.USER_PIN_FINAL_TRY, "final try", "ONE try left"),
        (TokenFlag.USER_PIN_LOCKED | TokenFlag.USER_PIN_COUNT_LOW, "locked", "locked"),
    ],
)
def test_pin_messages(flags: int, state: str, words: str) -> None:
    assert pin_state(flags) == state
    assert words in wrong_pin_message("t", flags)


@pytest.mark.parametrize("kind", [KeyKind.EC_P256, KeyKind.RSA_2048, KeyKind.ED25519])
def test_keys_are_made_inside_and_sign(soft_token: SoftToken, kind: KeyKind) -> None:
    with open_session(pin="1234") as s:
        pair = s.generate_keypair(kind, "k")
        assert pair.kind is kind and not pair.extractable and pair.local
        assert asn1_keys.PublicKeyInfo.load(pair.public_key)["algorithm"]["algorithm"].native in (
            "ec",
            "rsa",
            "ed25519",
        )
        [listed] = s.key_pairs()
        assert listed == pair
        assert len(pair.id) == 20  # SHA-1 of the public key bits, as an SKI
        sig = s.sign("k", b"message")
        assert verify_signature(pair.public_key, b"message", sig)
        assert not verify_signature(pair.public_key, b"other", sig)
        assert (kind is KeyKind.ED25519) == s.has_ed25519_keys


def test_private_key_value_cannot_be_read(soft_token: SoftToken) -> None:
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    with open_session(pin="1234") as s:
        s.generate_keypair(KeyKind.EC_P256, "k")
    lib = pkcs11.lib(soft_token.store.module)
    with lib.get_token(token_label="test").open(user_pin="1234") as raw:
        priv = raw.get_key(object_class=ObjectClass.PRIVATE_KEY, label="k")
        assert priv[Attribute.SENSITIVE] and not priv[Attribute.EXTRACTABLE]
        assert priv[Attribute.NEVER_EXTRACTABLE]
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            priv[Attribute.VALUE]


def test_transport_keys_derive_only(soft_token: SoftToken) -> None:
    with open_session(pin="1234") as s:
        s.generate_keypair(KeyKind.EC_P256, "t", use=KeyUse.DERIVE)
        with pytest.raises(LicentiaError):
            s.sign("t", b"x")
        with pytest.raises(LicentiaError) as err:
            s.generate_keypair(KeyKind.RSA_2048, "r", use=KeyUse.DERIVE)
        assert err.value.code is ErrorCode.INVALID_PARAMETER


def test_data_objects(soft_token: SoftToken) -> None:
    with open_session(pin="1234") as s:
        assert s.get_data("blob") is None
        s.put_data("blob", b"one")
        s.put_data("blob", b"two")  # replaced in place
        assert s.get_data("blob") == b"two"
        with pytest.raises(LicentiaError) as err:
            s.put_data("blob", b"three", replace=False)
        assert err.value.code is ErrorCode.TOKEN_OBJECT_EXISTS
        s.put_data("blob", b"other app", application="someone-else")
        assert s.get_data("blob") == b"two"
        assert [o.label for o in s.objects() if o.object_class == "data"] == ["blob", "blob"]
        assert s.delete_data("blob") == 1
        assert s.get_data("blob") is None
    # persisted on the token, private: visible again after a new login
    with open_session(pin="1234") as s:
        assert s.get_data("blob", application="someone-else") == b"other app"


def test_certificates(soft_token: SoftToken) -> None:
    from datetime import UTC, datetime

    from licentia.vault.vault import TokenSigner
    from licentia.vault.x509build import build_certificate, parse_subject

    with open_session(pin="1234") as s:
        pair = s.generate_keypair(KeyKind.EC_P256, "ca")
        der = build_certificate(
            subject=parse_subject("CN=t"),
            public_key=pair.public_key,
            issuer=None,
            issuer_public_key=pair.public_key,
            signer=TokenSigner(s, pair),
            serial=7,
            now=datetime.now(UTC),
            days=1,
            ca=True,
        )
        s.put_certificate("ca", pair.id, der, authority=True)
        [cert] = s.certificates()
        assert cert.der == der and cert.authority and cert.id == pair.id
        with pytest.raises(LicentiaError) as err:
            s.put_certificate("bad", b"1", b"not a certificate")
        assert err.value.code is ErrorCode.CERTIFICATE_INVALID
        assert s.delete_objects("ca", ("certificate",)) == 1
        assert s.certificates() == []
        assert s.delete_objects("ca") == 2  # the key pair


def test_store_is_removed_and_environment_restored() -> None:
    before = os.environ.get("SOFTHSM2_CONF")
    with softhsm_store() as store:
        store.add_token("x")
        directory = store.directory
        assert os.environ["SOFTHSM2_CONF"] == str(store.conf)
        assert any((directory / "tokens").iterdir())
    assert not directory.exists()
    assert os.environ.get("SOFTHSM2_CONF") == before
